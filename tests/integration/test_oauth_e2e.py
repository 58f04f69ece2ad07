"""OAuth2 end to end: a real ``twistd imapsvc`` process, the rig's Dovecot
(XOAUTH2 through token introspection), Postgres, Redis, and a small
authorization server run by the test (:mod:`tests.rig.oauth_server`).

consent (initiate -> authorize -> callback -> return URL) -> tokens sealed in
the database -> XOAUTH2 login -> APPEND becomes an event; then the access
token nears its expiry while the folder idles: the folder leaves IDLE,
refreshes (rotation stored), logs in again and loses no message. And the
callback's refusals: tampered, expired, replayed and cross-tenant state,
and a return URL outside the allowlist.
"""

from __future__ import annotations

import http.client
import json
import secrets
import uuid
from typing import Optional
from urllib.parse import parse_qs, urlencode, urlsplit

from twisted.internet import defer
from twisted.trial import unittest

from imapsvc.core import oauth_state as o
from imapsvc.oauth import REFRESH_MARGIN_S, access_token_name
from imapsvc.sealed_secrets import SecretBox, refresh_token_name
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

ADMIN = ADMIN_TOKEN
RECEIVED = "INBOUND_EMAIL_RECEIVED"


#: Cookies the "browser" holds (name -> value), as the start route sets them.
Jar = dict


