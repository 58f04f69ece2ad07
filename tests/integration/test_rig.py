"""
Prove the Dovecot rig itself, with Twisted's stock ``IMAP4Client`` and the
stdlib ``imaplib``: no imapsvc code is involved, so a failure here points at
the machine or the rig, not at the service.
"""

from __future__ import annotations

import imaplib
import os
import ssl

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, endpoints, reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.mail.imap4 import IMAP4Client
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.rig import mail
from tests.rig.dovecot import DEFAULT_PASSWORD, get_dovecot, unique_user


class _Client(IMAP4Client):
    """``IMAP4Client`` that reports its greeting and its end as Deferreds."""

    def __init__(self) -> None:
        super().__init__()
        self.greeted: defer.Deferred[object] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.lost_reason: Failure | None = None
        self.greeting_seen = False

    def serverGreeting(self, caps: object) -> None:  # noqa: N802 - Twisted's name
        self.greeting_seen = True
        self.greeted.callback(caps)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        super().connectionLost(reason)
        self.lost_reason = reason
        if not self.greeted.called:
            self.greeted.errback(reason)
        self.lost.callback(None)


def _tls_options() -> object:
    dovecot = get_dovecot()
    return optionsForClientTLS(
        "localhost", trustRoot=Certificate.loadPEM(dovecot.tls.ca_pem())
    )


class RigTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dovecot = get_dovecot()
        self.user = self.dovecot.add_user(unique_user("rig"))

    @defer.inlineCallbacks
    def _connect(self, port: int, tls: bool) -> defer.Deferred[_Client]:
        endpoint: object = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
        if tls:
            endpoint = endpoints.wrapClientTLS(_tls_options(), endpoint)
        client = _Client()
        yield endpoints.connectProtocol(endpoint, client)
        self.addCleanup(self._close, client)
        return client

    def _close(self, client: _Client) -> defer.Deferred[object]:
        """Drop the connection and wait until it is gone, so the reactor is clean."""
        if not client.lost.called and client.transport is not None:
            client.transport.loseConnection()
        return client.lost

    @defer.inlineCallbacks
    def test_implicit_tls_login_and_examine(self) -> defer.Deferred[None]:
        """
        Over implicit TLS, verified for ``localhost``, a passwd-file user logs
        in and EXAMINE reports the UIDVALIDITY/UIDNEXT the mailbox really has.
        """
        uid = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message())
        expected = mail.status(self.user, DEFAULT_PASSWORD, "INBOX")
        client = yield self._connect(self.dovecot.ports.imaps, tls=True)
        yield client.greeted
        yield client.login(self.user.encode(), DEFAULT_PASSWORD.encode())
        info = yield client.examine("INBOX")
        self.assertEqual(info["UIDVALIDITY"], expected["UIDVALIDITY"])
        self.assertEqual(info["UIDNEXT"], uid + 1)
        self.assertEqual(info["EXISTS"], 1)
        yield client.logout()

    @defer.inlineCallbacks
    def test_wrong_password_refused(self) -> defer.Deferred[None]:
        client = yield self._connect(self.dovecot.ports.imaps, tls=True)
        yield client.greeted
        with self.assertRaises(Exception) as ctx:
            yield client.login(self.user.encode(), b"not-the-password")
        self.assertIn(b"AUTHENTICATIONFAILED", str(ctx.exception).encode())

    @defer.inlineCallbacks
    def test_wrong_hostname_refused(self) -> defer.Deferred[None]:
        """
        A certificate signed by the trusted CA but issued for another host is
        refused during the handshake: no greeting reaches the client, so no
        credentials can be sent.
        """
        client = yield self._connect(self.dovecot.ports.imaps_wrong, tls=True)
        yield client.lost
        self.assertFalse(client.greeting_seen)
        reason = client.lost_reason
        assert reason is not None
        # service_identity rejects the name inside OpenSSL's verify callback.
        self.assertTrue(reason.check(VerificationError, SSL.Error), reason)
        self.assertIn("localhost", str(reason.value))
        self.failureResultOf(client.greeted)

    def test_wrong_hostname_refused_by_imaplib(self) -> None:
        """The same refusal with the stdlib: the wrong port really serves a wrong name."""
        ctx = ssl.create_default_context(cafile=self.dovecot.ca_file)
        with self.assertRaises(ssl.SSLCertVerificationError) as caught:
            imaplib.IMAP4_SSL("localhost", self.dovecot.ports.imaps_wrong, ssl_context=ctx)
        self.assertIn("localhost", str(caught.exception))

    @defer.inlineCallbacks
    def test_starttls_offered_and_verified(self) -> defer.Deferred[None]:
        """The plain port offers STARTTLS; after it, LOGIN works over a verified channel."""
        client = yield self._connect(self.dovecot.ports.imap, tls=False)
        yield client.greeted
        caps = yield client.getCapabilities()
        self.assertIn(b"STARTTLS", caps)
        yield client.startTLS(_tls_options())
        self.assertTrue(client.startedTLS)
        self.assertIsNotNone(client.transport.getPeerCertificate())
        yield client.login(self.user.encode(), DEFAULT_PASSWORD.encode())
        info = yield client.examine("INBOX")
        self.assertEqual(info["EXISTS"], 0)
        yield client.logout()

    def _imaplib(self) -> imaplib.IMAP4_SSL:
        ctx = ssl.create_default_context(cafile=self.dovecot.ca_file)
        conn = imaplib.IMAP4_SSL("localhost", self.dovecot.ports.imaps, ssl_context=ctx)
        self.addCleanup(conn.shutdown)
        return conn

    def _xoauth2(self, user: str, token: str) -> bytes:
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()

    def test_xoauth2_good_token(self) -> None:
        token = "tok-" + self.user
        self.dovecot.introspection.add_token(token, self.user)
        conn = self._imaplib()
        typ, _ = conn.authenticate("XOAUTH2", lambda _: self._xoauth2(self.user, token))
        self.assertEqual(typ, "OK")
        self.assertEqual(conn.state, "AUTH")

    def test_oauthbearer_good_token(self) -> None:
        token = "bearer-" + self.user
        self.dovecot.introspection.add_token(token, self.user)
        conn = self._imaplib()
        payload = f"n,a={self.user},\x01auth=Bearer {token}\x01\x01".encode()
        typ, _ = conn.authenticate("OAUTHBEARER", lambda _: payload)
        self.assertEqual(typ, "OK")

    def test_xoauth2_bad_tokens(self) -> None:
        """Unknown, inactive and other-user tokens all get AUTHENTICATIONFAILED."""
        inactive = "inactive-" + self.user
        self.dovecot.introspection.add_token(inactive, self.user, active=False)
        other_user = unique_user("other")
        foreign = "foreign-" + self.user
        self.dovecot.introspection.add_token(foreign, other_user)
        for token in ("never-registered", inactive, foreign):
            conn = self._imaplib()
            with self.assertRaises(imaplib.IMAP4.error) as caught:
                conn.authenticate("XOAUTH2", lambda _, t=token: self._xoauth2(self.user, t))
            self.assertIn("AUTHENTICATIONFAILED", str(caught.exception))

    def test_add_user_takes_effect_at_once(self) -> None:
        """A new user, and a changed password, apply at the next login."""
        name = self.dovecot.add_user(unique_user("late"), "first")
        with mail.connect(name, "first"):
            pass
        self.dovecot.add_user(name, "second")
        with self.assertRaises(imaplib.IMAP4.error):
            with mail.connect(name, "first"):
                pass
        with mail.connect(name, "second"):
            pass

    def test_kick_cuts_connection(self) -> None:
        with mail.connect(self.user) as conn:
            conn.select("INBOX")
            self.assertTrue(self.dovecot.kick(self.user))
            with self.assertRaises(imaplib.IMAP4.abort):
                conn.noop()
        self.assertFalse(self.dovecot.kick(self.user))

    def test_service_process_removes_its_folder(self) -> None:
        from tests.rig.service import ServiceProcess

        proc = ServiceProcess({}, "rig-test")
        self.assertTrue(os.path.isdir(proc.dir))
        proc.cleanup()
        self.assertFalse(os.path.exists(proc.dir))

    def test_mail_helpers(self) -> None:
        """Bulk APPEND keeps order and leaves mail unread; folders with any name work."""
        folder = "Support/Ünïcode & Co"
        mail.create_folder(self.user, DEFAULT_PASSWORD, folder)
        messages = [mail.make_message(subject=f"n{i}") for i in range(1200)]
        uids = mail.bulk_append(self.user, DEFAULT_PASSWORD, folder, messages, batch=500)
        self.assertEqual(uids, list(range(1, 1201)))
        self.assertEqual(mail.flags(self.user, DEFAULT_PASSWORD, folder, 1200), set())
        st = mail.status(self.user, DEFAULT_PASSWORD, folder)
        self.assertEqual((st["MESSAGES"], st["UNSEEN"], st["UIDNEXT"]), (1200, 1200, 1201))
        seen = mail.append(self.user, DEFAULT_PASSWORD, folder, messages[0], flags=r"(\Seen)")
        self.assertEqual(mail.flags(self.user, DEFAULT_PASSWORD, folder, seen), {"\\Seen"})
        mail.set_uid_validity(self.user, folder, 424242)
        self.assertEqual(mail.status(self.user, DEFAULT_PASSWORD, folder)["UIDVALIDITY"], 424242)
        encoded = mail.encode_mailbox(folder).encode()
        self.assertIn(encoded, b"\n".join(mail.list_folders(self.user, DEFAULT_PASSWORD)))
        mail.delete_folder(self.user, DEFAULT_PASSWORD, folder)
        names = b"\n".join(mail.list_folders(self.user, DEFAULT_PASSWORD))
        self.assertNotIn(encoded, names)
        self.assertIn(b"INBOX", names)
