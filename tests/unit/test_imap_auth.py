"""Logins: LOGIN only over TLS, XOAUTH2/OAUTHBEARER as one unwrapped line,
error challenge, capability refresh, AuthenticationFailed."""

from __future__ import annotations

import base64

from imapsvc.imap.errors import (
    AuthenticationFailed,
    AuthenticationUnavailable,
    CleartextRefused,
    MechanismUnsupported,
    Throttled,
)
from imapsvc.model import Credentials
from tests.unit.test_imap_protocol import ClientTestCase, sent

TOKEN = "ya29." + "A" * 1500  # real access tokens are long; Twisted wraps at 76
NO_SASL_IR = b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2 AUTH=OAUTHBEARER] ready\r\n"


class PasswordTests(ClientTestCase):
    def test_cleartext_login_refused_nothing_sent(self):
        client, transport, clock = self.connect(tls=False)
        d = client.authenticate_with(Credentials("password", "u@example.com", "s3cret"))
        failure = self.failureResultOf(d, CleartextRefused)
        self.assertNotIn("s3cret", str(failure.value))
        self.assertEqual(transport.value(), b"")

    def test_cleartext_token_refused(self):
        client, transport, clock = self.connect(tls=False)
        d = client.authenticate_with(Credentials("xoauth2", "u@example.com", TOKEN))
        self.failureResultOf(d, CleartextRefused)
        self.assertEqual(transport.value(), b"")

    def test_login_then_capability_refresh(self):
        """Dovecot lists 8 capabilities before login and 33 after; Twisted
        keeps the first."""
        client, transport, clock = self.connect()
        d = client.authenticate_with(Credentials("password", "u@example.com", 'p"w\\d'))
        self.assertEqual(sent(transport), b'0001 LOGIN "u@example.com" "p\\"w\\\\d"\r\n')
        client.dataReceived(b"0001 OK Logged in\r\n")
        self.assertEqual(sent(transport), b"0002 CAPABILITY\r\n")
        client.dataReceived(b"* CAPABILITY IMAP4rev1 IDLE UIDPLUS MOVE\r\n0002 OK done\r\n")
        caps = self.successResultOf(d)
        self.assertIn(b"MOVE", caps)
        self.assertNotIn(b"STARTTLS", caps)
        self.assertIs(client.capabilities, caps)

    def test_login_ok_with_capability_code(self):
        client, transport, clock = self.connect()
        d = client.authenticate_with(Credentials("password", "u", "p"))
        sent(transport)
        client.dataReceived(b"0001 OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in\r\n")
        self.assertEqual(self.successResultOf(d), {b"IMAP4REV1": None, b"IDLE": None,
                                                   b"SORT": None})
        self.assertEqual(transport.value(), b"")

    def test_non_ascii_password_literal(self):
        client, transport, clock = self.connect(
            greeting=b"* OK [CAPABILITY IMAP4rev1] ready\r\n"
        )
        password = "pässwörd"
        d = client.authenticate_with(Credentials("password", "u", password))
        raw = password.encode("utf-8")
        self.assertEqual(sent(transport), b'0001 LOGIN "u" {%d}\r\n' % len(raw))
        client.dataReceived(b"+ go ahead\r\n")
        self.assertEqual(sent(transport), raw + b"\r\n")
        client.dataReceived(b"0001 OK [CAPABILITY IMAP4rev1] hi\r\n")
        self.successResultOf(d)

    def test_login_failed(self):
        client, transport, clock = self.connect()
        d = client.authenticate_with(Credentials("password", "u", "wrong-pw"))
        client.dataReceived(b"0001 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        failure = self.failureResultOf(d, AuthenticationFailed)
        self.assertEqual(failure.value.code, "AUTHENTICATIONFAILED")
        self.assertNotIn("wrong-pw", str(failure.value))
        self.assertTrue(transport.disconnecting)

    def test_throttled_login_is_not_auth_failure(self):
        client, transport, clock = self.connect()
        d = client.authenticate_with(Credentials("password", "u", "p"))
        client.dataReceived(b"0001 NO [THROTTLED] Too many logins\r\n")
        self.failureResultOf(d, Throttled)


class SASLTests(ClientTestCase):
    def test_xoauth2_sasl_ir_one_line(self):
        client, transport, clock = self.connect(
            greeting=b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n"
        )
        d = client.authenticate_with(Credentials("xoauth2", "u@example.com", TOKEN))
        wire = sent(transport)
        self.assertTrue(wire.startswith(b"0001 AUTHENTICATE XOAUTH2 "))
        self.assertEqual(wire.count(b"\r\n"), 1, "the base64 was wrapped")
        self.assertTrue(wire.endswith(b"\r\n"))
        decoded = base64.b64decode(wire.split(b" ")[3].strip())
        self.assertEqual(
            decoded, f"user=u@example.com\x01auth=Bearer {TOKEN}\x01\x01".encode()
        )
        client.dataReceived(b"0001 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
        self.assertIn(b"IDLE", self.successResultOf(d))

    def test_xoauth2_error_challenge(self):
        client, transport, clock = self.connect(
            greeting=b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n"
        )
        d = client.authenticate_with(Credentials("xoauth2", "u@example.com", TOKEN))
        sent(transport)
        challenge = base64.b64encode(b'{"status":"401","schemes":"bearer","scope":"mail"}')
        client.dataReceived(b"+ " + challenge + b"\r\n")
        self.assertEqual(sent(transport), b"\r\n")
        self.assertNoResult(d)
        client.dataReceived(b"0001 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        failure = self.failureResultOf(d, AuthenticationFailed)
        self.assertNotIn(TOKEN, str(failure.value))

    def test_xoauth2_without_sasl_ir_uses_continuation(self):
        client, transport, clock = self.connect(greeting=NO_SASL_IR)
        d = client.authenticate_with(Credentials("xoauth2", "u", TOKEN))
        self.assertEqual(sent(transport), b"0001 AUTHENTICATE XOAUTH2\r\n")
        client.dataReceived(b"+ \r\n")
        line = sent(transport)
        self.assertEqual(line.count(b"\r\n"), 1)
        self.assertEqual(
            base64.b64decode(line.strip()), f"user=u\x01auth=Bearer {TOKEN}\x01\x01".encode()
        )
        client.dataReceived(b"+ eyJzdGF0dXMiOiI0MDAifQ==\r\n")
        self.assertEqual(sent(transport), b"\r\n")
        client.dataReceived(b"0001 NO [AUTHENTICATIONFAILED] no\r\n")
        self.failureResultOf(d, AuthenticationFailed)

    def test_oauthbearer(self):
        client, transport, clock = self.connect(
            greeting=b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=OAUTHBEARER] ready\r\n"
        )
        d = client.authenticate_with(Credentials("oauthbearer", "a,b=c@example.com", TOKEN))
        wire = sent(transport)
        self.assertTrue(wire.startswith(b"0001 AUTHENTICATE OAUTHBEARER "))
        self.assertEqual(
            base64.b64decode(wire.split(b" ")[3].strip()),
            f"n,a=a=2Cb=3Dc@example.com,\x01auth=Bearer {TOKEN}\x01\x01".encode(),
        )
        client.dataReceived(b"+ eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0=\r\n")
        self.assertEqual(sent(transport), b"AQ==\r\n")
        client.dataReceived(b"0001 NO [AUTHENTICATIONFAILED] no\r\n")
        self.failureResultOf(d, AuthenticationFailed)

    def test_mechanism_not_offered(self):
        client, transport, clock = self.connect(
            greeting=b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"
        )
        d = client.authenticate_with(Credentials("xoauth2", "u", TOKEN))
        # A configuration problem, not a refusal: never counted.
        failure = self.failureResultOf(d, MechanismUnsupported)
        self.assertNotIsInstance(failure.value, AuthenticationFailed)
        self.assertEqual(transport.value(), b"")


#: LOGIN and AUTHENTICATE answers: which refuse the credentials (counted
#: towards the auto-pause) and which only say "not now" (never counted).
REFUSALS = [
    b"NO [AUTHENTICATIONFAILED] Authentication failed.",
    b"NO Authentication failed.",
    b"NO [ALERT] Application-specific password required",
    b"NO [AUTHORIZATIONFAILED] not allowed",
    b"NO [EXPIRED] password expired",
    b"no [authenticationfailed] lower case",
]
TRANSIENT = [
    b"NO [UNAVAILABLE] Temporary authentication failure",
    b"NO [SERVERBUG] Internal error",
    b"NO [SOMETHINGNEW] Unknown code",
    b"NO [PRIVACYREQUIRED] Use TLS",
    b"BAD Invalid arguments",
]
THROTTLING = [
    b"NO [THROTTLED] Too many logins",
    b"NO [LIMIT] Too many connections",
]


class RefusalClassificationTests(ClientTestCase):
    """Byte-level: every answer to LOGIN and to AUTHENTICATE XOAUTH2 /
    OAUTHBEARER lands in exactly one class."""

    def _answer(self, mechanism: str, answer: bytes):
        client, transport, clock = self.connect(
            greeting=b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER] hi\r\n"
        )
        secret = "s3cret-pw" if mechanism == "password" else TOKEN
        d = client.authenticate_with(Credentials(mechanism, "u@example.com", secret))
        wire = sent(transport)
        self.assertTrue(wire.startswith(b"0001 LOGIN " if mechanism == "password"
                                        else b"0001 AUTHENTICATE " + mechanism.upper().encode()))
        client.dataReceived(b"0001 " + answer + b"\r\n")
        self.assertTrue(transport.disconnecting)
        return d

    def test_refusals_are_authentication_failures(self):
        for mechanism in ("password", "xoauth2", "oauthbearer"):
            for answer in REFUSALS:
                failure = self.failureResultOf(self._answer(mechanism, answer))
                self.assertIsInstance(failure.value, AuthenticationFailed, (mechanism, answer))
                self.assertNotIn("s3cret-pw", str(failure.value))
                self.assertNotIn(TOKEN, str(failure.value))

    def test_transient_answers_are_not_authentication_failures(self):
        for mechanism in ("password", "xoauth2", "oauthbearer"):
            for answer in TRANSIENT:
                failure = self.failureResultOf(self._answer(mechanism, answer))
                self.assertIsInstance(failure.value, AuthenticationUnavailable, (mechanism, answer))
                self.assertNotIsInstance(failure.value, AuthenticationFailed)

    def test_unavailable_keeps_code_and_kind(self):
        failure = self.failureResultOf(
            self._answer("password", b"NO [UNAVAILABLE] Temporary authentication failure")
        )
        self.assertEqual(failure.value.code, "UNAVAILABLE")
        self.assertEqual(failure.value.kind, "NO")
        bad = self.failureResultOf(self._answer("password", b"BAD Invalid arguments"))
        self.assertEqual((bad.value.code, bad.value.kind), (None, "BAD"))

    def test_throttling_is_throttled(self):
        for mechanism in ("password", "xoauth2"):
            for answer in THROTTLING:
                failure = self.failureResultOf(self._answer(mechanism, answer))
                self.assertIsInstance(failure.value, Throttled, (mechanism, answer))

    def test_plain_no_keeps_no_code(self):
        failure = self.failureResultOf(self._answer("password", b"NO Authentication failed."))
        self.assertIsNone(failure.value.code)


class OAuthMechanismTests(ClientTestCase):
    """IMAP_OAUTH_AUTH_MECHANISM against what the server offers, and the
    OAUTHBEARER message of RFC 7628 byte for byte."""

    def login(self, caps: bytes, setting, host=None, port=None):
        client, transport, clock = self.connect(greeting=b"* OK [CAPABILITY " + caps + b"] hi\r\n")
        d = client.authenticate_with(
            Credentials("xoauth2", "u@example.com", TOKEN),
            oauth_mechanism=setting, host=host, port=port,
        )
        # Tests that leave the login unanswered: the cleanup's lost connection.
        self.addCleanup(d.addErrback, lambda f: None)
        return client, transport, d

    def test_auto_prefers_xoauth2_when_both_offered(self):
        client, transport, d = self.login(
            b"IMAP4rev1 SASL-IR AUTH=OAUTHBEARER AUTH=XOAUTH2", "auto")
        self.assertTrue(sent(transport).startswith(b"0001 AUTHENTICATE XOAUTH2 "))
        self.assertEqual(client.auth_mechanism, "xoauth2")

    def test_auto_uses_oauthbearer_when_xoauth2_not_offered(self):
        client, transport, d = self.login(
            b"IMAP4rev1 SASL-IR AUTH=OAUTHBEARER", "auto", host="imap.example.com", port=993)
        wire = sent(transport)
        self.assertTrue(wire.startswith(b"0001 AUTHENTICATE OAUTHBEARER "))
        self.assertEqual(wire.count(b"\r\n"), 1, "the base64 was wrapped")
        self.assertEqual(
            base64.b64decode(wire.split(b" ")[3].strip()),
            b"n,a=u@example.com,\x01host=imap.example.com\x01port=993\x01auth=Bearer "
            + TOKEN.encode() + b"\x01\x01",
        )
        client.dataReceived(b"0001 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
        self.assertIn(b"IDLE", self.successResultOf(d))
        self.assertEqual(client.auth_mechanism, "oauthbearer")

    def test_forced_oauthbearer_even_when_xoauth2_offered(self):
        client, transport, d = self.login(
            b"IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER", "oauthbearer")
        self.assertTrue(sent(transport).startswith(b"0001 AUTHENTICATE OAUTHBEARER "))

    def test_forced_xoauth2_not_offered_sends_nothing(self):
        client, transport, d = self.login(b"IMAP4rev1 SASL-IR AUTH=OAUTHBEARER", "xoauth2")
        self.failureResultOf(d, MechanismUnsupported)
        self.assertEqual(transport.value(), b"")

    def test_auto_with_neither_offered_is_unsupported(self):
        client, transport, d = self.login(b"IMAP4rev1 AUTH=PLAIN", "auto")
        failure = self.failureResultOf(d, MechanismUnsupported)
        self.assertIn("XOAUTH2", str(failure.value))
        self.assertEqual(transport.value(), b"")

    def test_password_ignores_the_oauth_setting(self):
        client, transport, clock = self.connect()
        d = client.authenticate_with(Credentials("password", "u", "p"),
                                     oauth_mechanism="oauthbearer")
        self.addCleanup(d.addErrback, lambda f: None)
        self.assertEqual(sent(transport), b'0001 LOGIN "u" "p"\r\n')

    def test_oauthbearer_error_challenge_dance_without_sasl_ir(self):
        """RFC 7628 3.2.3: initial response after the empty "+", then the
        server's JSON error challenge is answered with a single %x01, and the
        tagged NO [AUTHENTICATIONFAILED] is a refusal."""
        client, transport, d = self.login(
            b"IMAP4rev1 AUTH=OAUTHBEARER", "auto", host="mail.example.org", port=143)
        self.assertEqual(sent(transport), b"0001 AUTHENTICATE OAUTHBEARER\r\n")
        client.dataReceived(b"+ \r\n")
        line = sent(transport)
        self.assertEqual(line.count(b"\r\n"), 1)
        self.assertEqual(
            base64.b64decode(line.strip()),
            b"n,a=u@example.com,\x01host=mail.example.org\x01port=143\x01auth=Bearer "
            + TOKEN.encode() + b"\x01\x01",
        )
        challenge = base64.b64encode(
            b'{"status":"invalid_token","scope":"mail","openid-configuration":"x"}')
        client.dataReceived(b"+ " + challenge + b"\r\n")
        self.assertEqual(sent(transport), b"AQ==\r\n")
        self.assertEqual(base64.b64decode(b"AQ=="), b"\x01")
        self.assertNoResult(d)
        client.dataReceived(b"0001 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        failure = self.failureResultOf(d, AuthenticationFailed)
        self.assertEqual(failure.value.code, "AUTHENTICATIONFAILED")
        self.assertNotIn(TOKEN, str(failure.value))

    def test_xoauth2_error_challenge_then_unavailable_is_transient(self):
        client, transport, d = self.login(b"IMAP4rev1 SASL-IR AUTH=XOAUTH2", "auto")
        sent(transport)
        client.dataReceived(b"+ eyJzdGF0dXMiOiI1MDAifQ==\r\n")
        self.assertEqual(sent(transport), b"\r\n")
        client.dataReceived(b"0001 NO [UNAVAILABLE] try later\r\n")
        self.failureResultOf(d, AuthenticationUnavailable)