def request(url: str, method: str = "GET", jar: Optional[Jar] = None) -> tuple[int, str, bytes]:
    """One HTTP request without following redirects: ``(status, Location,
    body)``. With ``jar``, its cookies are sent and ``Set-Cookie`` lands in it."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    try:
        path = parts.path + ("?" + parts.query if parts.query else "")
        headers = {}
        if jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        if jar is not None:
            for value in response.headers.get_all("Set-Cookie") or []:
                name, _, rest = value.partition("=")
                jar[name.strip()] = rest.split(";", 1)[0]
        return response.status, response.getheader("Location") or "", response.read()
    finally:
        conn.close()


class OAuthEndToEndTests(ServiceRigMixin, unittest.TestCase):
    timeout = 180

    def setUp(self):
        self.set_up_service_rig("oauth")
        # A user with a password nobody gives the service: only XOAUTH2 opens it.
        self.user = self.dovecot.add_user(unique_user("oauth"))
        self.client_secret = "cs-" + secrets.token_urlsafe(16)
        self.auth = OAuthServer(
            self.dovecot.introspection, "imapsvc-test-client", self.client_secret, self.user
        )
        self.auth.start()
        self.addCleanup(self.auth.stop)
        self.tenant, self.pid = add_oauth_provider(
            self.dsn,
            self.user,
            self.dovecot.ports.imaps,
            authorize_url=self.auth.authorize_url,
            token_url=self.auth.token_url,
            client_id=self.auth.client_id,
            client_secret=self.client_secret,
        )
        self.return_base = f"http://127.0.0.1:{free_port()}/settings/email"
        self.proc = ServiceProcess(
            {
                "DATABASE_URL": database_url(self.dsn),
                "REDIS_URL": self.redis_url,
                "IMAP_EVENT_STREAM": self.stream,
                "IMAP_TLS_CA_FILE": self.dovecot.ca_file,
                "IMAP_PROVIDER_REFRESH_MS": "2000",
                "IMAP_LEASE_TTL_MS": "6000",
                "IMAPSVC_REDIRECT_ALLOWLIST": self.return_base,
                # The run's database is shared: other tests' providers are not ours.
                "IMAPSVC_TENANTS": self.tenant,
            },
            "oauth-w1",
        )
        self.proc.env["IMAPSVC_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{self.proc.port}"
        self.addCleanup(self.proc.cleanup)
        self.proc.start()
        return wait_for(lambda: http_get(self.proc.url("/readyz"))[0] == 200, 30, "readiness")

    # -- helpers ----------------------------------------------------------------

    def initiate(self, redirect=None, tenant=None):
        body = {"tenant": tenant or self.tenant, "providerId": self.pid}
        if redirect is not None:
            body["redirectUri"] = redirect
        return http_post(self.proc.url("/api/email/oauth/imap/initiate"), body, ADMIN)

    def consent(self, return_url):
        """initiate -> the service's start route (binds the flow to this
        "browser": ``self.jar``) -> authorize; returns the callback URL the
        browser would be sent to (the code is not used yet)."""
        code, body = self.initiate(return_url)
        self.assertEqual(code, 200, body)
        answer = json.loads(body)
        self.assertEqual(answer["provider"], "imap")
        self.assertTrue(answer["authUrl"].startswith(
            self.proc.url("/api/email/oauth/imap/start?")))
        self.jar: Jar = {}
        status, provider_url, body = request(answer["authUrl"], jar=self.jar)
        self.assertEqual(status, 302, body)
        self.assertEqual(len(self.jar), 1)
        self.assertTrue(provider_url.startswith(self.auth.authorize_url + "?"), provider_url)
        status, location, body = request(provider_url)
        self.assertEqual(status, 302, body)
        params = self.auth.authorize_requests[-1]
        self.assertEqual(params["code_challenge_method"], "S256")
        self.assertEqual(params["client_id"], self.auth.client_id)
        self.assertEqual(params["state"], parse_qs(urlsplit(provider_url).query)["state"][0])
        callback = self.proc.url("/api/email/oauth/imap/callback")
        self.assertEqual(params["redirect_uri"], callback)
        self.assertTrue(location.startswith(callback + "?"), location)
        return location

    def events(self):
        return [f for _, f in self.redis.xrange(self.stream) if f["event_type"] == RECEIVED]

    def subjects(self):
        return sorted(json.loads(f["payload_json"])["emailData"]["subject"] for f in self.events())

    def status(self):
        code, body = http_get(self.proc.url("/status"), ADMIN)
        return json.loads(body) if code == 200 else {}

    def folder_history(self):
        """The INBOX folder's transitions as ``/status`` shows them."""
        text = json.dumps(self.status())
        # Search the structure rather than depend on its exact nesting.
        found: list = []

        def walk(node):
            if isinstance(node, dict):
                if node.get("providerId") not in (None, self.pid):
                    return  # another provider's folders
                if "history" in node and node.get("folder") == "INBOX":
                    found.extend(node["history"])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(json.loads(text))
        return found

    def provider_status(self):
        return pg.execute(
            self.dsn, "SELECT status FROM email_providers WHERE id = %s", (self.pid,)
        )[0][0]

    def stored_refresh_token(self):
        sealed = pg.execute(
            self.dsn,
            "SELECT ciphertext FROM imap_secrets WHERE tenant = %s AND name = %s",
            (self.tenant, refresh_token_name(self.pid)),
        )
        if not sealed:
            return None
        box = SecretBox.from_setting(SECRET_KEY)
        return box.open(self.tenant, refresh_token_name(self.pid), bytes(sealed[0][0])).decode()

    def assert_no_plaintext_tokens(self):
        """Neither token appears in the secrets table, the provider row or
        the service log; the stored access token opens only with the key."""
        tokens = [t.encode() for t in self.auth.access_tokens + self.auth.refresh_tokens]
        tokens.append(self.client_secret.encode())
        self.assertTrue(tokens)
        for (blob,) in pg.execute(self.dsn, "SELECT ciphertext FROM imap_secrets"):
            for token in tokens:
                self.assertNotIn(token, bytes(blob))
        rows = pg.fetch_dicts(
            self.dsn,
            "SELECT * FROM imap_email_provider_config WHERE email_provider_id = %s",
            (self.pid,),
        )
        row_text = json.dumps(rows, default=str).encode()
        for token in tokens:
            self.assertNotIn(token, row_text)
        self.assertIsNone(rows[0]["refresh_token"])
        box = SecretBox.from_setting(SECRET_KEY)
        opened = box.open_text(self.tenant, access_token_name(self.pid), rows[0]["access_token"])
        self.assertIn(opened, self.auth.access_tokens)
        log = self.proc.log_text().encode()
        for token in tokens:
            self.assertNotIn(token, log)

    # -- the whole flow ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_consent_login_and_refresh_ahead_while_idling(self):
        # The first access token expires a few seconds after the refresh
        # margin: refresh-ahead is due about then, while the folder idles.
        lead = 8
        self.auth.expires_in = REFRESH_MARGIN_S + lead
        return_url = self.return_base + "?provider=" + self.pid
        callback = self.consent(return_url)
        introspected = self.dovecot.introspection.requests
        status, location, body = request(callback, jar=self.jar)
        self.assertEqual(status, 302, body)
        self.assertEqual(location, return_url)
        self.assertEqual(self.auth.grants, ["authorization_code"])
        # The refreshed token lives long: one refresh, no refresh loop.
        self.auth.expires_in = 3600
        self.assertEqual(self.stored_refresh_token(), self.auth.refresh_tokens[0])
        self.assert_no_plaintext_tokens()

        # The callback itself marks the row connected: wait for the login too.
        yield wait_for(
            lambda: self.provider_status() == "connected"
            and self.dovecot.introspection.requests > introspected,
            20,
            "XOAUTH2 login",
        )
        mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject="before"))
        yield wait_for(lambda: self.subjects() == ["before"], 15, "first event")
        self.assertEqual(self.auth.grants, ["authorization_code"])

        # The token endpoint answers slowly: mail arrives while the folder is
        # between sessions, waiting for the refresh.
        self.auth.hold_refresh()
        yield wait_for(lambda: self.auth.refresh_waiting == 1, lead + 15, "refresh-ahead")
        mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject="during"))
        self.auth.release_refresh()
        yield wait_for(
            lambda: self.auth.grants == ["authorization_code", "refresh_token"], 10, "refresh"
        )
        yield wait_for(lambda: self.subjects() == ["before", "during"], 20, "event after refresh")
        # Rotation: the new refresh token is the stored one.
        self.assertEqual(self.stored_refresh_token(), self.auth.refresh_tokens[1])
        self.assertNotEqual(self.auth.refresh_tokens[0], self.auth.refresh_tokens[1])
        history = self.folder_history()
        self.assertIn(
            "reconnecting with a refreshed access token", [h["reason"] for h in history]
        )
        # IDLE was running when the refresh became due.
        reasons = [h["to"] for h in history]
        last_backoff = max(i for i, h in enumerate(history) if h["to"] == "Backoff")
        self.assertEqual(reasons[last_backoff - 1], "Idling")
        yield wait_for(lambda: self.folder_state() == "Idling", 15, "idling again")

        mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject="after"))
        yield wait_for(lambda: len(self.events()) == 3, 15, "event on the new session")
        self.assertEqual(self.subjects(), ["after", "before", "during"])
        ids = [f["event_id"] for f in self.events()]
        self.assertEqual(len(set(ids)), 3)
        self.assertEqual(self.auth.grants, ["authorization_code", "refresh_token"])
        self.assertEqual(self.auth.refused, [])
        self.assert_no_plaintext_tokens()
        code = self.proc.terminate()
        self.assertEqual(code, 0, self.proc.log_text()[-2000:])

    @defer.inlineCallbacks
    def test_revoked_refresh_token_needs_reauth(self):
        """Refresh-ahead meets a revoked grant: ``invalid_grant`` is an auth
        failure (counted, no retry loop against the token endpoint)."""
        self.auth.expires_in = REFRESH_MARGIN_S + 5
        callback = self.consent(self.return_base)
        status, _location, body = request(callback, jar=self.jar)
        self.assertEqual(status, 302, body)
        yield wait_for(lambda: self.provider_status() == "connected", 20, "XOAUTH2 login")
        self.auth.revoke_refresh_tokens()
        yield wait_for(
            lambda: ("refresh_token", "invalid_grant") in self.auth.refused, 20, "refused refresh"
        )

        def reauth_or_paused():
            # The supervisor retries one login per discovery pass and pauses
            # the provider after a few failures: either is the right outcome.
            paused = pg.execute(
                self.dsn, "SELECT inbound_pause_reason FROM email_providers WHERE id = %s",
                (self.pid,),
            )[0][0]
            return paused == "auth_failure" or self.folder_state() == "NeedsReauth"

        yield wait_for(reauth_or_paused, 10, "NeedsReauth")
        count, code = pg.execute(
            self.dsn,
            "SELECT inbound_auth_failure_count, inbound_auth_failure_code FROM email_providers"
            " WHERE id = %s",
            (self.pid,),
        )[0]
        self.assertGreaterEqual(count, 1)
        self.assertEqual(code, "invalid_grant")
        self.assertEqual(self.auth.grants, ["authorization_code"])
        self.assert_no_plaintext_tokens()

    def folder_state(self):
        history = self.folder_history()
        return history[-1]["to"] if history else None

    # -- refusals ---------------------------------------------------------------------

    def assert_refused(self, url, what, jar=None):
        before = self.auth.token_requests()
        status, location, body = request(url, jar=dict(self.jar if jar is None else jar))
        self.assertEqual(status, 400, f"{what}: {status} {location} {body!r}")
        answer = json.loads(body)
        self.assertFalse(answer["success"], what)
        self.assertEqual(answer["code"], "invalid_state", what)
        self.assertEqual(location, "", what)
        self.assertEqual(self.auth.token_requests(), before, f"{what}: token endpoint called")

    def test_tampered_expired_replayed_and_cross_tenant_state_refused(self):
        callback = self.consent(self.return_base)
        parts = urlsplit(callback)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        base = callback.split("?")[0]
        state = query["state"]

        # Tampered: one character of the signed state changed.
        flipped = state[:-3] + ("A" if state[-3] != "A" else "B") + state[-2:]
        self.assert_refused(base + "?" + urlencode({**query, "state": flipped}), "tampered")
        # Cross-tenant: a callback naming another tenant.
        other = str(uuid.uuid4())
        self.assert_refused(
            base + "?" + urlencode({**query, "tenant": other}), "cross-tenant"
        )
        # Expired: correctly signed (the service's key) but past its lifetime.
        claims = o.StateClaims(self.tenant, self.pid, o.new_nonce(), 1_000_000_000, None)
        expired = o.sign_state(o.state_key(SECRET_KEY), claims)
        self.assert_refused(base + "?" + urlencode({**query, "state": expired}), "expired")
        # Unknown nonce: signed, fresh and bound, but never issued by initiate.
        nonce = o.new_nonce()
        forged = o.StateClaims(self.tenant, self.pid, nonce, 4_000_000_000, None,
                               binding=o.binding_hash("forged-cookie"))
        signed = o.sign_state(o.state_key(SECRET_KEY), forged)
        self.assert_refused(base + "?" + urlencode({**query, "state": signed}), "unissued",
                            jar={o.binding_cookie_name(nonce): "forged-cookie"})
        # Another browser (no cookie, or someone else's): the genuine state
        # and code are refused there, and not used up.
        self.assert_refused(callback, "no cookie", jar={})
        name = next(iter(self.jar))
        self.assert_refused(callback, "other browser", jar={name: "x" * 43})

        # The genuine one still works once (the refusals did not consume it)...
        status, location, body = request(callback, jar=self.jar)
        self.assertEqual(status, 302, body)
        self.assertEqual(location, self.return_base)
        self.assertEqual(self.auth.grants, ["authorization_code"])
        # ...and never twice.
        self.assert_refused(callback, "replayed")
        self.assert_no_plaintext_tokens()

    def test_redirect_outside_allowlist_refused(self):
        for target in (
            "https://evil.example.net/settings/email",
            self.return_base.replace("127.0.0.1", "127.0.0.1.evil.net"),
            self.return_base.replace("/settings/email", "/settings/emailx"),
            self.return_base + "/../../admin",
            self.return_base.replace("http://", "https://") + "/sub",
            "http://user@" + self.return_base[len("http://") :],
        ):
            code, body = self.initiate(target)
            self.assertEqual(code, 400, f"{target}: {body!r}")
            self.assertEqual(json.loads(body)["code"], "redirect_refused", target)
        self.assertEqual(self.auth.authorize_requests, [])
        code, body = http_post(
            self.proc.url("/api/email/oauth/imap/initiate"),
            {"tenant": self.tenant, "providerId": self.pid},
            "wrong-token",
        )
        self.assertEqual(code, 401)
