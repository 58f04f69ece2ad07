"""Tests for :mod:`imapsvc.imap.connect_gate` and the factory's use of it."""

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.imap.connect_gate import ConnectGate
from imapsvc.imap.factory import FolderClientFactory


def slots(ds):
    out = []
    for d in ds:
        d.addCallback(out.append)
    return out


class GateTests(SynchronousTestCase):
    def test_at_most_limit_out_first_come_first_served(self):
        gate = ConnectGate(2, Clock())
        got = slots([gate.acquire() for _ in range(5)])
        self.assertEqual(len(got), 2)
        self.assertEqual((gate.active, gate.waiting), (2, 3))
        got[0].release()
        got[0].release()  # idempotent: frees one slot, not two
        self.assertEqual(len(got), 3)
        self.assertEqual((gate.active, gate.waiting), (2, 2))
        got[1].release()
        got[2].release()
        self.assertEqual(len(got), 5)
        got[3].release()
        got[4].release()
        self.assertEqual((gate.active, gate.waiting, gate.peak), (0, 0, 2))
        self.assertEqual((gate.granted, gate.waited), (5, 3))

    def test_a_newcomer_does_not_overtake_the_queue(self):
        gate = ConnectGate(1, Clock())
        first = slots([gate.acquire()])
        queued = slots([gate.acquire()])
        first[0].release()
        late = slots([gate.acquire()])
        self.assertEqual((len(queued), len(late)), (1, 0))

    def test_cancelled_waiter_leaves_the_queue(self):
        gate = ConnectGate(1, Clock())
        held = slots([gate.acquire()])
        d = gate.acquire()
        d.addErrback(lambda f: None)
        after = slots([gate.acquire()])
        d.cancel()
        self.assertEqual(gate.waiting, 1)
        held[0].release()
        self.assertEqual(len(after), 1)
        self.assertEqual(gate.active, 1)

    def test_waiter_giving_back_at_once_passes_the_slot_on(self):
        gate = ConnectGate(1, Clock())
        held = slots([gate.acquire()])
        gate.acquire().addCallback(lambda slot: slot.release())
        last = slots([gate.acquire()])
        held[0].release()
        self.assertEqual((len(last), gate.active), (1, 1))

    def test_slot_expires_after_hold(self):
        clock = Clock()
        gate = ConnectGate(1, clock, hold_s=30)
        held = slots([gate.acquire()])
        queued = slots([gate.acquire()])
        clock.advance(29.9)
        self.assertEqual(queued, [])
        clock.advance(0.1)
        self.assertEqual(len(queued), 1)
        self.assertEqual(gate.expired, 1)
        held[0].release()  # late: changes nothing
        self.assertEqual(gate.active, 1)
        queued[0].release()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_limit(self):
        gate = ConnectGate(0, Clock())
        got = slots([gate.acquire() for _ in range(100)])
        self.assertEqual((len(got), gate.active), (100, 0))
        got[0].release()
        self.assertEqual(gate.active, 0)


class Owner:
    def __init__(self):
        self.ended = []

    def factory_connecting(self):
        pass

    def factory_protocol(self, proto):
        pass

    def factory_connection_ended(self, reason, connected):
        self.ended.append(connected)

    def factory_retry_scheduled(self, delay):
        pass


class P:
    transport = None


def factories(n, gate, reactor=None, **kw):
    reactor = reactor or MemoryReactorClock()
    args = dict(startup_stagger_ms=0, rand=lambda: 0.0)
    args.update(kw)
    out = [FolderClientFactory(Owner(), reactor, "imap.example.com", 993, P, gate=gate, **args)
           for _ in range(n)]
    return reactor, out


class FactoryGateTests(SynchronousTestCase):
    def test_connects_wait_for_slots_released_when_ready(self):
        gate = ConnectGate(2, Clock())
        reactor, fs = factories(4, gate)
        for f in fs:
            f.start(stagger=False)
        reactor.advance(0)
        self.assertEqual(len(reactor.tcpClients), 2)
        self.assertEqual([f.connect_calls for f in fs], [1, 1, 0, 0])
        fs[0].session_ready()
        self.assertEqual(len(reactor.tcpClients), 3)
        fs[0].session_ready()  # once is enough
        self.assertEqual(len(reactor.tcpClients), 3)
        # an ended connection gives its slot back too
        fs[1].clientConnectionLost(reactor.connectors[1], Failure(RuntimeError("bye")))
        self.assertEqual(len(reactor.tcpClients), 4)
        self.assertEqual(gate.active, 2)
        for f in fs:
            f.stopTrying()
        self.assertEqual((gate.active, gate.waiting), (0, 0))

    def test_reconnect_after_a_failed_connect_waits_again(self):
        gate = ConnectGate(1, Clock())
        reactor, (a, b) = factories(2, gate, reconnect_base_ms=1000)
        a.start(stagger=False)
        reactor.advance(0)
        a.clientConnectionFailed(reactor.connectors[-1], Failure(RuntimeError("refused")))
        self.assertEqual(gate.active, 0)  # failed: no slot held while backing off
        b.start(stagger=False)
        reactor.advance(0)
        self.assertEqual(b.connect_calls, 1)
        reactor.advance(a.delay)
        self.assertEqual(a.connect_calls, 1)  # due, but b holds the only slot
        self.assertEqual(gate.waiting, 1)
        b.session_ready()
        self.assertEqual(a.connect_calls, 2)
        a.stopTrying()
        b.stopTrying()

    def test_stopping_while_waiting_leaves_the_queue(self):
        gate = ConnectGate(1, Clock())
        reactor, (a, b, c) = factories(3, gate)
        for f in (a, b, c):
            f.start(stagger=False)
        reactor.advance(0)
        b.stopTrying()
        self.assertEqual(gate.waiting, 1)
        a.stopTrying()  # gives its slot back: c connects, b never does
        self.assertEqual([f.connect_calls for f in (a, b, c)], [1, 0, 1])
        b.start(stagger=False)
        reactor.advance(0)
        b.start(stagger=False)  # a second start replaces the waiting attempt
        reactor.advance(0)
        self.assertEqual(gate.waiting, 1)
        c.session_ready()
        self.assertEqual(b.connect_calls, 1)
        b.stopTrying()
        c.stopTrying()
        self.assertEqual((gate.active, gate.waiting), (0, 0))

    def test_resolved_attempt_refused_gives_the_slot_back(self):
        from twisted.internet import defer

        gate = ConnectGate(1, Clock())
        reactor, (a, b) = factories(
            2, gate, resolve=lambda host, port: defer.fail(ValueError("private address"))
        )
        a.start(stagger=False)
        b.start(stagger=False)
        reactor.advance(0)
        # both refused before connecting; neither holds the slot afterwards
        self.assertEqual((a.owner.ended, b.owner.ended), ([False], [False]))
        self.assertEqual(gate.active, 0)
        a.stopTrying()
        b.stopTrying()
