"""What a folder asks of the store when its session drops and comes back (a
server restart drops every folder at once): the cursor is resumed from what
the folder knows the store holds, the capabilities are written only when
they changed; an operator's reconnect reads the store again. And the
connect gate: a folder's slot is held until its folder is found. On the
verified fakes of :mod:`tests.folder_helpers`."""

from __future__ import annotations

import collections

import attr
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.imap.connect_gate import ConnectGate
from imapsvc.model import FolderCursor
from tests.folder_helpers import OPTIONS, FolderRig


def counted(rig):
    """Count the folder's store calls by name (wrapping the memory store's)."""
    calls = collections.Counter()
    for name in ("read_cursor", "read_backfill", "save_capabilities"):
        method = getattr(rig.store, name)

        def wrapper(*args, _name=name, _method=method, **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)

        setattr(rig.store, name, wrapper)
    return calls


class ReconnectTests(SynchronousTestCase):
    def rig(self, **kw):
        rig = FolderRig(**kw)
        self.addCleanup(rig.stop)
        return rig

    def drop_and_return(self, rig):
        rig.drop(bye="restarting")
        # lost session: 1.5 s back-off + 1 s stagger spread (rand 0.5)
        return rig.reconnect_after(2.5)

    def test_lost_session_resumes_from_the_known_cursor(self):
        r = self.rig()
        r.add(3)
        r.set_cursor(FolderCursor("7", "1", None))
        calls = counted(r)
        r.start()
        self.assertEqual((r.uids, calls["read_cursor"], calls["read_backfill"]), ([2, 3], 1, 1))
        r.mailbox.append(b"Subject: a\r\n\r\nx\r\n", announce=False)  # while it restarts
        r.mailbox.append(b"Subject: b\r\n\r\ny\r\n", announce=False)
        self.drop_and_return(r)
        self.assertEqual((calls["read_cursor"], calls["read_backfill"]), (1, 1))  # not read
        self.assertEqual(r.uids, [2, 3, 4, 5])
        # a wake-up while connected reads the store as before
        r.svc.wake()
        self.assertEqual(calls["read_cursor"], 2)

    def test_empty_folder_cursor_zero_is_known_too(self):
        # An empty folder's stored cursor is '0' (a rescan from UID 1): the
        # same plan whether read or known.
        r = self.rig()
        calls = counted(r)
        r.start()
        self.drop_and_return(r)
        self.assertEqual(calls["read_cursor"], 1)
        self.assertEqual(r.cursor().last_uid, "0")
        r.add(2)
        self.assertEqual(r.uids, [1, 2])

    def test_uncommitted_batch_is_not_trusted(self):
        r = self.rig()
        r.add(3)
        r.set_cursor(FolderCursor("7", "0", None))
        calls = counted(r)
        r.pipeline.fail_next(RuntimeError("database down"))
        r.start()
        r.reconnect_after(2.5)  # the batch may have committed or not: read again
        self.assertEqual(calls["read_cursor"], 2)
        self.assertEqual(r.uids, [1, 2, 3])

    def test_operator_reconnect_reads_the_store(self):
        r = self.rig()
        r.add(3)
        r.set_cursor(FolderCursor("7", "3", None))
        calls = counted(r)
        r.start()
        # an operator resets the cursor offline, then asks for a reconnect
        r.set_cursor(FolderCursor("7", "0", None))
        r.svc.reconnect()
        r.reconnect_after(0)
        self.assertEqual(calls["read_cursor"], 2)
        self.assertEqual(r.uids, [1, 2, 3])
        # the next lost session trusts memory again
        self.drop_and_return(r)
        self.assertEqual(calls["read_cursor"], 2)

    def test_new_uidvalidity_after_reconnect_reads_the_store(self):
        r = self.rig()
        r.add(3)
        r.set_cursor(FolderCursor("7", "3", None))
        calls = counted(r)
        r.start()
        r.mailbox.recreate()
        self.drop_and_return(r)
        # not a plain resume: the store's dates decide the new start
        self.assertEqual(calls["read_cursor"], 2)
        self.assertNotEqual(r.cursor().uid_validity, "7")

    def test_capabilities_written_only_when_changed(self):
        r = self.rig()
        calls = counted(r)
        r.start()
        self.drop_and_return(r)
        self.drop_and_return(r)
        self.assertEqual(calls["save_capabilities"], 1)
        r.mailbox.capability_words.append("XFOO")
        self.drop_and_return(r)
        self.assertEqual(calls["save_capabilities"], 2)

    def test_failed_capabilities_write_is_retried_at_the_next_login(self):
        r = self.rig()
        calls = counted(r)
        save = r.store.save_capabilities
        r.store.save_capabilities = lambda *a, **k: defer.fail(RuntimeError("db away"))
        r.start()
        r.store.save_capabilities = save
        self.drop_and_return(r)
        self.assertEqual(calls["save_capabilities"], 1)
        self.flushLoggedErrors(RuntimeError)


