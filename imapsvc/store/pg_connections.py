"""Connections for the Postgres store: a self-healing pool on top of
txpostgres (the LISTEN connection, built from the same pieces, is in
:mod:`imapsvc.store.pg_listener`).

A dead pool member (lost while idle, found closed, or failed during an
operation) is replaced by a fresh connection with capped back-off; callers
get :class:`~imapsvc.interfaces.StoreUnavailable` at once while nothing is
free. Waits are shielded: cancelling one never cancels the txpostgres query
(see :func:`shielded`).
"""

from __future__ import annotations

import collections
import random
import re
from typing import Any, Callable, Iterator, Optional

import psycopg2
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, txpostgres

from imapsvc.interfaces import StoreUnavailable

log = Logger()

#: Failures that mean "the database is not reachable right now".
UNAVAILABLE = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    reconnection.ConnectionDead,
    error.ConnectionClosed,  # our own close() while an operation was running
    txpostgres.RollbackFailed,
    defer.TimeoutError,
)

CHANNEL_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _backoff() -> Iterator[float]:
    """Delays between reconnection attempts: the first at once, then short and
    capped at two seconds, so a pool is whole again within a couple of seconds
    of the database coming back (operations fail fast meanwhile)."""
    yield 0.0
    delay = 0.25
    while True:
        yield delay * random.uniform(0.75, 1.0)  # jitter: replicas do not stampede
        delay = min(delay * 2, 2.0)


