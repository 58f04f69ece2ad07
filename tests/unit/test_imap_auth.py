"""Logins: LOGIN only over TLS, XOAUTH2/OAUTHBEARER as one unwrapped line,
error challenge, capability refresh, AuthenticationFailed."""

from __future__ import annotations

import base64

from imapsvc.imap.errors import AuthenticationFailed, CleartextRefused, Throttled
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
        self.failureResultOf(d, AuthenticationFailed)
        self.assertEqual(transport.value(), b"")
