"""``python -m imapsvc`` in-process against a temporary SQLite file, with
fake stdin, prompts, HTTP and Redis."""

from __future__ import annotations

import io
import json
import os
import sys
import urllib.error
import uuid
from typing import Any, Optional

from twisted.trial.unittest import TestCase

from imapsvc import cli
from imapsvc.model import FolderCursor
from imapsvc.sealed_secrets import SecretBox, generate_key, password_name, refresh_token_name
from imapsvc.store.sqlite import SqliteOps
from imapsvc.store.sqlite_schema import connect

PASSWORD = "s3cret-Pässword-42"
ADM = "adm-token-77-a1b2c3d4e5f6a7b8c9d0e"


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class CliTestBase(TestCase):
    def setUp(self) -> None:
        d = self.mktemp()
        os.makedirs(d)
        self.dir = d
        self.db = os.path.join(d, "imapsvc.sqlite3")
        self.key = generate_key()
        self.environ = {"IMAPSVC_SQLITE_PATH": self.db, "IMAPSVC_SECRET_KEY": self.key,
                        "IMAPSVC_EVENTS_FILE": os.path.join(d, "events.jsonl")}
        self.tenant = str(uuid.uuid4())

    def run_cli(self, *argv: str, stdin: Optional[io.StringIO] = None,
                **seams: Any) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(list(argv), environ=self.environ, out=out, err=err,
                          stdin=stdin if stdin is not None else io.StringIO(""), **seams)
        return status, out.getvalue(), err.getvalue()

    def assert_one_line_error(self, result: tuple[int, str, str], *fragments: str) -> str:
        status, _out, err = result
        self.assertNotEqual(status, 0)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.endswith("\n"))
        self.assertNotIn("Traceback", err)
        for fragment in fragments:
            self.assertIn(fragment, err)
        return err

    def add(self, *extra: str, password: str = PASSWORD, mailbox: str = "help@example.com",
            tenant: Optional[str] = None) -> str:
        status, out, err = self.run_cli(
            "provider", "add", "--tenant", tenant or self.tenant, "--mailbox", mailbox,
            "--host", "imap.example.com", "--username", "help", "--password-stdin", *extra,
            stdin=io.StringIO(password + "\n"))
        self.assertEqual((status, err), (0, ""))
        return out.split()[2]  # "added provider <id> ..."

    def rows(self, sql: str, params: Any = ()) -> list[Any]:
        conn = connect(self.db)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


