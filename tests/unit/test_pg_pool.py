"""The Postgres pool while it heals: operations wait for a live connection
that is in use, and fail fast only when no connection is live at all."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from imapsvc.interfaces import StoreUnavailable
from imapsvc.store.pg_connections import Pool


class FakeConnection:
    """What the pool uses of a txpostgres connection; operations are held
    until the test releases them."""

    label = "fake"

    def __init__(self) -> None:
        self.dead = False
        self.lost: Any = None
        self.held: list[defer.Deferred] = []

    def runInteraction(self, interaction: Any, *args: Any) -> defer.Deferred:  # noqa: N802
        d: defer.Deferred = defer.Deferred()
        self.held.append(d)
        return d

    def discard(self) -> None:
        self.dead = True


def make_pool(size: int) -> tuple[Pool, list[FakeConnection]]:
    pool = Pool(Clock(), size, "postgresql://nowhere/x", {}, 1.0)
    conns = [FakeConnection() for _ in range(size)]
    for conn in conns:
        pool._add(conn)  # type: ignore[arg-type]
    return pool, conns


class HealingPoolTests(unittest.TestCase):
    def test_waits_for_a_busy_live_connection_while_others_redial(self) -> None:
        pool, (a, b) = make_pool(2)
        pool._idle.remove(b)  # b's slot is redialling after an outage
        first = pool.run_interaction(lambda cur: None)
        second = pool.run_interaction(lambda cur: None)
        self.assertNoResult(second)  # not StoreUnavailable: a is live, only busy
        a.held[0].callback("one")
        self.assertEqual(self.successResultOf(first), "one")
        self.assertEqual(len(a.held), 2)  # the waiting operation got a
        a.held[1].callback("two")
        self.assertEqual(self.successResultOf(second), "two")

    def test_fails_fast_when_nothing_is_live(self) -> None:
        pool, (a,) = make_pool(1)
        pool._idle.remove(a)
        self.failureResultOf(pool.run_interaction(lambda cur: None), StoreUnavailable)

    def test_waiters_fail_when_the_last_live_connection_breaks(self) -> None:
        pool, (a, b) = make_pool(2)
        pool._idle.remove(b)
        pool._redial = lambda: None  # type: ignore[method-assign]
        first = pool.run_interaction(lambda cur: None)
        waiting = pool.run_interaction(lambda cur: None)
        a.dead = True
        a.held[0].errback(StoreUnavailable("connection lost"))
        self.failureResultOf(first, StoreUnavailable)
        self.failureResultOf(waiting, StoreUnavailable)

    def test_a_redialled_connection_serves_the_waiter(self) -> None:
        pool, (a, b) = make_pool(2)
        pool._idle.remove(b)
        pool.run_interaction(lambda cur: None)
        waiting = pool.run_interaction(lambda cur: None)
        fresh = FakeConnection()
        pool._add(fresh)  # type: ignore[arg-type]
        self.assertEqual(len(fresh.held), 1)
        fresh.held[0].callback("fresh")
        self.assertEqual(self.successResultOf(waiting), "fresh")

    def test_a_cancelled_waiter_leaves_the_queue(self) -> None:
        pool, (a, b) = make_pool(2)
        pool._idle.remove(b)
        pool.run_interaction(lambda cur: None)
        waiting = pool.run_interaction(lambda cur: None)
        waiting.cancel()
        self.failureResultOf(waiting, defer.CancelledError)
        a.held[0].callback(None)
        self.assertEqual(len(a.held), 1)  # nothing ran for the cancelled one
        self.assertEqual(list(pool._idle), [a])
