"""The folder's CONDSTORE/QRESYNC shortcut (:mod:`imapsvc.folder.modseq`)
on verified fakes only (:class:`tests.folder_helpers.FolderRig`): a
reconnect that finds nothing new leaves out its UID SEARCH; new mail, a
flag change, another UIDVALIDITY or NOMODSEQ never do. What the fake
session answers is held to the real client's by
``tests/session_contract_modseq.py``; the same sequences against Dovecot
are in ``tests/integration/test_condstore_dovecot.py``."""

from __future__ import annotations

from functools import partial

from imapsvc import folder_state as S
from imapsvc.testing import FakeMailbox
from tests.folder_helpers import OWNER, PASSWORD, USER
from tests.session_contract_modseq import CONDSTORE_CAPS, PLAIN_CAPS, QRESYNC_CAPS
from tests.unit.test_folder import RigTestCase, with_options

#: What a reconnect that finds nothing new sends (the fake names commands).
QUIET = ["LOGIN", "LIST", "EXAMINE", "IDLE"]


class FolderModseqTests(RigTestCase):
    def modseq_rig(self, caps=CONDSTORE_CAPS, modseq="condstore", count=3, **options):
        mailbox = FakeMailbox(capabilities=caps, accounts={USER: PASSWORD}, uidvalidity=7)
        r = self.rig(mailbox=mailbox, options=with_options(modseq=modseq, **options))
        r.add(count)
        r.start()
        self.assertEqual(r.svc.state, S.IDLING)
        return r

    def reconnect(self, r, away=None):
        """The server drops the connection, ``away()`` happens meanwhile,
        the folder reconnects and idles. :return: the new session's commands."""
        r.drop()
        if away is not None:
            away()
        r.reconnect_after(r.factory.delay)
        self.assertEqual(r.svc.state, S.IDLING)
        return r.session.commands

    def stored(self, r):
        """The stored ``(uid_validity, HIGHESTMODSEQ)`` of INBOX."""
        return self.successResultOf(r.store.read_modseq(r.provider.tenant,
                                                        r.provider.provider_id, "INBOX"))

    def skipped(self, r):
        return r.svc.snapshot()["modseq"]["searchesSkipped"]

    def test_condstore_reconnects(self):
        r = self.modseq_rig()
        folder = r.mailbox.folders["INBOX"]
        self.assertEqual(r.uids, [1, 2, 3])
        self.assertIn("UID SEARCH", r.session.commands)
        self.assertEqual(r.session.opened, [("EXAMINE", "INBOX", "(CONDSTORE)")])
        self.assertEqual(r.svc.snapshot()["modseq"], {"mode": "CONDSTORE", "searchesSkipped": 0})
        self.assertEqual(self.stored(r), ("7", folder.highest_modseq))

        # Nothing new: the EXAMINE answers the reconnect.
        self.assertEqual(self.reconnect(r), QUIET)
        self.assertEqual(self.skipped(r), 1)

        # New mail while away: searched and fetched; the new value stored.
        commands = self.reconnect(r, lambda: r.add(1))
        self.assertIn("UID SEARCH", commands)
        self.assertIn("UID FETCH", commands)
        self.assertEqual(r.uids, [1, 2, 3, 4])
        self.assertEqual(self.stored(r), ("7", folder.highest_modseq))
        self.assertEqual(self.reconnect(r), QUIET)

        # A flag change alone moves HIGHESTMODSEQ, not UIDNEXT: searched,
        # nothing handed off; the next reconnect is quiet again.
        flag = partial(r.mailbox.store_flags, "INBOX", [2], ["\\Flagged"])
        self.assertIn("UID SEARCH", self.reconnect(r, flag))
        self.assertEqual(r.uids, [1, 2, 3, 4])
        self.assertEqual(self.reconnect(r), QUIET)
        self.assertEqual(self.skipped(r), 3)

        # An expunge moves it too.
        expunge = partial(r.mailbox.expunge, "INBOX", [1], only_deleted=False)
        self.assertIn("UID SEARCH", self.reconnect(r, expunge))
        self.assertEqual(self.skipped(r), 3)

    def test_a_stored_value_of_another_uidvalidity_is_not_used(self):
        r = self.modseq_rig()
        highest = r.mailbox.folders["INBOX"].highest_modseq
        r.store.save_modseq(r.provider.tenant, r.provider.provider_id, "INBOX", "6", highest,
                            OWNER)
        # An operator's reconnect reads the store (a lost session would not).
        r.svc.reconnect()
        r.reconnect_after(0)
        self.assertIn("UID SEARCH", r.session.commands)
        self.assertEqual(self.skipped(r), 0)
        self.assertEqual(self.stored(r), ("7", highest))
        self.assertEqual(self.reconnect(r), QUIET)

    def test_recreated_folder_searches(self):
        r = self.modseq_rig()

        def recreate():
            r.mailbox.recreate()
            r.add(1)

        self.assertIn("UID SEARCH", self.reconnect(r, recreate))
        new = r.mailbox.folders["INBOX"]
        self.assertEqual([(m.uid_validity, m.uid) for m in r.pipeline.messages][3:], [("8", 1)])
        self.assertEqual(self.skipped(r), 0)
        self.assertEqual(self.stored(r), ("8", new.highest_modseq))
        self.assertEqual(self.reconnect(r), QUIET)

    def test_nomodseq_searches_and_forgets(self):
        r = self.modseq_rig()
        self.assertIsNotNone(self.stored(r))
        r.mailbox.set_nomodseq()
        self.assertIn("UID SEARCH", self.reconnect(r))
        self.assertIsNone(self.stored(r))
        self.assertIn("UID SEARCH", self.reconnect(r))
        # Mod-sequences back: one pass stores the value, the next is quiet.
        r.mailbox.set_nomodseq(False)
        self.assertIn("UID SEARCH", self.reconnect(r))
        self.assertEqual(self.reconnect(r), QUIET)
        self.assertEqual(self.skipped(r), 1)

    def test_qresync_reconnects(self):
        r = self.modseq_rig(QRESYNC_CAPS, modseq="qresync")
        folder = r.mailbox.folders["INBOX"]
        self.assertEqual(r.session.commands[:2], ["LOGIN", "ENABLE"])
        self.assertEqual(r.svc.snapshot()["modseq"]["mode"], "QRESYNC")
        # Nothing stored yet: (CONDSTORE); then the stored state.
        self.assertEqual(r.session.opened, [("EXAMINE", "INBOX", "(CONDSTORE)")])
        highest = folder.highest_modseq
        self.assertEqual(self.reconnect(r), ["LOGIN", "ENABLE", "LIST", "EXAMINE", "IDLE"])
        self.assertEqual(r.session.opened, [("EXAMINE", "INBOX", f"(QRESYNC (7 {highest}))")])
        # Expunged while away: VANISHED (EARLIER), and a search.
        expunge = partial(r.mailbox.expunge, "INBOX", [1, 2], only_deleted=False)
        self.assertIn("UID SEARCH", self.reconnect(r, expunge))
        self.assertEqual(r.svc.sync.modseq.vanished, 2)
        self.assertEqual(r.session.opened[-1][2], f"(QRESYNC (7 {highest}))")
        self.assertEqual(r.uids, [1, 2, 3])
        self.assertNotIn("UID SEARCH", self.reconnect(r))
        self.assertEqual(r.session.opened[-1][2], f"(QRESYNC (7 {folder.highest_modseq}))")

    def test_without_mod_sequences_every_reconnect_searches(self):
        for caps, setting, mode in ((PLAIN_CAPS, "condstore", None),
                                    (QRESYNC_CAPS, "off", None)):
            r = self.modseq_rig(caps, modseq=setting)
            for _ in range(2):
                commands = self.reconnect(r)
                self.assertIn("UID SEARCH", commands, setting)
                self.assertNotIn("ENABLE", commands, setting)
                self.assertEqual(r.session.opened, [("EXAMINE", "INBOX", "")], setting)
            self.assertEqual(r.svc.snapshot()["modseq"], {"mode": mode, "searchesSkipped": 0})
            self.assertIsNone(self.stored(r))
            r.stop()

    def test_write_back_own_store_costs_one_search(self):
        # The pass stores the HIGHESTMODSEQ its SELECT saw; its own UID
        # STORE (\Seen) moves the server's after that, so the next reconnect
        # searches once (finding nothing), and the one after is quiet.
        r = self.modseq_rig(CONDSTORE_CAPS + ("UIDPLUS",), count=0, write_back="seen")
        commands = self.reconnect(r, partial(r.add, 2))
        self.assertEqual(r.session.opened, [("SELECT", "INBOX", "(CONDSTORE)")])
        self.assertIn("UID STORE", commands)
        self.assertEqual(r.mailbox.flags(1), {"\\Seen"})
        self.assertIn("UID SEARCH", self.reconnect(r))
        self.assertEqual(self.reconnect(r), ["LOGIN", "LIST", "SELECT", "IDLE"])
        self.assertEqual(r.uids, [1, 2])


