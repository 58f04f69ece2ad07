"""Microsoft 365 shared mailbox end to end: a real ``twistd imapsvc``, the
rig's Dovecot (XOAUTH2 through token introspection), Postgres and Redis.

The authorization server's id_token names the delegate who signs in
(alice-...), while the access token it issues opens the shared mailbox
(support-...): introspection answers with the shared mailbox's name, which
differs from the token's subject, as Microsoft's tokens do. Without
``oauth_delegate`` the callback refuses the consent (another account); with
it (set through the CLI) the consent is stored, the row's login name is
kept, and the service logs in with ``user=<shared mailbox>`` and the
delegate's token, and publishes the shared mailbox's mail.
"""

from __future__ import annotations

import io
import json
import secrets

from twisted.internet import defer
from twisted.trial import unittest

from imapsvc import cli
from tests.integration.test_oauth_e2e import RECEIVED, request
from tests.rig import mail
from tests.rig import postgres as pg
from tests.rig.dovecot import DEFAULT_PASSWORD, unique_user
from tests.rig.oauth_server import OAuthServer
from tests.rig.service import (
    ADMIN_TOKEN,
    SECRET_KEY,
    ServiceProcess,
    ServiceRigMixin,
    add_oauth_provider,
    database_url,
    free_port,
    http_get,
    http_post,
    wait_for,
)


class SharedMailboxTests(ServiceRigMixin, unittest.TestCase):
    timeout = 180

    def setUp(self):
        self.set_up_service_rig("shared")
        # The shared mailbox: a password nobody gives the service.
        self.shared = self.dovecot.add_user(unique_user("support"))
        self.delegate = unique_user("alice")  # signs in; not a Dovecot login
        client_secret = "cs-" + secrets.token_urlsafe(16)
        self.auth = OAuthServer(self.dovecot.introspection, "imapsvc-shared-client",
                                client_secret, self.shared)
        self.auth.signed_in_as = self.delegate
        self.auth.start()
        self.addCleanup(self.auth.stop)
        self.tenant, self.pid = add_oauth_provider(
            self.dsn, self.shared, self.dovecot.ports.imaps,
            authorize_url=self.auth.authorize_url, token_url=self.auth.token_url,
            client_id=self.auth.client_id, client_secret=client_secret,
        )
        self.return_base = f"http://127.0.0.1:{free_port()}/settings/email"
        self.proc = ServiceProcess({
            "DATABASE_URL": database_url(self.dsn),
            "REDIS_URL": self.redis_url,
            "IMAP_EVENT_STREAM": self.stream,
            "IMAP_TLS_CA_FILE": self.dovecot.ca_file,
            "IMAP_PROVIDER_REFRESH_MS": "2000",
            "IMAPSVC_REDIRECT_ALLOWLIST": self.return_base,
            "IMAPSVC_TENANTS": self.tenant,
        }, "shared-w1")
        self.proc.env["IMAPSVC_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{self.proc.port}"
        self.addCleanup(self.proc.cleanup)
        self.proc.start()
        return wait_for(lambda: http_get(self.proc.url("/readyz"))[0] == 200, 30, "readiness")

    def consent(self):
        """initiate -> start route -> authorize -> callback: ``(status,
        body)`` of the callback."""
        code, body = http_post(self.proc.url("/api/email/oauth/imap/initiate"),
                               {"tenant": self.tenant, "providerId": self.pid,
                                "redirectUri": self.return_base}, ADMIN_TOKEN)
        self.assertEqual(code, 200, body)
        jar: dict = {}
        status, provider_url, body = request(json.loads(body)["authUrl"], jar=jar)
        self.assertEqual(status, 302, body)
        status, callback, body = request(provider_url)
        self.assertEqual(status, 302, body)
        status, _location, body = request(callback, jar=jar)
        return status, body

    def set_delegate(self, value):
        out, err = io.StringIO(), io.StringIO()
        environ = {"DATABASE_URL": database_url(self.dsn), "IMAPSVC_SECRET_KEY": SECRET_KEY}
        status = cli.main(["provider", "set-oauth-delegate", "--tenant", self.tenant,
                           "--provider", self.pid, "--delegate", value],
                          environ=environ, out=out, err=err, stdin=io.StringIO(""))
        self.assertEqual(status, 0, err.getvalue())

    def subjects(self):
        return sorted(json.loads(f["payload_json"])["emailData"]["subject"]
                      for _, f in self.redis.xrange(self.stream)
                      if f["event_type"] == RECEIVED)

    def row(self):
        return pg.execute(
            self.dsn,
            "SELECT c.username, p.status FROM imap_email_provider_config c"
            " JOIN email_providers p ON p.id = c.email_provider_id AND p.tenant = c.tenant"
            " WHERE c.email_provider_id = %s", (self.pid,))[0]

    @defer.inlineCallbacks
    def test_delegate_consents_and_the_shared_mailbox_logs_in(self):
        # No delegate configured: the delegate's consent is another account's.
        status, body = self.consent()
        self.assertEqual(status, 400, body)
        self.assertEqual(json.loads(body)["code"], "identity_mismatch")
        self.assertEqual(self.auth.authorize_requests[-1]["login_hint"], self.shared)
        # Still waiting for a consent (status error: "waiting for ... consent").
        self.assertEqual(self.row()[0], self.shared)
        self.assertNotEqual(self.row()[1], "connected")
        self.assertEqual(pg.execute(self.dsn, "SELECT count(*) FROM imap_secrets WHERE tenant = %s"
                                    " AND name LIKE 'imap_refresh_token_%%'", (self.tenant,)),
                         [(0,)])

        self.set_delegate(self.delegate)
        introspected = self.dovecot.introspection.requests
        status, body = self.consent()
        self.assertEqual(status, 302, body)
        # The sign-in page is hinted with the delegate, not the mailbox.
        self.assertEqual(self.auth.authorize_requests[-1]["login_hint"], self.delegate)
        yield wait_for(lambda: self.row()[1] == "connected"
                       and self.dovecot.introspection.requests > introspected,
                       20, "XOAUTH2 login as the shared mailbox")
        # The login name was not replaced by the token's subject.
        self.assertEqual(self.row()[0], self.shared)
        mail.append(self.shared, DEFAULT_PASSWORD, "INBOX",
                    mail.make_message(subject="to the shared mailbox"))
        yield wait_for(lambda: self.subjects() == ["to the shared mailbox"], 20, "event")
        # Dovecot logged the session in as the shared mailbox.
        log = open(self.dovecot.log_path, encoding="utf-8", errors="replace").read()
        self.assertIn(f"Login: user=<{self.shared}>, method=XOAUTH2", log)
        self.assertNotIn(f"user=<{self.delegate}>", log)
        # Two code exchanges (the refused consent's tokens were dropped), no refresh.
        self.assertEqual(self.auth.grants, ["authorization_code"] * 2)
        self.assertEqual(self.proc.terminate(), 0, self.proc.log_text()[-2000:])
