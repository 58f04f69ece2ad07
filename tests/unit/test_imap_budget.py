"""The process-wide budget for IMAP bytes in flight: over budget, reading
pauses (transport backpressure) instead of failing; no deadlock; deadlines
do not run while paused. Byte-level on string transports."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from imapsvc.core.wire_caps import (
    DEFAULT_BUDGET_BYTES,
    MIB,
    derive_caps,
    inflight_budget,
    parse_memory_limit,
)
from imapsvc.imap.budget import ByteBudget
from imapsvc.imap.errors import CommandTimeout
from imapsvc.imap.protocol import FolderIMAPClient
from tests.unit.test_imap_protocol import GREETING, sent


def client_on(budget, clock, timeout=30.0):
    client = FolderIMAPClient(clock, timeout, inactivity_timeout=300.0, budget=budget)
    transport = StringTransport()
    directlyProvides(transport, ISSLTransport)
    client.makeConnection(transport)
    client.dataReceived(GREETING)
    sent(transport)
    return client, transport


def paused(transport) -> bool:
    return transport.producerState == "paused"


class BudgetBackpressureTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.budget = ByteBudget(1000)
        self.a, self.ta = client_on(self.budget, self.clock)
        self.b, self.tb = client_on(self.budget, self.clock)
        self.addCleanup(self._close)

    def later(self, d):
        """A Deferred the test may leave unfired: its cleanup failure is fine."""
        self.addCleanup(d.addErrback, lambda f: None)
        return d

    def _close(self):
        for client in (self.a, self.b):
            if not client._closed:
                client.connectionLost(None)
        for call in self.clock.getDelayedCalls():
            call.cancel()

    def test_greeting_and_answered_commands_hold_nothing(self):
        self.assertEqual(self.budget.used, 0)
        d = self.a.noop()
        self.a.dataReceived(b"* 3 EXISTS\r\n0001 OK done\r\n")
        self.successResultOf(d)
        self.assertEqual(self.budget.used, 0)

    def test_second_reader_paused_then_resumed(self):
        da = self.a.fetch_full([1])
        db = self.b.fetch_full([2])
        self.a.dataReceived(b"* 1 FETCH (UID 1 BODY[] {900}\r\n" + b"a" * 800)
        self.assertFalse(paused(self.ta))
        self.b.dataReceived(b"* 1 FETCH (UID 2 BODY[] {300}\r\n" + b"b" * 200)
        # Over budget: B is paused, A (the other reader) keeps going.
        self.assertTrue(paused(self.tb))
        self.assertFalse(paused(self.ta))
        self.assertEqual(self.budget.pauses, 1)
        # A paused connection's silence is ours: no command deadline fires.
        self.clock.advance(25)
        self.a.dataReceived(b"a" * 50)
        self.clock.advance(25)
        self.assertFalse(self.tb.disconnecting)
        self.assertNoResult(db)
        self.a.dataReceived(b"a" * 50 + b")\r\n0001 OK done\r\n")
        self.assertEqual(self.successResultOf(da), {1: b"a" * 900})
        # A's answer released its bytes: B reads again, nothing failed.
        self.assertFalse(paused(self.tb))
        self.b.dataReceived(b"b" * 100 + b")\r\n0001 OK done\r\n")
        self.assertEqual(self.successResultOf(db), {2: b"b" * 300})
        self.assertEqual(self.budget.used, 0)

    def test_deadline_runs_again_after_resume(self):
        self.later(self.a.fetch_full([1]))
        db = self.b.fetch_full([2])
        self.a.dataReceived(b"* 1 FETCH (UID 1 BODY[] {2000}\r\n" + b"a" * 900)
        self.b.dataReceived(b"* 1 FETCH (UID 2 BODY[] {300}\r\n" + b"b" * 200)
        self.assertTrue(paused(self.tb))
        self.a.connectionLost(None)  # A gone: B is the only holder left
        self.assertFalse(paused(self.tb))
        self.clock.advance(31)
        self.failureResultOf(db, CommandTimeout)

    def test_lone_reader_is_never_paused(self):
        # One reader holding more than the budget is let through (bounded by
        # its own per-command caps): pausing it could never be undone.
        d = self.a.fetch_full([1])
        self.a.dataReceived(b"* 1 FETCH (UID 1 BODY[] {3000}\r\n" + b"a" * 3000 + b")\r\n")
        self.assertFalse(paused(self.ta))
        self.a.dataReceived(b"0001 OK done\r\n")
        self.assertEqual(len(self.successResultOf(d)[1]), 3000)

    def test_every_holder_paused_is_impossible(self):
        c, tc = client_on(self.budget, self.clock)
        self.addCleanup(lambda: c._closed or c.connectionLost(None))
        for client in (self.a, self.b, c):
            self.later(client.fetch_full([1]))
        self.a.dataReceived(b"* 1 FETCH (UID 1 BODY[] {5000}\r\n" + b"a" * 900)
        self.b.dataReceived(b"* 1 FETCH (UID 1 BODY[] {5000}\r\n" + b"b" * 600)
        c.dataReceived(b"* 1 FETCH (UID 1 BODY[] {5000}\r\n" + b"c" * 500)
        self.assertEqual([paused(t) for t in (self.ta, self.tb, tc)], [False, True, True])
        # A dies: the oldest paused one (B) is resumed although over budget.
        self.a.connectionLost(None)
        self.assertEqual([paused(t) for t in (self.tb, tc)], [False, True])
        self.assertLessEqual(self.budget.paused, 1)

    def test_idle_traffic_is_released_per_response(self):
        self.later(self.a.idle(lambda n: None))
        self.a.dataReceived(b"+ idling\r\n")
        for n in range(200):
            self.a.dataReceived(b"* OK Still here %d\r\n" % n)
        self.assertEqual(self.budget.used, 0)

    def test_bytes_after_a_literal_are_charged_once(self):
        """The rest of a read after a literal costs what it costs when it
        arrives in a read of its own (it was once charged twice)."""
        head = b"* 1 FETCH (UID 1 BODY[] {3}\r\nabc"
        tail = b" FLAGS ())\r\n* 2 EXISTS\r\n"
        da = self.later(self.a.fetch_full([1]))
        db = self.later(self.b.fetch_full([1]))
        self.a.dataReceived(head + tail)
        self.b.dataReceived(head)
        self.b.dataReceived(tail)
        self.assertEqual(self.budget.held(self.a), self.budget.held(self.b))
        for client, d in ((self.a, da), (self.b, db)):
            client.dataReceived(b"0001 OK done\r\n")
            self.assertEqual(self.successResultOf(d), {1: b"abc"})
        self.assertEqual(self.budget.used, 0)

    def test_partial_line_is_charged(self):
        self.later(self.a.noop())
        self.a.dataReceived(b"* 1 EXISTS" + b" x" * 100)
        self.assertGreater(self.budget.held(self.a), 200)


class DerivedCapsTests(SynchronousTestCase):
    def test_caps_follow_the_settings(self):
        caps = derive_caps(25 * MIB, 2 * MIB, 100, 8 * MIB)
        self.assertEqual(caps.max_literal, 26 * MIB)
        self.assertEqual(caps.max_response, 27 * MIB)
        self.assertEqual(caps.max_command, 25 * MIB + 25 * MIB + MIB)
        smaller = derive_caps(5 * MIB, 1 * MIB, 10, 8 * MIB)
        self.assertEqual(smaller.max_literal, 6 * MIB)
        self.assertLess(smaller.max_command, 64 * MIB)

    def test_protocol_uses_them(self):
        caps = derive_caps(1 * MIB, 1024, 2, 4096)
        client = FolderIMAPClient(Clock(), 30.0, caps=caps)
        self.assertEqual(client.max_literal_bytes, 2 * MIB)
        self.assertEqual(FolderIMAPClient.max_literal_bytes, 64 * MIB)  # class default kept

    def test_budget_from_memory_limit(self):
        self.assertEqual(inflight_budget(0, 1024 * MIB), 256 * MIB)
        self.assertEqual(inflight_budget(0, None), DEFAULT_BUDGET_BYTES)
        self.assertEqual(inflight_budget(5 * MIB, 1024 * MIB), 5 * MIB)
        self.assertEqual(inflight_budget(0, 8 * MIB), 16 * MIB)

    def test_cgroup_files(self):
        self.assertEqual(parse_memory_limit("1073741824\n"), 1024 * MIB)
        self.assertIsNone(parse_memory_limit("max\n"))
        self.assertIsNone(parse_memory_limit("9223372036854771712"))
        self.assertIsNone(parse_memory_limit(None))


class _Holder:
    def __init__(self):
        self.paused = False

    def budget_pause(self):
        assert not self.paused
        self.paused = True

    def budget_resume(self):
        assert self.paused
        self.paused = False


class BudgetPropertyTests(SynchronousTestCase):
    """Any interleaving of reads, answers and lost connections: the books
    balance, and never is every connection holding bytes paused (deadlock)."""

    @settings(max_examples=300, deadline=None)
    @given(
        capacity=st.integers(1, 5000),
        steps=st.lists(
            st.tuples(st.sampled_from(["charge", "release", "forget"]), st.integers(0, 4),
                      st.integers(1, 3000)),
            max_size=60,
        ),
    )
    def test_no_deadlock_and_balanced(self, capacity, steps):
        budget = ByteBudget(capacity)
        holders = [_Holder() for _ in range(5)]
        gone: set[int] = set()
        for action, index, n in steps:
            if index in gone:
                continue
            holder = holders[index]
            if action == "charge":
                if holder.paused:
                    continue  # a paused connection reads nothing
                budget.charge(holder, n)
            elif action == "release":
                budget.release(holder)
            else:
                budget.forget(holder)
                gone.add(index)
            live = [h for i, h in enumerate(holders) if i not in gone]
            self.assertEqual(budget.used, sum(budget.held(h) for h in live))
            holding = [h for h in live if budget.held(h) > 0]
            if holding:
                self.assertFalse(all(h.paused for h in holding), "every holder paused")
            self.assertEqual(budget.paused, sum(h.paused for h in live))
            if budget.used <= budget.capacity:
                self.assertEqual(budget.paused, 0)
        for i, h in enumerate(holders):
            if i not in gone:
                budget.release(h)
        self.assertEqual((budget.used, budget.paused), (0, 0))