class ModseqStoreReadTests(RigTestCase):
    """A lost session costs the database no read of the stored
    HIGHESTMODSEQ: the folder knows what it read or wrote."""

    rig_of = FolderModseqTests.modseq_rig
    reconnect = FolderModseqTests.reconnect

    def counted(self, r):
        calls = []
        read = r.store.read_modseq

        def counting(*args):
            calls.append(args[-1])
            return read(*args)

        r.store.read_modseq = counting
        return calls

    def test_lost_sessions_read_nothing_operator_reconnect_reads(self):
        r = self.rig_of()
        reads = self.counted(r)
        self.assertEqual(self.reconnect(r), QUIET)
        self.assertIn("UID FETCH", self.reconnect(r, lambda: r.add(1)))
        self.assertEqual(self.reconnect(r), QUIET)
        self.assertEqual(reads, [])
        r.svc.reconnect()
        r.reconnect_after(0)
        self.assertEqual(reads, ["INBOX"])
        self.assertEqual(r.session.commands, QUIET)

    def test_a_failed_save_is_read_again(self):
        r = self.rig_of()
        reads = self.counted(r)
        save = r.store.save_modseq

        def failing(*args):
            r.store.save_modseq = save
            raise RuntimeError("database down")

        r.store.save_modseq = failing
        r.drop()
        r.add(1)
        r.reconnect_after(r.factory.delay)  # the pass fails at the save
        self.assertNotEqual(r.svc.state, S.IDLING)
        r.reconnect_after(r.factory.delay)
        self.assertEqual(r.svc.state, S.IDLING)
        self.assertEqual(reads, ["INBOX"])
        self.assertEqual(self.reconnect(r), QUIET)
        self.assertEqual(reads, ["INBOX"])
