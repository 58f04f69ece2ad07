"""Providers set up the way the main app sets them up, with no imapsvc
command at all: a real ``twistd imapsvc`` against the rig's Dovecot,
Postgres and Redis.

- a password only in ``<SECRET_FS_BASE_PATH>/tenants/<tenant>/imap_password_<id>``
  produces events; changed in the app (file and server), it is used after
  the server refused the old one, without a restart;
- an OAuth provider with the app's plaintext ``access_token`` and
  ``token_expires_at`` in its row, the client secret in the row's plaintext
  column and the refresh token only in the app's Vault (the rig's KV v2
  endpoint) produces events; when the token nears its expiry it is refreshed
  through the token endpoint, the rotated refresh token is merged into the
  Vault document, and the app's columns are left as the app wrote them;
- a provider with no credentials anywhere is never auto-paused, says why in
  ``error_message``, and starts once the app provides the password;
- the service configured with the app's ``DB_*`` / ``REDIS_*`` variables
  instead of ``DATABASE_URL`` / ``REDIS_URL`` (the database password from
  the app secret ``db_password_server``) works and says so, without the
  password.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Optional

from twisted.internet import defer, reactor
from twisted.trial import unittest

from imapsvc.oauth import REFRESH_MARGIN_S
from imapsvc.sealed_secrets import password_name, refresh_token_name
from tests.rig import mail
from tests.rig import postgres as pg
from tests.rig.dovecot import DEFAULT_PASSWORD, unique_user
from tests.rig.oauth_server import OAuthServer
from tests.rig.service import (
    ServiceProcess,
    ServiceRigMixin,
    http_get,
    http_post,
    wait_for,
)
from tests.rig.vault import VaultKV2

RECEIVED = "INBOUND_EMAIL_RECEIVED"


def insert_app_provider(
    dsn: str, user: str, port: int, *, auth_type: str = "password", **config: Any
) -> tuple[str, str]:
    """Both provider rows as the main app writes them: no secret sealed by
    the service; ``config`` sets more ``imap_email_provider_config`` columns
    (the app's plaintext ``access_token``, ``oauth_client_secret``, ...)."""
    tenant, pid = str(uuid.uuid4()), str(uuid.uuid4())
    pg.execute(
        dsn,
        "INSERT INTO email_providers (id, tenant, provider_type, provider_name, mailbox,"
        " is_active, status) VALUES (%s, %s, 'imap', 'Support', %s, true, 'configuring')",
        (pid, tenant, f"{user}@{pid[:8]}"),
    )
    columns = {"email_provider_id": pid, "tenant": tenant, "host": "localhost", "port": port,
               "secure": True, "auth_type": auth_type, "username": user}  # fmt: skip
    columns.update(config)
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    pg.execute(
        dsn, f"INSERT INTO imap_email_provider_config ({names}) VALUES ({marks})",
        list(columns.values()),
    )  # fmt: skip
    return tenant, pid


class AppSecretsEndToEnd(ServiceRigMixin, unittest.TestCase):
    timeout = 180

    def setUp(self):
        self.set_up_service_rig("appsecrets")
        self.base = tempfile.mkdtemp(prefix="imapsvc-app-secrets-")
        self.addCleanup(shutil.rmtree, self.base, True)

    def service(self, tenant: str, **env: str) -> ServiceProcess:
        settings = self.service_env(
            IMAP_PROVIDER_REFRESH_MS="1000", IMAP_LEASE_TTL_MS="6000", IMAPSVC_TENANTS=tenant,
            SECRET_FS_BASE_PATH=self.base, SECRET_READ_CHAIN="filesystem",
        )  # fmt: skip
        settings.update(env)
        proc = ServiceProcess(settings, "appsecrets-w1")
        self.addCleanup(proc.cleanup)
        proc.start()
        return proc

    def app_file(self, tenant: str, name: str, value: str) -> str:
        path = os.path.join(self.base, "tenants", tenant, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(value + "\n")  # as an editor or `echo` leaves it
        return path

    def row(self, pid: str) -> dict:
        [row] = pg.fetch_dicts(
            self.dsn,
            "SELECT p.status, p.error_message, p.inbound_paused_at, p.inbound_pause_reason,"
            " p.inbound_auth_failure_count, c.access_token, c.token_expires_at,"
            " c.refresh_token, c.oauth_client_secret"
            " FROM email_providers p JOIN imap_email_provider_config c"
            " ON c.tenant = p.tenant AND c.email_provider_id = p.id WHERE p.id = %s",
            (pid,),
        )
        return row

    def subjects(self) -> list[str]:
        return sorted(
            json.loads(f["payload_json"])["emailData"]["subject"]
            for _, f in self.entries()
            if f["event_type"] == RECEIVED
        )

    def connected(self, pid: str, timeout: float = 20) -> defer.Deferred:
        return wait_for(lambda: self.row(pid)["status"] == "connected", timeout, "connected")

    # -- (a) a password only in the app's filesystem provider ------------------------

    @defer.inlineCallbacks
    def test_password_only_in_the_apps_secret_files(self):
        password = "Pw-" + uuid.uuid4().hex
        user = self.dovecot.add_user(unique_user("appfs"), password)
        tenant, pid = insert_app_provider(self.dsn, user, self.dovecot.ports.imaps)
        self.app_file(tenant, password_name(pid), password)
        # A long cache: the old password is certainly still cached when the
        # server refuses it, so only the invalidation can bring the new one.
        proc = self.service(tenant, IMAPSVC_SECRET_CACHE_MS="600000")
        yield self.connected(pid)
        mail.append(user, password, "INBOX", mail.make_message(subject="from the app's file"))
        yield wait_for(lambda: self.subjects() == ["from the app's file"], 15, "the event")
        self.assertNotIn(password, proc.log_text())
        # Nothing was sealed by the service for this provider.
        self.assertEqual(
            pg.execute(self.dsn, "SELECT count(*) FROM imap_secrets WHERE tenant = %s",
                       (tenant,))[0][0], 0)  # fmt: skip

        # The app changes the password (server and file). The next login
        # (forced here) is refused with the cached old one; the refusal drops
        # the cache, and the discovery timer's retry logs in with the new one.
        new_password = "Pw-" + uuid.uuid4().hex
        self.dovecot.add_user(user, new_password)
        self.app_file(tenant, password_name(pid), new_password)
        code, body = http_post(
            proc.url("/api/email/imap/reconnect"), {"tenant": tenant, "providerId": pid}
        )
        self.assertEqual(code, 200, body)
        yield wait_for(
            lambda: "authentication failed" in proc.log_text(), 20, "the refused login"
        )
        yield wait_for(lambda: self.row(pid)["inbound_auth_failure_count"] == 0, 30, "reset")
        yield self.connected(pid, 30)
        mail.append(user, new_password, "INBOX", mail.make_message(subject="after the change"))
        yield wait_for(
            lambda: self.subjects() == ["after the change", "from the app's file"], 15, "event"
        )
        row = self.row(pid)
        self.assertIsNone(row["inbound_paused_at"])
        self.assertEqual(row["inbound_auth_failure_count"], 0)  # reset by the good login
        self.assertNotIn(new_password, proc.log_text())

    # -- (b) OAuth as the app leaves it: plaintext row tokens, refresh token in Vault ---

    @defer.inlineCallbacks
    def test_oauth_with_the_apps_plaintext_token_and_vault_refresh_token(self):
        user = self.dovecot.add_user(unique_user("appoauth"))  # its password is not used
        client_secret = "cs-" + secrets.token_urlsafe(16)
        auth = OAuthServer(self.dovecot.introspection, "app-client", client_secret, user)
        auth.start()
        self.addCleanup(auth.stop)
        vault = VaultKV2(reactor)
        vault.start()
        self.addCleanup(vault.stop)
        access, refresh = auth.issue()
        # Valid for a few seconds beyond the refresh margin: refresh-ahead
        # becomes due during the test.
        lead = 10
        expires = datetime.now(UTC) + timedelta(seconds=REFRESH_MARGIN_S + lead)
        tenant, pid = insert_app_provider(
            self.dsn, user, self.dovecot.ports.imaps, auth_type="oauth2",
            oauth_authorize_url=auth.authorize_url, oauth_token_url=auth.token_url,
            oauth_client_id=auth.client_id, oauth_scopes="imap",
            oauth_client_secret=client_secret, access_token=access, token_expires_at=expires,
        )  # fmt: skip
        vault_path = vault.tenant_path(tenant)
        vault.put(vault_path, {refresh_token_name(pid): refresh, "unrelated_app_key": "keep"})
        proc = self.service(
            tenant, SECRET_READ_CHAIN="vault", SECRET_WRITE_PROVIDER="vault",
            VAULT_ADDR=vault.addr, VAULT_TOKEN=vault.token,
        )  # fmt: skip
        yield self.connected(pid)
        # Logged in with the app's own token: no token request was needed.
        self.assertEqual(auth.token_requests(), 0)
        mail.append(user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject="oauth one"))
        yield wait_for(lambda: self.subjects() == ["oauth one"], 15, "first event")

        # Refresh-ahead: the refresh token comes from Vault, the client
        # secret from the row; the rotated refresh token is merged into the
        # tenant's Vault document.
        yield wait_for(lambda: auth.grants == ["refresh_token"], lead + 20, "the refresh")
        yield wait_for(
            lambda: (vault.read(vault_path) or {}).get(refresh_token_name(pid))
            == auth.refresh_tokens[-1],
            10,
            "the rotated refresh token in Vault",
        )
        self.assertEqual(vault.read(vault_path)["unrelated_app_key"], "keep")
        self.assertTrue(any(r[0] == "POST" for r in vault.requests))
        yield wait_for(lambda: self.row(pid)["status"] == "connected", 20, "logged in again")
        mail.append(user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject="oauth two"))
        yield wait_for(lambda: self.subjects() == ["oauth one", "oauth two"], 20, "second event")
        # The app's columns are as the app wrote them.
        row = self.row(pid)
        self.assertEqual(row["access_token"], access)
        self.assertEqual(row["oauth_client_secret"], client_secret)
        self.assertIsNone(row["refresh_token"])
        self.assertEqual(row["inbound_auth_failure_count"], 0)
        log = proc.log_text()
        for token in auth.access_tokens + auth.refresh_tokens + [client_secret, vault.token]:
            self.assertNotIn(token, log)

    @defer.inlineCallbacks
    def test_expired_app_token_refreshed_with_the_refresh_token_in_the_apps_files(self):
        user = self.dovecot.add_user(unique_user("appexp"))
        client_secret = "cs-" + secrets.token_urlsafe(16)
        auth = OAuthServer(self.dovecot.introspection, "app-client", client_secret, user)
        auth.start()
        self.addCleanup(auth.stop)
        access, refresh = auth.issue()
        expired = datetime.now(UTC) - timedelta(minutes=5)
        tenant, pid = insert_app_provider(
            self.dsn, user, self.dovecot.ports.imaps, auth_type="oauth2",
            oauth_authorize_url=auth.authorize_url, oauth_token_url=auth.token_url,
            oauth_client_id=auth.client_id, oauth_scopes="imap",
            oauth_client_secret=client_secret, access_token=access, token_expires_at=expired,
        )  # fmt: skip
        path = self.app_file(tenant, refresh_token_name(pid), refresh)
        self.service(tenant, SECRET_WRITE_PROVIDER="filesystem")
        yield self.connected(pid)
        self.assertEqual(auth.grants, ["refresh_token"])
        # The rotated refresh token is where the app keeps it.
        with open(path) as f:
            self.assertEqual(f.read(), auth.refresh_tokens[-1])
        self.assertNotEqual(auth.refresh_tokens[-1], refresh)
        mail.append(user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject="refreshed"))
        yield wait_for(lambda: self.subjects() == ["refreshed"], 15, "the event")
        row = self.row(pid)
        self.assertEqual((row["access_token"], row["token_expires_at"]), (access, expired))

    # -- (c) no credentials anywhere --------------------------------------------------

    @defer.inlineCallbacks
    def test_no_credentials_anywhere_is_an_error_never_a_pause(self):
        password = "Pw-" + uuid.uuid4().hex
        user = self.dovecot.add_user(unique_user("appnone"), password)
        tenant, pid = insert_app_provider(self.dsn, user, self.dovecot.ports.imaps)
        # One counted failure would pause it at once.
        proc = self.service(
            tenant, IMAP_AUTH_FAILURE_PAUSE_AFTER="1", SECRET_READ_CHAIN="filesystem,env",
            IMAPSVC_SECRET_CACHE_MS="0",
        )  # fmt: skip
        name = password_name(pid)
        expected_file = os.path.join(self.base, "tenants", tenant, name)

        def says_why() -> Optional[dict]:
            row = self.row(pid)
            message = row["error_message"] or ""
            return row if row["status"] == "error" and name in message else None

        row = yield wait_for(says_why, 20, "status error naming the credential")
        self.assertIn(expected_file, row["error_message"])
        self.assertIn(f"TENANT_{tenant}_{name}", row["error_message"])
        self.assertIn("imapsvc sealed store", row["error_message"])
        # Retried on the discovery timer (1 s here), several times: never paused.
        yield wait_for(
            lambda: proc.log_text().count("credentials missing") >= 4, 30, "several retries"
        )
        row = self.row(pid)
        self.assertIsNone(row["inbound_paused_at"])
        self.assertIsNone(row["inbound_pause_reason"])
        self.assertEqual(row["inbound_auth_failure_count"], 0)
        self.assertNotIn("INBOUND_EMAIL_PROVIDER_AUTO_PAUSED",
                         [f["event_type"] for _, f in self.entries()])  # fmt: skip
        self.assertEqual(http_get(proc.url("/readyz"))[0], 200)

        # The app provides the password: the next retry logs in.
        self.app_file(tenant, name, password)
        yield self.connected(pid, 20)
        mail.append(user, password, "INBOX", mail.make_message(subject="finally"))
        yield wait_for(lambda: self.subjects() == ["finally"], 15, "the event")
        self.assertIsNone(self.row(pid)["error_message"])

    # -- the app's connection variables instead of URLs ---------------------------------

    @defer.inlineCallbacks
    def test_database_and_redis_from_the_apps_variables(self):
        from psycopg2.extensions import parse_dsn

        from tests.rig.redis import _host_port

        password = "Pw-" + uuid.uuid4().hex
        user = self.dovecot.add_user(unique_user("appvars"), password)
        tenant, pid = insert_app_provider(self.dsn, user, self.dovecot.ports.imaps)
        self.app_file(tenant, password_name(pid), password)
        # The rig's Postgres trusts local connections: the password is not
        # checked, but it travels through the URL and must never be shown.
        db_password = "db:pw/" + uuid.uuid4().hex[:8] + "@#%"
        with open(os.path.join(self.base, "db_password_server"), "w") as f:
            f.write(db_password + "\n")
        dsn = parse_dsn(self.dsn)
        redis_host, redis_port = _host_port(self.redis_url)
        proc = self.service(
            tenant, DATABASE_URL="", REDIS_URL="",
            DB_HOST=dsn.get("host", "127.0.0.1"), DB_PORT=str(dsn.get("port", "5432")),
            DB_NAME_SERVER=dsn["dbname"], DB_USER_SERVER=dsn.get("user", "postgres"),
            REDIS_HOST=redis_host, REDIS_PORT=str(redis_port),
        )  # fmt: skip
        yield self.connected(pid)
        mail.append(user, password, "INBOX", mail.make_message(subject="via DB_HOST"))
        yield wait_for(lambda: self.subjects() == ["via DB_HOST"], 15, "the event")
        log = proc.log_text()
        self.assertIn("built from DB_HOST, DB_PORT, DB_NAME_SERVER, DB_USER_SERVER", log)
        self.assertIn("app secret db_password_server", log)
        self.assertIn("built from REDIS_HOST, REDIS_PORT", log)
        self.assertNotIn(db_password, log)
        from urllib.parse import quote

        self.assertNotIn(quote(db_password, safe=""), log)

        # `python -m imapsvc config` says the same, without the password.
        import subprocess
        import sys

        shown = subprocess.run(
            [sys.executable, "-m", "imapsvc", "config"], env=proc.env, cwd=proc.dir,
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertRegex(shown.stdout, r"DATABASE_URL\s+postgresql://\S+:\*\*\*@\S+\s+\(built")
        self.assertNotIn(db_password, shown.stdout)
        self.assertNotIn(quote(db_password, safe=""), shown.stdout)
