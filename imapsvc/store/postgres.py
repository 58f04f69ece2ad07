"""The production :class:`~imapsvc.interfaces.IStore`: PostgreSQL via txpostgres.

Every operation runs in its own transaction on a pooled asynchronous
connection from :mod:`imapsvc.store.pg_connections`, which replaces dead
connections itself (txpostgres' pool would keep them and fail forever).
While no connection is free, operations fail fast with
:class:`~imapsvc.interfaces.StoreUnavailable`; callers retry.

Lease times are the database's clock (``now()``), never this host's, so
replicas with skewed clocks agree on who holds a provider. Every query names
the tenant: on Citus the tables are distributed by it.
"""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime
from typing import Any, Callable, Optional, Sequence

import psycopg2
from psycopg2.extras import Json
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsvc.core.cluster import cap_error, grant
from imapsvc.core.folders import folder_filters_from_json
from imapsvc.interfaces import IStore, LeaseLost, StoreUnavailable
from imapsvc.model import (
    OUTCOME_DUPLICATE,
    OUTCOME_PUBLISHED,
    AdminRequest,
    BackfillState,
    BatchResult,
    FolderCursor,
    FolderStatus,
    LeaseGrant,
    MessageRecord,
    OutboxRow,
    PoisonMessage,
    ProviderConfig,
)
from imapsvc.store import (
    OPTION_COLUMNS,
    backfill_folders,
    check_records,
    first_occurrences,
    last_message_id,
    outbox_fields,
    outbox_parts,
    parse_seen_at,
    provider_or_invalid,
    sorted_capabilities,
)
from imapsvc.store.pg_connections import (
    CHANNEL_NAME,
    Listener,
    Pool,
    open_connection,
    shielded,
    unavailable,
)

log = Logger()

#: NOTIFY channel of new admin requests (payload: tenant, id, provider_id).
ADMIN_CHANNEL = "imapsvc_admin"

_REQUEST_COLUMNS = ("tenant, id, provider_id, action, folder, requested_by, created_at,"
                    " claimed_by, applied_by, applied_at, result")


def _admin_request(row: Sequence[Any]) -> AdminRequest:
    (tenant, rid, pid, action, folder, by, created, claimed_by, applied_by, applied_at,
     result) = row
    return AdminRequest(str(tenant), str(rid), str(pid), action, folder, by, created,
                        claimed_by, applied_by, applied_at, result)

_PROVIDER_COLUMNS = """
    p.tenant, p.id, p.provider_name, p.mailbox,
    c.host, c.port, c.secure, c.allow_starttls, c.auth_type, c.username,
    c.connection_timeout_ms, c.socket_keepalive, c.max_emails_per_sync, c.folder_filters,
    c.oauth_authorize_url, c.oauth_token_url, c.oauth_client_id, c.oauth_scopes,
    c.access_token, c.token_expires_at, c.folder_state, c.server_capabilities,
    c.lease_owner, c.lease_expires_at,
    p.status, p.is_active, p.inbound_paused_at, p.inbound_auth_failure_count,
    GREATEST(p.updated_at, c.updated_at),
    c.oauth_client_secret, c.refresh_token,
    o.write_back, o.oauth_delegate
"""

_PROVIDER_FROM = """
    FROM email_providers p
    JOIN imap_email_provider_config c ON c.tenant = p.tenant AND c.email_provider_id = p.id
    LEFT JOIN imap_provider_options o ON o.tenant = p.tenant AND o.provider_id = p.id
"""

# The fence: the config row locked, and still ours by the database clock
# (clock_timestamp, not the transaction start, since the lock may have waited).
_LOCK_LEASE = """
    SELECT 1 FROM imap_email_provider_config
    WHERE tenant = %s AND email_provider_id = %s
      AND lease_owner = %s AND lease_expires_at > clock_timestamp()
    FOR UPDATE
"""