class ProviderTests(CliTestBase):
    def test_migrate_creates_sqlite_schema_once(self) -> None:
        status, out, _ = self.run_cli("migrate")
        self.assertEqual(status, 0)
        self.assertIn("created the imapsvc schema", out)
        self.assertIn("email_providers", {r[0] for r in self.rows(
            "SELECT name FROM sqlite_master WHERE type = 'table'")})
        status, out, _ = self.run_cli("migrate")
        self.assertEqual(status, 0)
        self.assertIn("up to date", out)

    def test_add_then_list(self) -> None:
        pid = self.add("--folder", "INBOX", "--folder", "Support/Urgent", "--port", "1993")
        self.assertEqual(str(uuid.UUID(pid)), pid)
        status, out, err = self.run_cli("provider", "list")
        self.assertEqual((status, err), (0, ""))
        header, line = out.splitlines()
        self.assertTrue(header.startswith("TENANT"))
        for value in (self.tenant, pid, "help@example.com", "imap.example.com:1993", "tls",
                      "password", "INBOX,Support/Urgent", "password set"):
            self.assertIn(value, line)
        self.assertNotIn(PASSWORD, out)
        # The row is what the service reads.
        conn = connect(self.db)
        self.addCleanup(conn.close)
        config = SqliteOps(conn, lambda: 0.0).get_provider(self.tenant, pid)
        assert config is not None
        self.assertEqual((config.secure, config.allow_starttls, config.folder_filters,
                          config.is_active, config.auth_type, config.username),
                         (True, False, ("INBOX", "Support/Urgent"), True, "password", "help"))

    def test_starttls_default_port(self) -> None:
        pid = self.add("--starttls")
        [(port, secure, starttls)] = self.rows(
            "SELECT port, secure, allow_starttls FROM imap_email_provider_config"
            " WHERE email_provider_id = ?", (pid,))
        self.assertEqual((port, secure, starttls), (143, 0, 1))

    def test_password_stored_sealed_not_plaintext(self) -> None:
        pid = self.add()
        [(sealed,)] = self.rows("SELECT ciphertext FROM imap_secrets WHERE tenant = ? AND name = ?",
                                (self.tenant, password_name(pid)))
        self.assertNotIn(PASSWORD.encode("utf-8"), sealed)
        box = SecretBox.from_setting(self.key)
        self.assertEqual(box.open(self.tenant, password_name(pid), sealed).decode("utf-8"),
                         PASSWORD)
        # Nowhere in the file either (WAL included).
        for name in os.listdir(self.dir):
            with open(os.path.join(self.dir, name), "rb") as f:
                self.assertNotIn(PASSWORD.encode("utf-8"), f.read(), name)

    def test_prompt_asks_twice(self) -> None:
        answers = iter([PASSWORD, PASSWORD])
        prompts: list[str] = []

        def getpass(prompt: str) -> str:
            prompts.append(prompt)
            return next(answers)

        status, _, err = self.run_cli(
            "provider", "add", "--tenant", self.tenant, "--mailbox", "p@example.com",
            "--host", "h", "--username", "u", stdin=_TTY(), getpass=getpass)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(len(prompts), 2)
        self.assertEqual(len(self.rows("SELECT * FROM imap_secrets")), 1)

    def test_prompt_mismatch_adds_nothing(self) -> None:
        answers = iter([PASSWORD, "typo"])
        result = self.run_cli(
            "provider", "add", "--tenant", self.tenant, "--mailbox", "p@example.com",
            "--host", "h", "--username", "u", stdin=_TTY(), getpass=lambda p: next(answers))
        err = self.assert_one_line_error(result, "differ")
        self.assertNotIn(PASSWORD, err)
        self.assertEqual(self.rows("SELECT * FROM email_providers"), [])

    def test_no_terminal_and_no_stdin_flag(self) -> None:
        result = self.run_cli("provider", "add", "--tenant", self.tenant, "--mailbox", "p@x.com",
                              "--host", "h", "--username", "u")
        self.assert_one_line_error(result, "--password-stdin")
        self.assertEqual(self.rows("SELECT * FROM email_providers"), [])

    def test_password_never_from_argv(self) -> None:
        for args in (["--password", PASSWORD], [f"--password={PASSWORD}"],
                     ["--client-secret", PASSWORD]):
            result = self.run_cli("provider", "add", "--tenant", self.tenant, "--mailbox",
                                  "p@x.com", "--host", "h", "--username", "u", *args)
            err = self.assert_one_line_error(result, "refused")
            self.assertEqual(result[0], 2)
            self.assertNotIn(PASSWORD, err)
        self.assertFalse(os.path.exists(self.db))
        # ...and no abbreviation sneaks --password in as --password-stdin.
        result = self.run_cli("provider", "set-password", "--tenant", self.tenant,
                              "--provider", str(uuid.uuid4()), "--password-std")
        self.assert_one_line_error(result, "unrecognized arguments")

    def test_missing_secret_key(self) -> None:
        del self.environ["IMAPSVC_SECRET_KEY"]
        result = self.run_cli("provider", "add", "--tenant", self.tenant, "--mailbox", "p@x.com",
                              "--host", "h", "--username", "u", "--password-stdin",
                              stdin=io.StringIO(PASSWORD + "\n"))
        self.assert_one_line_error(result, "IMAPSVC_SECRET_KEY is not set", "keygen")
        self.assertEqual(result[0], 2, "a missing setting is a usage error (docs/cli.md)")
        self.assertEqual(self.rows("SELECT * FROM email_providers"), [])

    def test_bad_secret_key_not_echoed(self) -> None:
        self.environ["IMAPSVC_SECRET_KEY"] = "short-key-value"
        result = self.run_cli("provider", "list")
        err = self.assert_one_line_error(result, "IMAPSVC_SECRET_KEY")
        self.assertNotIn("short-key-value", err)
        self.assertEqual(result[0], 2)

    def test_bad_uuid(self) -> None:
        result = self.run_cli("provider", "add", "--tenant", "acme", "--mailbox", "p@x.com",
                              "--host", "h", "--username", "u", "--password-stdin",
                              stdin=io.StringIO("pw\n"))
        self.assert_one_line_error(result, "--tenant is not a UUID")
        self.assertEqual(result[0], 2, "a bad argument value is a usage error (docs/cli.md)")
        result = self.run_cli("provider", "set-active", "--tenant", self.tenant,
                              "--provider", "12", "--active", "true")
        self.assert_one_line_error(result, "--provider is not a UUID")
        self.assertEqual(result[0], 2)

    def test_duplicate_mailbox(self) -> None:
        self.add()
        result = self.run_cli("provider", "add", "--tenant", self.tenant, "--mailbox",
                              "help@example.com", "--host", "h", "--username", "u",
                              "--password-stdin", stdin=io.StringIO("pw\n"))
        self.assert_one_line_error(result, "already has a provider with that mailbox")
        self.assertEqual(result[0], 1, "a refused operation, not a usage error")
        self.assertEqual(len(self.rows("SELECT * FROM email_providers")), 1)
        self.assertEqual(len(self.rows("SELECT * FROM imap_secrets")), 1)

    def test_set_active(self) -> None:
        pid = self.add()
        status, out, _ = self.run_cli("provider", "set-active", "--tenant", self.tenant,
                                      "--provider", pid, "--active", "false")
        self.assertEqual(status, 0)
        self.assertIn("inactive", out)
        self.assertEqual(self.rows("SELECT is_active FROM email_providers"), [(0,)])
        self.run_cli("provider", "set-active", "--tenant", self.tenant, "--provider", pid,
                     "--active", "yes")
        self.assertEqual(self.rows("SELECT is_active FROM email_providers"), [(1,)])
        result = self.run_cli("provider", "set-active", "--tenant", self.tenant,
                              "--provider", pid, "--active", "maybe")
        self.assert_one_line_error(result, "true or false")
        self.assertEqual(result[0], 2)

    def test_set_write_back(self) -> None:
        pid = self.add()
        status, out, _ = self.run_cli("provider", "set-write-back", "--tenant", self.tenant,
                                      "--provider", pid, "--mode", "Move:Processed")
        self.assertEqual(status, 0)
        self.assertIn("move:Processed", out)
        conn = connect(self.db)
        self.addCleanup(conn.close)
        config = SqliteOps(conn, lambda: 0.0).get_provider(self.tenant, pid)
        assert config is not None
        self.assertEqual(config.write_back, "move:Processed")
        self.run_cli("provider", "set-write-back", "--tenant", self.tenant, "--provider", pid,
                     "--mode", "default")
        self.assertEqual(self.rows("SELECT write_back FROM imap_provider_options"), [(None,)])
        result = self.run_cli("provider", "set-write-back", "--tenant", self.tenant,
                              "--provider", pid, "--mode", "archive")
        self.assert_one_line_error(result, "--mode", "none, seen, delete or move:<folder>")
        self.assertEqual(result[0], 2)
        result = self.run_cli("provider", "set-write-back", "--tenant", self.tenant,
                              "--provider", str(uuid.uuid4()), "--mode", "seen")
        self.assert_one_line_error(result, "has no provider")

    def test_set_oauth_delegate(self) -> None:
        pid = self.add()
        self.run_cli("provider", "set-write-back", "--tenant", self.tenant, "--provider", pid,
                     "--mode", "seen")
        status, out, _ = self.run_cli("provider", "set-oauth-delegate", "--tenant",
                                      self.tenant, "--provider", pid,
                                      "--delegate", " alice@example.com ")
        self.assertEqual(status, 0)
        self.assertIn("alice@example.com gives the OAuth consent", out)
        # One options row: the delegate is set beside the write-back mode.
        self.assertEqual(self.rows("SELECT write_back, oauth_delegate FROM imap_provider_options"),
                         [("seen", "alice@example.com")])
        self.run_cli("provider", "set-oauth-delegate", "--tenant", self.tenant,
                     "--provider", pid, "--delegate", "none")
        self.assertEqual(self.rows("SELECT oauth_delegate FROM imap_provider_options"), [(None,)])
        for bad in ("alice", "@example.com", "a b@example.com"):
            result = self.run_cli("provider", "set-oauth-delegate", "--tenant", self.tenant,
                                  "--provider", pid, "--delegate", bad)
            self.assert_one_line_error(result, "--delegate")
            self.assertEqual(result[0], 2)
        result = self.run_cli("provider", "set-oauth-delegate", "--tenant", self.tenant,
                              "--provider", str(uuid.uuid4()), "--delegate", "a@b.c")
        self.assert_one_line_error(result, "has no provider")

    def test_unknown_provider(self) -> None:
        self.add()
        other = str(uuid.uuid4())
        for action in (["set-active", "--active", "false"], ["remove"],
                       ["set-password", "--password-stdin"]):
            result = self.run_cli("provider", action[0], "--tenant", self.tenant,
                                  "--provider", other, *action[1:],
                                  stdin=io.StringIO("pw\n"))
            self.assert_one_line_error(result, f"has no provider {other}")
        # Another tenant's provider is unknown too.
        pid = self.rows("SELECT id FROM email_providers")[0][0]
        result = self.run_cli("provider", "remove", "--tenant", str(uuid.uuid4()),
                              "--provider", pid)
        self.assert_one_line_error(result, "has no provider")
        self.assertEqual(len(self.rows("SELECT * FROM email_providers")), 1)

    def test_set_password_replaces_secret(self) -> None:
        pid = self.add()
        [(before,)] = self.rows("SELECT ciphertext FROM imap_secrets")
        status, _, err = self.run_cli("provider", "set-password", "--tenant", self.tenant,
                                      "--provider", pid, "--password-stdin",
                                      stdin=io.StringIO("new-pass\n"))
        self.assertEqual((status, err), (0, ""))
        [(after,)] = self.rows("SELECT ciphertext FROM imap_secrets")
        self.assertNotEqual(before, after)
        box = SecretBox.from_setting(self.key)
        self.assertEqual(box.open(self.tenant, password_name(pid), after), b"new-pass")
        result = self.run_cli("provider", "set-password", "--tenant", self.tenant,
                              "--provider", pid, "--password-stdin", stdin=io.StringIO("\n"))
        self.assert_one_line_error(result, "empty")

    def _pause(self, pid: str, reason: str, count: int = 3) -> None:
        conn = connect(self.db)
        try:
            conn.execute(
                "UPDATE email_providers SET inbound_paused_at = '2026-01-01T00:00:00.000Z',"
                " inbound_pause_reason = ?,"
                " inbound_auth_failure_count = ?, inbound_auth_failure_code = 'X'"
                " WHERE id = ?", (reason, count, pid))
        finally:
            conn.close()

    def _pause_row(self, pid: str) -> tuple:
        [row] = self.rows(
            "SELECT inbound_paused_at IS NOT NULL, inbound_pause_reason,"
            " inbound_auth_failure_count, inbound_auth_failure_code"
            " FROM email_providers WHERE id = ?", (pid,))
        return tuple(row)

    def test_set_password_lifts_auth_failure_pause(self) -> None:
        pid = self.add()
        self._pause(pid, "auth_failure")
        status, out, err = self.run_cli("provider", "set-password", "--tenant", self.tenant,
                                        "--provider", pid, "--password-stdin",
                                        stdin=io.StringIO("new-pass\n"))
        self.assertEqual((status, err), (0, ""))
        self.assertIn("lifted the pause", out)
        self.assertEqual(self._pause_row(pid), (0, None, 0, None))

    def test_set_password_keeps_manual_and_tenant_cancelled_pauses(self) -> None:
        for reason in ("manual", "tenant_cancelled"):
            pid = self.add(mailbox=f"{reason}@example.com")
            self._pause(pid, reason)
            status, out, err = self.run_cli("provider", "set-password", "--tenant", self.tenant,
                                            "--provider", pid, "--password-stdin",
                                            stdin=io.StringIO("new-pass\n"))
            self.assertEqual((status, err), (0, ""))
            self.assertNotIn("lifted", out)
            # The pause stays; the counters of the old password go.
            self.assertEqual(self._pause_row(pid), (1, reason, 0, None))

    def test_remove_takes_secrets(self) -> None:
        pid = self.add()
        keep = self.add(mailbox="other@example.com")
        conn = connect(self.db)
        self.addCleanup(conn.close)
        SqliteOps(conn, lambda: 0.0).put_secret(self.tenant, refresh_token_name(pid), b"x")
        status, _, _ = self.run_cli("provider", "remove", "--tenant", self.tenant,
                                    "--provider", pid)
        self.assertEqual(status, 0)
        self.assertEqual(self.rows("SELECT id FROM email_providers"), [(keep,)])
        self.assertEqual(self.rows("SELECT email_provider_id FROM imap_email_provider_config"),
                         [(keep,)])
        self.assertEqual(self.rows("SELECT name FROM imap_secrets"), [(password_name(keep),)])

    def test_list_missing_file_and_empty(self) -> None:
        result = self.run_cli("provider", "list")
        self.assert_one_line_error(result, "no SQLite database", "migrate")
        self.assertFalse(os.path.exists(self.db))
        self.run_cli("migrate")
        status, out, _ = self.run_cli("provider", "list")
        self.assertEqual((status, out), (0, "no providers\n"))

    def test_migrate_into_a_missing_folder_names_the_folder(self) -> None:
        folder = os.path.abspath(os.path.join(self.dir, "nowhere"))
        self.environ["IMAPSVC_SQLITE_PATH"] = os.path.join(folder, "x.sqlite3")
        result = self.run_cli("migrate")
        self.assertEqual(result[0], 1)
        self.assert_one_line_error(result, f"no folder {folder}")

    def test_migrate_help_shows_both_stores(self) -> None:
        status, out, _ = self.run_cli("migrate", "--help")
        self.assertEqual(status, 0)
        for fragment in ("python -m imapsvc migrate", "--database-url", "--sqlite-path"):
            self.assertIn(fragment, out)
        self.assertFalse(os.path.exists(self.db), "--help changes nothing")

    def test_migrate_help_after_global_options(self) -> None:
        printed = io.StringIO()
        self.patch(sys, "stdout", printed)  # argparse prints --help there
        status, _, err = self.run_cli("--database-url", "postgresql://db/x", "migrate", "--help")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("--sqlite-path", printed.getvalue())

    def test_migrate_after_global_sqlite_path(self) -> None:
        other = os.path.join(self.dir, "other.sqlite3")
        status, out, _ = self.run_cli("--sqlite-path", other, "migrate")
        self.assertEqual(status, 0)
        self.assertIn(other, out)
        self.assertTrue(os.path.exists(other))
        self.assertFalse(os.path.exists(self.db))

    def test_oauth2_needs_its_urls_and_client_id(self) -> None:
        result = self.run_cli("provider", "add", "--tenant", self.tenant, "--mailbox", "o@x.com",
                              "--host", "h", "--username", "u", "--auth", "oauth2",
                              "--password-stdin", stdin=io.StringIO("\n"))
        self.assert_one_line_error(result, "--oauth-client-id", "--oauth-token-url")
        self.assertEqual(result[0], 2)
        status, _, err = self.run_cli(
            "provider", "add", "--tenant", self.tenant, "--mailbox", "o@x.com", "--host", "h",
            "--username", "u", "--auth", "oauth2", "--oauth-client-id", "cid",
            "--oauth-authorize-url", "https://login.example.com/auth",
            "--oauth-token-url", "https://login.example.com/token", "--oauth-scopes", "a b",
            "--password-stdin", stdin=io.StringIO("\n"))  # public client: no secret
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(self.rows("SELECT * FROM imap_secrets"), [])
        _, out, _ = self.run_cli("provider", "list")
        self.assertIn("public client, not authorised", out)

    def test_unreachable_postgres_is_one_line(self) -> None:
        result = self.run_cli("--database-url", "postgresql://u:pw-secret-9@127.0.0.1:1/x",
                              "provider", "list")
        err = self.assert_one_line_error(result, "cannot reach the database")
        self.assertNotIn("pw-secret-9", err)

    def test_resync_offline(self) -> None:
        pid = self.add("--folder", "INBOX", "--folder", "Sent")
        conn = connect(self.db)
        self.addCleanup(conn.close)
        ops = SqliteOps(conn, lambda: 1767225600.0)
        self.assertTrue(ops.acquire_lease(self.tenant, pid, "w", 60000))
        for folder in ("INBOX", "Sent"):
            ops.write_cursor(self.tenant, pid, folder, FolderCursor("7", "9"), "w")
        status, out, _ = self.run_cli("resync", "--tenant", self.tenant, "--provider", pid,
                                      "--folder", "Sent", "--offline")
        self.assertEqual(status, 0)
        self.assertIsNone(ops.read_cursor(self.tenant, pid, "Sent"))
        self.assertEqual(ops.read_cursor(self.tenant, pid, "INBOX"), FolderCursor("7", "9"))

    def test_resync_since_offline_and_first_sync(self) -> None:
        pid = self.add("--folder", "INBOX", "--folder", "Sent")
        conn = connect(self.db)
        self.addCleanup(conn.close)
        ops = SqliteOps(conn, lambda: 1767225600.0)
        self.assertTrue(ops.acquire_lease(self.tenant, pid, "w", 60000))
        ops.write_cursor(self.tenant, pid, "INBOX", FolderCursor("7", "9"), "w")
        status, out, _ = self.run_cli("resync", "--tenant", self.tenant, "--provider", pid,
                                      "--since", "1-Dec-2025", "--offline")
        self.assertEqual(status, 0, out)
        self.assertIn("INBOX, Sent", out)
        # Cursors stay: only the window since the date is read again.
        self.assertEqual(ops.read_cursor(self.tenant, pid, "INBOX"), FolderCursor("7", "9"))
        state = ops.read_backfill(self.tenant, pid, ["Sent"])
        self.assertEqual(state.pending_since.isoformat(), "2025-12-01")
        result = self.run_cli("resync", "--tenant", self.tenant, "--provider", pid,
                              "--since", "last week", "--offline")
        self.assertEqual(result[0], 2)
        self.assert_one_line_error(result, "--since")
        status, out, _ = self.run_cli("provider", "set-first-sync", "--tenant", self.tenant,
                                      "--provider", pid, "--days", "30")
        self.assertEqual(status, 0)
        self.assertEqual(ops.read_backfill(self.tenant, pid, []).first_sync_since_days, 30)
        self.run_cli("provider", "set-first-sync", "--tenant", self.tenant, "--provider", pid,
                     "--days", "default")
        self.assertIsNone(ops.read_backfill(self.tenant, pid, []).first_sync_since_days)
        self.assertEqual(self.run_cli("provider", "set-first-sync", "--tenant", self.tenant,
                                      "--provider", pid, "--days", "-3")[0], 2)

    def test_usage_error_is_one_line(self) -> None:
        result = self.run_cli("provider", "frobnicate")
        self.assert_one_line_error(result, "invalid choice")
        self.assertEqual(result[0], 2)

    def test_keygen(self) -> None:
        status, out, _ = self.run_cli("keygen")
        self.assertEqual(status, 0)
        SecretBox.from_setting(out.strip())  # a usable key


