"""Admin requests routed to the provider's owner: two "replicas" (two
dispatchers with their own fake supervisors) on one memory store, time driven
by a Clock."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from imapsvc.admin_requests import AdminRequests, UnknownProvider
from imapsvc.model import FolderCursor
from imapsvc.store.memory import MemoryStore

T = "11111111-1111-1111-1111-111111111111"
P = "22222222-2222-2222-2222-222222222222"
TTL_MS = 120_000


class FakeSupervisor:
    """The IAdmin side of one replica: records what it was asked to do."""

    def __init__(self, store):
        self.store = store
        self.providers = {}
        self.calls = []

    def reconnect(self, tenant, provider_id):
        self.calls.append(("reconnect", tenant, provider_id))
        return defer.succeed({"success": True, "reconnected": 1})

    def resync(self, tenant, provider_id, folder=None):
        self.calls.append(("resync", tenant, provider_id, folder))
        d = self.store.reset_cursors(tenant, provider_id, folder)
        return d.addCallback(lambda _: {"success": True})

    def test_connection(self, tenant, provider_id):
        self.calls.append(("test-connection", tenant, provider_id))
        return defer.succeed({"success": True})


class AdminRequestTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = MemoryStore(self.clock)
        self.store.add_provider(tenant=T, provider_id=P,
                                folder_state={"INBOX": FolderCursor("7", "42", None)})
        self.sup = {w: FakeSupervisor(self.store) for w in "ab"}
        self.req = {
            w: AdminRequests(self.store, self.clock, w, self.sup[w], poll_s=5, wait_s=10,
                             stale_s=60, check_s=0.1)
            for w in "ab"
        }

    def own(self, worker):
        self.assertTrue(self.successResultOf(
            self.store.acquire_lease(T, P, worker, TTL_MS)))
        self.sup[worker].providers[(T, P)] = object()

    def test_non_owner_request_is_applied_by_owner_on_notify(self):
        self.own("a")
        d = self.req["b"].submit(T, P, "reconnect")
        # b's own pass leaves it alone: a holds the lease.
        self.clock.advance(0)
        self.assertEqual(self.sup["b"].calls, [])
        self.assertNoResult(d)
        self.req["a"].wake()  # the NOTIFY
        self.assertEqual(self.sup["a"].calls, [("reconnect", T, P)])
        self.clock.advance(0.1)
        done = self.successResultOf(d)
        self.assertEqual((done.applied_by, done.requested_by), ("a", "b"))
        self.assertEqual(done.result, {"success": True, "reconnected": 1, "running": True})
        self.assertIsNotNone(done.applied_at)

    def test_timer_is_the_fallback_for_a_missed_notify(self):
        self.own("a")
        self.req["a"].start()
        self.addCleanup(self.req["a"].stop)
        d = self.req["b"].submit(T, P, "resync", folder="INBOX")
        self.clock.advance(4.9)
        self.assertEqual(self.sup["a"].calls, [])
        self.clock.advance(0.1)  # a's 5 s timer
        self.assertEqual(self.sup["a"].calls, [("resync", T, P, "INBOX")])
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d).applied_by, "a")
        self.assertIsNone(self.successResultOf(self.store.read_cursor(T, P, "INBOX")))

    def test_bounded_wait_then_poll(self):
        self.own("a")
        d = self.req["b"].submit(T, P, "reconnect")
        for _ in range(101):
            self.clock.advance(0.1)
        pending = self.successResultOf(d)
        self.assertIsNone(pending.applied_at)
        self.assertEqual(self.sup["a"].calls, [])
        self.req["a"].wake()
        got = self.successResultOf(self.req["b"].get(T, pending.id))
        self.assertEqual(got.applied_by, "a")

    def test_owner_acts_on_its_own_submission_at_once(self):
        self.own("a")
        d = self.req["a"].submit(T, P, "test-connection")
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d).result["success"], True)
        self.assertEqual(self.sup["a"].calls, [("test-connection", T, P)])

    def test_nobody_owns_it_the_receiver_acts_or_says_so(self):
        d = self.req["b"].submit(T, P, "reconnect")
        self.clock.advance(0)
        done = self.successResultOf(d)
        self.assertEqual(done.applied_by, "b")
        self.assertFalse(done.result["success"])
        self.assertIn("not running on any replica", done.result["error"])
        self.assertEqual(self.sup["b"].calls, [])
        d = self.req["b"].submit(T, P, "resync")
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d).result["success"], True)
        self.assertIsNone(self.successResultOf(self.store.read_cursor(T, P, "INBOX")))

    def test_unknown_provider_and_action(self):
        self.failureResultOf(self.req["b"].submit(T, T, "reconnect"), UnknownProvider)
        self.failureResultOf(self.req["b"].submit(T, P, "explode"), ValueError)

    def test_claim_of_a_dead_replica_is_taken_over_when_stale(self):
        self.own("a")
        d = self.req["b"].submit(T, P, "reconnect", wait_s=0)
        self.clock.advance(0)
        request = self.successResultOf(d)
        # a claims and dies before applying it.
        self.assertEqual(len(self.successResultOf(
            self.store.claim_admin_requests("a", 10, 60))), 1)
        self.store.expire_lease(T, P)
        self.req["b"].wake()
        self.assertEqual(self.sup["b"].calls, [])  # claim still fresh
        self.clock.advance(61)
        self.req["b"].wake()
        got = self.successResultOf(self.req["b"].get(T, request.id))
        self.assertEqual(got.applied_by, "b")

    def test_failing_action_is_answered_not_lost(self):
        self.own("a")

        def boom(tenant, provider_id):
            raise RuntimeError("password=hunter2")

        self.sup["a"].reconnect = boom
        d = self.req["a"].submit(T, P, "reconnect")
        self.clock.advance(0)
        done = self.successResultOf(d)
        self.assertEqual(done.result["error"], "internal error")
        self.assertNotIn("hunter2", repr(done.result))
        self.flushLoggedErrors()