_WRITE_CURSOR = """
    UPDATE imap_email_provider_config SET
        folder_state = COALESCE(folder_state, '{}'::jsonb)
                       || jsonb_build_object(%s::text, %s::jsonb),
        uid_validity = %s, last_uid = %s, last_seen_at = %s, updated_at = now()
    WHERE tenant = %s AND email_provider_id = %s
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _cursors(state: Any) -> dict[str, FolderCursor]:
    out = {}
    for folder, data in (state or {}).items():
        cursor = FolderCursor.from_json(data if isinstance(data, dict) else None)
        if cursor is not None:
            out[str(folder)] = cursor
    return out


#: Dollar quotes for an outbox entry and payload: the text goes into the
#: statement as it is, with no escaping pass over it. Both are UTF-8 JSON,
#: which holds no NUL (JSON escapes control characters); a text that
#: contains the tag, or ends with all of it but the last "$" (which the
#: closing tag would complete), goes through mogrify.
_DOLLAR_TAG = b"$imapsvc_entry$"


def _client_utf8(cur: Any) -> bool:
    connection = getattr(cur, "connection", None)
    return getattr(connection, "encoding", None) == "UTF8"


def _outbox_values(cur: Any, head: bytes, records: Sequence[MessageRecord],
                   utf8: bool) -> list[bytes]:
    """The VALUES rows of the outbox insert as pieces for one join: each
    payload is copied once, into the statement."""
    pieces: list[bytes] = []
    for index, record in enumerate(records):
        entry, payload = outbox_parts(record.fields or {})
        pieces += [b"," if index else b"", head, cur.mogrify("%s, ", (record.event_id,))]
        pieces += _text_literal(cur, entry, utf8)
        pieces.append(b", ")
        pieces += [b"NULL"] if payload is None else _text_literal(cur, payload, utf8)
        pieces.append(b")")
    return pieces


def _text_literal(cur: Any, data: bytes, utf8: bool) -> list[bytes]:
    """A SQL text literal of the UTF-8 ``data``, as pieces (for a UTF8 client
    encoding, the bytes between dollar quotes)."""
    if utf8 and _DOLLAR_TAG not in data and not data.endswith(_DOLLAR_TAG[:-1]):
        return [_DOLLAR_TAG, data, _DOLLAR_TAG]
    literal: bytes = cur.mogrify("%s", (data.decode("utf-8"),))
    return [literal]


def provider_from_row(row: Sequence[Any]) -> ProviderConfig:
    (tenant, pid, name, mailbox, host, port, secure, starttls, auth_type, username,
     timeout_ms, keepalive, max_emails, filters, authorize_url, token_url, client_id,
     scopes, access_token, token_expires_at, folder_state, caps, lease_owner,
     lease_expires_at, status, is_active, paused_at, failures, updated_at,
     client_secret, refresh_token) = row[:31]
    # imap_provider_options (schema/0007), appended so other columns keep their place.
    write_back = row[31] if len(row) > 31 else None
    oauth_delegate = row[32] if len(row) > 32 else None  # schema/0009
    return ProviderConfig(
        tenant=str(tenant),
        provider_id=str(pid),
        provider_name=name or "",
        mailbox=mailbox or "",
        host=host,
        port=int(port),
        secure=bool(secure),
        allow_starttls=bool(starttls),
        auth_type=auth_type,
        username=username or "",
        connection_timeout_ms=timeout_ms,
        socket_keepalive=keepalive,
        max_emails_per_sync=50 if max_emails is None else int(max_emails),
        folder_filters=folder_filters_from_json(filters),
        oauth_authorize_url=authorize_url,
        oauth_token_url=token_url,
        oauth_client_id=client_id,
        oauth_scopes=scopes,
        access_token=access_token,
        token_expires_at=token_expires_at,
        folder_state=_cursors(folder_state),
        server_capabilities=tuple(str(c) for c in (caps or ())),
        lease_owner=lease_owner,
        lease_expires_at=lease_expires_at,
        status=status,
        is_active=bool(is_active),
        inbound_paused_at=paused_at,
        inbound_auth_failure_count=int(failures or 0),
        updated_at=updated_at,
        oauth_client_secret=client_secret or None,
        refresh_token=refresh_token or None,
        write_back=write_back,
        oauth_delegate=oauth_delegate or None,
    )


#: Poison messages, shared with the admin CLI (imapsvc.store.admin_sync).
LIST_POISON_SQL = (
    "SELECT tenant::text, provider_id::text, folder, uid_validity, uid, failures, reason,"
    " skipped_at, updated_at FROM imap_message_failures"
    " WHERE (%s::uuid IS NULL OR tenant = %s::uuid)"
    " AND (%s::uuid IS NULL OR provider_id = %s::uuid)"
    " ORDER BY updated_at, tenant, provider_id, folder, uid"
)


def poison_from_row(r: Sequence[Any]) -> PoisonMessage:
    """A row of :data:`LIST_POISON_SQL`."""
    return PoisonMessage(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), r[6], r[7], r[8])


def retry_poison_statements(tenant: str, provider_id: str, folder: str, uid_validity: str,
                            uid: int) -> list[tuple[str, tuple[Any, ...]]]:
    """``(sql, params)`` of a poison retry, run in one transaction: forget
    the failures (rowcount 0: unknown, stop), delete the skipped ledger row,
    move the cursor back below the UID (same UIDVALIDITY only)."""
    key = (tenant, provider_id, folder, str(uid_validity), int(uid))
    return [
        ("DELETE FROM imap_message_failures WHERE tenant = %s AND provider_id = %s"
         " AND folder = %s AND uid_validity = %s AND uid = %s", key),
        ("DELETE FROM imap_message_ledger WHERE tenant = %s AND provider_id = %s"
         " AND folder = %s AND uid_validity = %s AND uid = %s AND outcome = 'skipped'", key),
        ("UPDATE imap_email_provider_config SET folder_state = jsonb_set(folder_state,"
         " ARRAY[%s, 'last_uid'], to_jsonb(%s::text)), updated_at = now()"
         " WHERE tenant = %s AND email_provider_id = %s"
         " AND folder_state -> %s ->> 'uid_validity' = %s"
         " AND (CASE WHEN folder_state -> %s ->> 'last_uid' ~ '^[0-9]{1,18}$'"
         "      THEN (folder_state -> %s ->> 'last_uid')::bigint ELSE -1 END) >= %s",
         (folder, str(int(uid) - 1), tenant, provider_id, folder, str(uid_validity),
          folder, folder, int(uid))),
    ]


@implementer(IStore)
class PostgresStore:
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

    # -- lifecycle ----------------------------------------------------------

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

    # -- plumbing -------------------------------------------------------------

    def _interact(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn(cursor, *args)`` (an inlineCallbacks generator function
        or plain function) in one transaction."""
        if self._pool is None:
            return defer.fail(StoreUnavailable("database store not started"))
        return shielded(self._pool.run_interaction(fn, *args).addErrback(unavailable))

    @defer.inlineCallbacks
    def _query(self, sql: str, params: Sequence[Any] = ()) -> Any:
        def run(cur: Any) -> Any:
            return cur.execute(sql, params).addCallback(
                lambda c: c.fetchall() if c.description is not None else c.rowcount)

        result = yield self._interact(run)
        return result

    # -- providers -------------------------------------------------------------

    @defer.inlineCallbacks
    def list_active_providers(self, tenant: Optional[str] = None) -> Any:
        sql = ("SELECT" + _PROVIDER_COLUMNS + _PROVIDER_FROM
               + " WHERE p.provider_type = 'imap' AND p.is_active"
               " AND p.inbound_paused_at IS NULL")
        params: tuple[Any, ...] = ()
        if tenant is not None:
            sql += " AND p.tenant = %s"
            params = (tenant,)
        rows = yield self._query(sql + " ORDER BY p.tenant, p.id", params)
        return [provider_or_invalid(provider_from_row, r) for r in rows]

    @defer.inlineCallbacks
    def get_provider(self, tenant: str, provider_id: str) -> Any:
        rows = yield self._query(
            "SELECT" + _PROVIDER_COLUMNS + _PROVIDER_FROM + " WHERE p.tenant = %s AND p.id = %s",
            (tenant, provider_id))
        return provider_or_invalid(provider_from_row, rows[0]) if rows else None

    # -- cursors -------------------------------------------------------------

    @defer.inlineCallbacks
    def read_cursor(self, tenant: str, provider_id: str, folder: str) -> Any:
        rows = yield self._query(
            "SELECT folder_state -> %s FROM imap_email_provider_config"
            " WHERE tenant = %s AND email_provider_id = %s",
            (folder, tenant, provider_id))
        if not rows or not isinstance(rows[0][0], dict):
            return None
        return FolderCursor.from_json(rows[0][0])

    @staticmethod
    def _cursor_params(tenant: str, provider_id: str, folder: str,
                       cursor: FolderCursor) -> tuple[Any, ...]:
        return (folder, Json(cursor.to_json()), cursor.uid_validity, cursor.last_uid,
                parse_seen_at(cursor.last_seen_at), tenant, provider_id)

    @defer.inlineCallbacks
    def read_modseq(self, tenant: str, provider_id: str, folder: str) -> Any:
        rows = yield self._query(
            "SELECT uid_validity, highest_modseq FROM imap_folder_modseq"
            " WHERE tenant = %s AND provider_id = %s AND folder = %s",
            (tenant, provider_id, folder))
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    def save_modseq(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                    modseq: Optional[int], owner: str) -> defer.Deferred:
        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(_LOCK_LEASE, (tenant, provider_id, owner))
            if not cur.fetchall():
                raise LeaseLost(f"{tenant}/{provider_id}")
            if modseq is None:
                yield cur.execute(
                    "DELETE FROM imap_folder_modseq"
                    " WHERE tenant = %s AND provider_id = %s AND folder = %s",
                    (tenant, provider_id, folder))
                return
            yield cur.execute(
                "INSERT INTO imap_folder_modseq (tenant, provider_id, folder, uid_validity,"
                " highest_modseq, updated_at) VALUES (%s, %s, %s, %s, %s, now())"
                " ON CONFLICT (tenant, provider_id, folder) DO UPDATE SET"
                " uid_validity = excluded.uid_validity,"
                " highest_modseq = excluded.highest_modseq, updated_at = now()",
                (tenant, provider_id, folder, str(uid_validity), int(modseq)))

        return self._interact(run)

    def write_cursor(self, tenant: str, provider_id: str, folder: str, cursor: FolderCursor,
                     owner: str) -> defer.Deferred:
        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(_LOCK_LEASE, (tenant, provider_id, owner))
            if not cur.fetchall():
                raise LeaseLost(f"{tenant}/{provider_id}")
            yield cur.execute(_WRITE_CURSOR,
                              self._cursor_params(tenant, provider_id, folder, cursor))

        return self._interact(run)

    def reset_cursors(self, tenant: str, provider_id: str,
                      folder: Optional[str] = None) -> defer.Deferred:
        if folder is None:
            d = self._query(
                "UPDATE imap_email_provider_config SET folder_state = '{}'::jsonb,"
                " uid_validity = NULL, last_uid = NULL, last_seen_at = NULL, updated_at = now()"
                " WHERE tenant = %s AND email_provider_id = %s",
                (tenant, provider_id))
        else:
            d = self._query(
                "UPDATE imap_email_provider_config SET folder_state = folder_state - %s,"
                " updated_at = now() WHERE tenant = %s AND email_provider_id = %s",
                (folder, tenant, provider_id))
        return d.addCallback(lambda _: None)

    # -- backfill (schema/0008) -----------------------------------------------

    @defer.inlineCallbacks
    def read_backfill(self, tenant: str, provider_id: str, folders: Sequence[str]) -> Any:
        rows = yield self._query(
            "SELECT (SELECT first_sync_since_days FROM imap_provider_backfill"
            "        WHERE tenant = %s AND provider_id = %s),"
            " (SELECT min(since) FROM imap_folder_backfill"
            "  WHERE tenant = %s AND provider_id = %s AND folder = ANY(%s))",
            (tenant, provider_id, tenant, provider_id, list(folders)))
        days, since = rows[0] if rows else (None, None)
        return BackfillState(days, since)

    @defer.inlineCallbacks
    def set_first_sync_since_days(self, tenant: str, provider_id: str,
                                  days: Optional[int]) -> Any:
        if days is not None and days < 0:
            raise ValueError("first_sync_since_days must be >= 0")
        rows = yield self._query(
            "INSERT INTO imap_provider_backfill (tenant, provider_id, first_sync_since_days)"
            " SELECT tenant, id, %s FROM email_providers WHERE tenant = %s AND id = %s"
            " ON CONFLICT (tenant, provider_id) DO UPDATE SET"
            " first_sync_since_days = EXCLUDED.first_sync_since_days, updated_at = now()"
            " RETURNING 1",
            (days, tenant, provider_id))
        return bool(rows)

    def request_backfill(self, tenant: str, provider_id: str, folder: Optional[str],
                         since: date) -> defer.Deferred:
        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(
                "SELECT folder_state, folder_filters FROM imap_email_provider_config"
                " WHERE tenant = %s AND email_provider_id = %s", (tenant, provider_id))
            rows = cur.fetchall()
            if not rows:
                return None
            folders = backfill_folders(folder, rows[0][0], rows[0][1])
            for name in folders:  # a handful of folders
                yield cur.execute(
                    "INSERT INTO imap_folder_backfill (tenant, provider_id, folder, since)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (tenant, provider_id, folder)"
                    " DO UPDATE SET since = EXCLUDED.since, requested_at = now()",
                    (tenant, provider_id, name, since))
            return folders

        return self._interact(run)

    def complete_backfill(self, tenant: str, provider_id: str, folders: Sequence[str],
                          since: date) -> defer.Deferred:
        return self._query(
            "DELETE FROM imap_folder_backfill WHERE tenant = %s AND provider_id = %s"
            " AND folder = ANY(%s) AND since >= %s",
            (tenant, provider_id, list(folders), since)).addCallback(lambda _: None)

    # -- leases ---------------------------------------------------------------

    def acquire_lease(self, tenant: str, provider_id: str, owner: str,
                      ttl_ms: int) -> defer.Deferred:
        return self._query(
            "UPDATE imap_email_provider_config SET lease_owner = %s,"
            " lease_expires_at = now() + make_interval(secs => %s)"
            " WHERE tenant = %s AND email_provider_id = %s"
            " AND (lease_owner IS NULL OR lease_owner = %s OR lease_expires_at IS NULL"
            "      OR lease_expires_at <= now())"
            " RETURNING 1",
            (owner, ttl_ms / 1000.0, tenant, provider_id, owner),
        ).addCallback(bool)

    def renew_lease(self, tenant: str, provider_id: str, owner: str,
                    ttl_ms: int) -> defer.Deferred:
        return self._query(
            "UPDATE imap_email_provider_config"
            " SET lease_expires_at = now() + make_interval(secs => %s)"
            " WHERE tenant = %s AND email_provider_id = %s"
            " AND lease_owner = %s AND lease_expires_at > now()"
            " RETURNING 1",
            (ttl_ms / 1000.0, tenant, provider_id, owner),
        ).addCallback(bool)

    def release_lease(self, tenant: str, provider_id: str, owner: str) -> defer.Deferred:
        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(
                "UPDATE imap_email_provider_config SET lease_owner = NULL,"
                " lease_expires_at = NULL"
                " WHERE tenant = %s AND email_provider_id = %s AND lease_owner = %s",
                (tenant, provider_id, owner))
            if cur.rowcount:
                yield cur.execute(
                    "UPDATE imap_folder_status SET holds_connection = false,"
                    " state = 'Stopped', since = now(), updated_at = now()"
                    " WHERE tenant = %s AND provider_id = %s AND owner = %s",
                    (tenant, provider_id, owner))

        return self._interact(run).addCallback(lambda _: None)

    # -- the batch -----------------------------------------------------------

    def record_batch(self, tenant: str, provider_id: str, folder: str, owner: str,
                     records: Sequence[MessageRecord],
                     cursor: Optional[FolderCursor]) -> defer.Deferred:
        records = list(records)
        try:
            check_records(records)
        except ValueError:
            return defer.fail()
        first = first_occurrences(records)

        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(_LOCK_LEASE, (tenant, provider_id, owner))
            if not cur.fetchall():
                raise LeaseLost(f"{tenant}/{provider_id}")
            candidates = [r for r, f in zip(records, first) if f]
            inserted: set[str] = set()
            if candidates:
                values = b",".join(
                    cur.mogrify(
                        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        (tenant, provider_id, r.dedupe_key, r.message_id_key, r.folder,
                         r.uid_validity, r.uid, r.outcome, r.reason, r.event_id),
                    )
                    for r in candidates
                )
                # DO NOTHING covers both unique keys (UID key and Message-ID).
                yield cur.execute(
                    b"INSERT INTO imap_message_ledger (tenant, provider_id, dedupe_key,"
                    b" message_id_key, folder, uid_validity, uid, outcome, reason, event_id)"
                    b" VALUES " + values + b" ON CONFLICT DO NOTHING RETURNING dedupe_key")
                inserted = {row[0] for row in cur.fetchall()}
            new = [f and r.dedupe_key in inserted for r, f in zip(records, first)]
            published = [r for r, n in zip(records, new) if n and r.outcome == OUTCOME_PUBLISHED]
            # The row updates and the outbox insert go in one round trip
            # (psycopg2 sends them as one simple query); the insert comes last
            # because only the last statement's rows come back.
            statements: list[bytes] = []
            message_id = last_message_id(records, new)
            if message_id is not None:
                statements.append(cur.mogrify(
                    "UPDATE imap_email_provider_config SET last_processed_message_id = %s"
                    " WHERE tenant = %s AND email_provider_id = %s",
                    (message_id, tenant, provider_id)))
            if cursor is not None:
                statements.append(cur.mogrify(
                    _WRITE_CURSOR, self._cursor_params(tenant, provider_id, folder, cursor)))
            outbox: list[OutboxRow] = []
            if published:
                # The payload goes in as the bytes the pipeline encoded
                # (schema 0006): neither re-encoded here nor parsed as jsonb.
                head = cur.mogrify("(%s, %s, ", (tenant, provider_id))
                statements.append(b"".join([
                    b"INSERT INTO imap_event_outbox (tenant, provider_id, event_id, entry,"
                    b" payload) VALUES ",
                    *_outbox_values(cur, head, published, _client_utf8(cur)),
                    b" RETURNING id, event_id, created_at"]))
            if statements:
                yield cur.execute(b";\n".join(statements))
            if published:
                # RETURNING: the relay publishes these rows from memory.
                by_event = {r.event_id: r for r in published}
                # The record's own (read-only) fields: copying a StreamEntry
                # into a dict would decode its payload for nothing.
                outbox = sorted(
                    (OutboxRow(int(i), tenant, provider_id, e, by_event[e].fields or {}, c)
                     for i, e, c in cur.fetchall()),
                    key=lambda row: row.id)
            return BatchResult(tuple(
                r.outcome if n else OUTCOME_DUPLICATE for r, n in zip(records, new)),
                outbox=tuple(outbox))

        return self._interact(run)

    # -- outbox -------------------------------------------------------------

    def add_outbox(self, tenant: str, provider_id: str, event_id: str,
                   fields: Any) -> defer.Deferred:
        entry, payload = outbox_parts(fields)
        return self._query(
            "INSERT INTO imap_event_outbox (tenant, provider_id, event_id, entry, payload)"
            " VALUES (%s, %s, %s, %s, %s)",
            (tenant, provider_id, event_id, entry.decode("utf-8"),
             None if payload is None else payload.decode("utf-8")),
        ).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def fetch_outbox(self, limit: int, owner: Optional[str] = None) -> Any:
        # With an owner: rows of providers it leases, or that nobody holds a
        # live lease for (released, expired, deleted). Rows another replica
        # is relaying right now are left to it, so two relays never XADD the
        # same row.
        rows = yield self._query(
            "SELECT o.id, o.tenant, o.provider_id, o.event_id, o.fields, o.entry, o.payload,"
            " o.created_at"
            " FROM imap_event_outbox o LEFT JOIN imap_email_provider_config c"
            "   ON c.tenant = o.tenant AND c.email_provider_id = o.provider_id"
            " WHERE o.published_at IS NULL AND (%s::text IS NULL"
            "   OR c.email_provider_id IS NULL OR c.lease_owner IS NULL"
            "   OR c.lease_owner = %s OR c.lease_expires_at IS NULL"
            "   OR c.lease_expires_at <= now())"
            " ORDER BY o.id LIMIT %s",
            (owner, owner, int(limit)))
        # Rows written before schema 0006 have only the jsonb ``fields``.
        return [OutboxRow(int(i), str(t), str(p), e,
                          f if entry is None else outbox_fields(entry, payload), c)
                for i, t, p, e, f, entry, payload, c in rows]

    def mark_published(self, ids: Sequence[int]) -> defer.Deferred:
        ids = [int(i) for i in ids]
        if not ids:
            return defer.succeed(None)
        return self._query(
            "UPDATE imap_event_outbox SET published_at = now()"
            " WHERE id = ANY(%s) AND published_at IS NULL",
            (ids,),
        ).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def outbox_stats(self) -> Any:
        rows = yield self._query(
            "SELECT count(*), EXTRACT(EPOCH FROM (now() - min(created_at)))"
            " FROM imap_event_outbox WHERE published_at IS NULL")
        count, age = rows[0]
        return (int(count), None if age is None else max(0.0, float(age)))

    # -- provider options (schema/0007) ------------------------------------------

    def set_write_back(self, tenant: str, provider_id: str,
                       mode: Optional[str]) -> defer.Deferred:
        return self._set_option(tenant, provider_id, "write_back", mode)

    def set_oauth_delegate(self, tenant: str, provider_id: str,
                           delegate: Optional[str]) -> defer.Deferred:
        return self._set_option(tenant, provider_id, "oauth_delegate", delegate)

    def _set_option(self, tenant: str, provider_id: str, column: str,
                    value: Optional[str]) -> defer.Deferred:
        assert column in OPTION_COLUMNS, column  # a name in SQL, never user input

        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute("SELECT 1 FROM email_providers WHERE tenant = %s AND id = %s",
                              (tenant, provider_id))
            if not cur.fetchall():
                return False
            yield cur.execute(
                f"INSERT INTO imap_provider_options (tenant, provider_id, {column}, updated_at)"
                " VALUES (%s, %s, %s, now()) ON CONFLICT (tenant, provider_id) DO UPDATE"
                f" SET {column} = excluded.{column}, updated_at = now()",
                (tenant, provider_id, value))
            # The option is read with the provider row: the next discovery pass
            # sees it (the NOTIFY trigger ignores updated_at-only updates).
            yield cur.execute(
                "UPDATE imap_email_provider_config SET updated_at = now()"
                " WHERE tenant = %s AND email_provider_id = %s", (tenant, provider_id))
            return True

        return self._interact(run)

    def recorded_uids(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                      first_uid: int, last_uid: int) -> defer.Deferred:
        return self._query(
            "SELECT DISTINCT uid FROM imap_message_ledger WHERE tenant = %s AND provider_id = %s"
            " AND folder = %s AND uid_validity = %s AND uid BETWEEN %s AND %s ORDER BY uid",
            (tenant, provider_id, folder, str(uid_validity), int(first_uid), int(last_uid)),
        ).addCallback(lambda rows: [int(r[0]) for r in rows])

    def purge_ledger(self, older_than_days: float) -> defer.Deferred:
        seconds = float(older_than_days) * 86400

        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(
                "DELETE FROM imap_message_ledger"
                " WHERE created_at < now() - make_interval(secs => %s)", (seconds,))
            deleted = cur.rowcount
            # Unpublished rows stay whatever their age: they are undelivered events.
            yield cur.execute(
                "DELETE FROM imap_event_outbox WHERE published_at IS NOT NULL"
                " AND published_at < now() - make_interval(secs => %s)", (seconds,))
            deleted += cur.rowcount
            yield cur.execute(
                "DELETE FROM imap_message_failures"
                " WHERE updated_at < now() - make_interval(secs => %s)", (seconds,))
            deleted += cur.rowcount
            # Applied admin requests and long-dead replicas go too (not counted).
            yield cur.execute(
                "DELETE FROM imap_admin_requests"
                " WHERE applied_at < now() - make_interval(secs => %s)", (seconds,))
            yield cur.execute(
                "DELETE FROM imap_replicas"
                " WHERE heartbeat_at < now() - make_interval(secs => %s)", (seconds,))
            return deleted

        return self._interact(run)

    # -- secrets ---------------------------------------------------------------

    def put_secret(self, tenant: str, name: str, ciphertext: bytes) -> defer.Deferred:
        return self._query(
            "INSERT INTO imap_secrets (tenant, name, ciphertext) VALUES (%s, %s, %s)"
            " ON CONFLICT (tenant, name) DO UPDATE"
            " SET ciphertext = EXCLUDED.ciphertext, updated_at = now()",
            (tenant, name, psycopg2.Binary(bytes(ciphertext))),
        ).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def get_secret(self, tenant: str, name: str) -> Any:
        rows = yield self._query(
            "SELECT ciphertext FROM imap_secrets WHERE tenant = %s AND name = %s",
            (tenant, name))
        # bytea arrives as a memoryview.
        return bytes(rows[0][0]) if rows else None

    def delete_secret(self, tenant: str, name: str) -> defer.Deferred:
        return self._query(
            "DELETE FROM imap_secrets WHERE tenant = %s AND name = %s", (tenant, name),
        ).addCallback(lambda _: None)

    # -- provider runtime columns -------------------------------------------

    def _fenced(self, tenant: str, provider_id: str, owner: Optional[str], sql: str,
                params: Sequence[Any]) -> defer.Deferred:
        """One write; with ``owner``, only while ``owner`` holds the lease
        (the config row locked first, as for cursor writes)."""
        if owner is None:
            return self._query(sql, params).addCallback(lambda _: None)

        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(_LOCK_LEASE, (tenant, provider_id, owner))
            if not cur.fetchall():
                raise LeaseLost(f"{tenant}/{provider_id}")
            yield cur.execute(sql, params)

        return self._interact(run).addCallback(lambda _: None)

    def set_provider_status(self, tenant: str, provider_id: str, status: str,
                            error_message: Optional[str] = None,
                            owner: Optional[str] = None) -> defer.Deferred:
        return self._fenced(
            tenant, provider_id, owner,
            "UPDATE email_providers SET status = %s, error_message = %s, updated_at = now()"
            " WHERE tenant = %s AND id = %s",
            (status, error_message, tenant, provider_id))

    def set_last_error(self, tenant: str, provider_id: str,
                       last_error: Optional[str]) -> defer.Deferred:
        return self._query(
            "UPDATE imap_email_provider_config SET last_error = %s, updated_at = now()"
            " WHERE tenant = %s AND email_provider_id = %s",
            (last_error, tenant, provider_id),
        ).addCallback(lambda _: None)

    def save_capabilities(self, tenant: str, provider_id: str, capabilities: Any,
                          owner: Optional[str] = None) -> defer.Deferred:
        return self._fenced(
            tenant, provider_id, owner,
            "UPDATE imap_email_provider_config SET server_capabilities = %s"
            " WHERE tenant = %s AND email_provider_id = %s",
            (Json(sorted_capabilities(capabilities)), tenant, provider_id))

    def save_access_token(self, tenant: str, provider_id: str, access_token: Optional[str],
                          expires_at: Optional[datetime],
                          owner: Optional[str] = None) -> defer.Deferred:
        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            # Another replica's live lease refuses it; a free provider does not
            # (a connection test may refresh the token of a provider nobody runs).
            yield cur.execute(
                "SELECT lease_owner IS NOT NULL AND lease_owner <> %s"
                " AND lease_expires_at > clock_timestamp() FROM imap_email_provider_config"
                " WHERE tenant = %s AND email_provider_id = %s FOR UPDATE",
                (owner or "", tenant, provider_id))
            rows = cur.fetchall()
            if owner is not None and rows and rows[0][0]:
                raise LeaseLost(f"{tenant}/{provider_id}")
            yield cur.execute(
                "UPDATE imap_email_provider_config SET access_token = %s, token_expires_at = %s,"
                " updated_at = now() WHERE tenant = %s AND email_provider_id = %s",
                (access_token, expires_at, tenant, provider_id))

        return self._interact(run).addCallback(lambda _: None)

    # -- one service across replicas (schema/0004) ----------------------------

    def acquire_lease_capped(self, tenant: str, provider_id: str, owner: str, ttl_ms: int,
                             folders: Sequence[str],
                             max_connections: Optional[int]) -> defer.Deferred:
        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            # One taker per tenant at a time: two replicas counting at once
            # would both see room for the same connection.
            yield cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                              ("imapsvc-cap:" + tenant,))
            yield cur.execute(
                "SELECT lease_owner, lease_expires_at > clock_timestamp()"
                " FROM imap_email_provider_config"
                " WHERE tenant = %s AND email_provider_id = %s FOR UPDATE",
                (tenant, provider_id))
            rows = cur.fetchall()
            if not rows:
                return LeaseGrant(False)
            holder = rows[0][0] if rows[0][0] is not None and rows[0][1] else None
            if holder is not None and holder != owner:
                return LeaseGrant(False)
            yield cur.execute(
                "SELECT count(*) FROM imap_folder_status s JOIN imap_email_provider_config c"
                " ON c.tenant = s.tenant AND c.email_provider_id = s.provider_id"
                " WHERE s.tenant = %s AND s.provider_id <> %s AND s.holds_connection"
                " AND c.lease_owner = s.owner AND c.lease_expires_at > clock_timestamp()",
                (tenant, provider_id))
            in_use = int(cur.fetchall()[0][0])
            granted, waiting = grant(folders, max_connections, in_use)
            error = cap_error(max_connections or 0, in_use, waiting, len(granted))
            # Rows of folders that keep their connection under the same owner
            # keep their state (a re-grant must not blank /status).
            yield cur.execute(
                "DELETE FROM imap_folder_status WHERE tenant = %s AND provider_id = %s"
                " AND NOT (owner IS NOT DISTINCT FROM %s AND holds_connection"
                "          AND folder = ANY(%s::text[]))",
                (tenant, provider_id, owner, list(granted)))
            rows = [(name, owner, True, "Disconnected", None) for name in granted]
            rows += [(name, owner if granted else None, False, "Waiting", error)
                     for name in waiting]
            if rows:
                values = b",".join(
                    cur.mogrify("(%s, %s, %s, %s, %s, %s, now(), %s)",
                                (tenant, provider_id, name, f_owner, holds, state, f_error))
                    for name, f_owner, holds, state, f_error in rows)
                yield cur.execute(
                    b"INSERT INTO imap_folder_status (tenant, provider_id, folder, owner,"
                    b" holds_connection, state, since, last_error) VALUES " + values
                    + b" ON CONFLICT (tenant, provider_id, folder) DO NOTHING")
            if error is not None:
                yield cur.execute(
                    "UPDATE email_providers SET status = 'error', error_message = %s,"
                    " updated_at = now() WHERE tenant = %s AND id = %s"
                    " AND (status <> 'error' OR error_message IS DISTINCT FROM %s)",
                    (error, tenant, provider_id, error))
            if not granted:
                if holder == owner:
                    yield cur.execute(
                        "UPDATE imap_email_provider_config SET lease_owner = NULL,"
                        " lease_expires_at = NULL WHERE tenant = %s AND email_provider_id = %s",
                        (tenant, provider_id))
                return LeaseGrant(False, (), waiting, in_use, error)
            yield cur.execute(
                "UPDATE imap_email_provider_config SET lease_owner = %s,"
                " lease_expires_at = now() + make_interval(secs => %s)"
                " WHERE tenant = %s AND email_provider_id = %s",
                (owner, ttl_ms / 1000.0, tenant, provider_id))
            return LeaseGrant(True, granted, waiting, in_use, error)

        return self._interact(run)

    def write_folder_status(self, tenant: str, provider_id: str, owner: str,
                            statuses: Sequence[FolderStatus]) -> defer.Deferred:
        statuses = list(statuses)

        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(_LOCK_LEASE, (tenant, provider_id, owner))
            if not cur.fetchall():
                raise LeaseLost(f"{tenant}/{provider_id}")
            if not statuses:
                return
            values = b",".join(
                cur.mogrify("(%s, %s, %s, %s, true, %s, %s, %s, %s, %s, now())",
                            (tenant, provider_id, st.folder, owner, st.state, st.since,
                             st.last_sync_at, st.last_error, Json(dict(st.counters))))
                for st in statuses)
            yield cur.execute(
                b"INSERT INTO imap_folder_status (tenant, provider_id, folder, owner,"
                b" holds_connection, state, since, last_sync_at, last_error, counters,"
                b" updated_at) VALUES " + values
                + b" ON CONFLICT (tenant, provider_id, folder) DO UPDATE SET"
                b" owner = EXCLUDED.owner, state = EXCLUDED.state, since = EXCLUDED.since,"
                b" last_sync_at = EXCLUDED.last_sync_at, last_error = EXCLUDED.last_error,"
                b" counters = EXCLUDED.counters, updated_at = now()")

        return self._interact(run).addCallback(lambda _: None)

    def heartbeat_replica(self, owner: str, info: Any = None) -> defer.Deferred:
        return self._query(
            "INSERT INTO imap_replicas (owner, info) VALUES (%s, %s)"
            " ON CONFLICT (owner) DO UPDATE SET heartbeat_at = now(), info = EXCLUDED.info",
            (owner, Json(dict(info or {}))),
        ).addCallback(lambda _: None)

    def forget_replica(self, owner: str) -> defer.Deferred:
        return self._query("DELETE FROM imap_replicas WHERE owner = %s", (owner,)
                           ).addCallback(lambda _: None)

    def read_deployment(self, tenants: Optional[Sequence[str]] = None) -> defer.Deferred:
        wanted = [str(t) for t in tenants or ()]

        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute("SELECT now()")
            now = cur.fetchall()[0][0]
            yield cur.execute(
                "SELECT p.tenant, p.id, p.mailbox, p.status, p.error_message, c.lease_owner,"
                " c.lease_expires_at, p.is_active, p.inbound_paused_at IS NOT NULL,"
                " p.last_sync_at FROM email_providers p JOIN imap_email_provider_config c"
                " ON c.tenant = p.tenant AND c.email_provider_id = p.id"
                " WHERE p.provider_type = 'imap'"
                " AND (%s::text[] = '{}' OR p.tenant::text = ANY(%s::text[]))"
                " ORDER BY p.tenant, p.id", (wanted, wanted))
            providers = [
                {"tenant": str(t), "provider_id": str(p), "mailbox": m, "status": st,
                 "error_message": e, "lease_owner": lo, "lease_expires_at": le,
                 "is_active": bool(a), "paused": bool(pa), "last_sync_at": ls}
                for t, p, m, st, e, lo, le, a, pa, ls in cur.fetchall()]
            yield cur.execute(
                "SELECT tenant, provider_id, folder, owner, holds_connection, state, since,"
                " last_sync_at, last_error, counters, updated_at FROM imap_folder_status"
                " WHERE (%s::text[] = '{}' OR tenant::text = ANY(%s::text[]))"
                " ORDER BY tenant, provider_id, folder", (wanted, wanted))
            folders = [
                {"tenant": str(t), "provider_id": str(p), "folder": f, "owner": o,
                 "holds_connection": bool(h), "state": st, "since": si, "last_sync_at": ls,
                 "last_error": e, "counters": c or {}, "updated_at": u}
                for t, p, f, o, h, st, si, ls, e, c, u in cur.fetchall()]
            yield cur.execute(
                "SELECT owner, started_at, heartbeat_at, info FROM imap_replicas ORDER BY owner")
            replicas = [{"owner": o, "started_at": s, "heartbeat_at": h, "info": i or {}}
                        for o, s, h, i in cur.fetchall()]
            return {"now": now, "providers": providers, "folders": folders,
                    "replicas": replicas}

        return self._interact(run)

    def add_admin_request(self, tenant: str, provider_id: str, action: str,
                          folder: Optional[str] = None,
                          requested_by: Optional[str] = None) -> defer.Deferred:
        request_id = str(uuid.uuid4())

        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(
                "INSERT INTO imap_admin_requests (tenant, id, provider_id, action, folder,"
                " requested_by) VALUES (%s, %s, %s, %s, %s, %s)"
                " RETURNING " + _REQUEST_COLUMNS,
                (tenant, request_id, provider_id, action, folder, requested_by))
            row = cur.fetchall()[0]
            # Delivered at commit: the owner never wakes before the row exists.
            yield cur.execute("SELECT pg_notify(%s, %s)", (ADMIN_CHANNEL, json.dumps(
                {"tenant": tenant, "id": request_id, "provider_id": provider_id})))
            return _admin_request(row)

        return self._interact(run)

    @defer.inlineCallbacks
    def claim_admin_requests(self, owner: str, limit: int = 10,
                             stale_s: float = 60.0) -> Any:
        rows = yield self._query(
            "UPDATE imap_admin_requests r SET claimed_by = %s, claimed_at = now()"
            " WHERE (r.tenant, r.id) IN ("
            "   SELECT q.tenant, q.id FROM imap_admin_requests q"
            "   LEFT JOIN imap_email_provider_config c"
            "     ON c.tenant = q.tenant AND c.email_provider_id = q.provider_id"
            "   WHERE q.applied_at IS NULL"
            "     AND (q.claimed_at IS NULL OR q.claimed_at <= now() - make_interval(secs => %s))"
            "     AND (c.lease_owner IS NULL OR c.lease_owner = %s"
            "          OR c.lease_expires_at IS NULL OR c.lease_expires_at <= now())"
            "   ORDER BY q.created_at LIMIT %s FOR UPDATE OF q SKIP LOCKED)"
            " RETURNING " + ", ".join("r." + c.strip() for c in _REQUEST_COLUMNS.split(",")),
            (owner, float(stale_s), owner, int(limit)))
        return sorted((_admin_request(r) for r in rows),
                      key=lambda r: (r.created_at, r.id))

    def complete_admin_request(self, tenant: str, request_id: str, owner: str,
                               result: Any) -> defer.Deferred:
        return self._query(
            "UPDATE imap_admin_requests SET applied_by = %s, applied_at = now(), result = %s"
            " WHERE tenant = %s AND id = %s AND applied_at IS NULL",
            (owner, Json(result, dumps=_dumps), tenant, request_id),
        ).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def get_admin_request(self, tenant: str, request_id: str) -> Any:
        rows = yield self._query(
            "SELECT " + _REQUEST_COLUMNS + " FROM imap_admin_requests"
            " WHERE tenant = %s AND id = %s", (tenant, request_id))
        return _admin_request(rows[0]) if rows else None

    def set_inbound_pause(self, tenant: str, provider_id: str, paused: bool) -> defer.Deferred:
        if paused:
            sql = ("UPDATE email_providers SET inbound_paused_at = COALESCE(inbound_paused_at,"
                   " now()), inbound_pause_reason = COALESCE(inbound_pause_reason, 'manual'),"
                   " updated_at = now() WHERE tenant = %s AND id = %s")
        else:
            sql = ("UPDATE email_providers SET inbound_paused_at = NULL,"
                   " inbound_pause_reason = NULL, inbound_auth_failure_count = 0,"
                   " inbound_auth_failure_code = NULL, updated_at = now()"
                   " WHERE tenant = %s AND id = %s")
        return self._query(sql, (tenant, provider_id)).addCallback(lambda n: bool(n))
    # -- poison messages (schema/0005) ---------------------------------------

    def note_message_failure(self, tenant: str, provider_id: str, folder: str,
                             uid_validity: str, uid: int, reason: str) -> defer.Deferred:
        return self._query(
            "INSERT INTO imap_message_failures (tenant, provider_id, folder, uid_validity, uid,"
            " failures, reason) VALUES (%s, %s, %s, %s, %s, 1, %s)"
            " ON CONFLICT (tenant, provider_id, folder, uid_validity, uid) DO UPDATE"
            " SET failures = imap_message_failures.failures + 1, reason = EXCLUDED.reason,"
            " updated_at = now() RETURNING failures",
            (tenant, provider_id, folder, str(uid_validity), int(uid), reason),
        ).addCallback(lambda rows: int(rows[0][0]))

    def clear_message_failures(self, tenant: str, provider_id: str, folder: str,
                               uid_validity: str, uids: Sequence[int]) -> defer.Deferred:
        return self._query(
            "DELETE FROM imap_message_failures WHERE tenant = %s AND provider_id = %s"
            " AND folder = %s AND uid_validity = %s AND uid = ANY(%s) AND skipped_at IS NULL",
            (tenant, provider_id, folder, str(uid_validity), [int(u) for u in uids]),
        ).addCallback(lambda _: None)

    def mark_poison_skipped(self, tenant: str, provider_id: str, folder: str,
                            uid_validity: str, uid: int) -> defer.Deferred:
        return self._query(
            "UPDATE imap_message_failures SET skipped_at = now(), updated_at = now()"
            " WHERE tenant = %s AND provider_id = %s AND folder = %s AND uid_validity = %s"
            " AND uid = %s", (tenant, provider_id, folder, str(uid_validity), int(uid)),
        ).addCallback(lambda _: None)

    def list_poison(self, tenant: Optional[str] = None,
                    provider_id: Optional[str] = None) -> defer.Deferred:
        d = self._query(LIST_POISON_SQL, (tenant, tenant, provider_id, provider_id))
        return d.addCallback(lambda rows: [poison_from_row(r) for r in rows])

    def retry_poison(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                     uid: int) -> defer.Deferred:
        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            [forget, unskip, rewind] = retry_poison_statements(
                tenant, provider_id, folder, uid_validity, uid)
            yield cur.execute(*forget)
            if cur.rowcount == 0:
                return False
            yield cur.execute(*unskip)
            yield cur.execute(*rewind)
            return True

        return self._interact(run)

    def touch_last_sync(self, tenant: str, provider_id: str) -> defer.Deferred:
        return self._query(
            "UPDATE email_providers SET last_sync_at = now() WHERE tenant = %s AND id = %s",
            (tenant, provider_id),
        ).addCallback(lambda _: None)

    def record_auth_failure(self, tenant: str, provider_id: str, code: Optional[str],
                            pause_after: int) -> defer.Deferred:
        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(
                "SELECT inbound_auth_failure_count, inbound_paused_at FROM email_providers"
                " WHERE tenant = %s AND id = %s FOR UPDATE", (tenant, provider_id))
            rows = cur.fetchall()
            if not rows:
                return (0, False)
            count = int(rows[0][0] or 0) + 1
            pause = rows[0][1] is None and count >= pause_after
            yield cur.execute(
                "UPDATE email_providers SET inbound_auth_failure_count = %s,"
                " inbound_auth_failure_last_at = now(), inbound_auth_failure_code = %s,"
                " inbound_paused_at = CASE WHEN %s THEN now() ELSE inbound_paused_at END,"
                " inbound_pause_reason = CASE WHEN %s THEN 'auth_failure'"
                "   ELSE inbound_pause_reason END,"
                " updated_at = now() WHERE tenant = %s AND id = %s",
                (count, code, pause, pause, tenant, provider_id))
            return (count, pause)

        return self._interact(run)

    def reset_auth_failures(self, tenant: str, provider_id: str) -> defer.Deferred:
        # Skips the write when there is nothing to clear: this runs on every login.
        return self._query(
            "UPDATE email_providers SET inbound_auth_failure_count = 0,"
            " inbound_auth_failure_code = NULL,"
            " inbound_paused_at = CASE WHEN inbound_pause_reason = 'auth_failure'"
            "   THEN NULL ELSE inbound_paused_at END,"
            " inbound_pause_reason = CASE WHEN inbound_pause_reason = 'auth_failure'"
            "   THEN NULL ELSE inbound_pause_reason END,"
            " updated_at = now()"
            " WHERE tenant = %s AND id = %s AND (inbound_auth_failure_count <> 0"
            "   OR inbound_auth_failure_code IS NOT NULL"
            "   OR inbound_pause_reason = 'auth_failure')",
            (tenant, provider_id),
        ).addCallback(lambda _: None)

    # -- OAuth state --------------------------------------------------------

    def put_oauth_state(self, tenant: str, nonce: str, verifier: str,
                        expires_at: datetime) -> defer.Deferred:
        return self._query(
            "INSERT INTO imap_oauth_states (tenant, nonce, verifier, expires_at)"
            " VALUES (%s, %s, %s, %s)",
            (tenant, nonce, verifier, expires_at),
        ).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def take_oauth_state(self, tenant: str, nonce: str) -> Any:
        rows = yield self._query(
            "UPDATE imap_oauth_states SET used_at = now()"
            " WHERE tenant = %s AND nonce = %s AND used_at IS NULL AND expires_at > now()"
            " RETURNING verifier",
            (tenant, nonce))
        return rows[0][0] if rows else None

    # -- readiness -----------------------------------------------------------

    def ping(self) -> defer.Deferred:
        return self._query("SELECT 1").addCallback(lambda _: None)
