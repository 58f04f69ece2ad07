"""What a folder asks of the store when its session drops and comes back (a
server restart drops every folder at once): the cursor is resumed from what
the folder knows the store holds, the capabilities are written only when
they changed; an operator's reconnect reads the store again."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.model import FolderCursor
from tests.unit.test_folder import IDLE_CAPS, FakeStore, Rig


class CountingStore(FakeStore):
    def __init__(self):
        super().__init__()
        self.reads = 0

    def read_cursor(self, tenant, provider_id, folder):
        self.reads += 1
        return super().read_cursor(tenant, provider_id, folder)


def rig_with_counting_store(test):
    rig = Rig()
    store = CountingStore()
    rig.store = rig.svc.store = rig.pipeline.store = store
    test.addCleanup(lambda: rig.svc.running and rig.svc.stopService())
    return rig


class ReconnectTests(SynchronousTestCase):
    def drop(self, rig):
        rig.proto.transport.loseConnection()
        # lost session: 1.5 s back-off + 1 s stagger spread (rand 0.5)
        return rig.reconnect_after(2.5)

    def test_lost_session_resumes_from_the_known_cursor(self):
        r = rig_with_counting_store(self)
        r.server.add(3)
        r.store.cursors["INBOX"] = FolderCursor("7", "1", None)
        r.start()
        self.assertEqual((r.pipeline.uids, r.store.reads), ([2, 3], 1))
        r.server.add(2, notify=False)  # arrives while the server restarts
        self.drop(r)
        self.assertEqual(r.store.reads, 1)  # not read again
        self.assertEqual(r.pipeline.uids, [2, 3, 4, 5])
        self.assertIn(("SEARCH", 4), r.server.commands)
        # a wake-up while connected reads the store as before
        r.svc.wake()
        self.assertEqual(r.store.reads, 2)

    def test_uncommitted_batch_is_not_trusted(self):
        r = rig_with_counting_store(self)
        r.server.add(3)
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.pipeline.fail_with = RuntimeError("database down")
        r.start()
        self.drop(r)  # the batch may or may not have committed: read again
        self.assertEqual(r.store.reads, 2)
        self.assertEqual(r.pipeline.uids, [1, 2, 3])

    def test_operator_reconnect_reads_the_store(self):
        r = rig_with_counting_store(self)
        r.server.add(3)
        r.store.cursors["INBOX"] = FolderCursor("7", "3", None)
        r.start()
        # an operator resets the cursor offline, then asks for a reconnect
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.svc.reconnect()
        r.reactor.advance(0)
        r.factory.startedConnecting(r.reactor.connectors[-1])
        r.accept()
        self.assertEqual(r.store.reads, 2)
        self.assertEqual(r.pipeline.uids, [1, 2, 3])
        # the next lost session trusts memory again
        self.drop(r)
        self.assertEqual(r.store.reads, 2)

    def test_new_uidvalidity_after_reconnect_reads_the_store(self):
        r = rig_with_counting_store(self)
        r.server.add(3)
        r.store.cursors["INBOX"] = FolderCursor("7", "3", None)
        r.start()
        r.server.recreate()
        r.server.add(2, notify=False)
        self.drop(r)
        # not a plain resume: the store's dates decide the new start
        self.assertEqual(r.store.reads, 2)
        self.assertEqual(r.store.cursors["INBOX"].uid_validity, "8")

    def test_capabilities_written_only_when_changed(self):
        r = rig_with_counting_store(self)
        r.start()
        self.drop(r)
        self.drop(r)
        self.assertEqual(len(r.store.capabilities), 1)
        r.server.caps = {**IDLE_CAPS, b"ID": None}
        self.drop(r)
        self.assertEqual(len(r.store.capabilities), 2)
        self.assertIn("ID", r.store.capabilities[-1])

    def test_failed_capabilities_write_is_retried_at_the_next_login(self):
        r = rig_with_counting_store(self)
        save = r.store.save_capabilities
        r.store.save_capabilities = lambda *a, **k: defer.fail(RuntimeError("db away"))
        r.start()
        r.store.save_capabilities = save
        self.drop(r)
        self.assertEqual(len(r.store.capabilities), 1)


class ConnectGateTests(SynchronousTestCase):
    def test_slot_held_until_the_folder_is_found(self):
        import attr
        from twisted.internet.task import Clock

        from imapsvc.imap.connect_gate import ConnectGate
        from tests.unit.test_folder import OPTIONS

        gate = ConnectGate(1, Clock())
        options = attr.evolve(OPTIONS, connect_gate=gate)
        a, b = Rig(options=options), Rig(options=options)
        for rig in (a, b):
            self.addCleanup(lambda r=rig: r.svc.running and r.svc.stopService())
        build = a.factory.protocol_factory

        def holding_list():
            proto = build()
            proto.hold = {"LIST"}
            return proto

        a.factory.protocol_factory = holding_list
        a.start()
        b.svc.startService()
        b.reactor.advance(1.0)
        # a is logged in but has not found its folder: b waits for the slot
        self.assertEqual((a.factory.connect_calls, b.factory.connect_calls), (1, 0))
        self.assertEqual(gate.waiting, 1)
        a.proto.release()
        self.assertEqual(b.factory.connect_calls, 1)
        b.accept()
        self.assertEqual((gate.active, gate.waiting), (0, 0))
        self.assertEqual(b.svc.state, "Idling")


class EmptyFolderReconnectTests(SynchronousTestCase):
    def test_empty_folder_cursor_zero_is_known_too(self):
        # An empty folder's stored cursor is '0' (a rescan from UID 1): the
        # same plan whether read or known, so nothing is read after a drop.
        r = rig_with_counting_store(self)
        r.start()
        self.assertEqual(r.store.cursors["INBOX"].last_uid, "0")
        r.proto.transport.loseConnection()
        r.reconnect_after(2.5)
        self.assertEqual(r.store.reads, 1)
        r.server.add(2)
        self.assertEqual(r.pipeline.uids, [1, 2])
