"""FolderIMAPClient against a real Dovecot (tests/rig/dovecot.py)."""

from __future__ import annotations

import uuid

from service_identity.exceptions import VerificationError
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.trial.unittest import TestCase

from imapsvc.imap.errors import AuthenticationFailed, CommandFailed
from imapsvc.imap.protocol import FolderIMAPClient
from imapsvc.imap.tls import client_tls_options
from imapsvc.model import Credentials
from tests.rig import mail
from tests.rig.dovecot import DEFAULT_PASSWORD, get_dovecot, unique_user

TIMEOUT = 20

MULTIPART = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"caf\xe9 line\r\n"
    b"second line  \r\n"
    b"--b1\r\n"
    b"Content-Type: application/octet-stream; name=blob.bin\r\n"
    b"Content-Disposition: attachment; filename=blob.bin\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAwQF\r\n"
    b"--b1--\r\n"
)


class _TestClient(FolderIMAPClient):
    """Records when the connection goes away, for clean test shutdown."""

    def __init__(self, *args, **kwargs):
        FolderIMAPClient.__init__(self, *args, **kwargs)
        self.lost = defer.Deferred()

    def connectionLost(self, reason=None):
        FolderIMAPClient.connectionLost(self, reason)
        if not self.lost.called:
            self.lost.callback(None)