class PoolConnection(txpostgres.Connection):
    """A txpostgres connection that reports a dropped server as a lost
    connection (to :attr:`lost`) instead of an unhandled reactor error, and
    does not try to roll back on a connection that is already gone.

    It has no txpostgres ``DeadConnectionDetector``: a dead connection is
    thrown away and replaced by a fresh one (see :class:`Redial`), since a
    reused connection object keeps stale state (a stopped detector flagged
    "dead", a pending poll) that made it fail every query forever.
    """

    #: Called once with this connection when the server side goes away.
    lost: Optional[Callable[[PoolConnection], Any]] = None
    label = "db"

    def _socket_ok(self) -> bool:
        # libpq reports socket -1 for a broken connection that psycopg2 does
        # not flag as closed yet; registering -1 with the reactor raises.
        conn = self._connection
        return conn is not None and not conn.closed and conn.fileno() >= 0

    def doRead(self) -> Any:  # noqa: N802 (Twisted name)
        # txpostgres' doRead, made safe for a connection that just broke: the
        # reactor is told (by the returned reason) instead of an exception.
        self.reactor.removeReader(self)
        try:
            if not self._connection.closed:
                self.continuePolling()
            self.checkForNotifies()
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
            return e
        if not self._socket_ok():
            return error.ConnectionLost("database connection broken")
        self.reactor.addReader(self)
        return None

    def cursorFinished(self, cursor: Any) -> None:  # noqa: N802 (txpostgres name)
        self._cursors.discard(cursor)
        if self._socket_ok():
            self.reactor.addReader(self)
            self.checkForNotifies()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 (Twisted name)
        super().connectionLost(reason)
        lost, self.lost = self.lost, None
        if lost is not None:
            lost(self)

    @property
    def dead(self) -> bool:
        """True once the underlying connection is closed (by either side)."""
        return not self._socket_ok()

    def discard(self) -> None:
        """Close without reporting a loss; safe to call in any state."""
        self.lost = None
        if self._connection is None:
            return
        try:
            self.close()
        except Exception:
            pass

    def _runInteraction(self, interaction: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        cursor = self.cursor()
        d = cursor.execute("begin")
        d.addCallback(interaction, *args, **kwargs)
        d.addCallback(lambda result: cursor.execute("commit").addCallback(lambda _: result))
        d.addErrback(self._rollback, cursor)
        return d

    def _rollback(self, f: Failure, cursor: Any) -> Any:
        if f.check(*UNAVAILABLE) or self._connection.closed:
            return f  # the server ended the transaction with the connection

        def failed(rf: Failure) -> Failure:
            log.warn("rollback failed: {error}", error=rf.getErrorMessage())
            return Failure(txpostgres.RollbackFailed(self, f))

        d = defer.maybeDeferred(cursor.execute, "rollback")
        return d.addCallbacks(lambda _: f, failed)


def open_connection(reactor: Any, dsn: str, connkw: dict[str, Any], timeout: float,
          label: str) -> defer.Deferred:
    """Open a fresh :class:`PoolConnection`, bounded by ``timeout`` seconds
    (libpq does not time out asynchronous connects itself). Cancelling the
    result, or the timeout, closes the half-open connection: nothing leaks.

    :rtype: Deferred[PoolConnection]
    """
    conn = PoolConnection(reactor)
    conn.label = label
    over = []  # set once cancelled or timed out: closing then fails the connect

    def cancel(_: Any) -> None:
        over.append(True)
        if timer.active():
            timer.cancel()
        conn.discard()

    result: defer.Deferred = defer.Deferred(cancel)

    def expire() -> None:
        over.append(True)
        result.errback(defer.TimeoutError(f"connecting took over {timeout:g}s"))
        conn.discard()

    timer = reactor.callLater(timeout, expire)

    def connected(_: Any) -> None:
        if timer.active():
            timer.cancel()
        if over:
            conn.discard()
        else:
            result.callback(conn)

    def failed(f: Failure) -> None:
        if timer.active():
            timer.cancel()
        conn.discard()
        if not over:
            result.errback(f)

    conn.connect(dsn, **connkw).addCallbacks(connected, failed)
    return result


class Redial:
    """Calls ``attempt()`` (which returns a Deferred connection) with
    :func:`_backoff` delays until it succeeds, then ``done(conn)``. Stoppable
    at any point without leaving a connection or a delayed call behind."""

    def __init__(self, reactor: Any, label: str, attempt: Callable[[], defer.Deferred],
                 done: Callable[[Any], Any]) -> None:
        self._reactor = reactor
        self._label = label
        self._attempt_fn = attempt
        self._done = done
        self._delays = _backoff()
        self._timer: Any = None
        self._pending: Optional[defer.Deferred] = None
        self._stopped = False
        self.attempts = 0

    def start(self) -> Redial:
        self._schedule()
        return self

    def _schedule(self) -> None:
        delay = next(self._delays)
        self._timer = self._reactor.callLater(delay, self._attempt)

    def _attempt(self) -> None:
        self._timer = None
        if self._stopped:
            return
        self.attempts += 1
        d = self._pending = self._attempt_fn()
        d.addCallbacks(self._connected, self._failed)
        d.addErrback(lambda f: log.failure("database reconnection {label}", f,
                                           label=self._label))

    def _connected(self, conn: Any) -> Any:
        self._pending = None
        if self._stopped:
            conn.discard()
            return None
        log.info("database connection {label} re-established after {n} attempt(s)",
                 label=self._label, n=self.attempts)
        return self._done(conn)

    def _failed(self, f: Failure) -> None:
        self._pending = None
        if self._stopped:
            return
        if self.attempts == 1 or self.attempts % 10 == 0:
            log.info("database reconnection {label} failed ({error}); retrying",
                     label=self._label, error=_one_line(f))
        self._schedule()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()


def _one_line(f: Failure) -> str:
    return " ".join(f.getErrorMessage().split()) or f.type.__name__


class Pool:
    """A fixed number of connections that heal themselves.

    A connection found dead (lost while idle, or an operation on it failed
    because the connection went away) is closed and its slot redialled with
    a *fresh* connection in the background. While no connection is live at
    all, operations fail fast with :class:`StoreUnavailable` rather than
    queueing behind a database that is not there. While some are live but all
    of those are in use (the others still redialling, after an outage), an
    operation waits for one to be free: the database is there, and failing
    would make readiness and writes flap while the pool heals.
    """

    def __init__(self, reactor: Any, size: int, dsn: str, connkw: dict[str, Any],
                 connect_timeout: float) -> None:
        self._reactor = reactor
        self._size = size
        self._dsn = dsn
        self._connkw = connkw
        self._connect_timeout = connect_timeout
        self._idle: list[PoolConnection] = []
        self._busy: set[PoolConnection] = set()
        self._redials: set[Redial] = set()
        self._starting: list[defer.Deferred] = []
        self._semaphore = defer.DeferredSemaphore(size)
        #: Operations waiting for a live connection to be free (see _run).
        self._waiters: collections.deque[defer.Deferred] = collections.deque()
        self._serial = 0
        self._closed = False

    def open_connection(self) -> defer.Deferred:
        self._serial += 1
        return open_connection(self._reactor, self._dsn, self._connkw, self._connect_timeout,
                     f"pool-{self._serial}")

    @property
    def live(self) -> int:
        """Connections currently open (idle or in use)."""
        return len(self._idle) + len(self._busy)

    def start(self) -> defer.Deferred:
        """Open every connection. Succeeds when at least one opens (the others
        are redialled); fails, with everything closed, when none does."""
        self._starting = [self.open_connection() for _ in range(self._size)]
        d = defer.DeferredList(self._starting, consumeErrors=True)

        def opened(results: list[tuple[bool, Any]]) -> Any:
            self._starting = []
            conns = [c for ok, c in results if ok]
            errors = [f for ok, f in results if not ok]
            if self._closed:
                for conn in conns:
                    conn.discard()
                raise StoreUnavailable("database store stopped while starting")
            if not conns:
                return errors[0]
            for conn in conns:
                self._add(conn)
            if errors:
                log.warn("{n} of {size} database connections failed to open ({error});"
                         " retrying them", n=len(errors), size=self._size,
                         error=_one_line(errors[0]))
                for _ in errors:
                    self._redial()
            return None

        return d.addCallback(opened)

    def _add(self, conn: PoolConnection) -> None:
        if self._closed:
            conn.discard()
            return
        conn.lost = self._lost
        self._idle.append(conn)
        self._wake()

    def _lost(self, conn: PoolConnection) -> None:
        """The server side of ``conn`` went away."""
        if conn in self._idle:
            self._idle.remove(conn)
            self._replace(conn, "lost while idle")
            self._wake()
        # A busy connection is replaced when its operation finishes (_done).

    def _replace(self, conn: PoolConnection, why: str) -> None:
        conn.discard()
        if self._closed:
            return
        log.warn("database connection {label} {why}; reconnecting", label=conn.label, why=why)
        self._redial()

    def _redial(self) -> None:
        def done(conn: PoolConnection) -> None:
            self._redials.discard(redial)
            self._add(conn)

        redial = Redial(self._reactor, "pool", self.open_connection, done)
        self._redials.add(redial)
        redial.start()

    def run_interaction(self, interaction: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``interaction(cursor, *args)`` in a transaction on a free
        connection."""
        if self._closed:
            return defer.fail(StoreUnavailable("database store is stopped"))
        return self._semaphore.run(self._run, interaction, *args)

    def _run(self, interaction: Callable[..., Any], *args: Any) -> defer.Deferred:
        while self._idle:
            conn = self._idle.pop()
            if conn.dead:  # closed, and the reactor has not told us yet
                self._replace(conn, "found closed")
                continue
            self._busy.add(conn)
            d = conn.runInteraction(interaction, *args)
            return d.addBoth(self._done, conn)
        if self._busy:
            # Live connections exist, all in use: wait for one (see the class).
            waiter: defer.Deferred = defer.Deferred(self._waiters.remove)
            self._waiters.append(waiter)
            return waiter.addCallback(lambda _: self._run(interaction, *args))
        return defer.fail(StoreUnavailable("database unavailable (reconnecting)"))

    def _wake(self) -> None:
        """Hand free connections to waiting operations; fail the waiters
        when no connection is live any more (the database went away)."""
        while self._waiters and self._idle:
            self._waiters.popleft().callback(None)
        if self._waiters and not self._idle and not self._busy:
            gone = StoreUnavailable("database unavailable (reconnecting)")
            while self._waiters:
                self._waiters.popleft().errback(gone)

    def _done(self, result: Any, conn: PoolConnection) -> Any:
        self._busy.discard(conn)
        broken = isinstance(result, Failure) and result.check(*UNAVAILABLE)
        if self._closed:
            conn.discard()
        elif conn.dead or broken:
            self._replace(conn, "failed during an operation")
        else:
            self._idle.append(conn)
        self._wake()
        return result

    def close(self) -> None:
        """Close every connection (operations in flight fail) and stop
        redialling."""
        self._closed = True
        self._wake()  # nothing is live now: waiting operations fail
        for d in self._starting:
            d.cancel()
        for redial in list(self._redials):
            redial.stop()
        self._redials.clear()
        for conn in self._idle + list(self._busy):
            conn.discard()
        self._idle = []


def unavailable(f: Failure) -> Failure:
    """Turn connection-level failures into StoreUnavailable (no DSN in it)."""
    if f.check(*UNAVAILABLE):
        err = StoreUnavailable(" ".join(f.getErrorMessage().split()) or "database unavailable")
        return Failure(err)
    return f




def shielded(inner: defer.Deferred) -> defer.Deferred:
    """A Deferred with ``inner``'s result that can be cancelled (deadlines,
    shutdown) without cancelling ``inner``.

    Cancelling a txpostgres operation runs libpq's blocking ``PQcancel`` on
    the reactor thread, which freezes the whole service while the server is
    unreachable. The abandoned operation finishes (or fails) on its own and
    its connection returns to the pool as usual.
    """
    outer: defer.Deferred = defer.Deferred()

    def relay(result: Any) -> None:
        if not outer.called:
            outer.callback(result) if not isinstance(result, Failure) else outer.errback(result)
        return None  # an abandoned failure is not an unhandled error

    inner.addBoth(relay)
    return outer
