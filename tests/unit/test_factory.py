"""Tests for :class:`imapsvc.imap.factory.FolderClientFactory`."""

from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.imap.factory import FolderClientFactory, set_keepalive


class Owner:
    def __init__(self):
        self.events = []

    def factory_connecting(self):
        self.events.append("connecting")

    def factory_protocol(self, proto):
        self.events.append("protocol")

    def factory_connection_ended(self, reason, connected):
        self.events.append(("ended", connected))

    def factory_retry_scheduled(self, delay):
        self.events.append(("retry", delay))


class P:
    transport = None


def make(**kw):
    reactor = MemoryReactorClock()
    owner = Owner()
    args = dict(startup_stagger_ms=2000, rand=lambda: 0.25)
    args.update(kw)
    f = FolderClientFactory(owner, reactor, "imap.example.com", 993, P, **args)
    return reactor, owner, f


class FactoryTests(SynchronousTestCase):
    def test_stagger_then_connect_with_timeout(self):
        reactor, owner, f = make(connect_timeout=7.5)
        self.assertEqual(f.start(), 0.5)
        reactor.advance(0.49)
        self.assertEqual(reactor.tcpClients, [])
        reactor.advance(0.01)
        self.assertEqual(reactor.tcpClients[0][:2], ("imap.example.com", 993))
        self.assertEqual(reactor.tcpClients[0][3], 7.5)
        self.assertEqual(owner.events, ["connecting"])
        f.stopTrying()

    def test_implicit_tls_wraps_factory(self):
        from twisted.internet.ssl import optionsForClientTLS

        reactor, owner, f = make(tls_creator=optionsForClientTLS("imap.example.com"))
        f.start(stagger=False)
        reactor.advance(0)
        wrapped = reactor.tcpClients[0][2]
        self.assertIsInstance(wrapped, TLSMemoryBIOFactory)
        self.assertIs(wrapped.wrappedFactory, f)
        f.stopTrying()

    def test_retry_delays_and_reset(self):
        reactor, owner, f = make(
            reconnect_base_ms=1000, reconnect_max_ms=5000, reconnect_jitter_pct=0.5
        )
        f.start(stagger=False)
        reactor.advance(0)
        conn = reactor.connectors[-1]
        delays = []
        for _ in range(5):
            f.clientConnectionFailed(conn, Failure(RuntimeError("refused")))
            delays.append(f.delay)
            reactor.advance(f.delay)
        # nominal 1, 2, 4, 5, 5 jittered to d*(0.5 + 0.5*0.25)
        self.assertEqual(delays, [0.625, 1.25, 2.5, 3.125, 3.125])
        self.assertEqual(f.connect_calls, 6)
        f.resetDelay()
        f.clientConnectionLost(conn, Failure(RuntimeError("lost")))
        # first retry after a healthy session: 0.625 + stagger 2 s * 0.25
        self.assertEqual(f.delay, 1.125)
        f.clientConnectionLost(conn, Failure(RuntimeError("lost")))
        self.assertEqual(f.delay, 1.25)  # then the usual back-off
        f.stopTrying()
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_lost_sessions_reconnect_spread_over_the_stagger_window(self):
        # A server restart drops 200 healthy sessions at once: their first
        # retries spread over base*[0.5, 1] + [0, stagger], not one second.
        import random

        rng = random.Random(7)
        delays = []
        for _ in range(200):
            reactor, owner, f = make(
                reconnect_base_ms=2000, startup_stagger_ms=20000, rand=rng.random
            )
            f.start(stagger=False)
            reactor.advance(0)
            f.clientConnectionLost(reactor.connectors[-1], Failure(RuntimeError("bye")))
            delays.append(f.delay)
            f.stopTrying()
        self.assertGreaterEqual(min(delays), 1.0)
        self.assertLessEqual(max(delays), 22.0)
        per_second = [sum(1 for d in delays if s <= d < s + 1) for s in range(23)]
        self.assertLess(max(per_second), 30, per_second)

    def test_failed_connect_is_not_spread(self):
        reactor, owner, f = make(reconnect_base_ms=2000, startup_stagger_ms=20000)
        f.start(stagger=False)
        reactor.advance(0)
        f.clientConnectionFailed(reactor.connectors[-1], Failure(RuntimeError("refused")))
        self.assertEqual(f.delay, 1.25)
        f.stopTrying()

    def test_next_delay_overrides_once(self):
        reactor, owner, f = make()
        f.start(stagger=False)
        reactor.advance(0)
        f.set_next_delay(12.0)
        f.clientConnectionLost(reactor.connectors[-1], Failure(RuntimeError("x")))
        self.assertEqual(f.delay, 12.0)
        self.assertIn(("retry", 12.0), owner.events)
        reactor.advance(12.0)
        f.clientConnectionLost(reactor.connectors[-1], Failure(RuntimeError("x")))
        self.assertNotEqual(f.delay, 12.0)
        f.stopTrying()

    def test_stop_trying_stops_everything(self):
        reactor, owner, f = make()
        f.start()
        f.stopTrying()
        reactor.advance(3600)
        self.assertEqual(reactor.tcpClients, [])
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_owner_may_stop_before_retry(self):
        reactor, owner, f = make()
        f.start(stagger=False)
        reactor.advance(0)
        owner.factory_connection_ended = lambda reason, connected: f.stopTrying()
        f.clientConnectionLost(reactor.connectors[-1], Failure(RuntimeError("auth")))
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_build_protocol(self):
        reactor, owner, f = make()
        p = f.buildProtocol(None)
        self.assertIs(p.factory, f)
        self.assertIn("protocol", owner.events)


class KeepaliveTests(SynchronousTestCase):
    def test_through_wrapper(self):
        class TCP:
            on = None

            def setTcpKeepAlive(self, v):
                self.on = v

        class Wrapper:
            def __init__(self, t):
                self.transport = t

        tcp = TCP()
        self.assertTrue(set_keepalive(Wrapper(tcp)))
        self.assertEqual(tcp.on, 1)
        self.assertFalse(set_keepalive(object()))