class DovecotProtocolTests(TestCase):
    timeout = 60

    def setUp(self):
        self.dovecot = get_dovecot()
        self.user = self.dovecot.add_user(unique_user("proto"))

    @defer.inlineCallbacks
    def open(self, port=None, hostname="localhost", implicit=True):
        client = _TestClient(reactor, command_timeout=TIMEOUT, inactivity_timeout=300)
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", port or self.dovecot.ports.imaps, timeout=TIMEOUT
        )
        if implicit:
            endpoint = wrapClientTLS(
                client_tls_options(hostname, ca_file=self.dovecot.ca_file), endpoint
            )
        yield connectProtocol(endpoint, client)
        self.addCleanup(self._close, client)
        caps = yield client.greeted.addTimeout(TIMEOUT, reactor)
        return client, caps

    def _close(self, client):
        if not client.lost.called:
            client.transport.abortConnection()
        return client.lost

    @defer.inlineCallbacks
    def login(self, **kwargs):
        client, before = yield self.open(**kwargs)
        caps = yield client.authenticate_with(
            Credentials("password", self.user, DEFAULT_PASSWORD)
        )
        return client, before, caps

    @defer.inlineCallbacks
    def test_login_examine_logout(self):
        client, before, after = yield self.login()
        self.assertGreater(len(after), len(before))
        self.assertIn(b"IDLE", after)
        info = yield client.examine_folder("INBOX")
        self.assertEqual(info["exists"], 0)
        self.assertGreater(info["uidvalidity"], 0)
        self.assertEqual(info["uidnext"], 1)
        self.assertTrue(info["read_only"])
        folders = yield client.list_folders()
        self.assertIn("INBOX", [name for _flags, _delim, name in folders])
        yield client.logout()
        yield client.lost

    @defer.inlineCallbacks
    def test_fetch_exact_bytes_by_uid(self):
        # A first message that is expunged makes sequence numbers and UIDs differ.
        gone = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", b"Subject: x\r\n\r\nx\r\n")
        mail.expunge(self.user, DEFAULT_PASSWORD, "INBOX", [gone])
        uid = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", MULTIPART)
        self.assertEqual(uid, 2)
        client, _, _ = yield self.login()
        yield client.examine_folder("INBOX")
        uids = yield client.uid_search_from(1)
        self.assertEqual(uids, [uid])
        meta = yield client.fetch_meta([uid])
        self.assertEqual(list(meta), [uid])
        header_end = MULTIPART.index(b"\r\n\r\n") + 4
        self.assertEqual(meta[uid]["header"], MULTIPART[:header_end])
        self.assertEqual(meta[uid]["size"], len(MULTIPART))
        structure = meta[uid]["bodystructure"]
        self.assertEqual([part[0].lower() for part in structure[:2]], ["text", "application"])
        sections = yield client.fetch_sections({uid: [("1", None), ("2", 4)]})
        self.assertEqual(sections[uid]["1"], b"caf\xe9 line\r\nsecond line  ")
        self.assertEqual(sections[uid]["2"], b"AAEC")
        full = yield client.fetch_full([uid])
        self.assertEqual(full, {uid: MULTIPART})
        flags = mail.flags(self.user, DEFAULT_PASSWORD, "INBOX", uid)
        self.assertNotIn("\\Seen", str(flags))

    @defer.inlineCallbacks
    def test_status_of_another_folder(self):
        # The Gmail budget's shared poller: STATUS without selecting.
        # The rig takes Unicode names; the client the server's spelling (modified UTF-7).
        mail.create_folder(self.user, DEFAULT_PASSWORD, "Gesch\u00e4ft")
        for n in range(2):
            mail.append(self.user, DEFAULT_PASSWORD, "Gesch\u00e4ft", b"Subject: %d\r\n\r\n" % n)
        client, _, _ = yield self.login()
        yield client.examine_folder("INBOX")
        info = yield client.status_folder("Gesch&AOQ-ft")
        self.assertEqual(info["uidnext"], 3)
        self.assertEqual(info["messages"], 2)
        self.assertGreater(info["uidvalidity"], 0)
        missing = client.status_folder("Nope")
        yield self.assertFailure(missing, CommandFailed)
        # INBOX is still selected and the session goes on.
        uids = yield client.uid_search_from(1)
        self.assertEqual(list(uids), [])
        # Dovecot offers UNSELECT: the poller leaves a folder with it.
        left = yield client.unselect()
        self.assertTrue(left)
        info = yield client.status_folder("INBOX")
        self.assertEqual(info["messages"], 0)

    @defer.inlineCallbacks
    def test_idle_wakes_on_append(self):
        client, _, _ = yield self.login()
        yield client.examine_folder("INBOX")
        woke = defer.Deferred()

        def on_exists(count):
            if not woke.called:
                woke.callback(count)

        idling = client.idle(on_exists)
        # Let the server's "+" arrive before appending.
        while not client.idling:
            yield _tick()
        mail.append(self.user, DEFAULT_PASSWORD, "INBOX", b"Subject: hi\r\n\r\nhi\r\n")
        count = yield woke.addTimeout(TIMEOUT, reactor)
        self.assertEqual(count, 1)
        search = client.uid_search_from(1)
        client.done()
        yield idling
        self.assertEqual((yield search), [1])

    @defer.inlineCallbacks
    def test_starttls_then_login(self):
        client = _TestClient(reactor, command_timeout=TIMEOUT)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.dovecot.ports.imap)
        yield connectProtocol(endpoint, client)
        self.addCleanup(self._close, client)
        caps = yield client.greeted
        self.assertIn(b"STARTTLS", caps)
        yield client.start_tls(client_tls_options("localhost", ca_file=self.dovecot.ca_file))
        caps = yield client.authenticate_with(
            Credentials("password", self.user, DEFAULT_PASSWORD)
        )
        self.assertIn(b"IDLE", caps)

    @defer.inlineCallbacks
    def test_wrong_hostname_refused(self):
        with self.assertRaises(VerificationError):
            yield self.open(port=self.dovecot.ports.imaps_wrong)

    @defer.inlineCallbacks
    def test_xoauth2_good_and_bad_token(self):
        token = "tok-" + uuid.uuid4().hex + "x" * 1200
        self.dovecot.introspection.add_token(token, self.user)
        client, before = yield self.open()
        caps = yield client.authenticate_with(Credentials("xoauth2", self.user, token))
        self.assertIn(b"IDLE", caps)
        info = yield client.examine_folder("INBOX")
        self.assertGreater(info["uidvalidity"], 0)

        bad, _ = yield self.open()
        with self.assertRaises(AuthenticationFailed) as caught:
            yield bad.authenticate_with(Credentials("xoauth2", self.user, "not-a-token"))
        self.assertEqual(caught.exception.code, "AUTHENTICATIONFAILED")

    @defer.inlineCallbacks
    def test_oauthbearer_bad_token(self):
        bad, _ = yield self.open()
        with self.assertRaises(AuthenticationFailed):
            yield bad.authenticate_with(Credentials("oauthbearer", self.user, "nope"))


def _tick():
    d = defer.Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d
