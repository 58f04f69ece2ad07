"""The embedded default :class:`~imapsvc.interfaces.IStore`: one SQLite file.

Used when ``DATABASE_URL`` is empty, so imapsvc runs anywhere with no
database server. Same tables, columns and semantics as
:class:`imapsvc.store.postgres.PostgresStore` (both pass
``tests.store_contract``); the SQLite spelling of the schema is in
:mod:`imapsvc.store.sqlite_schema`.

Two layers:

- :class:`SqliteOps` is plain synchronous code on one ``sqlite3``
  connection, composed of role mixins (:mod:`~imapsvc.store.sqlite_providers`,
  :mod:`~imapsvc.store.sqlite_ledger`, :mod:`~imapsvc.store.sqlite_cluster`
  over :mod:`~imapsvc.store.sqlite_base`). The admin CLI uses it directly
  (no reactor).
- :class:`SqliteStore` runs those operations on a dedicated one-thread pool,
  so the reactor never waits for a disk flush (``synchronous=FULL`` fsyncs
  every commit), and a single thread means the one connection is never used
  concurrently.

Writes that must be atomic (the fenced batch, the lease, the auth-failure
count) run in ``BEGIN IMMEDIATE`` transactions: the write lock is taken
before the lease is checked, so nothing can change the lease between the
check and the writes, even from another process such as the CLI.

Lease times come from the injected clock (the reactor's seconds). With one
file there is one host, so that is the "database clock" of the Postgres
store; the lease still fences a second process sharing the file.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any, Callable, Optional

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from imapsvc.interfaces import IStore, StoreUnavailable
from imapsvc.store.sqlite_base import from_ts, ts, ts_seconds
from imapsvc.store.sqlite_cluster import SqliteCluster
from imapsvc.store.sqlite_ledger import SqliteLedger
from imapsvc.store.sqlite_providers import SqliteProviders
from imapsvc.store.sqlite_schema import SchemaTooNew, connect, ensure_schema


class SqliteOps(SqliteProviders, SqliteLedger, SqliteCluster):
    """Every store operation as a plain synchronous method on one connection.

    :param conn: from :func:`imapsvc.store.sqlite_schema.connect` (autocommit
        mode; this class opens its own transactions).
    :param seconds: the clock, a callable returning epoch seconds.
    """


__all__ = ["SqliteOps", "SqliteStore", "from_ts", "ts", "ts_seconds"]

log = Logger()


def _unavailable(f: Failure) -> Failure:
    """SQLite trouble below the SQL level (file missing, locked, disk
    full, closed) becomes StoreUnavailable, as a dropped Postgres would."""
    if f.check(sqlite3.OperationalError, sqlite3.ProgrammingError, sqlite3.DatabaseError) \
            and not f.check(sqlite3.IntegrityError):
        return Failure(StoreUnavailable(f"sqlite: {f.getErrorMessage()}"))
    return f


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(*args, **kwargs)
    # A store that was never stopped (a test reactor that never runs, a
    # crash during start-up) must not keep the process alive; SQLite's
    # journal makes dying mid-transaction safe.
    thread.daemon = True
    return thread


class _Pool(ThreadPool):
    """A one-thread pool whose thread does not block interpreter exit."""

    threadFactory = staticmethod(_daemon_thread)  # type: ignore[assignment]  # noqa: N815


def _delegate(name: str) -> Callable[..., defer.Deferred]:
    def method(self: SqliteStore, *args: Any, **kwargs: Any) -> defer.Deferred:
        return self._call(name, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"See :meth:`imapsvc.interfaces.IStore.{name}`."
    return method


@implementer(IStore)
class SqliteStore:
    """:class:`~imapsvc.interfaces.IStore` on one SQLite file.

    :param path: the file (created with its schema on :meth:`start`), or
        ``":memory:"``.
    :param reactor: for the worker thread (``IReactorThreads``) and, unless
        ``clock`` is given, the lease clock.
    :param clock: an :class:`~imapsvc.interfaces.IClock` for timestamps and
        leases.
    """

    def __init__(self, path: str, reactor: Any, clock: Any = None) -> None:
        self.path = path
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._pool: Optional[ThreadPool] = None
        self._ops: Optional[SqliteOps] = None
        self._trigger: Any = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Start the worker thread, open the file and create the schema.
        Fails with StoreUnavailable (and leaves nothing running) when the file
        cannot be opened or was written by a newer imapsvc."""
        pool = _Pool(minthreads=1, maxthreads=1, name="imapsvc-sqlite")
        pool.start()
        self._pool = pool
        # Like the reactor's own pool: stopped at shutdown even if nobody
        # calls stop() (stop() then finds nothing to do).
        self._trigger = self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)

        def open_file() -> SqliteOps:
            conn = connect(self.path)
            try:
                ensure_schema(conn)
            except BaseException:
                conn.close()
                raise
            return SqliteOps(conn, self._clock.seconds)

        def opened(ops: SqliteOps) -> None:
            self._ops = ops

        def failed(f: Failure) -> Any:
            if self._pool is pool:
                self._pool = None
                self._remove_trigger()
            pool.stop()
            if f.check(SchemaTooNew):
                return Failure(StoreUnavailable(f.getErrorMessage()))
            return _unavailable(f)

        d = threads.deferToThreadPool(self._reactor, pool, open_file)
        return d.addCallbacks(opened, failed)

    def stop(self) -> defer.Deferred:
        """Close the connection and stop the thread (after queued work)."""
        pool, ops = self._pool, self._ops
        self._pool = self._ops = None
        self._remove_trigger()
        if pool is None:
            return defer.succeed(None)

        def close() -> None:
            if ops is not None:
                ops.conn.close()

        d = threads.deferToThreadPool(self._reactor, pool, close)
        d.addErrback(lambda f: log.failure("closing the SQLite store", f))
        # pool.stop() joins the thread: by now it has nothing left to do.
        return d.addBoth(lambda _: pool.stop())

    def _remove_trigger(self) -> None:
        if self._trigger is not None:
            trigger, self._trigger = self._trigger, None
            try:
                self._reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):
                pass  # already fired: this is the shutdown

    @property
    def ops(self) -> SqliteOps:
        """The synchronous operations (tests and tools; not from the reactor
        thread while the store runs)."""
        if self._ops is None:
            raise StoreUnavailable("the SQLite store is not started")
        return self._ops

    def _call(self, name: str, *args: Any, **kwargs: Any) -> defer.Deferred:
        if self._pool is None or self._ops is None:
            return defer.fail(StoreUnavailable("the SQLite store is not started"))
        fn = getattr(self._ops, name)
        d = threads.deferToThreadPool(self._reactor, self._pool, fn, *args, **kwargs)
        return d.addErrback(_unavailable)

    # -- IStore -------------------------------------------------------------

    list_active_providers = _delegate("list_active_providers")
    get_provider = _delegate("get_provider")
    read_cursor = _delegate("read_cursor")
    write_cursor = _delegate("write_cursor")
    read_modseq = _delegate("read_modseq")
    save_modseq = _delegate("save_modseq")
    acquire_lease = _delegate("acquire_lease")
    renew_lease = _delegate("renew_lease")
    release_lease = _delegate("release_lease")
    record_batch = _delegate("record_batch")
    add_outbox = _delegate("add_outbox")
    fetch_outbox = _delegate("fetch_outbox")
    mark_published = _delegate("mark_published")
    outbox_stats = _delegate("outbox_stats")
    purge_ledger = _delegate("purge_ledger")
    set_write_back = _delegate("set_write_back")
    set_oauth_delegate = _delegate("set_oauth_delegate")
    recorded_uids = _delegate("recorded_uids")
    put_secret = _delegate("put_secret")
    get_secret = _delegate("get_secret")
    delete_secret = _delegate("delete_secret")
    set_provider_status = _delegate("set_provider_status")
    set_last_error = _delegate("set_last_error")
    save_capabilities = _delegate("save_capabilities")
    save_access_token = _delegate("save_access_token")
    put_oauth_state = _delegate("put_oauth_state")
    take_oauth_state = _delegate("take_oauth_state")
    record_auth_failure = _delegate("record_auth_failure")
    reset_auth_failures = _delegate("reset_auth_failures")
    touch_last_sync = _delegate("touch_last_sync")
    acquire_lease_capped = _delegate("acquire_lease_capped")
    set_inbound_pause = _delegate("set_inbound_pause")
    write_folder_status = _delegate("write_folder_status")
    heartbeat_replica = _delegate("heartbeat_replica")
    forget_replica = _delegate("forget_replica")
    read_deployment = _delegate("read_deployment")
    add_admin_request = _delegate("add_admin_request")
    claim_admin_requests = _delegate("claim_admin_requests")
    complete_admin_request = _delegate("complete_admin_request")
    get_admin_request = _delegate("get_admin_request")
    note_message_failure = _delegate("note_message_failure")
    mark_poison_skipped = _delegate("mark_poison_skipped")
    clear_message_failures = _delegate("clear_message_failures")
    list_poison = _delegate("list_poison")
    retry_poison = _delegate("retry_poison")
    read_backfill = _delegate("read_backfill")
    set_first_sync_since_days = _delegate("set_first_sync_since_days")
    request_backfill = _delegate("request_backfill")
    complete_backfill = _delegate("complete_backfill")
    ping = _delegate("ping")

    def reset_cursors(self, tenant: str, provider_id: str,
                      folder: Optional[str] = None) -> defer.Deferred:
        """See :meth:`imapsvc.interfaces.IStore.reset_cursors`."""
        return self._call("reset_cursors", tenant, provider_id, folder).addCallback(
            lambda _: None)
