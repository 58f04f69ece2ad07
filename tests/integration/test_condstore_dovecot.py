"""CONDSTORE/QRESYNC (RFC 7162) against a real Dovecot 2.3, which offers
both: the command sequence of a folder's reconnects.

A first connection syncs and stores the HIGHESTMODSEQ; a reconnect with
nothing new is ``EXAMINE INBOX (CONDSTORE)`` then IDLE, no UID SEARCH (with
``IMAP_MODSEQ=qresync``: ``ENABLE QRESYNC`` and ``EXAMINE INBOX (QRESYNC (v
m))``); a reconnect after new mail, or after a flag change, searches; a
stored state of another UIDVALIDITY is never used for the shortcut.
"""

from __future__ import annotations

import attr
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from imapsvc import folder_state as S
from imapsvc.folder import FolderOptions, FolderService
from imapsvc.imap.extensions import client_id_fields
from imapsvc.imap.protocol import FolderIMAPClient
from imapsvc.imap.tls import client_tls_options
from imapsvc.model import FolderCursor
from tests.folder_helpers import (
    OWNER,
    PasswordSource,
    memory_backend,
    read_cursor,
    write_cursor,
)
from tests.integration.test_folder_dovecot import wait_for
from tests.rig import mail
from tests.rig.dovecot import DEFAULT_PASSWORD, get_dovecot, unique_user

VERSION = dict(client_id_fields())["version"].encode()


class CondstoreDovecotTests(TestCase):
    timeout = 120

    def setUp(self):
        self.dovecot = get_dovecot()
        self.user = self.dovecot.add_user(unique_user("qresync"))
        # The memory store (its imap_folder_modseq too) and the real pipeline.
        self.store, provider, self.pipeline = memory_backend(reactor)
        self.provider = attr.evolve(provider, mailbox=self.user, host="localhost",
                                    port=self.dovecot.ports.imaps, username=self.user)
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
        svc = FolderService(
            self.provider, "INBOX", reactor, self.store, self.pipeline,
            PasswordSource(DEFAULT_PASSWORD, self.user), OWNER,
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

    def modseq(self):
        """The stored ``(uid_validity, HIGHESTMODSEQ)`` of INBOX."""
        return self.successResultOf(self.store.read_modseq(
            self.provider.tenant, self.provider.provider_id, "INBOX"))

    def names(self, sent):
        return [c.split(b" ")[0] if not c.startswith(b"UID ") else b" ".join(c.split(b" ")[:2])
                for c in sent]

    @defer.inlineCallbacks
    def test_reconnect_sequences(self):
        first = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("one"))
        write_cursor(self.store, self.provider, FolderCursor(None, "0", None))  # from UID 1
        svc, sent = yield self.connect()
        self.assertEqual(self.pipeline.uids, [first])
        self.assertEqual(svc.sync.modseq.mode, "CONDSTORE")
        self.assertNotIn(b"ENABLE", self.names(sent))
        self.assertIn(b'EXAMINE "INBOX" (CONDSTORE)', sent)
        self.assertIn(b"UID SEARCH", self.names(sent))
        validity, modseq = self.modseq()
        self.assertEqual(validity, read_cursor(self.store, self.provider).uid_validity)

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
        self.assertGreater(self.modseq()[1], modseq)

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
        self.store.save_modseq(self.provider.tenant, self.provider.provider_id, "INBOX", "1",
                               self.modseq()[1], OWNER)
        svc, sent = yield self.connect()
        self.assertIn(b"UID SEARCH", self.names(sent))
        self.assertEqual(svc.sync.modseq.skipped, 0)

    @defer.inlineCallbacks
    def test_qresync_reconnect(self):
        first = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("one"))
        mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("two"))
        write_cursor(self.store, self.provider, FolderCursor(None, "0", None))
        svc, sent = yield self.connect(modseq="qresync")
        self.assertEqual(svc.sync.modseq.mode, "QRESYNC")
        self.assertIn(b"ENABLE QRESYNC", sent)
        self.assertEqual(len(self.pipeline.uids), 2)
        validity, modseq = self.modseq()
        # Expunged while away: VANISHED (EARLIER) in the EXAMINE answer, and
        # HIGHESTMODSEQ moved, so the pass searches (finding nothing new).
        mail.expunge(self.user, DEFAULT_PASSWORD, "INBOX", [first])
        svc, sent = yield self.connect(modseq="qresync")
        self.assertIn(b'EXAMINE "INBOX" (QRESYNC (%s %d))' % (validity.encode(), modseq), sent)
        self.assertEqual(svc.sync.modseq.vanished, 1)
        self.assertIn(b"UID SEARCH", self.names(sent))
        self.assertEqual(len(self.pipeline.uids), 2)
        validity, modseq = self.modseq()
        svc, sent = yield self.connect(modseq="qresync")
        self.assertEqual(sent, [b'ID ("name" "imapsvc" "version" "%s")' % VERSION,
                                b"ENABLE QRESYNC", b'LIST "" "*"',
                                b'EXAMINE "INBOX" (QRESYNC (%s %d))' % (validity.encode(),
                                                                        modseq),
                                b"IDLE", b"LOGOUT"])
        self.assertEqual(svc.sync.modseq.skipped, 1)
