"""The write-back commands of FolderIMAPClient against a real Dovecot
(issue 13 item 3): SELECT, UID STORE, UID MOVE, UID COPY + UID EXPUNGE, and
the refusals that must not end the session."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.trial.unittest import TestCase

from imapsvc.imap.errors import CommandFailed
from imapsvc.imap.tls import client_tls_options
from imapsvc.model import Credentials
from tests.integration.test_protocol_dovecot import TIMEOUT, _TestClient
from tests.rig import mail
from tests.rig.dovecot import DEFAULT_PASSWORD, get_dovecot, unique_user


class DovecotWriteBackTests(TestCase):
    timeout = 60

    def setUp(self):
        self.dovecot = get_dovecot()
        self.user = self.dovecot.add_user(unique_user("wb"))
        self.uids = [
            mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject=f"m{i}"))
            for i in range(4)
        ]
        mail.create_folder(self.user, DEFAULT_PASSWORD, "Processed")

    @defer.inlineCallbacks
    def login(self):
        client = _TestClient(reactor, command_timeout=TIMEOUT, inactivity_timeout=300)
        endpoint = wrapClientTLS(
            client_tls_options("localhost", ca_file=self.dovecot.ca_file),
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.dovecot.ports.imaps, timeout=TIMEOUT),
        )
        yield connectProtocol(endpoint, client)
        self.addCleanup(self._close, client)
        before = yield client.greeted.addTimeout(TIMEOUT, reactor)
        caps = yield client.authenticate_with(
            Credentials("password", self.user, DEFAULT_PASSWORD)
        )
        return client, before, caps

    def _close(self, client):
        if not client.lost.called:
            client.transport.abortConnection()
        return client.lost

    def count(self, folder):
        return mail.status(self.user, DEFAULT_PASSWORD, folder)["MESSAGES"]

    @defer.inlineCallbacks
    def selected(self):
        client, _before, caps = yield self.login()
        info = yield client.select_folder("INBOX")
        self.assertFalse(info["read_only"])
        self.assertEqual(info["exists"], 4)
        return client, caps

    @defer.inlineCallbacks
    def test_dovecot_offers_move_and_uidplus(self):
        _client, caps = yield self.selected()
        self.assertIn(b"MOVE", caps)
        self.assertIn(b"UIDPLUS", caps)

    @defer.inlineCallbacks
    def test_store_seen_and_move(self):
        client, _caps = yield self.selected()
        first, second = self.uids[0], self.uids[1]
        yield client.uid_store_flags([first], ["\\Seen"])
        self.assertIn("\\Seen", mail.flags(self.user, DEFAULT_PASSWORD, "INBOX", first))
        self.assertNotIn("\\Seen", mail.flags(self.user, DEFAULT_PASSWORD, "INBOX", second))
        yield client.uid_move([first, second], "Processed")
        self.assertEqual((self.count("INBOX"), self.count("Processed")), (2, 2))
        # Again, on UIDs that are gone: harmless, the session goes on.
        yield client.uid_move([first, second], "Processed")
        self.assertEqual((self.count("INBOX"), self.count("Processed")), (2, 2))
        uids = yield client.uid_search_from(1)
        self.assertEqual(uids, self.uids[2:])

    @defer.inlineCallbacks
    def test_copy_deleted_uid_expunge_spares_other_deleted_mail(self):
        client, _caps = yield self.selected()
        a, b, c, _d = self.uids
        yield client.uid_store_flags([c], ["\\Deleted"])  # somebody else's
        yield client.uid_copy([a, b], "Processed")
        yield client.uid_store_flags([a, b], ["\\Deleted"])
        yield client.uid_expunge([a, b])
        self.assertEqual((self.count("INBOX"), self.count("Processed")), (2, 2))
        uids = yield client.uid_search_from(1)
        self.assertEqual(uids, self.uids[2:])

    @defer.inlineCallbacks
    def test_refusals_fail_the_command_not_the_session(self):
        client, _caps = yield self.selected()
        with self.assertRaises(CommandFailed) as caught:
            yield client.uid_move([self.uids[0]], "Nowhere")
        self.assertEqual(caught.exception.code, "TRYCREATE")
        # Read-only (EXAMINE): Dovecot answers a STORE with OK and changes nothing.
        yield client.examine_folder("INBOX")
        try:
            yield client.uid_store_flags([self.uids[0]], ["\\Seen"])
        except CommandFailed:
            pass
        self.assertNotIn("\\Seen", mail.flags(self.user, DEFAULT_PASSWORD, "INBOX", self.uids[0]))
        uids = yield client.uid_search_from(1)
        self.assertEqual(uids, self.uids)
        self.assertEqual(self.count("INBOX"), 4)
