"""Poison messages and provider quarantine (issue 11, item 2), on the folder
engine with a fake server, the in-memory store (which passes the store
contract) and a fake clock."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from imapsvc import folder_state as S
from imapsvc.core import poison
from imapsvc.imap.errors import CommandFailed, ConnectionGone, ProtocolViolation
from imapsvc.model import FolderCursor
from imapsvc.store.memory import MemoryStore
from tests.unit.test_folder import OPTIONS, PROVIDER, FakeProto, FakeServer, Rig


class PoisonServer(FakeServer):
    """Answers NO (and the client drops the connection, as FolderIMAPClient
    does) to any FETCH that includes one of ``poison``."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.poison: set[int] = set()
        self.error = lambda: CommandFailed(None, "UID FETCH NO: message is corrupted")


class PoisonProto(FakeProto):
    def fetch_meta(self, uids):
        if self.server.poison & set(uids):
            d = self._reply("FETCH_META", self.server.error(), tuple(uids))
            self.transport.loseConnection()
            return d
        return super().fetch_meta(uids)


class StoreBackedFake(MemoryStore):
    """The memory store as the folder's store; the fake pipeline writes
    cursors through ``cursors`` like before."""

    def __init__(self, clock):
        super().__init__(clock)
        self.cursors: dict = {}
        self.capabilities: list = []
        self.provider = self.add_provider(PROVIDER)

    def read_cursor(self, tenant, provider_id, folder):
        return defer.succeed(self.cursors.get(folder))

    def write_cursor(self, tenant, provider_id, folder, cursor, owner):
        self.cursors[folder] = cursor
        return defer.succeed(None)

    def save_capabilities(self, tenant, provider_id, caps):
        return defer.succeed(None)

    def record_batch(self, tenant, provider_id, folder, owner, records, cursor):
        # Unfenced here (no lease in this rig); the cursor goes where the
        # folder reads it.
        self._providers[(tenant, provider_id)]["lease_owner"] = owner
        self.acquire_lease(tenant, provider_id, owner, 60000)
        d = MemoryStore.record_batch(self, tenant, provider_id, folder, owner, records, cursor)
        if cursor is not None:
            self.cursors[folder] = cursor
        return d


class PoisonRig(Rig):
    def __init__(self, options=OPTIONS):
        server = PoisonServer()
        super().__init__(server=server, options=options)
        self.store = StoreBackedFake(self.reactor)
        self.svc.store = self.store
        self.pipeline.store = self.store

    def _proto(self):
        p = PoisonProto(self.server, self.reactor.connectors[-1])
        self.server.protos.append(p)
        return p


