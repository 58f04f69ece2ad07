"""OAuth flow and credential source against a fake token endpoint (StubTreq)."""

import base64
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import attr
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.resource import Resource

from imapsvc import oauth
from imapsvc.core import oauth_state as o
from imapsvc.sealed_secrets import (
    SecretBox,
    SecretStore,
    client_secret_name,
    generate_key,
    password_name,
    refresh_token_name,
)
from imapsvc.store.memory import MemoryStore

T = "11111111-1111-1111-1111-111111111111"
P = "22222222-2222-2222-2222-222222222222"


class TokenEndpoint(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.answers = []

    def render_POST(self, request):
        form = {k.decode(): v[0].decode() for k, v in request.args.items()}
        self.requests.append(form)
        status, body = self.answers.pop(0)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()


class Base(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = MemoryStore(self.clock)
        self.box = SecretBox.from_setting(generate_key())
        self.secrets = SecretStore(self.store, self.box)
        self.endpoint = TokenEndpoint()
        self.http = StubTreq(self.endpoint)
        self.provider = self.store.add_provider(
            tenant=T,
            provider_id=P,
            host="imap.example.com",
            auth_type="oauth2",
            username="user@example.com",
            oauth_authorize_url="https://auth.example.com/authorize",
            oauth_token_url="https://auth.example.com/token",
            oauth_client_id="client-1",
            oauth_scopes="imap offline",
        )
        self.successResultOf(self.secrets.put(T, client_secret_name(P), "client-secret-xyz"))
        self.connected = []
        self.flow = oauth.OAuthFlow(
            self.store, self.secrets, self.box, self.http, self.clock,
            o.state_key("k"), "https://svc.example.com/",
            ["https://app.example.com/settings"],
            on_connected=lambda t, p: self.connected.append((t, p)),
        )


class FlowTests(Base):
    jar: dict = {}

    def initiate(self, return_url=None):
        """initiate, then the browser opens authUrl (the start route): the
        flow is bound to this test's cookie jar."""
        out = self.successResultOf(self.flow.initiate(T, P, return_url))
        url, name, secret = self.successResultOf(self.flow.start(out["state"]))
        self.jar = {**self.jar, name: secret}
        out["providerUrl"] = url
        out["bound"] = parse_qs(urlsplit(url).query)["state"][0]
        return out

    def callback(self, code, state, **kw):
        kw.setdefault("cookie", self.jar.get)
        d = self.flow.callback(code, state, **kw)
        self.http.flush()
        return d

    def test_initiate(self):
        out = self.initiate("https://app.example.com/settings")
        self.assertTrue(out["success"])
        self.assertEqual(out["provider"], "imap")
        self.assertEqual(
            out["authUrl"].split("?")[0], "https://svc.example.com/api/email/oauth/imap/start"
        )
        self.assertEqual(parse_qs(urlsplit(out["authUrl"]).query)["state"], [out["state"]])
        self.assertTrue(out["providerUrl"].startswith("https://auth.example.com/authorize?"))
        q = parse_qs(urlsplit(out["providerUrl"]).query)
        self.assertEqual(q["state"], [out["bound"]])
        self.assertNotEqual(out["bound"], out["state"])
        self.assertEqual(q["client_id"], ["client-1"])
        self.assertEqual(
            q["redirect_uri"], ["https://svc.example.com/api/email/oauth/imap/callback"]
        )
        self.assertEqual(q["code_challenge_method"], ["S256"])
        self.assertNotIn("client-secret", out["authUrl"])

    def test_initiate_refuses_foreign_redirect_and_unknown_provider(self):
        f = self.failureResultOf(self.flow.initiate(T, P, "https://evil.net/"), oauth.OAuthError)
        self.assertEqual(f.value.status, 400)
        f = self.failureResultOf(self.flow.initiate(T, "nope"), oauth.OAuthError)
        self.assertEqual(f.value.status, 404)

    def test_round_trip_stores_tokens_encrypted(self):
        out = self.initiate("https://app.example.com/settings")
        self.endpoint.answers.append(
            (200, {"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3600})
        )
        d = self.callback("the-code", out["bound"])
        self.assertEqual(self.successResultOf(d), "https://app.example.com/settings")
        req = self.endpoint.requests[0]
        self.assertEqual(req["grant_type"], "authorization_code")
        self.assertEqual(req["code"], "the-code")
        self.assertEqual(req["client_secret"], "client-secret-xyz")
        # PKCE: the verifier sent matches the challenge of the authorize URL.
        challenge = parse_qs(urlsplit(out["providerUrl"]).query)["code_challenge"][0]
        self.assertEqual(o.pkce_challenge(req["code_verifier"]), challenge)
        row = self.store.provider_row(T, P)
        self.assertNotIn("at-1", row["access_token"])
        raw = self.successResultOf(self.store.get_secret(T, refresh_token_name(P)))
        self.assertNotIn(b"rt-1", raw)
        self.assertEqual(self.successResultOf(self.secrets.get(T, refresh_token_name(P))), "rt-1")
        self.assertEqual(row["status"], "connected")
        self.assertEqual(self.connected, [(T, P)])

    def test_callback_lifts_only_an_auth_failure_pause(self):
        for reason, lifted in (("auth_failure", True), ("manual", False),
                               ("tenant_cancelled", False)):
            self.store._row(T, P).update(
                inbound_paused_at=datetime.now(tz=UTC), inbound_pause_reason=reason,
                inbound_auth_failure_count=3, inbound_auth_failure_code="AUTHENTICATIONFAILED")
            out = self.initiate()
            self.endpoint.answers.append(
                (200, {"access_token": "at", "refresh_token": "rt", "expires_in": 3600}))
            self.successResultOf(self.callback("c", out["bound"]))
            row = self.store.provider_row(T, P)
            self.assertEqual(row["inbound_auth_failure_count"], 0, reason)
            self.assertIsNone(row["inbound_auth_failure_code"], reason)
            if lifted:
                self.assertIsNone(row["inbound_pause_reason"])
                self.assertIsNone(row["inbound_paused_at"])
            else:
                self.assertEqual(row["inbound_pause_reason"], reason)
                self.assertIsNotNone(row["inbound_paused_at"])

    def test_replayed_state_refused(self):
        out = self.initiate()
        self.endpoint.answers.append((200, {"access_token": "a", "expires_in": 60}))
        self.successResultOf(self.callback("c", out["bound"]))
        f = self.failureResultOf(self.callback("c", out["bound"]), oauth.OAuthError)
        self.assertEqual((f.value.status, f.value.code), (400, "invalid_state"))
        self.assertEqual(len(self.endpoint.requests), 1)

    def test_expired_state_refused(self):
        out = self.initiate()
        self.clock.advance(601)
        f = self.failureResultOf(self.callback("c", out["bound"]), oauth.OAuthError)
        self.assertIn("expired", str(f.value))

    def test_tampered_and_cross_tenant_state_refused(self):
        out = self.initiate()
        bad = out["bound"][:-2] + ("AA" if not out["bound"].endswith("AA") else "BB")
        self.failureResultOf(self.callback("c", bad), oauth.OAuthError)
        f = self.failureResultOf(
            self.callback("c", out["bound"], tenant="33333333-3333-3333-3333-333333333333"),
            oauth.OAuthError,
        )
        self.assertIn("tenant", str(f.value))

    def test_token_error_is_clear(self):
        out = self.initiate()
        self.endpoint.answers.append((400, {"error": "invalid_grant"}))
        f = self.failureResultOf(self.callback("c", out["bound"]), oauth.OAuthError)
        self.assertEqual(f.value.status, 502)
        self.assertIn("invalid_grant", str(f.value))


class BindingAndIssuerTests(FlowTests):
    """RFC 9700 4.7 (state bound to the browser) and RFC 9207 (``iss``)."""

    def refused(self, d, code="invalid_state"):
        f = self.failureResultOf(d, oauth.OAuthError)
        self.assertEqual((f.value.status, f.value.code), (400, code))
        return f.value

    def assertNotConsumed(self, out):
        # The genuine browser can still finish: nothing was changed.
        self.endpoint.answers.append((200, {"access_token": "a", "expires_in": 60}))
        self.successResultOf(self.callback("c", out["bound"]))
        self.assertEqual(len(self.endpoint.requests), 1)

    def test_callback_needs_the_browser_that_started(self):
        out = self.initiate()
        name = next(iter(self.jar))
        for jar in ({}, {name: "someone-elses-cookie"}, {"imapsvc_oauth_x": self.jar[name]}):
            self.refused(self.callback("c", out["bound"], cookie=jar.get))
        self.assertEqual(self.endpoint.requests, [])
        self.assertNotConsumed(out)
        self.assertEqual(self.store.provider_row(T, P)["status"], "connected")

    def test_unbound_state_refused_at_callback(self):
        out = self.initiate()
        # The state from initiate (before the start route) carries no binding.
        self.refused(self.callback("c", out["state"]))
        self.assertNotConsumed(out)

    def test_bound_state_cannot_be_rebound(self):
        out = self.initiate()
        self.refused(self.flow.start(out["bound"]))
        self.refused(self.flow.start("garbage"))

    def test_two_flows_in_one_browser(self):
        first, second = self.initiate(), self.initiate()
        self.assertEqual(len(self.jar), 2)
        self.endpoint.answers += [(200, {"access_token": "a", "expires_in": 60})] * 2
        self.successResultOf(self.callback("c1", first["bound"]))
        self.successResultOf(self.callback("c2", second["bound"]))

    def test_issuer_checked_when_returned(self):
        out = self.initiate()
        self.refused(self.callback("c", out["bound"], iss="https://evil.example.net"),
                     "issuer_mismatch")
        self.refused(self.callback("c", out["bound"], iss="http://auth.example.com"),
                     "issuer_mismatch")
        self.assertEqual(self.endpoint.requests, [])
        self.endpoint.answers.append((200, {"access_token": "a", "expires_in": 60}))
        # Same origin as the authorize URL (issuers may carry a path).
        self.successResultOf(self.callback("c", out["bound"], iss="https://auth.example.com/t1"))

    def id_token(self, **claims):
        def b64(data):
            return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

        return b64({"alg": "RS256"}) + "." + b64(claims) + ".sig"

    def test_granted_identity_must_be_the_mailbox_user(self):
        out = self.initiate()
        self.endpoint.answers.append((200, {
            "access_token": "a", "refresh_token": "r", "expires_in": 60,
            "id_token": self.id_token(email="someone-else@example.com"),
        }))
        self.refused(self.callback("c", out["bound"]), "identity_mismatch")
        self.assertIsNone(self.successResultOf(self.secrets.get(T, refresh_token_name(P))))
        self.assertNotEqual(self.store.provider_row(T, P)["status"], "connected")
        out = self.initiate()
        self.endpoint.answers.append((200, {
            "access_token": "a", "refresh_token": "r", "expires_in": 60,
            "id_token": self.id_token(email="User@Example.com"),
        }))
        self.successResultOf(self.callback("c", out["bound"]))
        self.assertEqual(self.store.provider_row(T, P)["status"], "connected")

    def test_identity_rules(self):
        self.assertIsNone(o.granted_identity({"id_token": "not-a-jwt"}))
        self.assertIsNone(o.granted_identity({}))
        self.assertEqual(
            o.granted_identity({"id_token": self.id_token(preferred_username="a@b.c")}), "a@b.c"
        )
        self.assertTrue(o.identity_matches(None, "a@b.c"))
        self.assertTrue(o.identity_matches("x@y.z", "not-an-address"))
        self.assertFalse(o.identity_matches("x@y.z", "a@b.c"))

    def test_insecure_endpoints_refused_at_initiate(self):
        for field in ("oauth_authorize_url", "oauth_token_url"):
            urls = {"oauth_authorize_url": "https://auth.example.com/authorize",
                    "oauth_token_url": "https://auth.example.com/token"}
            urls[field] = "http://auth.example.com/x"
            self.store.add_provider(
                tenant=T, provider_id="p-" + field, host="imap.example.com",
                auth_type="oauth2", oauth_client_id="c", **urls,
            )
            self.refused(self.flow.initiate(T, "p-" + field), "insecure_endpoint")

    def test_http_return_url_refused(self):
        f = self.failureResultOf(
            self.flow.initiate(T, P, "http://app.example.com/settings"), oauth.OAuthError
        )
        self.assertEqual(f.value.code, "redirect_refused")


class CredentialSourceTests(Base):
    def source(self):
        return oauth.CredentialSource(self.store, self.secrets, self.box, self.http, self.clock)

    def test_password(self):
        p = attr.evolve(self.provider, auth_type="password")
        self.successResultOf(self.secrets.put(T, password_name(P), "pw"))
        creds = self.successResultOf(self.source().credentials(p))
        self.assertEqual(
            (creds.mechanism, creds.username, creds.secret), ("password", "user@example.com", "pw")
        )
        self.assertNotIn("pw", repr(creds))

    def test_missing_password(self):
        p = attr.evolve(self.provider, auth_type="password")
        self.failureResultOf(self.source().credentials(p), oauth.MissingCredentials)

    def test_valid_token_used_without_refresh(self):
        sealed = self.box.seal_text(T, oauth.access_token_name(P), "at-live")
        expires = datetime.fromtimestamp(self.clock.seconds(), tz=UTC) + timedelta(hours=1)
        p = attr.evolve(self.provider, access_token=sealed, token_expires_at=expires)
        creds = self.successResultOf(self.source().credentials(p))
        self.assertEqual((creds.mechanism, creds.secret), ("xoauth2", "at-live"))
        self.assertEqual(self.endpoint.requests, [])

    def test_expiring_token_refreshed_once_and_rotation_stored_first(self):
        sealed = self.box.seal_text(T, oauth.access_token_name(P), "at-old")
        expires = datetime.fromtimestamp(self.clock.seconds(), tz=UTC) + timedelta(minutes=4)
        p = attr.evolve(self.provider, access_token=sealed, token_expires_at=expires)
        self.successResultOf(self.secrets.put(T, refresh_token_name(P), "rt-old"))
        order = []
        real_put, real_save = self.store.put_secret, self.store.save_access_token
        self.store.put_secret = lambda *a: (order.append("refresh"), real_put(*a))[1]
        self.store.save_access_token = lambda *a: (order.append("access"), real_save(*a))[1]
        self.endpoint.answers.append(
            (200, {"access_token": "at-new", "refresh_token": "rt-new", "expires_in": 3600})
        )
        src = self.source()
        d1, d2 = src.credentials(p), src.credentials(p)
        self.http.flush()
        self.assertEqual(self.successResultOf(d1).secret, "at-new")
        self.assertEqual(self.successResultOf(d2).secret, "at-new")
        self.assertEqual(len(self.endpoint.requests), 1)
        self.assertEqual(self.endpoint.requests[0]["refresh_token"], "rt-old")
        self.assertEqual(order, ["refresh", "access"])
        self.store.put_secret = real_put
        self.assertEqual(self.successResultOf(self.secrets.get(T, refresh_token_name(P))), "rt-new")

    def test_force_refresh_ignores_a_valid_token(self):
        # After the server refused a token that is not expired yet.
        sealed = self.box.seal_text(T, oauth.access_token_name(P), "at-refused")
        expires = datetime.fromtimestamp(self.clock.seconds(), tz=UTC) + timedelta(hours=1)
        p = attr.evolve(self.provider, access_token=sealed, token_expires_at=expires)
        self.successResultOf(self.secrets.put(T, refresh_token_name(P), "rt-1"))
        src = self.source()
        self.assertEqual(self.successResultOf(src.credentials(p)).secret, "at-refused")
        self.endpoint.answers.append((200, {"access_token": "at-fresh", "expires_in": 3600}))
        d = src.credentials(p, force_refresh=True)
        self.http.flush()
        self.assertEqual(self.successResultOf(d).secret, "at-fresh")
        self.assertEqual(len(self.endpoint.requests), 1)
        # Afterwards the fresh token is the one handed out, without a refresh.
        self.assertEqual(self.successResultOf(src.credentials(p)).secret, "at-fresh")
        self.assertEqual(len(self.endpoint.requests), 1)

    def test_no_secret_key_is_a_configuration_error(self):
        src = oauth.CredentialSource(self.store, None, None, self.http, self.clock)
        p = attr.evolve(self.provider, auth_type="password")
        f = self.failureResultOf(src.credentials(p), oauth.NoSecretKey)
        self.assertFalse(f.value.auth_failure)
        self.failureResultOf(src.credentials(self.provider), oauth.NoSecretKey)

    def test_never_consented_is_awaiting_consent(self):
        f = self.failureResultOf(self.source().credentials(self.provider), oauth.AwaitingConsent)
        self.assertEqual(f.value.code, oauth.AWAITING_CONSENT)
        self.assertEqual(self.endpoint.requests, [])

    def test_lost_refresh_token_after_consent_is_missing_credentials(self):
        sealed = self.box.seal_text(T, oauth.access_token_name(P), "at-old")
        expired = datetime.fromtimestamp(self.clock.seconds() - 10, tz=UTC)
        p = attr.evolve(self.provider, access_token=sealed, token_expires_at=expired)
        f = self.failureResultOf(self.source().credentials(p), oauth.MissingCredentials)
        self.assertNotIsInstance(f.value, oauth.AwaitingConsent)
        self.assertEqual(f.value.code, "missing_credentials")

    def test_invalid_grant_is_auth_failure(self):
        self.successResultOf(self.secrets.put(T, refresh_token_name(P), "rt"))
        self.endpoint.answers.append((400, {"error": "invalid_grant"}))
        d = self.source().credentials(self.provider)
        self.http.flush()
        f = self.failureResultOf(d, oauth.TokenEndpointError)
        self.assertTrue(f.value.auth_failure)
        self.assertNotIn("rt", str(f.value).replace("grant", ""))

    def test_server_error_is_not_auth_failure(self):
        self.successResultOf(self.secrets.put(T, refresh_token_name(P), "rt"))
        self.endpoint.answers.append((503, {"error": "temporarily_unavailable"}))
        d = self.source().credentials(self.provider)
        self.http.flush()
        self.assertFalse(self.failureResultOf(d, oauth.TokenEndpointError).value.auth_failure)

