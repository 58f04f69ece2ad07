"""PostgresStore recovers from lost database connections, whenever they go.

The store talks to the real PostgreSQL through :class:`tests.rig.tcpproxy.TcpProxy`,
so a test can cut live connections, refuse or black-hole new ones, and let
them through again. Each store gets its own ``application_name``; counting
``pg_stat_activity`` rows under that name proves that no connection leaks.

Every wait polls with the reactor and has a deadline; nothing sleeps.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

from psycopg2.extensions import make_dsn
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from imapsvc.interfaces import StoreUnavailable
from imapsvc.store.postgres import PostgresStore
from tests.rig import postgres as rig
from tests.rig.tcpproxy import TcpProxy

POOL = 3
#: Seconds the pool may take to be whole again once the database is back:
#: the redial backoff is capped at 2 s.
RECOVERY_S = 4.0


def _tick(seconds: float = 0.05) -> defer.Deferred:
    return deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check()`` (plain or Deferred) until it returns something true."""
    deadline = reactor.seconds() + timeout
    while True:
        result = yield defer.maybeDeferred(check)
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        yield _tick()


class RecoveryTestBase(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dsn = rig.database_dsn()
        rig.truncate_all(self.dsn)
        self.proxy = TcpProxy(reactor)
        port = self.proxy.start()
        self.addCleanup(self.proxy.stop)
        self.app = f"imapsvc-rt-{secrets.token_hex(4)}"
        self.proxied = make_dsn(self.dsn, host="127.0.0.1", port=port)

    def make_store(self, **kwargs: Any) -> PostgresStore:
        kwargs.setdefault("pool_size", POOL)
        kwargs.setdefault("connect_timeout", 2.0)
        store = PostgresStore(self.proxied, reactor, application_name=self.app, **kwargs)
        self.addCleanup(store.stop)
        return store

    def backends(self, listening: bool = False) -> list[int]:
        """This store's server processes (pool only, or LISTEN only)."""
        rows = rig.execute(
            self.dsn,
            "SELECT pid, query FROM pg_stat_activity WHERE application_name = %s",
            (self.app,))
        return sorted(pid for pid, query in rows
                      if (query or "").startswith("LISTEN") == listening)

    def terminate(self, pids: list[int]) -> None:
        rig.execute(self.dsn, "SELECT pg_terminate_backend(pid) FROM unnest(%s) AS pid",
                    (pids,))

    @defer.inlineCallbacks
    def all_operations(self, store: PostgresStore) -> Any:
        """Several kinds of operation, more of them than the pool has
        connections, at once: every pool member must be usable."""
        results = yield defer.gatherResults([
            store.ping(),
            store.list_active_providers(),
            store.fetch_outbox(10),
            store.outbox_stats(),
            store.get_secret("00000000-0000-0000-0000-000000000000", "nope"),
            store.put_secret("00000000-0000-0000-0000-000000000000", "n", b"x"),
        ] * 2, consumeErrors=True)
        return results

    @defer.inlineCallbacks
    def healed(self, store: PostgresStore, since: float) -> Any:
        """Every operation succeeds within RECOVERY_S of ``since``, and the
        pool is back to exactly POOL connections (none leaked). Failures
        seen on the way are StoreUnavailable only."""
        failures: list[Exception] = []

        @defer.inlineCallbacks
        def attempt() -> Any:
            try:
                yield self.all_operations(store)
            except defer.FirstError as e:
                failures.append(e.subFailure.value)
                return False
            return True

        yield until(attempt, RECOVERY_S, "every operation to succeed")
        self.assertLess(reactor.seconds() - since, RECOVERY_S)
        for failure in failures:
            self.assertIsInstance(failure, StoreUnavailable)
        # Another full round: no flakiness once healed.
        yield self.all_operations(store)
        yield until(lambda: len(self.backends()) == POOL, RECOVERY_S,
                    f"{POOL} backends")
        return failures


class PoolRecoveryTests(RecoveryTestBase):
    @defer.inlineCallbacks
    def test_start_refused_then_retried_on_the_same_store(self) -> Any:
        """The service's start-up loop calls start() again on the same store
        after a failure (and /readyz pings in between): the second start must
        give a fully working pool, not one that fails every query."""
        store = self.make_store()
        self.proxy.pause()
        yield self.assertFailure(store.start(), StoreUnavailable)
        # More pings than connections: the old pool flagged each member
        # "dead" with a stopped detector here and failed forever after.
        for _ in range(POOL + 2):
            yield self.assertFailure(store.ping(), StoreUnavailable)
        self.assertEqual(self.backends(), [])
        self.proxy.resume()
        yield store.start()
        yield self.healed(store, reactor.seconds())

    @defer.inlineCallbacks
    def test_connections_cut_during_start(self) -> Any:
        """Connections die half-way through the handshake: start() fails
        cleanly (nothing half-built stays open) and the next start() works."""
        store = self.make_store()
        self.proxy.hold()
        starting = store.start()
        yield until(lambda: len(self.proxy.live) == POOL, 5, "connections held")
        self.proxy.cut()
        yield self.assertFailure(starting, StoreUnavailable)
        self.assertEqual(self.proxy.live, set())
        yield self.assertFailure(store.ping(), StoreUnavailable)
        self.proxy.resume()
        yield store.start()
        yield self.healed(store, reactor.seconds())

    @defer.inlineCallbacks
    def test_some_connections_killed_during_start(self) -> Any:
        """Backends terminated right after start-up (before any use): the
        pool replaces them on its own."""
        store = self.make_store()
        yield store.start()
        before = self.backends()
        self.assertEqual(len(before), POOL)
        self.terminate(before[:2])
        since = reactor.seconds()
        yield self.healed(store, since)
        self.assertFalse(set(before[:2]) & set(self.backends()))

    @defer.inlineCallbacks
    def test_start_black_holed_times_out_and_leaves_nothing(self) -> Any:
        store = self.make_store(connect_timeout=0.5)
        self.proxy.hold()
        t0 = reactor.seconds()
        yield self.assertFailure(store.start(), StoreUnavailable)
        self.assertLess(reactor.seconds() - t0, 2.0)
        # Our side closed every half-open socket.
        yield until(lambda: not self.proxy.live, 2, "held sockets closed by the client")

    @defer.inlineCallbacks
    def test_idle_connections_cut(self) -> Any:
        store = self.make_store()
        yield store.start()
        yield self.all_operations(store)
        before = self.backends()
        self.assertEqual(self.proxy.cut(), POOL)
        failures = yield self.healed(store, reactor.seconds())
        self.assertLessEqual(len(failures), 1)
        self.assertFalse(set(before) & set(self.backends()))

    @defer.inlineCallbacks
    def test_idle_connections_terminated(self) -> Any:
        store = self.make_store()
        yield store.start()
        before = self.backends()
        self.terminate(before)
        yield self.healed(store, reactor.seconds())
        self.assertFalse(set(before) & set(self.backends()))

    @defer.inlineCallbacks
    def test_cut_mid_query(self) -> Any:
        """Only the operation in flight fails, with StoreUnavailable."""
        store = self.make_store()
        yield store.start()
        slow = store._query("SELECT pg_sleep(30)")
        rows = yield until(lambda: rig.execute(
            self.dsn, "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
            " AND query LIKE 'SELECT pg_sleep%%' AND state = 'active'", (self.app,)),
            5, "the slow query to run")
        t0 = reactor.seconds()
        self.proxy.cut()
        yield self.assertFailure(slow, StoreUnavailable)
        self.assertLess(reactor.seconds() - t0, 2.0)
        # The server does not notice a vanished client inside pg_sleep; end
        # that orphan so the backend count below measures only our pool.
        self.terminate([rows[0][0]])
        yield self.healed(store, t0)

    @defer.inlineCallbacks
    def test_terminated_mid_query(self) -> Any:
        store = self.make_store()
        yield store.start()
        slow = store._query("SELECT pg_sleep(30)")
        rows = yield until(lambda: rig.execute(
            self.dsn, "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
            " AND query LIKE 'SELECT pg_sleep%%' AND state = 'active'", (self.app,)),
            5, "the slow query to run")
        t0 = reactor.seconds()
        self.terminate([rows[0][0]])
        yield self.assertFailure(slow, StoreUnavailable)
        yield self.healed(store, t0)

    @defer.inlineCallbacks
    def test_unreachable_for_twelve_seconds(self) -> Any:
        """An outage: live connections cut, new ones refused for 12 s.
        Meanwhile operations fail fast with StoreUnavailable; a few seconds
        after the database is reachable again everything works."""
        store = self.make_store()
        yield store.start()
        self.proxy.pause()
        self.proxy.cut()
        outage_end = reactor.seconds() + 12
        seen = 0
        while reactor.seconds() < outage_end:
            t0 = reactor.seconds()
            try:
                yield store.ping()
            except StoreUnavailable:
                seen += 1
            else:
                self.fail("ping succeeded while the database was unreachable")
            self.assertLess(reactor.seconds() - t0, 1.0, "operations must fail fast")
            yield _tick(0.5)
        self.assertGreater(seen, 10)
        self.assertEqual(self.backends(), [])
        # Redials were refused and closed, not piled up.
        self.assertLessEqual(len(self.proxy.live), POOL)
        self.proxy.resume()
        yield self.healed(store, reactor.seconds())

    @defer.inlineCallbacks
    def test_black_hole_outage(self) -> Any:
        """New connections hang (no answer at all): every redial times out
        and is retried; once the network is back the pool heals."""
        store = self.make_store(connect_timeout=0.5)
        yield store.start()
        self.proxy.hold()
        self.proxy.cut()
        yield until(lambda: self.proxy.accepted >= 2 * POOL + POOL, 10,
                    "redials to time out and retry")
        yield self.assertFailure(store.ping(), StoreUnavailable)
        self.proxy.resume()
        self.proxy.cut()  # the held attempts
        yield self.healed(store, reactor.seconds())
        yield until(lambda: len(self.proxy.live) == POOL, 2, "no leaked sockets")

    @defer.inlineCallbacks
    def test_stop_during_outage_leaves_nothing(self) -> Any:
        store = self.make_store()
        yield store.start()
        self.proxy.pause()
        self.proxy.cut()
        yield until(lambda: self.proxy.accepted > POOL, 5, "a redial attempt")
        yield store.stop()
        yield self.assertFailure(store.ping(), StoreUnavailable)
        accepted = self.proxy.accepted
        yield _tick(2.5)  # longer than the backoff cap: no redial after stop
        self.assertEqual(self.proxy.accepted, accepted)


class ListenRecoveryTests(RecoveryTestBase):
    @defer.inlineCallbacks
    def listening(self) -> Any:
        self.store = self.make_store()
        yield self.store.start()
        self.got: defer.DeferredQueue = defer.DeferredQueue()
        self.resyncs = 0

        def on_reconnect() -> None:
            self.resyncs += 1

        self.listener = yield self.store.listen("imapsvc_test_recovery", self.got.put,
                                                on_reconnect=on_reconnect)
        yield until(lambda: len(self.backends(listening=True)) == 1, 5, "LISTEN backend")

    @defer.inlineCallbacks
    def notified(self, payload: str) -> Any:
        rig.execute(self.dsn, "SELECT pg_notify('imapsvc_test_recovery', %s)", (payload,))
        got = yield self.got.get().addTimeout(5, reactor)
        self.assertEqual(got, payload)

    @defer.inlineCallbacks
    def test_cut_reconnects_and_resyncs(self) -> Any:
        yield self.listening()
        yield self.notified("before")
        self.proxy.cut()
        yield until(lambda: self.resyncs == 1, RECOVERY_S, "on_reconnect")
        yield self.notified("after")
        self.assertEqual(len(self.backends(listening=True)), 1)
        self.assertEqual(self.resyncs, 1)

    @defer.inlineCallbacks
    def test_outage_then_back(self) -> Any:
        yield self.listening()
        self.proxy.pause()
        self.proxy.cut()
        yield until(lambda: self.proxy.accepted >= POOL + 1 + 4, 10, "refused redials")
        self.assertEqual(self.resyncs, 0)
        self.proxy.resume()
        since = reactor.seconds()
        yield until(lambda: self.resyncs == 1, RECOVERY_S, "on_reconnect")
        self.assertLess(reactor.seconds() - since, RECOVERY_S)
        yield self.notified("back")
        yield until(lambda: len(self.backends(listening=True)) == 1, 2, "one LISTEN backend")
        self.assertEqual(self.resyncs, 1)

    @defer.inlineCallbacks
    def test_stop_while_reconnecting(self) -> Any:
        yield self.listening()
        self.proxy.pause()
        self.proxy.cut()
        yield until(lambda: self.proxy.accepted >= POOL + 2, 5, "a refused redial")
        self.listener.stop()
        yield self.store.stop()
        self.proxy.resume()
        yield _tick(2.5)
        self.assertEqual(self.resyncs, 0)
        self.assertEqual(self.backends(listening=True), [])


class CancellationTests(RecoveryTestBase):
    @defer.inlineCallbacks
    def test_deadline_during_a_partition_does_not_freeze_the_reactor(self) -> Any:
        """A caller's deadline cancels its wait, not the txpostgres query
        (whose cancel is a blocking PQcancel on the reactor thread)."""
        from twisted.internet.task import LoopingCall

        from imapsvc.deferreds import DeadlineExceeded, with_deadline

        store = self.make_store()
        yield store.start()
        self.proxy.stall()  # packets vanish both ways: a partition
        ticks: list[float] = []
        ticker = LoopingCall(lambda: ticks.append(reactor.seconds()))
        ticker.start(0.05)
        self.addCleanup(lambda: ticker.running and ticker.stop())
        t0 = reactor.seconds()
        yield self.assertFailure(
            with_deadline(store.ping(), 0.5, reactor, "ping"), DeadlineExceeded
        )
        self.assertLess(reactor.seconds() - t0, 1.5)
        yield until(lambda: reactor.seconds() - t0 > 2.0, 5, "two seconds of reactor time")
        ticker.stop()
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        self.assertLess(max(gaps), 0.5, "the reactor stalled")
        self.proxy.resume()
        self.proxy.cut()
        yield self.healed(store, reactor.seconds())
