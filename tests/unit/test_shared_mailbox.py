"""Microsoft 365 shared mailboxes: the delegate consents, the token logs in
as the shared mailbox (``user=<mailbox>`` in XOAUTH2/OAUTHBEARER).

The chain is followed to the wire: the OAuth callback with the delegate's
id_token, the credential source, then the AUTHENTICATE bytes.
"""

import base64
import json
from urllib.parse import parse_qs, urlsplit

from imapsvc import oauth
from imapsvc.core import oauth_state as o
from imapsvc.model import Credentials
from imapsvc.sealed_secrets import refresh_token_name
from tests.unit.test_imap_auth import TOKEN
from tests.unit.test_imap_protocol import ClientTestCase, sent
from tests.unit.test_oauth_flow import Base, P, T

SHARED = "support@tenant.example"
DELEGATE = "alice@tenant.example"


def id_token(**claims):
    def b64(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return b64({"alg": "RS256"}) + "." + b64(claims) + ".sig"


class DelegateConsentTests(Base):
    def setUp(self):
        super().setUp()
        self.jar = {}
        self.store._row(T, P)["username"] = SHARED
        self.successResultOf(self.store.set_oauth_delegate(T, P, DELEGATE))

    def initiate(self):
        out = self.successResultOf(self.flow.initiate(T, P))
        url, name, secret = self.successResultOf(self.flow.start(out["state"]))
        self.jar[name] = secret
        out["providerUrl"] = url
        out["bound"] = parse_qs(urlsplit(url).query)["state"][0]
        return out

    def callback(self, code, state):
        d = self.flow.callback(code, state, cookie=self.jar.get)
        self.http.flush()
        return d

    def consent(self, identity, access="at-alice"):
        out = self.initiate()
        self.endpoint.answers.append((200, {
            "access_token": access, "refresh_token": "rt-alice", "expires_in": 3600,
            "id_token": id_token(preferred_username=identity, upn=identity),
        }))
        return out, self.callback("c", out["bound"])

    def test_sign_in_page_is_hinted_with_the_delegate(self):
        out, _ = self.consent(DELEGATE)
        q = parse_qs(urlsplit(out["providerUrl"]).query)
        self.assertEqual(q["login_hint"], [DELEGATE])

    def test_delegate_consent_keeps_the_login_name(self):
        _out, d = self.consent("Alice@Tenant.Example")
        self.successResultOf(d)
        row = self.store.provider_row(T, P)
        self.assertEqual(row["status"], "connected")
        self.assertEqual(row["username"], SHARED)
        self.assertEqual(self.successResultOf(self.secrets.get(T, refresh_token_name(P))),
                         "rt-alice")
        source = oauth.CredentialSource(self.store, self.secrets, self.box, self.http,
                                        self.clock)
        provider = self.successResultOf(self.store.get_provider(T, P))
        creds = self.successResultOf(source.credentials(provider))
        self.assertEqual((creds.mechanism, creds.username, creds.secret),
                         ("xoauth2", SHARED, "at-alice"))

    def test_consent_by_another_account_is_refused(self):
        for who in ("mallory@tenant.example", SHARED):
            _out, d = self.consent(who)
            f = self.failureResultOf(d, oauth.OAuthError)
            self.assertEqual(f.value.code, "identity_mismatch", who)
        self.assertIsNone(self.successResultOf(self.secrets.get(T, refresh_token_name(P))))
        self.assertNotEqual(self.store.provider_row(T, P)["status"], "connected")

    def test_without_a_delegate_the_mailbox_user_must_consent(self):
        self.successResultOf(self.store.set_oauth_delegate(T, P, None))
        out, d = self.consent(DELEGATE)
        self.assertEqual(parse_qs(urlsplit(out["providerUrl"]).query)["login_hint"], [SHARED])
        self.assertEqual(self.failureResultOf(d, oauth.OAuthError).value.code,
                         "identity_mismatch")

    def test_consenting_account(self):
        provider = self.successResultOf(self.store.get_provider(T, P))
        self.assertEqual(o.consenting_account(provider), DELEGATE)
        self.successResultOf(self.store.set_oauth_delegate(T, P, "  "))
        provider = self.successResultOf(self.store.get_provider(T, P))
        self.assertEqual(o.consenting_account(provider), SHARED)


class SharedMailboxWireTests(ClientTestCase):
    """The AUTHENTICATE payload names the shared mailbox and carries the
    delegate's token; nothing of the delegate's name is on the wire."""

    def payload(self, mechanism, greeting):
        client, transport, _clock = self.connect(greeting=greeting)
        d = client.authenticate_with(Credentials(mechanism, SHARED, TOKEN))
        wire = sent(transport)
        self.assertEqual(wire.count(b"\r\n"), 1)
        tag, command, mech, blob = wire.strip().split(b" ")
        self.assertEqual((tag, command, mech), (b"0001", b"AUTHENTICATE", mechanism.upper()
                                                .encode()))
        client.dataReceived(b"0001 OK [CAPABILITY IMAP4rev1] Logged in\r\n")
        self.successResultOf(d)
        return base64.b64decode(blob, validate=True)

    def test_xoauth2(self):
        raw = self.payload("xoauth2", b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] hi\r\n")
        self.assertEqual(raw, b"user=support@tenant.example\x01auth=Bearer "
                         + TOKEN.encode() + b"\x01\x01")
        self.assertNotIn(DELEGATE.encode(), raw)

    def test_oauthbearer(self):
        raw = self.payload("oauthbearer",
                           b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=OAUTHBEARER] hi\r\n")
        self.assertTrue(raw.startswith(b"n,a=support@tenant.example,\x01"), raw[:40])
        self.assertTrue(raw.endswith(b"auth=Bearer " + TOKEN.encode() + b"\x01\x01"))