class ConnectGateTests(SynchronousTestCase):
    def test_slot_held_until_the_folder_is_found(self):
        gate = ConnectGate(1, Clock())
        options = attr.evolve(OPTIONS, connect_gate=gate)
        a, b = FolderRig(options=options), FolderRig(options=options)
        for rig in (b, a):
            self.addCleanup(rig.stop)
        a.svc.startService()
        a.reactor.advance(1.0)
        b.svc.startService()
        b.reactor.advance(1.0)
        # a connects; b waits for the slot until a has found its folder
        self.assertTrue(a.attempt_pending)
        self.assertFalse(b.attempt_pending)
        self.assertEqual(gate.waiting, 1)
        a.accept()
        self.assertEqual(a.svc.state, "Idling")
        self.assertTrue(b.attempt_pending)
        b.accept()
        self.assertEqual((gate.active, gate.waiting), (0, 0))
        self.assertEqual(b.svc.state, "Idling")


class ListTests(SynchronousTestCase):
    def rig(self, patterns, **kw):
        from imapsvc.testing import FakeIMAPSession

        class Recording(FakeIMAPSession):
            def list_folders(self, pattern="*"):
                patterns.append(pattern)
                return super().list_folders(pattern)

        rig = FolderRig(session_factory=lambda box: Recording(box, tls=True), **kw)
        self.addCleanup(rig.stop)
        for name in ("Sales", "Support", "Support/Old"):
            rig.mailbox.add_folder(name)
        return rig

    def test_reconnect_lists_only_the_known_folder(self):
        patterns = []
        r = self.rig(patterns, folder="support")
        r.start()
        r.drop(bye="restarting")
        r.reconnect_after(2.5)
        self.assertEqual(patterns, ["*", "Support"])
        self.assertEqual(r.svc.state, "Idling")
        self.assertEqual(r.svc.server_name, "Support")

    def test_folder_gone_since_lists_everything(self):
        patterns = []
        r = self.rig(patterns, folder="Support")
        r.start()
        del r.mailbox.folders["Support"]
        r.drop(bye="restarting")
        r.reconnect_after(2.5)
        self.assertEqual(patterns, ["*", "Support", "*"])
        self.assertEqual(r.svc.state, "Backoff")
        self.assertIn("FolderNotFound", r.svc.last_error)


class QuietReconnectTests(SynchronousTestCase):
    def test_a_bye_ends_the_session_in_one_line(self):
        from twisted.logger import LogLevel, formatEvent, globalLogPublisher

        lines = []

        def observe(event):
            if event.get("log_level") in (LogLevel.info, LogLevel.warn, LogLevel.error):
                lines.append(formatEvent(event))

        r = FolderRig()
        self.addCleanup(r.stop)
        r.start()
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        r.drop(bye="server shutting down")
        about_bye = [line for line in lines if "BYE" in line]
        self.assertEqual(len(about_bye), 1, lines)
        self.assertIn("session ended after BYE", about_bye[0])
        self.assertFalse([line for line in lines if "session failed" in line])
