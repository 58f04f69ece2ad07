"""The production :class:`~imapsvc.interfaces.IStore`: PostgreSQL via txpostgres.

Every operation runs in its own transaction on a pooled asynchronous
connection from :mod:`imapsvc.store.pg_connections`, which replaces dead
connections itself (txpostgres' pool would keep them and fail forever).
While no connection is free, operations fail fast with
:class:`~imapsvc.interfaces.StoreUnavailable`; callers retry.

Lease times are the database's clock (``now()``), never this host's, so
replicas with skewed clocks agree on who holds a provider. Every query names
the tenant: on Citus the tables are distributed by it.

This module holds the lifecycle (pool, LISTEN); the operations are role
mixins: :mod:`~imapsvc.store.pg_providers`, :mod:`~imapsvc.store.pg_ledger`
and :mod:`~imapsvc.store.pg_cluster`, over :mod:`~imapsvc.store.pg_base`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsvc.interfaces import IStore, StoreUnavailable
from imapsvc.store.pg_base import ADMIN_CHANNEL
from imapsvc.store.pg_cluster import PgCluster
from imapsvc.store.pg_connections import CHANNEL_NAME, Pool, open_connection, unavailable
from imapsvc.store.pg_ledger import PgLedger
from imapsvc.store.pg_listener import Listener
from imapsvc.store.pg_providers import PgProviders

__all__ = ["ADMIN_CHANNEL", "PostgresStore"]


@implementer(IStore)
class PostgresStore(PgProviders, PgLedger, PgCluster):
    """:class:`~imapsvc.interfaces.IStore` on PostgreSQL (or Citus).

    :param dsn: a libpq connection string or ``postgresql://`` URL.
    :param reactor: the reactor (``IReactorFDSet`` and ``IReactorTime``).
    :param pool_size: connections kept open.
    :param connect_timeout: seconds allowed for one connection attempt
        (in :meth:`start` and in every reconnection).
    :param application_name: shown in ``pg_stat_activity``; give each
        worker its own (e.g. ``imapsvc-<worker id>``) so operators can tell
        replicas' connections apart.
    """

    def __init__(self, dsn: str, reactor: Any, pool_size: int = 4,
                 connect_timeout: float = 10.0, application_name: str = "imapsvc") -> None:
        self._dsn = dsn
        self._reactor = reactor
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        # Keepalives notice a vanished server on an idle connection.
        self._connkw = {
            "application_name": application_name[:63],
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
        # Built afresh by every start(): a pool is never reused after a
        # failed start or a stop (stale connection state is what used to
        # make a restarted pool fail every query).
        self._pool: Optional[Pool] = None
        self._listeners: list[Listener] = []

    def start(self) -> defer.Deferred:
        """Open the pool. Fails with StoreUnavailable (and leaves nothing
        open) when no connection could be opened in time; may be called
        again after that, or after :meth:`stop`."""
        if self._pool is not None:
            self._pool.close()
        pool = self._pool = Pool(self._reactor, self._pool_size, self._dsn, self._connkw,
                                  self._connect_timeout)

        def failed(f: Failure) -> Failure:
            pool.close()
            if self._pool is pool:
                self._pool = None
            if f.check(defer.CancelledError, defer.TimeoutError):
                return Failure(StoreUnavailable("timed out connecting to the database"))
            return unavailable(f)

        return pool.start().addErrback(failed)

    def stop(self) -> defer.Deferred:
        """Close the pool and every listener."""
        for listener in self._listeners:
            listener.stop()
        self._listeners = []
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()
        return defer.succeed(None)

    def open_connection(self, label: str) -> defer.Deferred:
        return open_connection(self._reactor, self._dsn, self._connkw, self._connect_timeout, label)

    def listen(self, channel: str, callback: Callable[[str], Any],
               on_reconnect: Optional[Callable[[], Any]] = None) -> defer.Deferred:
        """``LISTEN channel`` on a dedicated connection; ``callback(payload)``
        for every notification. A lost connection is replaced by a fresh one
        (retried until the database answers); after that, ``on_reconnect()``
        runs, since notifications sent meanwhile are lost. Stopped by
        :meth:`stop` or the :class:`Listener`'s ``stop``.

        :rtype: Deferred[Listener]
        """
        if not CHANNEL_NAME.match(channel):
            return defer.fail(ValueError(f"bad channel name {channel!r}"))
        listener = Listener(self._reactor, self.open_connection, channel, callback, on_reconnect)
        self._listeners.append(listener)
        d = listener.start()

        def failed(f: Failure) -> Failure:
            listener.stop()
            if listener in self._listeners:
                self._listeners.remove(listener)
            return unavailable(f)

        return d.addErrback(failed)