class _Response(io.BytesIO):
    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AdminApiTests(CliTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.environ.update({"IMAPSVC_ADMIN_TOKEN": ADM, "PORT": "8181"})
        self.requests: list[Any] = []
        self.answer: Any = {"success": True}

    def urlopen(self, request: Any, timeout: float) -> Any:
        self.requests.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return _Response(json.dumps(self.answer).encode("utf-8"))

    def test_reconnect_posts_with_bearer(self) -> None:
        pid = str(uuid.uuid4())
        status, out, _ = self.run_cli("reconnect", "--tenant", self.tenant.upper(),
                                      "--provider", pid, urlopen=self.urlopen)
        self.assertEqual(status, 0)
        [req] = self.requests
        self.assertEqual((req.get_method(), req.full_url),
                         ("POST", "http://127.0.0.1:8181/api/email/imap/reconnect"))
        self.assertEqual(req.get_header("Authorization"), "Bearer " + ADM)
        self.assertEqual(json.loads(req.data), {"tenant": self.tenant, "providerId": pid})
        self.assertEqual(json.loads(out), {"success": True})

    def test_resync_folder_and_url(self) -> None:
        pid = str(uuid.uuid4())
        self.run_cli("resync", "--tenant", self.tenant, "--provider", pid, "--folder", "Sent",
                     "--url", "http://svc:9000/", urlopen=self.urlopen)
        [req] = self.requests
        self.assertEqual(req.full_url, "http://svc:9000/api/email/imap/resync")
        self.assertEqual(json.loads(req.data)["folder"], "Sent")

    def test_resync_since_posts_the_date(self) -> None:
        pid = str(uuid.uuid4())
        status, _, _ = self.run_cli("resync", "--tenant", self.tenant, "--provider", pid,
                                    "--since", "5-Jan-2026", urlopen=self.urlopen)
        self.assertEqual(status, 0)
        [req] = self.requests
        self.assertEqual(json.loads(req.data)["since"], "2026-01-05")

    def test_test_connection_failure_exit_status(self) -> None:
        self.answer = {"ok": False, "error": "AUTHENTICATIONFAILED"}
        status, out, _ = self.run_cli("test-connection", "--tenant", self.tenant,
                                      "--provider", str(uuid.uuid4()), urlopen=self.urlopen)
        self.assertEqual(status, 1)
        self.assertIn("AUTHENTICATIONFAILED", out)

    def test_refused_token(self) -> None:
        self.answer = urllib.error.HTTPError(
            "http://x", 401, "Unauthorized", None,  # type: ignore[arg-type]
            io.BytesIO(b'{"error": "unauthorized"}'))
        result = self.run_cli("reconnect", "--tenant", self.tenant, "--provider",
                              str(uuid.uuid4()), urlopen=self.urlopen)
        err = self.assert_one_line_error(result, "refused IMAPSVC_ADMIN_TOKEN")
        self.assertNotIn(ADM, err)

    def test_service_down_suggests_offline(self) -> None:
        self.answer = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
        result = self.run_cli("resync", "--tenant", self.tenant, "--provider",
                              str(uuid.uuid4()), urlopen=self.urlopen)
        self.assert_one_line_error(result, "no imapsvc answering", "--offline")

    def test_no_token(self) -> None:
        del self.environ["IMAPSVC_ADMIN_TOKEN"]
        result = self.run_cli("status", urlopen=self.urlopen)
        self.assert_one_line_error(result, "IMAPSVC_ADMIN_TOKEN is not set")
        self.assertEqual(self.requests, [])

    def test_status_table(self) -> None:
        self.answer = {
            "worker": "host-1", "discovered": True, "discoveryError": None,
            "providers": [{
                "tenant": self.tenant, "providerId": "p-1", "mailbox": "help@example.com",
                "host": "imap.example.com", "status": "connected", "error": None,
                "folders": {"INBOX": {"state": "Idling", "last_error": None,
                                      "cursor": {"uid_validity": "7", "last_uid": "42"}}},
            }],
            "waiting": [{"tenant": self.tenant, "providerId": "p-2", "reason": "lease held"}],
        }
        status, out, _ = self.run_cli("status", urlopen=self.urlopen)
        self.assertEqual(status, 0)
        self.assertEqual(self.requests[0].get_method(), "GET")
        self.assertTrue(self.requests[0].full_url.endswith(":8181/status"))
        lines = out.splitlines()
        self.assertIn("worker host-1", lines[0])
        row = [line for line in lines if "help@example.com" in line][0]
        for value in ("connected", "INBOX", "Idling", "42"):
            self.assertIn(value, row)
        self.assertIn("lease held", out)

    def test_status_table_of_the_deployment(self) -> None:
        self.answer = {
            "worker": "host-1", "discovered": True, "providers": [], "waiting": [],
            "deployment": {
                "replicas": [{"worker": "host-1", "state": "alive"},
                             {"worker": "host-2", "state": "gone"}],
                "providers": [{
                    "tenant": self.tenant, "providerId": "p-9", "mailbox": "b@example.com",
                    "status": "error", "error": "cap reached",
                    "folders": {
                        "INBOX": {"state": "Idling", "owner": "host-2",
                                  "counters": {"syncs": 4, "reconnects": 1}},
                        "Sent": {"state": "Waiting", "owner": None,
                                 "lastError": "IMAP_MAX_CONNECTIONS_PER_TENANT=2"}},
                }],
            },
        }
        status, out, _ = self.run_cli("status", urlopen=self.urlopen)
        self.assertEqual(status, 0)
        self.assertIn("host-2 (gone)", out)
        inbox = [line for line in out.splitlines() if "INBOX" in line][0]
        for value in ("b@example.com", "Idling", "host-2", "4"):
            self.assertIn(value, inbox)
        sent = [line for line in out.splitlines() if "Sent" in line][0]
        self.assertIn("IMAP_MAX_CONNECTIONS_PER_TENANT=2", sent)


def _entry(n: int) -> str:
    return json.dumps({"stream": "workflow:events:global", "id": f"{n}-0",
                       "fields": {"event_id": f"e{n}", "subject": "é"}}) + "\n"


class EventsTailTests(CliTestBase):
    def write(self, *lines: str) -> None:
        with open(self.environ["IMAPSVC_EVENTS_FILE"], "a", encoding="utf-8") as f:
            f.write("".join(lines))

    def test_tail_file_last_n(self) -> None:
        self.write(*(_entry(n) for n in range(1, 6)), '{"partial": ')
        status, out, _ = self.run_cli("events", "tail", "--count", "2")
        self.assertEqual(status, 0)
        got = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([g["id"] for g in got], ["4-0", "5-0"])
        self.assertEqual(got[0]["fields"], {"event_id": "e4", "subject": "é"})

    def test_follow_file(self) -> None:
        self.write(_entry(1), '{"id": "2-0", "fie')  # a line being written
        waits: list[float] = []
        steps = iter([
            lambda: self.write('lds": {"event_id": "e2"}}\n'),
            lambda: None,
            lambda: self.write(_entry(3)),
        ])

        def wait(seconds: float) -> None:
            waits.append(seconds)
            next(steps)()

        status, out, _ = self.run_cli("events", "tail", "--follow", wait=wait,
                                      stop=lambda: len(waits) >= 3)
        self.assertEqual(status, 0)
        self.assertEqual([json.loads(x)["id"] for x in out.splitlines()], ["1-0", "2-0", "3-0"])

    def test_missing_file(self) -> None:
        result = self.run_cli("events", "tail")
        self.assert_one_line_error(result, "no events file")

    def test_tail_redis(self) -> None:
        self.environ["REDIS_URL"] = "redis://127.0.0.1:6379/0"
        calls: list[tuple[Any, ...]] = []
        replies = iter([
            [(b"2-0", {b"event_id": b"e2"}), (b"1-0", {b"event_id": b"e1"})],  # XREVRANGE
            [],  # XREAD timed out
            [[b"workflow:events:global", [(b"3-0", {b"event_id": b"e3"})]]],
        ])

        class FakeRedis:
            def __init__(self, url: str, timeout: float) -> None:
                calls.append(("connect", url, timeout))

            def xrevrange(self, stream: str, top: str, bottom: str, count: int) -> Any:
                calls.append(("XREVRANGE", stream, top, bottom, count))
                return next(replies)

            def xread(self, streams: dict[str, Any], count: int, block: int) -> Any:
                calls.append(("XREAD", streams, count, block))
                return next(replies)

            def close(self) -> None:
                calls.append(("closed",))

        status, out, _ = self.run_cli("events", "tail", "--follow", redis=FakeRedis,
                                      stop=lambda: len(calls) >= 4)
        self.assertEqual(status, 0)
        self.assertEqual([json.loads(x)["id"] for x in out.splitlines()], ["1-0", "2-0", "3-0"])
        # The socket outlives a blocked XREAD (5 s).
        self.assertEqual(calls[0], ("connect", "redis://127.0.0.1:6379/0", 15.0))
        self.assertEqual(calls[1], ("XREVRANGE", "workflow:events:global", "+", "-", 10))
        # Follows from the newest entry seen, then from each new one.
        self.assertEqual(calls[2], ("XREAD", {"workflow:events:global": b"2-0"}, 100, 5000))
        self.assertEqual(calls[3][1], {"workflow:events:global": b"2-0"})
        self.assertEqual(calls[-1], ("closed",))

    def test_tail_redis_reads_resp3_replies(self) -> None:
        from imapsvc.cli_events import _stream_entries

        entry = (b"3-0", {b"event_id": b"e3"})
        self.assertEqual(_stream_entries({b"s": [[entry]]}), [entry])
        self.assertEqual(_stream_entries([[b"s", [entry]]]), [entry])
        self.assertEqual(_stream_entries(None), [])

    def test_redis_error_is_one_line(self) -> None:
        import redis

        self.environ["REDIS_URL"] = "redis://:pw@127.0.0.1:6379/0"

        class WrongType:
            def __init__(self, url: str, timeout: float) -> None:
                pass

            def xrevrange(self, *args: Any, **kwargs: Any) -> Any:
                raise redis.ResponseError("WRONGTYPE Operation against a key")

            def close(self) -> None:
                pass

        err = self.assert_one_line_error(self.run_cli("events", "tail", redis=WrongType),
                                         "Redis at 127.0.0.1:6379: WRONGTYPE")
        self.assertNotIn("pw", err)


class RedisConnectTests(TestCase):
    def test_unreachable(self) -> None:
        # Port 1 on the loopback: refused at once.
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(["events", "tail"], environ={"REDIS_URL": "redis://:pw@127.0.0.1:1/0"},
                          out=out, err=err)
        self.assertEqual(status, 1)
        self.assertIn("cannot reach Redis at 127.0.0.1:1", err.getvalue())
        self.assertEqual(err.getvalue().count("\n"), 1)
        self.assertNotIn("pw", err.getvalue())


class PoisonTests(CliTestBase):
    """``poison list|retry`` on the SQLite file (the Postgres admin store
    runs the same SQL as the Postgres store, see test_postgres_store)."""

    def skipped_message(self, provider: str, uid: int = 5) -> None:
        from imapsvc.model import MessageRecord

        conn = connect(self.db)
        try:
            ops = SqliteOps(conn, lambda: 1_800_000_000.0)
            self.assertTrue(ops.acquire_lease(self.tenant, provider, "w", 60000))
            record = MessageRecord(f"imap:INBOX:7:{uid}", "INBOX", "7", uid, None, "skipped",
                                   str(uuid.uuid4()), "poison: CommandFailed: NO")
            ops.record_batch(self.tenant, provider, "INBOX", "w", [record],
                             FolderCursor("7", "9"))
            for _ in range(3):
                ops.note_message_failure(self.tenant, provider, "INBOX", "7", uid,
                                         "CommandFailed: UID FETCH NO: corrupted")
            ops.mark_poison_skipped(self.tenant, provider, "INBOX", "7", uid)
        finally:
            conn.close()

    def test_list_and_retry(self) -> None:
        provider = self.add()
        status, out, _ = self.run_cli("poison", "list")
        self.assertEqual((status, out), (0, "no poison messages\n"))
        self.skipped_message(provider)
        status, out, err = self.run_cli("poison", "list", "--tenant", self.tenant)
        self.assertEqual((status, err), (0, ""))
        header, line = out.splitlines()
        self.assertIn("FAILURES", header)
        self.assertEqual(line.split()[:7],
                         [self.tenant, provider, "INBOX", "7", "5", "3", "skipped"])
        status, out, _ = self.run_cli("poison", "list", "--json")
        self.assertEqual(json.loads(out)["reason"], "CommandFailed: UID FETCH NO: corrupted")
        status, out, err = self.run_cli(
            "poison", "retry", "--tenant", self.tenant, "--provider", provider,
            "--folder", "INBOX", "--uid-validity", "7", "--uid", "5")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("retrying INBOX UID 5", out)
        self.assertEqual(self.rows("SELECT uid FROM imap_message_ledger"), [])
        [(state,)] = self.rows("SELECT folder_state FROM imap_email_provider_config")
        self.assertEqual(json.loads(state)["INBOX"]["last_uid"], "4")
        status, out, _ = self.run_cli("poison", "list")
        self.assertEqual(out, "no poison messages\n")

    def test_retry_all_and_unknown(self) -> None:
        provider = self.add()
        self.skipped_message(provider, uid=5)
        self.skipped_message(provider, uid=6)
        status, out, _ = self.run_cli("poison", "retry", "--tenant", self.tenant,
                                      "--provider", provider, "--all")
        self.assertEqual(status, 0)
        self.assertEqual(out.count("retrying"), 2)
        result = self.run_cli("poison", "retry", "--tenant", self.tenant, "--provider",
                              provider, "--folder", "INBOX", "--uid-validity", "7",
                              "--uid", "99")
        self.assert_one_line_error(result, "no poison message INBOX UID 99")
        result = self.run_cli("poison", "retry", "--tenant", self.tenant, "--provider",
                              provider, "--folder", "INBOX")
        self.assert_one_line_error(result, "--uid")
