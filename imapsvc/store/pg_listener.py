"""``LISTEN`` on a dedicated Postgres connection that comes back by itself
(:meth:`imapsvc.store.postgres.PostgresStore.listen`)."""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger

from imapsvc.store.pg_connections import PoolConnection, Redial

log = Logger()


class Listener:
    """One ``LISTEN`` on its own connection; see :meth:`PostgresStore.listen`."""

    def __init__(self, reactor: Any, open_conn: Callable[[str], defer.Deferred], channel: str,
                 callback: Callable[[str], Any],
                 on_reconnect: Optional[Callable[[], Any]]) -> None:
        self.channel = channel
        self._reactor = reactor
        self._open_conn = open_conn
        self._callback = callback
        self._on_reconnect = on_reconnect
        self._conn: Optional[PoolConnection] = None
        self._redial: Optional[Redial] = None
        self._stopped = False
        #: How many times the connection was re-established (for tests/metrics).
        self.reconnects = 0

    def _notified(self, notify: Any) -> Any:
        if notify.channel != self.channel:
            return None
        return defer.maybeDeferred(self._callback, notify.payload).addErrback(
            lambda f: log.failure("LISTEN {channel} callback failed", f, channel=self.channel))

    @defer.inlineCallbacks
    def _connect(self) -> Any:
        """A fresh connection with the LISTEN issued (closed if that fails)."""
        conn = yield self._open_conn(f"listen-{self.channel}")
        try:
            yield conn.runOperation(f'LISTEN "{self.channel}"')
        except BaseException:
            conn.discard()
            raise
        return conn

    def _attach(self, conn: PoolConnection) -> None:
        if self._stopped:
            conn.discard()
            return
        conn.addNotifyObserver(self._notified)
        conn.lost = self._lost
        self._conn = conn

    def _lost(self, conn: PoolConnection) -> None:
        if self._stopped or conn is not self._conn:
            return
        self._conn = None
        conn.removeNotifyObserver(self._notified)
        conn.discard()
        log.warn("LISTEN {channel} connection lost; reconnecting", channel=self.channel)
        self._redial = Redial(self._reactor, f"listen-{self.channel}", self._connect,
                               self._reconnected).start()

    def _reconnected(self, conn: PoolConnection) -> Any:
        self._redial = None
        self._attach(conn)
        if self._stopped:
            return None
        self.reconnects += 1
        if self._on_reconnect is None:
            return None
        # Notifications sent while we were away are lost: let the owner resync.
        return defer.maybeDeferred(self._on_reconnect).addErrback(
            lambda f: log.failure("LISTEN {channel} on_reconnect failed", f,
                                  channel=self.channel))

    @defer.inlineCallbacks
    def start(self) -> Any:
        conn = yield self._connect()
        self._attach(conn)
        return self

    def stop(self) -> None:
        """Stop listening and close the connection."""
        self._stopped = True
        if self._redial is not None:
            self._redial.stop()
            self._redial = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.removeNotifyObserver(self._notified)
            conn.discard()