class PoisonTests(SynchronousTestCase):
    def rig(self, **kw):
        rig = PoisonRig(**kw)
        self.addCleanup(self._stop, rig)
        return rig

    def _stop(self, rig):
        if rig.svc.running:
            rig.svc.stopService()

    def reconnect(self, r):
        delay = r.factory.next_delay if hasattr(r.factory, "next_delay") else 60
        for _ in range(100):
            before = r.factory.connect_calls
            r.reactor.advance(1)
            if r.factory.connect_calls > before:
                r.factory.startedConnecting(r.reactor.connectors[-1])
                return r.accept()
        raise AssertionError(f"no reconnect within 100 s ({delay})")

    def test_no_on_fetch_of_one_uid_is_skipped_after_k_failures(self):
        r = self.rig()
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.server.add(6)
        r.server.poison = {3}
        r.start()
        # The chunk 1..6 failed: its UIDs become suspects, nothing counted yet.
        self.assertEqual(r.pipeline.uids, [])
        self.assertEqual(r.store.list_poison().result, [])
        # Next session: one UID per command; 1 and 2 go through, 3 fails.
        r_proto = self.reconnect(r)
        self.assertEqual(r.pipeline.uids, [1, 2])
        self.assertEqual(r.store.cursors["INBOX"].last_uid, "2")
        for attempt in (2, 3):
            [entry] = r.store.list_poison().result
            self.assertEqual((entry.uid, entry.failures, entry.skipped_at),
                             (3, attempt - 1, None))
            r_proto = self.reconnect(r)
        # Third failure: skipped in the ledger with its reason, cursor past it.
        [entry] = r.store.list_poison().result
        self.assertEqual((entry.uid, entry.failures), (3, 3))
        self.assertIsNotNone(entry.skipped_at)
        ledger = r.store.ledger_rows(PROVIDER.tenant, PROVIDER.provider_id)
        [row] = [x for x in ledger if x["uid"] == 3]
        self.assertEqual(row["outcome"], "skipped")
        self.assertTrue(row["reason"].startswith("poison: CommandFailed"), row["reason"])
        self.assertEqual(r.store.cursors["INBOX"].last_uid, "3")
        self.assertEqual(r.svc.poison_skipped, 1)
        # The folder goes on with the next UIDs.
        self.reconnect(r)
        self.assertEqual(r.pipeline.uids, [1, 2, 4, 5, 6])
        self.assertEqual(r.svc.state, S.IDLING)
        r.server.add(1)
        self.assertEqual(r.pipeline.uids, [1, 2, 4, 5, 6, 7])
        del r_proto

    def test_failure_count_survives_a_new_folder_service(self):
        # The count is in the store: a restart (or another replica) goes on
        # counting instead of starting from zero.
        r = self.rig()
        r.store.note_message_failure(PROVIDER.tenant, PROVIDER.provider_id, "INBOX", "7", 1,
                                     "CommandFailed")
        r.store.note_message_failure(PROVIDER.tenant, PROVIDER.provider_id, "INBOX", "7", 1,
                                     "CommandFailed")
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.server.add(1)
        r.server.poison = {1}
        r.start()  # a lone UID is its own chunk: third failure, skipped
        [entry] = r.store.list_poison().result
        self.assertEqual(entry.failures, 3)
        self.assertIsNotNone(entry.skipped_at)
        self.assertEqual(r.store.cursors["INBOX"].last_uid, "1")

    def test_lost_connection_does_not_count(self):
        r = self.rig()
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.server.add(1)
        r.server.poison = {1}
        r.server.error = lambda: ConnectionGone("network")
        r.start()
        self.assertEqual(r.store.list_poison().result, [])

    def test_quarantine_after_repeated_protocol_violations(self):
        r = self.rig()
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.server.add(1)

        # Every session dies with a protocol violation outside any message.
        original = PoisonProto.list_folders

        def bad_list(proto):
            # The session fails first; the folder then closes the connection.
            return defer.fail(ProtocolViolation("server line longer than 16777216 bytes"))

        PoisonProto.list_folders = bad_list
        self.addCleanup(setattr, PoisonProto, "list_folders", original)
        r.start()
        self.reconnect(r)
        self.assertIsNone(r.svc.quarantined_until)
        self.reconnect(r)
        until = r.svc.quarantined_until
        self.assertEqual(until, r.reactor.seconds() + OPTIONS.quarantine_ms / 1000.0)
        self.assertIn("quarantined until", r.svc.last_error)
        self.assertEqual(r.svc.snapshot()["quarantinedUntil"], until)
        # Nothing for hours (minus the jitter), then one more try.
        before = r.factory.connect_calls
        r.reactor.advance(OPTIONS.quarantine_ms / 1000.0 * 0.49)
        self.assertEqual(r.factory.connect_calls, before)
        PoisonProto.list_folders = original
        r.reactor.advance(OPTIONS.quarantine_ms / 1000.0 * 0.6)
        self.assertEqual(r.factory.connect_calls, before + 1)
        r.factory.startedConnecting(r.reactor.connectors[-1])
        r.accept()
        self.assertEqual(r.pipeline.uids, [1])
        self.assertIsNone(r.svc.quarantined_until)
        self.assertEqual(r.svc.violations, 0)


class IsolationTests(SynchronousTestCase):
    def test_suspects_are_chunks_of_their_own(self):
        self.assertEqual(poison.chunk_isolating([1, 2, 3, 4, 5, 6], 2, {3}),
                         [[1, 2], [3], [4, 5], [6]])
        self.assertEqual(poison.chunk_isolating([1, 2], 5, set()), [[1, 2]])

    def test_which_failures_count(self):
        self.assertTrue(poison.counts_against_message(CommandFailed(None, "NO")))
        self.assertTrue(poison.counts_against_message(ProtocolViolation("too big")))
        self.assertFalse(poison.counts_against_message(ConnectionGone("lost")))
        self.assertFalse(poison.counts_against_message(ValueError("store")))
