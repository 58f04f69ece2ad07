"""CONDSTORE/QRESYNC (RFC 7162) against a real Dovecot 2.3, which offers
both: the command sequence of a folder's reconnects.

A first connection syncs and stores the HIGHESTMODSEQ; a reconnect with
nothing new is ``EXAMINE INBOX (CONDSTORE)`` then IDLE, no UID SEARCH (with
``IMAP_MODSEQ=qresync``: ``ENABLE QRESYNC`` and ``EXAMINE INBOX (QRESYNC (v
m))``); a reconnect after new mail, or after a flag change, searches; a
stored state of another UIDVALIDITY is never used for the shortcut.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from imapsvc import folder_state as S
from imapsvc.folder import FolderOptions, FolderService
from imapsvc.imap.extensions import client_id_fields
from imapsvc.imap.protocol import FolderIMAPClient
from imapsvc.imap.tls import client_tls_options
from imapsvc.model import Credentials, FolderCursor, ProviderConfig
from tests.integration.test_folder_dovecot import wait_for
from tests.rig import mail
from tests.rig.dovecot import DEFAULT_PASSWORD, get_dovecot, unique_user
from tests.unit.test_folder import FakeCredentials, FakePipeline, FakeStore

VERSION = dict(client_id_fields())["version"].encode()


class ModseqStore(FakeStore):
    """The folder test store with the schema/0010 table."""

    def __init__(self):
        super().__init__()
        self.modseqs = {}

    def read_modseq(self, tenant, provider_id, folder):
        return defer.succeed(self.modseqs.get(folder))

    def save_modseq(self, tenant, provider_id, folder, uid_validity, modseq, owner):
        if modseq is None:
            self.modseqs.pop(folder, None)
        else:
            self.modseqs[folder] = (uid_validity, modseq)
        return defer.succeed(None)


class CondstoreDovecotTests(TestCase):
    timeout = 120

    def setUp(self):
        self.dovecot = get_dovecot()
        self.user = self.dovecot.add_user(unique_user("qresync"))
        self.store = ModseqStore()
        self.pipeline = FakePipeline(self.store)
        self.commands: list[bytes] = []
        original = FolderIMAPClient._write

        def recording(client, data):
            # The first line of each write: "<tag> <command ...>" (literals
            # and continuation data are later writes or later lines).
            self.commands.append(data.split(b"\r\n", 1)[0])
            original(client, data)

        self.patch(FolderIMAPClient, "_write", recording)

    @defer.inlineCallbacks
    def connect(self, modseq="condstore"):
        """One folder connection until it idles; returns what it sent, with
        the tags cut off (and LOGIN left out)."""
        self.commands.clear()
        provider = ProviderConfig(
            tenant="t1", provider_id="p1", provider_name="test", mailbox=self.user,
            host="localhost", port=self.dovecot.ports.imaps, username=self.user,
        )
        creds = FakeCredentials()
        creds.credentials = lambda p: defer.succeed(
            Credentials("password", self.user, DEFAULT_PASSWORD))
        svc = FolderService(
            provider, "INBOX", reactor, self.store, self.pipeline, creds, "worker-1",
            FolderOptions(startup_stagger_ms=0, reconnect_base_ms=200, reconnect_max_ms=1000,
                          modseq=modseq),
            tls_factory=lambda host: client_tls_options(host, ca_file=self.dovecot.ca_file),
        )
        svc.startService()
        try:
            yield wait_for(lambda: svc.state == S.IDLING, timeout=20)
        finally:
            yield svc.stopService()
        sent = [c.split(b" ", 1)[1] for c in self.commands if b" " in c]
        return svc, [c for c in sent if not c.startswith(b"LOGIN")]

    def names(self, sent):
        return [c.split(b" ")[0] if not c.startswith(b"UID ") else b" ".join(c.split(b" ")[:2])
                for c in sent]

    @defer.inlineCallbacks
    def test_reconnect_sequences(self):
        first = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("one"))
        self.store.cursors["INBOX"] = FolderCursor(None, "0", None)  # rescan from UID 1
        svc, sent = yield self.connect()
        self.assertEqual(self.pipeline.uids, [first])
        self.assertEqual(svc.sync.modseq.mode, "CONDSTORE")
        self.assertNotIn(b"ENABLE", self.names(sent))
        self.assertIn(b'EXAMINE "INBOX" (CONDSTORE)', sent)
        self.assertIn(b"UID SEARCH", self.names(sent))
        validity, modseq = self.store.modseqs["INBOX"]
        self.assertEqual(validity, self.store.cursors["INBOX"].uid_validity)

        # Reconnect, nothing new: the EXAMINE answers it, no search.
        svc, sent = yield self.connect()
        self.assertEqual(sent, [b'ID ("name" "imapsvc" "version" "%s")' % VERSION,
                                b'LIST "" "*"', b'EXAMINE "INBOX" (CONDSTORE)', b"IDLE",
                                b"LOGOUT"])
        self.assertEqual(svc.sync.modseq.skipped, 1)
        self.assertEqual(self.pipeline.uids, [first])
        # Without mod-sequences the same reconnect searches.
        svc, sent = yield self.connect(modseq="off")
        self.assertEqual(self.names(sent), [b"ID", b"LIST", b"EXAMINE", b"UID SEARCH", b"IDLE",
                                            b"LOGOUT"])
        self.assertIn(b'EXAMINE "INBOX"', sent)

        # New mail while away: HIGHESTMODSEQ and UIDNEXT moved, so the pass
        # searches and fetches; the new HIGHESTMODSEQ is stored.
        second = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("two"))
        svc, sent = yield self.connect()
        names = self.names(sent)
        self.assertIn(b"UID SEARCH", names)
        self.assertIn(b"UID FETCH", names)
        self.assertEqual(svc.sync.modseq.skipped, 0)
        self.assertEqual(self.pipeline.uids, [first, second])
        self.assertGreater(self.store.modseqs["INBOX"][1], modseq)

        # A flag change alone moves HIGHESTMODSEQ but not UIDNEXT: searched
        # (the shortcut needs both unchanged), nothing new handed off.
        with mail.connect(self.user, DEFAULT_PASSWORD) as client:
            client.select("INBOX")
            client.uid("STORE", str(first), "+FLAGS", "(\\Flagged)")
        svc, sent = yield self.connect()
        self.assertIn(b"UID SEARCH", self.names(sent))
        self.assertEqual(self.pipeline.uids, [first, second])
        svc, sent = yield self.connect()
        self.assertNotIn(b"UID SEARCH", self.names(sent))

        # A stored state of another UIDVALIDITY is never used for a skip.
        self.store.modseqs["INBOX"] = ("1", self.store.modseqs["INBOX"][1])
        svc, sent = yield self.connect()
        self.assertIn(b"UID SEARCH", self.names(sent))
        self.assertEqual(svc.sync.modseq.skipped, 0)

    @defer.inlineCallbacks
    def test_qresync_reconnect(self):
        first = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("one"))
        mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("two"))
        self.store.cursors["INBOX"] = FolderCursor(None, "0", None)
        svc, sent = yield self.connect(modseq="qresync")
        self.assertEqual(svc.sync.modseq.mode, "QRESYNC")
        self.assertIn(b"ENABLE QRESYNC", sent)
        self.assertEqual(len(self.pipeline.uids), 2)
        validity, modseq = self.store.modseqs["INBOX"]
        # Expunged while away: VANISHED (EARLIER) in the EXAMINE answer, and
        # HIGHESTMODSEQ moved, so the pass searches (finding nothing new).
        mail.expunge(self.user, DEFAULT_PASSWORD, "INBOX", [first])
        svc, sent = yield self.connect(modseq="qresync")
        self.assertIn(b'EXAMINE "INBOX" (QRESYNC (%s %d))' % (validity.encode(), modseq), sent)
        self.assertEqual(svc.sync.modseq.vanished, 1)
        self.assertIn(b"UID SEARCH", self.names(sent))
        self.assertEqual(len(self.pipeline.uids), 2)
        validity, modseq = self.store.modseqs["INBOX"]
        svc, sent = yield self.connect(modseq="qresync")
        self.assertEqual(sent, [b'ID ("name" "imapsvc" "version" "%s")' % VERSION,
                                b"ENABLE QRESYNC", b'LIST "" "*"',
                                b'EXAMINE "INBOX" (QRESYNC (%s %d))' % (validity.encode(),
                                                                        modseq),
                                b"IDLE", b"LOGOUT"])
        self.assertEqual(svc.sync.modseq.skipped, 1)
