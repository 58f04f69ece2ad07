"""``python -m imapsvc provider ...`` and ``events tail`` against the real
Postgres and Redis."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, TestCase

from imapsvc import cli
from imapsvc.sealed_secrets import SecretBox, SecretStore, generate_key, password_name
from imapsvc.store.postgres import PostgresStore
from tests.rig import postgres as rig


def as_url(dsn: str) -> str:
    """The rig's DSN as the postgresql:// URL that DATABASE_URL requires."""
    if dsn.startswith(("postgres://", "postgresql://")):
        return dsn
    from urllib.parse import quote

    from psycopg2.extensions import parse_dsn

    p = parse_dsn(dsn)
    auth = quote(p.get("user", "postgres"), safe="")
    if p.get("password"):
        auth += ":" + quote(p["password"], safe="")
    host = p.get("host", "127.0.0.1")
    return f"postgresql://{auth}@{host}:{p.get('port', '5432')}/{p['dbname']}"


class PostgresCliTests(TestCase):
    def setUp(self) -> None:
        self.dsn = rig.database_dsn()
        rig.truncate_all(self.dsn)
        self.key = generate_key()
        self.environ = {"DATABASE_URL": as_url(self.dsn), "IMAPSVC_SECRET_KEY": self.key}
        self.tenant = str(uuid.uuid4())

    def run_cli(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(list(argv), environ=self.environ, out=out, err=err,
                          stdin=io.StringIO(stdin))
        return status, out.getvalue(), err.getvalue()

    @defer.inlineCallbacks
    def test_add_list_and_the_service_reads_it(self) -> Any:
        status, out, err = self.run_cli(
            "provider", "add", "--tenant", self.tenant, "--mailbox", "help@example.com",
            "--host", "imap.example.com", "--username", "help", "--starttls",
            "--folder", "INBOX", "--folder", "Support", "--password-stdin", stdin="pg-pw-1\n")
        self.assertEqual((status, err), (0, ""))
        pid = out.split()[2]
        status, out, _ = self.run_cli("provider", "list", "--tenant", self.tenant)
        self.assertEqual(status, 0)
        self.assertIn(pid, out)
        self.assertIn("imap.example.com:143", out)
        self.assertIn("password set", out)
        [(sealed,)] = rig.execute(self.dsn, "SELECT ciphertext FROM imap_secrets")
        self.assertNotIn(b"pg-pw-1", bytes(sealed))
        # The running service's store sees the provider and opens the secret.
        store = PostgresStore(self.dsn, reactor, pool_size=1)
        yield store.start()
        self.addCleanup(store.stop)
        [config] = yield store.list_active_providers(self.tenant)
        self.assertEqual((config.provider_id, config.allow_starttls, config.secure,
                          config.folder_filters), (pid, True, False, ("INBOX", "Support")))
        secrets = SecretStore(store, SecretBox.from_setting(self.key))
        self.assertEqual((yield secrets.get(self.tenant, password_name(pid))), "pg-pw-1")
        # Write-back (issue 13 item 3): the service's store reads the option.
        self.assertEqual(self.run_cli("provider", "set-write-back", "--tenant", self.tenant,
                                      "--provider", pid, "--mode", "move:Processed")[0], 0)
        [config] = yield store.list_active_providers(self.tenant)
        self.assertEqual(config.write_back, "move:Processed")
        status, _, err = self.run_cli("provider", "set-write-back", "--tenant", self.tenant,
                                      "--provider", str(uuid.uuid4()), "--mode", "seen")
        self.assertEqual(status, 1)
        self.assertIn("has no provider", err)
        # Switch off, then remove.
        self.assertEqual(self.run_cli("provider", "set-active", "--tenant", self.tenant,
                                      "--provider", pid, "--active", "false")[0], 0)
        self.assertEqual((yield store.list_active_providers(self.tenant)), [])
        self.assertEqual(self.run_cli("provider", "remove", "--tenant", self.tenant,
                                      "--provider", pid)[0], 0)
        self.assertEqual(rig.execute(self.dsn, "SELECT count(*) FROM imap_secrets"), [(0,)])
        status, _, err = self.run_cli("provider", "remove", "--tenant", self.tenant,
                                      "--provider", pid)
        self.assertEqual(status, 1)
        self.assertIn("has no provider", err)


    def test_set_password_lifts_only_an_auth_failure_pause(self) -> None:
        pids = {}
        for reason in ("auth_failure", "manual", "tenant_cancelled"):
            status, out, err = self.run_cli(
                "provider", "add", "--tenant", self.tenant, "--mailbox", f"{reason}@example.com",
                "--host", "imap.example.com", "--username", "help", "--password-stdin",
                stdin="pw\n")
            self.assertEqual((status, err), (0, ""))
            pids[reason] = pid = out.split()[2]
            rig.execute(self.dsn,
                        "UPDATE email_providers SET inbound_paused_at = now(),"
                        " inbound_pause_reason = %s, inbound_auth_failure_count = 3,"
                        " inbound_auth_failure_code = 'AUTHENTICATIONFAILED' WHERE id = %s",
                        (reason, pid))
        for reason, pid in pids.items():
            status, out, err = self.run_cli("provider", "set-password", "--tenant", self.tenant,
                                            "--provider", pid, "--password-stdin",
                                            stdin="new-pw\n")
            self.assertEqual((status, err), (0, ""))
            self.assertEqual("lifted the pause" in out, reason == "auth_failure")
            [row] = rig.execute(
                self.dsn,
                "SELECT inbound_paused_at IS NOT NULL, inbound_pause_reason,"
                " inbound_auth_failure_count, inbound_auth_failure_code"
                " FROM email_providers WHERE id = %s", (pid,))
            expected = (False, None) if reason == "auth_failure" else (True, reason)
            self.assertEqual(tuple(row), expected + (0, None))

    @defer.inlineCallbacks
    def test_poison_list_and_retry(self) -> Any:
        from imapsvc.model import FolderCursor, MessageRecord

        status, out, err = self.run_cli(
            "provider", "add", "--tenant", self.tenant, "--mailbox", "poison@example.com",
            "--host", "imap.example.com", "--username", "help", "--password-stdin",
            stdin="pw\n")
        self.assertEqual((status, err), (0, ""))
        pid = out.split()[2]
        store = PostgresStore(self.dsn, reactor, pool_size=1)
        yield store.start()
        self.addCleanup(store.stop)
        self.assertTrue((yield store.acquire_lease(self.tenant, pid, "w", 60000)))
        record = MessageRecord("imap:INBOX:7:5", "INBOX", "7", 5, None, "skipped",
                               str(uuid.uuid4()), "poison: CommandFailed: NO")
        yield store.record_batch(self.tenant, pid, "INBOX", "w", [record],
                                 FolderCursor("7", "8"))
        yield store.note_message_failure(self.tenant, pid, "INBOX", "7", 5, "CommandFailed: NO")
        yield store.mark_poison_skipped(self.tenant, pid, "INBOX", "7", 5)
        status, out, err = self.run_cli("poison", "list", "--provider", pid, "--json")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(json.loads(out)["uid"], 5)
        status, out, err = self.run_cli("poison", "retry", "--tenant", self.tenant,
                                        "--provider", pid, "--all")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual((yield store.list_poison(self.tenant)), [])
        cursor = yield store.read_cursor(self.tenant, pid, "INBOX")
        self.assertEqual(cursor.last_uid, "4")
        self.assertEqual(rig.execute(self.dsn, "SELECT count(*) FROM imap_message_ledger"),
                         [(0,)])

    @defer.inlineCallbacks
    def test_backfill_offline_and_first_sync(self) -> Any:
        status, out, err = self.run_cli(
            "provider", "add", "--tenant", self.tenant, "--mailbox", "bf@example.com",
            "--host", "imap.example.com", "--username", "help", "--folder", "Support",
            "--password-stdin", stdin="pw\n")
        self.assertEqual((status, err), (0, ""))
        pid = out.split()[2]
        status, out, err = self.run_cli("resync", "--tenant", self.tenant, "--provider", pid,
                                        "--since", "2025-12-01", "--offline")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(self.run_cli("provider", "set-first-sync", "--tenant", self.tenant,
                                      "--provider", pid, "--days", "14")[0], 0)
        store = PostgresStore(self.dsn, reactor, pool_size=1)
        yield store.start()
        self.addCleanup(store.stop)
        state = yield store.read_backfill(self.tenant, pid, ["Support"])
        self.assertEqual((state.first_sync_since_days, state.pending_since.isoformat()),
                         (14, "2025-12-01"))
        status, _, err = self.run_cli("provider", "set-first-sync", "--tenant", self.tenant,
                                      "--provider", str(uuid.uuid4()), "--days", "1")
        self.assertEqual(status, 1)
        self.assertIn("has no provider", err)


class RedisTailTests(TestCase):
    def test_tail_real_stream(self) -> None:
        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=2)
        try:
            client.ping()
        except redis.ConnectionError as e:
            raise SkipTest(str(e)) from None
        stream = f"imapsvc:test:{uuid.uuid4()}"
        self.addCleanup(client.close)
        self.addCleanup(client.delete, stream)
        for n in range(3):
            client.xadd(stream, {"event_id": f"e{n}", "subject": "é"})
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(["events", "tail", "--count", "2"],
                          environ={"REDIS_URL": "redis://127.0.0.1:6379/0",
                                   "IMAP_EVENT_STREAM": stream}, out=out, err=err)
        self.assertEqual((status, err.getvalue()), (0, ""))
        got = [json.loads(line)["fields"] for line in out.getvalue().splitlines()]
        self.assertEqual(got, [{"event_id": "e1", "subject": "é"},
                               {"event_id": "e2", "subject": "é"}])
