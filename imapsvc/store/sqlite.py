"""The embedded default :class:`~imapsvc.interfaces.IStore`: one SQLite file.

Used when ``DATABASE_URL`` is empty, so imapsvc runs anywhere with no
database server. Same tables, columns and semantics as
:class:`imapsvc.store.postgres.PostgresStore` (both pass
``tests.store_contract``); the SQLite spelling of the schema is in
:mod:`imapsvc.store.sqlite_schema`.

Two layers:

- :class:`SqliteOps` is plain synchronous code on one ``sqlite3``
  connection. The admin CLI uses it directly (no reactor).
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

import json
import sqlite3
import threading
import uuid
from datetime import UTC, date, datetime
from typing import Any, Callable, Optional, Sequence

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from imapsvc.core.cluster import cap_error, grant
from imapsvc.core.event import encode_fields
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
    parse_seen_at,
    provider_or_invalid,
    sorted_capabilities,
)
from imapsvc.store.sqlite_schema import SchemaTooNew, connect, ensure_schema

_REQUEST_COLUMNS = ("tenant, id, provider_id, action, folder, requested_by, created_at,"
                    " claimed_by, applied_by, applied_at, result")


def _admin_request(row: Sequence[Any]) -> AdminRequest:
    (tenant, rid, pid, action, folder, by, created, claimed_by, applied_by, applied_at,
     result) = row
    return AdminRequest(str(tenant), str(rid), str(pid), action, folder, by, from_ts(created),
                        claimed_by, applied_by, from_ts(applied_at),
                        _json_load(result, None))

log = Logger()

_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def ts(value: Optional[datetime]) -> Optional[str]:
    """A datetime as the fixed-width UTC text stored in timestamp columns
    (naive datetimes are taken as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime(_TS_FORMAT)


def from_ts(text: Optional[str]) -> Optional[datetime]:
    """The aware UTC datetime of a stored timestamp."""
    if text is None:
        return None
    return datetime.strptime(text, _TS_FORMAT).replace(tzinfo=UTC)


def ts_seconds(seconds: float) -> str:
    """Epoch seconds as stored timestamp text."""
    return ts(datetime.fromtimestamp(seconds, tz=UTC))  # type: ignore[return-value]


def _json_load(text: Optional[str], default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _cursors(text: Optional[str]) -> dict[str, FolderCursor]:
    out = {}
    state = _json_load(text, {})
    if isinstance(state, dict):
        for folder, data in state.items():
            cursor = FolderCursor.from_json(data if isinstance(data, dict) else None)
            if cursor is not None:
                out[str(folder)] = cursor
    return out


def _opt_bool(value: Optional[int]) -> Optional[bool]:
    return None if value is None else bool(value)


_PROVIDER_SELECT = """
    SELECT p.tenant, p.id, p.provider_name, p.mailbox,
        c.host, c.port, c.secure, c.allow_starttls, c.auth_type, c.username,
        c.connection_timeout_ms, c.socket_keepalive, c.max_emails_per_sync, c.folder_filters,
        c.oauth_authorize_url, c.oauth_token_url, c.oauth_client_id, c.oauth_scopes,
        c.access_token, c.token_expires_at, c.folder_state, c.server_capabilities,
        c.lease_owner, c.lease_expires_at,
        p.status, p.is_active, p.inbound_paused_at, p.inbound_auth_failure_count,
        max(p.updated_at, c.updated_at),
        c.oauth_client_secret, c.refresh_token,
        o.write_back, o.oauth_delegate
    FROM email_providers p
    JOIN imap_email_provider_config c ON c.tenant = p.tenant AND c.email_provider_id = p.id
    LEFT JOIN imap_provider_options o ON o.tenant = p.tenant AND o.provider_id = p.id
"""


def _provider(row: Sequence[Any]) -> ProviderConfig:
    (tenant, pid, name, mailbox, host, port, secure, starttls, auth_type, username,
     timeout_ms, keepalive, max_emails, filters, authorize_url, token_url, client_id,
     scopes, access_token, token_expires_at, folder_state, caps, lease_owner,
     lease_expires_at, status, is_active, paused_at, failures, updated_at,
     client_secret, refresh_token) = row[:31]
    # imap_provider_options (schema/0007), appended so other columns keep their place.
    write_back = row[31] if len(row) > 31 else None
    oauth_delegate = row[32] if len(row) > 32 else None  # schema/0009
    try:
        filters = None if filters is None else json.loads(filters)
    except ValueError:
        raise ValueError("folder_filters is not valid JSON") from None
    caps = _json_load(caps, [])
    return ProviderConfig(
        tenant=tenant,
        provider_id=pid,
        provider_name=name or "",
        mailbox=mailbox or "",
        host=host,
        port=int(port),
        secure=bool(secure),
        allow_starttls=bool(starttls),
        auth_type=auth_type,
        username=username or "",
        connection_timeout_ms=timeout_ms,
        socket_keepalive=_opt_bool(keepalive),
        max_emails_per_sync=50 if max_emails is None else int(max_emails),
        folder_filters=folder_filters_from_json(filters),
        oauth_authorize_url=authorize_url,
        oauth_token_url=token_url,
        oauth_client_id=client_id,
        oauth_scopes=scopes,
        access_token=access_token,
        token_expires_at=from_ts(token_expires_at),
        folder_state=_cursors(folder_state),
        server_capabilities=tuple(str(c) for c in (caps if isinstance(caps, list) else ())),
        lease_owner=lease_owner,
        lease_expires_at=from_ts(lease_expires_at),
        status=status,
        is_active=bool(is_active),
        inbound_paused_at=from_ts(paused_at),
        inbound_auth_failure_count=int(failures or 0),
        updated_at=from_ts(updated_at),
        oauth_client_secret=client_secret or None,
        refresh_token=refresh_token or None,
        write_back=write_back,
        oauth_delegate=oauth_delegate or None,
    )


class SqliteOps:
    """Every store operation as a plain synchronous method on one connection.

    :param conn: from :func:`imapsvc.store.sqlite_schema.connect` (autocommit
        mode; this class opens its own transactions).
    :param seconds: the clock, a callable returning epoch seconds.
    """

    def __init__(self, conn: sqlite3.Connection, seconds: Callable[[], float]) -> None:
        self.conn = conn
        self._seconds = seconds

    def now(self) -> str:
        return ts_seconds(self._seconds())

    def _transaction(self, fn: Callable[[sqlite3.Cursor], Any]) -> Any:
        """Run ``fn(cursor)`` in one ``BEGIN IMMEDIATE`` transaction."""
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            result = fn(cur)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        return result

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self.conn.execute(sql, params).fetchall()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    # -- providers (also what the admin CLI writes) --------------------------

    def insert_provider(self, config: ProviderConfig, provider_type: str = "imap",
                        inbound_pause_reason: Optional[str] = None) -> None:
        """Insert both rows of a provider, as the main app would.

        :raises sqlite3.IntegrityError: the id or (tenant, mailbox) is taken.
        """
        now = self.now()
        reason = inbound_pause_reason
        if config.inbound_paused_at is not None and reason is None:
            reason = "manual"

        def run(cur: sqlite3.Cursor) -> None:
            cur.execute(
                "INSERT INTO email_providers (id, tenant, provider_type, provider_name, mailbox,"
                " is_active, status, inbound_paused_at, inbound_pause_reason,"
                " inbound_auth_failure_count, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (config.provider_id, config.tenant, provider_type, config.provider_name,
                 config.mailbox, int(config.is_active), config.status,
                 ts(config.inbound_paused_at), reason, config.inbound_auth_failure_count,
                 now, now))
            cur.execute(
                "INSERT INTO imap_email_provider_config (email_provider_id, tenant, host, port,"
                " secure, allow_starttls, auth_type, username, connection_timeout_ms,"
                " socket_keepalive, max_emails_per_sync, folder_filters, oauth_authorize_url,"
                " oauth_token_url, oauth_client_id, oauth_scopes, access_token,"
                " token_expires_at, folder_state, server_capabilities, lease_owner,"
                " lease_expires_at, created_at, updated_at, oauth_client_secret, refresh_token)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?)",
                (config.provider_id, config.tenant, config.host, config.port,
                 int(config.secure), int(config.allow_starttls), config.auth_type,
                 config.username, config.connection_timeout_ms,
                 None if config.socket_keepalive is None else int(config.socket_keepalive),
                 config.max_emails_per_sync, json.dumps(list(config.folder_filters)),
                 config.oauth_authorize_url, config.oauth_token_url, config.oauth_client_id,
                 config.oauth_scopes, config.access_token, ts(config.token_expires_at),
                 json.dumps({k: v.to_json() for k, v in config.folder_state.items()}),
                 json.dumps(sorted_capabilities(config.server_capabilities)),
                 config.lease_owner, ts(config.lease_expires_at), now, now,
                 config.oauth_client_secret, config.refresh_token))

        self._transaction(run)

    def list_providers(self, tenant: Optional[str] = None) -> list[tuple[ProviderConfig, str]]:
        """Every provider of any type and state, with its ``provider_type``
        (for ``provider list``)."""
        sql = _PROVIDER_SELECT.replace("SELECT ", "SELECT p.provider_type, ", 1)
        params: tuple[Any, ...] = ()
        if tenant is not None:
            sql += " WHERE p.tenant = ?"
            params = (tenant,)
        rows = self._all(sql + " ORDER BY p.tenant, p.mailbox", params)
        return [(provider_or_invalid(_provider, r[1:]), r[0]) for r in rows]

    def set_active(self, tenant: str, provider_id: str, active: bool) -> bool:
        """Switch ``is_active``; ``False`` when the provider is unknown."""
        return self._run(
            "UPDATE email_providers SET is_active = ?, updated_at = ? WHERE tenant = ? AND id = ?",
            (int(active), self.now(), tenant, provider_id)) > 0

    def remove_provider(self, tenant: str, provider_id: str) -> bool:
        """Delete a provider (its config row goes by the cascade);
        ``False`` when unknown."""
        return self._run("DELETE FROM email_providers WHERE tenant = ? AND id = ?",
                         (tenant, provider_id)) > 0

    def list_active_providers(self, tenant: Optional[str] = None) -> list[ProviderConfig]:
        sql = (_PROVIDER_SELECT + " WHERE p.provider_type = 'imap' AND p.is_active"
               " AND p.inbound_paused_at IS NULL")
        params: tuple[Any, ...] = ()
        if tenant is not None:
            sql += " AND p.tenant = ?"
            params = (tenant,)
        rows = self._all(sql + " ORDER BY p.tenant, p.id", params)
        return [provider_or_invalid(_provider, r) for r in rows]

    def get_provider(self, tenant: str, provider_id: str) -> Optional[ProviderConfig]:
        rows = self._all(_PROVIDER_SELECT + " WHERE p.tenant = ? AND p.id = ?",
                         (tenant, provider_id))
        return provider_or_invalid(_provider, rows[0]) if rows else None

    # -- cursors -------------------------------------------------------------

    def read_cursor(self, tenant: str, provider_id: str, folder: str) -> Optional[FolderCursor]:
        rows = self._all(
            "SELECT folder_state FROM imap_email_provider_config"
            " WHERE tenant = ? AND email_provider_id = ?", (tenant, provider_id))
        if not rows:
            return None
        return _cursors(rows[0][0]).get(folder)

    def _holds(self, cur: sqlite3.Cursor, tenant: str, provider_id: str, owner: str) -> bool:
        cur.execute(
            "SELECT 1 FROM imap_email_provider_config WHERE tenant = ? AND email_provider_id = ?"
            " AND lease_owner = ? AND lease_expires_at > ?",
            (tenant, provider_id, owner, self.now()))
        return cur.fetchone() is not None

    def _put_cursor(self, cur: sqlite3.Cursor, tenant: str, provider_id: str, folder: str,
                    cursor: FolderCursor) -> None:
        cur.execute(
            "SELECT folder_state FROM imap_email_provider_config"
            " WHERE tenant = ? AND email_provider_id = ?", (tenant, provider_id))
        row = cur.fetchone()
        state = _json_load(row[0] if row else None, {})
        if not isinstance(state, dict):
            state = {}
        state[folder] = cursor.to_json()
        cur.execute(
            "UPDATE imap_email_provider_config SET folder_state = ?, uid_validity = ?,"
            " last_uid = ?, last_seen_at = ?, updated_at = ?"
            " WHERE tenant = ? AND email_provider_id = ?",
            (json.dumps(state), cursor.uid_validity, cursor.last_uid,
             ts(parse_seen_at(cursor.last_seen_at)), self.now(), tenant, provider_id))

    def read_modseq(self, tenant: str, provider_id: str,
                    folder: str) -> Optional[tuple[str, int]]:
        rows = self._all(
            "SELECT uid_validity, highest_modseq FROM imap_folder_modseq"
            " WHERE tenant = ? AND provider_id = ? AND folder = ?", (tenant, provider_id, folder))
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    def save_modseq(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                    modseq: Optional[int], owner: str) -> None:
        def run(cur: sqlite3.Cursor) -> None:
            if not self._holds(cur, tenant, provider_id, owner):
                raise LeaseLost(f"{tenant}/{provider_id}")
            if modseq is None:
                cur.execute("DELETE FROM imap_folder_modseq"
                            " WHERE tenant = ? AND provider_id = ? AND folder = ?",
                            (tenant, provider_id, folder))
                return
            cur.execute(
                "INSERT INTO imap_folder_modseq (tenant, provider_id, folder, uid_validity,"
                " highest_modseq, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant, provider_id, folder) DO UPDATE SET"
                " uid_validity = excluded.uid_validity,"
                " highest_modseq = excluded.highest_modseq, updated_at = excluded.updated_at",
                (tenant, provider_id, folder, str(uid_validity), int(modseq), self.now()))

        self._transaction(run)

    def write_cursor(self, tenant: str, provider_id: str, folder: str, cursor: FolderCursor,
                     owner: str) -> None:
        def run(cur: sqlite3.Cursor) -> None:
            if not self._holds(cur, tenant, provider_id, owner):
                raise LeaseLost(f"{tenant}/{provider_id}")
            self._put_cursor(cur, tenant, provider_id, folder, cursor)

        self._transaction(run)

    def reset_cursors(self, tenant: str, provider_id: str, folder: Optional[str] = None) -> bool:
        """Drop cursors; ``False`` when the provider is unknown."""
        def run(cur: sqlite3.Cursor) -> bool:
            cur.execute(
                "SELECT folder_state FROM imap_email_provider_config"
                " WHERE tenant = ? AND email_provider_id = ?", (tenant, provider_id))
            row = cur.fetchone()
            if row is None:
                return False
            if folder is None:
                cur.execute(
                    "UPDATE imap_email_provider_config SET folder_state = '{}',"
                    " uid_validity = NULL, last_uid = NULL, last_seen_at = NULL, updated_at = ?"
                    " WHERE tenant = ? AND email_provider_id = ?",
                    (self.now(), tenant, provider_id))
            else:
                state = _json_load(row[0], {})
                if isinstance(state, dict):
                    state.pop(folder, None)
                else:
                    state = {}
                cur.execute(
                    "UPDATE imap_email_provider_config SET folder_state = ?, updated_at = ?"
                    " WHERE tenant = ? AND email_provider_id = ?",
                    (json.dumps(state), self.now(), tenant, provider_id))
            return True

        return bool(self._transaction(run))

    # -- backfill (schema/0008) -----------------------------------------------

    def read_backfill(self, tenant: str, provider_id: str,
                      folders: Sequence[str]) -> BackfillState:
        rows = self._all(
            "SELECT first_sync_since_days FROM imap_provider_backfill"
            " WHERE tenant = ? AND provider_id = ?", (tenant, provider_id))
        days = rows[0][0] if rows else None
        pending = None
        if folders:
            marks = ", ".join("?" for _ in folders)
            found = self._all(
                "SELECT min(since) FROM imap_folder_backfill WHERE tenant = ?"
                f" AND provider_id = ? AND folder IN ({marks})",
                (tenant, provider_id, *folders))
            if found and found[0][0]:
                pending = date.fromisoformat(found[0][0])
        return BackfillState(days, pending)

    def set_first_sync_since_days(self, tenant: str, provider_id: str,
                                  days: Optional[int]) -> bool:
        """``False`` when the provider is unknown."""
        if days is not None and days < 0:
            raise ValueError("first_sync_since_days must be >= 0")

        def run(cur: sqlite3.Cursor) -> bool:
            cur.execute("SELECT 1 FROM email_providers WHERE tenant = ? AND id = ?",
                        (tenant, provider_id))
            if cur.fetchone() is None:
                return False
            cur.execute(
                "INSERT INTO imap_provider_backfill (tenant, provider_id,"
                " first_sync_since_days, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tenant, provider_id) DO UPDATE SET"
                " first_sync_since_days = excluded.first_sync_since_days,"
                " updated_at = excluded.updated_at",
                (tenant, provider_id, days, self.now()))
            return True

        return bool(self._transaction(run))

    def request_backfill(self, tenant: str, provider_id: str, folder: Optional[str],
                         since: date) -> Optional[list[str]]:
        """The folders scheduled; ``None`` when the provider is unknown."""
        def run(cur: sqlite3.Cursor) -> Optional[list[str]]:
            cur.execute(
                "SELECT folder_state, folder_filters FROM imap_email_provider_config"
                " WHERE tenant = ? AND email_provider_id = ?", (tenant, provider_id))
            row = cur.fetchone()
            if row is None:
                return None
            folders = backfill_folders(folder, _json_load(row[0], {}), _json_load(row[1], []))
            for name in folders:
                cur.execute(
                    "INSERT INTO imap_folder_backfill (tenant, provider_id, folder, since,"
                    " requested_at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (tenant, provider_id, folder) DO UPDATE SET"
                    " since = excluded.since, requested_at = excluded.requested_at",
                    (tenant, provider_id, name, since.isoformat(), self.now()))
            return folders

        return self._transaction(run)  # type: ignore[no-any-return]

    def complete_backfill(self, tenant: str, provider_id: str, folders: Sequence[str],
                          since: date) -> None:
        """Drop the pending requests the pass since ``since`` covered (a
        later request for an earlier date stays)."""
        if not folders:
            return
        marks = ", ".join("?" for _ in folders)
        self._transaction(lambda cur: cur.execute(
            "DELETE FROM imap_folder_backfill WHERE tenant = ? AND provider_id = ?"
            f" AND folder IN ({marks}) AND since >= ?",
            (tenant, provider_id, *folders, since.isoformat())))

    # -- leases ---------------------------------------------------------------

    def acquire_lease(self, tenant: str, provider_id: str, owner: str, ttl_ms: int) -> bool:
        now = self._seconds()
        return self._run(
            "UPDATE imap_email_provider_config SET lease_owner = ?, lease_expires_at = ?"
            " WHERE tenant = ? AND email_provider_id = ?"
            " AND (lease_owner IS NULL OR lease_owner = ? OR lease_expires_at IS NULL"
            "      OR lease_expires_at <= ?)",
            (owner, ts_seconds(now + ttl_ms / 1000.0), tenant, provider_id, owner,
             ts_seconds(now))) > 0

    def renew_lease(self, tenant: str, provider_id: str, owner: str, ttl_ms: int) -> bool:
        now = self._seconds()
        return self._run(
            "UPDATE imap_email_provider_config SET lease_expires_at = ?"
            " WHERE tenant = ? AND email_provider_id = ? AND lease_owner = ?"
            " AND lease_expires_at > ?",
            (ts_seconds(now + ttl_ms / 1000.0), tenant, provider_id, owner,
             ts_seconds(now))) > 0

    def release_lease(self, tenant: str, provider_id: str, owner: str) -> None:
        def run(cur: sqlite3.Cursor) -> None:
            cur.execute(
                "UPDATE imap_email_provider_config SET lease_owner = NULL,"
                " lease_expires_at = NULL"
                " WHERE tenant = ? AND email_provider_id = ? AND lease_owner = ?",
                (tenant, provider_id, owner))
            if cur.rowcount:
                cur.execute(
                    "UPDATE imap_folder_status SET holds_connection = 0, state = 'Stopped',"
                    " since = ?, updated_at = ? WHERE tenant = ? AND provider_id = ?"
                    " AND owner = ?", (self.now(), self.now(), tenant, provider_id, owner))

        self._transaction(run)

    # -- the batch -----------------------------------------------------------

    def record_batch(self, tenant: str, provider_id: str, folder: str, owner: str,
                     records: Sequence[MessageRecord],
                     cursor: Optional[FolderCursor]) -> BatchResult:
        records = list(records)
        check_records(records)
        first = first_occurrences(records)

        def run(cur: sqlite3.Cursor) -> BatchResult:
            if not self._holds(cur, tenant, provider_id, owner):
                raise LeaseLost(f"{tenant}/{provider_id}")
            now = self.now()
            new = []
            for r, is_first in zip(records, first):
                if not is_first:
                    new.append(False)
                    continue
                # DO NOTHING covers both unique keys (UID key and Message-ID);
                # rowcount says whether this row is the first of its kind.
                cur.execute(
                    "INSERT INTO imap_message_ledger (tenant, provider_id, dedupe_key,"
                    " message_id_key, folder, uid_validity, uid, outcome, reason, event_id,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (tenant, provider_id, r.dedupe_key, r.message_id_key, r.folder,
                     r.uid_validity, r.uid, r.outcome, r.reason, r.event_id, now))
                inserted = cur.rowcount == 1
                new.append(inserted)
                if inserted and r.outcome == OUTCOME_PUBLISHED:
                    cur.execute(
                        "INSERT INTO imap_event_outbox (tenant, provider_id, event_id, fields,"
                        " created_at) VALUES (?, ?, ?, ?, ?)",
                        (tenant, provider_id, r.event_id,
                         encode_fields(r.fields or {}).decode("utf-8"), now))
            message_id = last_message_id(records, new)
            if message_id is not None:
                cur.execute(
                    "UPDATE imap_email_provider_config SET last_processed_message_id = ?"
                    " WHERE tenant = ? AND email_provider_id = ?",
                    (message_id, tenant, provider_id))
            if cursor is not None:
                self._put_cursor(cur, tenant, provider_id, folder, cursor)
            return BatchResult(tuple(
                r.outcome if n else OUTCOME_DUPLICATE for r, n in zip(records, new)))

        result: BatchResult = self._transaction(run)
        return result

    # -- outbox -------------------------------------------------------------

    def add_outbox(self, tenant: str, provider_id: str, event_id: str, fields: Any) -> None:
        self._run(
            "INSERT INTO imap_event_outbox (tenant, provider_id, event_id, fields, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (tenant, provider_id, event_id,
             encode_fields({str(k): str(v) for k, v in fields.items()}).decode("utf-8"),
             self.now()))

    def fetch_outbox(self, limit: int, owner: Optional[str] = None) -> list[OutboxRow]:
        # Same rule as Postgres: with an owner, skip rows of providers that
        # another worker holds a live lease for.
        rows = self._all(
            "SELECT o.id, o.tenant, o.provider_id, o.event_id, o.fields, o.created_at"
            " FROM imap_event_outbox o LEFT JOIN imap_email_provider_config c"
            "   ON c.tenant = o.tenant AND c.email_provider_id = o.provider_id"
            " WHERE o.published_at IS NULL AND (? IS NULL"
            "   OR c.email_provider_id IS NULL OR c.lease_owner IS NULL"
            "   OR c.lease_owner = ? OR c.lease_expires_at IS NULL"
            "   OR c.lease_expires_at <= ?)"
            " ORDER BY o.id LIMIT ?", (owner, owner, self.now(), int(limit)))
        return [OutboxRow(int(i), t, p, e, json.loads(f), from_ts(c))  # type: ignore[arg-type]
                for i, t, p, e, f, c in rows]

    def mark_published(self, ids: Sequence[int]) -> None:
        ids = [int(i) for i in ids]
        if not ids:
            return
        now = self.now()

        def run(cur: sqlite3.Cursor) -> None:
            # Chunks stay under SQLite's bound-parameter limit.
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                cur.execute(
                    f"UPDATE imap_event_outbox SET published_at = ?"  # noqa: S608 (marks only)
                    f" WHERE id IN ({marks}) AND published_at IS NULL", [now, *chunk])

        self._transaction(run)

    def outbox_stats(self) -> tuple[int, Optional[float]]:
        count, oldest = self._all(
            "SELECT count(*), min(created_at) FROM imap_event_outbox"
            " WHERE published_at IS NULL")[0]
        if not count:
            return (0, None)
        age = self._seconds() - from_ts(oldest).timestamp()  # type: ignore[union-attr]
        return (int(count), max(0.0, age))

    # -- provider options (schema/0007) ------------------------------------------

    def set_write_back(self, tenant: str, provider_id: str, mode: Optional[str]) -> bool:
        return self._set_option(tenant, provider_id, "write_back", mode)

    def set_oauth_delegate(self, tenant: str, provider_id: str,
                           delegate: Optional[str]) -> bool:
        return self._set_option(tenant, provider_id, "oauth_delegate", delegate)

    def _set_option(self, tenant: str, provider_id: str, column: str,
                    value: Optional[str]) -> bool:
        assert column in OPTION_COLUMNS, column  # a name in SQL, never user input

        def run(cur: sqlite3.Cursor) -> bool:
            cur.execute("SELECT 1 FROM email_providers WHERE tenant = ? AND id = ?",
                        (tenant, provider_id))
            if cur.fetchone() is None:
                return False
            cur.execute(
                f"INSERT INTO imap_provider_options (tenant, provider_id, {column}, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (tenant, provider_id) DO UPDATE"
                f" SET {column} = excluded.{column}, updated_at = excluded.updated_at",
                (tenant, provider_id, value, self.now()))
            # Read with the provider row: the next discovery pass applies it.
            cur.execute("UPDATE imap_email_provider_config SET updated_at = ?"
                        " WHERE tenant = ? AND email_provider_id = ?",
                        (self.now(), tenant, provider_id))
            return True

        return bool(self._transaction(run))

    def recorded_uids(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                      first_uid: int, last_uid: int) -> list[int]:
        rows = self._all(
            "SELECT DISTINCT uid FROM imap_message_ledger WHERE tenant = ? AND provider_id = ?"
            " AND folder = ? AND uid_validity = ? AND uid BETWEEN ? AND ? ORDER BY uid",
            (tenant, provider_id, folder, str(uid_validity), int(first_uid), int(last_uid)))
        return [int(r[0]) for r in rows]

    def purge_ledger(self, older_than_days: float) -> int:
        cutoff = ts_seconds(self._seconds() - float(older_than_days) * 86400)

        def run(cur: sqlite3.Cursor) -> int:
            cur.execute("DELETE FROM imap_message_ledger WHERE created_at < ?", (cutoff,))
            deleted = cur.rowcount
            # Unpublished rows stay whatever their age: they are undelivered events.
            cur.execute("DELETE FROM imap_event_outbox WHERE published_at IS NOT NULL"
                        " AND published_at < ?", (cutoff,))
            deleted += cur.rowcount
            cur.execute("DELETE FROM imap_message_failures WHERE updated_at < ?", (cutoff,))
            deleted += cur.rowcount
            # Applied admin requests and long-dead replicas go too (not counted).
            cur.execute("DELETE FROM imap_admin_requests WHERE applied_at < ?", (cutoff,))
            cur.execute("DELETE FROM imap_replicas WHERE heartbeat_at < ?", (cutoff,))
            return int(deleted)

        return int(self._transaction(run))

    # -- secrets ---------------------------------------------------------------

    def put_secret(self, tenant: str, name: str, ciphertext: bytes) -> None:
        self._run(
            "INSERT INTO imap_secrets (tenant, name, ciphertext, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (tenant, name) DO UPDATE"
            " SET ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
            (tenant, name, bytes(ciphertext), self.now()))

    def get_secret(self, tenant: str, name: str) -> Optional[bytes]:
        rows = self._all("SELECT ciphertext FROM imap_secrets WHERE tenant = ? AND name = ?",
                         (tenant, name))
        return bytes(rows[0][0]) if rows else None

    def delete_secret(self, tenant: str, name: str) -> None:
        self._run("DELETE FROM imap_secrets WHERE tenant = ? AND name = ?", (tenant, name))

    # -- provider runtime columns -------------------------------------------

    def _fenced(self, tenant: str, provider_id: str, owner: Optional[str], sql: str,
                params: Sequence[Any]) -> None:
        """One write; with ``owner``, only while ``owner`` holds the lease
        (checked in the same transaction, as for cursors)."""
        def run(cur: sqlite3.Cursor) -> None:
            if owner is not None and not self._holds(cur, tenant, provider_id, owner):
                raise LeaseLost(f"{tenant}/{provider_id}")
            cur.execute(sql, params)

        self._transaction(run)

    def set_provider_status(self, tenant: str, provider_id: str, status: str,
                            error_message: Optional[str] = None,
                            owner: Optional[str] = None) -> None:
        self._fenced(
            tenant, provider_id, owner,
            "UPDATE email_providers SET status = ?, error_message = ?, updated_at = ?"
            " WHERE tenant = ? AND id = ?",
            (status, error_message, self.now(), tenant, provider_id))

    def set_last_error(self, tenant: str, provider_id: str, last_error: Optional[str]) -> None:
        self._run(
            "UPDATE imap_email_provider_config SET last_error = ?, updated_at = ?"
            " WHERE tenant = ? AND email_provider_id = ?",
            (last_error, self.now(), tenant, provider_id))

    def save_capabilities(self, tenant: str, provider_id: str, capabilities: Any,
                          owner: Optional[str] = None) -> None:
        self._fenced(
            tenant, provider_id, owner,
            "UPDATE imap_email_provider_config SET server_capabilities = ?"
            " WHERE tenant = ? AND email_provider_id = ?",
            (json.dumps(sorted_capabilities(capabilities)), tenant, provider_id))

    def save_access_token(self, tenant: str, provider_id: str, access_token: Optional[str],
                          expires_at: Optional[datetime], owner: Optional[str] = None) -> None:
        def run(cur: sqlite3.Cursor) -> None:
            # Another replica's live lease refuses it; a free provider does not
            # (a connection test may refresh the token of a provider nobody runs).
            if owner is not None:
                cur.execute(
                    "SELECT 1 FROM imap_email_provider_config WHERE tenant = ?"
                    " AND email_provider_id = ? AND lease_owner IS NOT NULL"
                    " AND lease_owner <> ? AND lease_expires_at > ?",
                    (tenant, provider_id, owner, self.now()))
                if cur.fetchone() is not None:
                    raise LeaseLost(f"{tenant}/{provider_id}")
            cur.execute(
                "UPDATE imap_email_provider_config SET access_token = ?, token_expires_at = ?,"
                " updated_at = ? WHERE tenant = ? AND email_provider_id = ?",
                (access_token, ts(expires_at), self.now(), tenant, provider_id))

        self._transaction(run)

    # -- one service across replicas (schema/0004) ----------------------------

    def acquire_lease_capped(self, tenant: str, provider_id: str, owner: str, ttl_ms: int,
                             folders: Sequence[str],
                             max_connections: Optional[int]) -> LeaseGrant:
        def run(cur: sqlite3.Cursor) -> LeaseGrant:
            # BEGIN IMMEDIATE holds the write lock: nobody counts meanwhile.
            now = self.now()
            cur.execute(
                "SELECT lease_owner, lease_expires_at FROM imap_email_provider_config"
                " WHERE tenant = ? AND email_provider_id = ?", (tenant, provider_id))
            row = cur.fetchone()
            if row is None:
                return LeaseGrant(False)
            holder = row[0] if row[0] is not None and row[1] is not None and row[1] > now \
                else None
            if holder is not None and holder != owner:
                return LeaseGrant(False)
            cur.execute(
                "SELECT count(*) FROM imap_folder_status s JOIN imap_email_provider_config c"
                " ON c.tenant = s.tenant AND c.email_provider_id = s.provider_id"
                " WHERE s.tenant = ? AND s.provider_id <> ? AND s.holds_connection"
                " AND c.lease_owner = s.owner AND c.lease_expires_at > ?",
                (tenant, provider_id, now))
            in_use = int(cur.fetchone()[0])
            granted, waiting = grant(folders, max_connections, in_use)
            error = cap_error(max_connections or 0, in_use, waiting, len(granted))
            # Rows of folders that keep their connection under the same owner
            # keep their state (a re-grant must not blank /status).
            marks = ",".join("?" * len(granted)) or "NULL"
            cur.execute(
                "DELETE FROM imap_folder_status WHERE tenant = ? AND provider_id = ?"
                f" AND NOT (owner IS ? AND holds_connection AND folder IN ({marks}))",
                (tenant, provider_id, owner, *granted))
            rows: list[tuple[str, Optional[str], int, str, Optional[str]]] = [
                (name, owner, 1, "Disconnected", None) for name in granted]
            rows += [(name, owner if granted else None, 0, "Waiting", error)
                     for name in waiting]
            for name, f_owner, holds, state, f_error in rows:
                cur.execute(
                    "INSERT OR IGNORE INTO imap_folder_status (tenant, provider_id, folder,"
                    " owner, holds_connection, state, since, last_error, counters, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, '{}', ?)",
                    (tenant, provider_id, name, f_owner, holds, state, now, f_error, now))
            if error is not None:
                cur.execute(
                    "UPDATE email_providers SET status = 'error', error_message = ?,"
                    " updated_at = ? WHERE tenant = ? AND id = ?"
                    " AND (status <> 'error' OR error_message IS NOT ?)",
                    (error, now, tenant, provider_id, error))
            if not granted:
                if holder == owner:
                    cur.execute(
                        "UPDATE imap_email_provider_config SET lease_owner = NULL,"
                        " lease_expires_at = NULL WHERE tenant = ? AND email_provider_id = ?",
                        (tenant, provider_id))
                return LeaseGrant(False, (), waiting, in_use, error)
            cur.execute(
                "UPDATE imap_email_provider_config SET lease_owner = ?, lease_expires_at = ?"
                " WHERE tenant = ? AND email_provider_id = ?",
                (owner, ts_seconds(self._seconds() + ttl_ms / 1000.0), tenant, provider_id))
            return LeaseGrant(True, granted, waiting, in_use, error)

        result: LeaseGrant = self._transaction(run)
        return result

    def write_folder_status(self, tenant: str, provider_id: str, owner: str,
                            statuses: Sequence[FolderStatus]) -> None:
        def run(cur: sqlite3.Cursor) -> None:
            if not self._holds(cur, tenant, provider_id, owner):
                raise LeaseLost(f"{tenant}/{provider_id}")
            now = self.now()
            for st in statuses:
                cur.execute(
                    "INSERT INTO imap_folder_status (tenant, provider_id, folder, owner,"
                    " holds_connection, state, since, last_sync_at, last_error, counters,"
                    " updated_at) VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (tenant, provider_id, folder) DO UPDATE SET"
                    " owner = excluded.owner, state = excluded.state, since = excluded.since,"
                    " last_sync_at = excluded.last_sync_at, last_error = excluded.last_error,"
                    " counters = excluded.counters, updated_at = excluded.updated_at",
                    (tenant, provider_id, st.folder, owner, st.state, ts(st.since),
                     ts(st.last_sync_at), st.last_error, json.dumps(dict(st.counters)), now))

        self._transaction(run)

    def heartbeat_replica(self, owner: str, info: Any = None) -> None:
        now = self.now()
        self._run(
            "INSERT INTO imap_replicas (owner, started_at, heartbeat_at, info)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (owner) DO UPDATE SET"
            " heartbeat_at = excluded.heartbeat_at, info = excluded.info",
            (owner, now, now, json.dumps(dict(info or {}))))

    def forget_replica(self, owner: str) -> None:
        self._run("DELETE FROM imap_replicas WHERE owner = ?", (owner,))

    def read_deployment(self, tenants: Optional[Sequence[str]] = None) -> dict[str, Any]:
        wanted = list(tenants or ())
        where, params = "", ()  # type: tuple[str, tuple[Any, ...]]
        if wanted:
            where = " AND p.tenant IN ({})".format(",".join("?" * len(wanted)))
            params = tuple(wanted)
        providers = [
            {"tenant": t, "provider_id": p, "mailbox": m, "status": st, "error_message": e,
             "lease_owner": lo, "lease_expires_at": from_ts(le), "is_active": bool(a),
             "paused": pa is not None, "last_sync_at": from_ts(ls)}
            for t, p, m, st, e, lo, le, a, pa, ls in self._all(
                "SELECT p.tenant, p.id, p.mailbox, p.status, p.error_message, c.lease_owner,"
                " c.lease_expires_at, p.is_active, p.inbound_paused_at, p.last_sync_at"
                " FROM email_providers p JOIN imap_email_provider_config c"
                " ON c.tenant = p.tenant AND c.email_provider_id = p.id"
                " WHERE p.provider_type = 'imap'" + where + " ORDER BY p.tenant, p.id", params)
        ]
        fwhere = where.replace("p.tenant", "tenant").replace(" AND", " WHERE", 1)
        folders = [
            {"tenant": t, "provider_id": p, "folder": f, "owner": o,
             "holds_connection": bool(h), "state": st, "since": from_ts(si),
             "last_sync_at": from_ts(ls), "last_error": e, "counters": _json_load(c, {}),
             "updated_at": from_ts(u)}
            for t, p, f, o, h, st, si, ls, e, c, u in self._all(
                "SELECT tenant, provider_id, folder, owner, holds_connection, state, since,"
                " last_sync_at, last_error, counters, updated_at FROM imap_folder_status"
                + fwhere + " ORDER BY tenant, provider_id, folder", params)
        ]
        replicas = [
            {"owner": o, "started_at": from_ts(s), "heartbeat_at": from_ts(h),
             "info": _json_load(i, {})}
            for o, s, h, i in self._all(
                "SELECT owner, started_at, heartbeat_at, info FROM imap_replicas ORDER BY owner")
        ]
        return {"now": from_ts(self.now()), "providers": providers, "folders": folders,
                "replicas": replicas}

    def add_admin_request(self, tenant: str, provider_id: str, action: str,
                          folder: Optional[str] = None,
                          requested_by: Optional[str] = None) -> AdminRequest:
        request_id = str(uuid.uuid4())
        now = self.now()
        self._run(
            "INSERT INTO imap_admin_requests (tenant, id, provider_id, action, folder,"
            " requested_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (tenant, request_id, provider_id, action, folder, requested_by, now))
        return AdminRequest(tenant, request_id, provider_id, action, folder, requested_by,
                            from_ts(now))

    def claim_admin_requests(self, owner: str, limit: int = 10,
                             stale_s: float = 60.0) -> list[AdminRequest]:
        def run(cur: sqlite3.Cursor) -> list[AdminRequest]:
            now = self.now()
            stale = ts_seconds(self._seconds() - stale_s)
            cur.execute(
                "SELECT r.tenant, r.id FROM imap_admin_requests r"
                " LEFT JOIN imap_email_provider_config c"
                " ON c.tenant = r.tenant AND c.email_provider_id = r.provider_id"
                " WHERE r.applied_at IS NULL AND (r.claimed_at IS NULL OR r.claimed_at <= ?)"
                " AND (c.lease_owner IS NULL OR c.lease_owner = ?"
                "      OR c.lease_expires_at IS NULL OR c.lease_expires_at <= ?)"
                " ORDER BY r.created_at LIMIT ?", (stale, owner, now, int(limit)))
            keys = cur.fetchall()
            out = []
            for tenant, rid in keys:
                cur.execute("UPDATE imap_admin_requests SET claimed_by = ?, claimed_at = ?"
                            " WHERE tenant = ? AND id = ?", (owner, now, tenant, rid))
                cur.execute(f"SELECT {_REQUEST_COLUMNS} FROM imap_admin_requests"
                            " WHERE tenant = ? AND id = ?", (tenant, rid))
                out.append(_admin_request(cur.fetchone()))
            return out

        result: list[AdminRequest] = self._transaction(run)
        return result

    def complete_admin_request(self, tenant: str, request_id: str, owner: str,
                               result: Any) -> None:
        self._run(
            "UPDATE imap_admin_requests SET applied_by = ?, applied_at = ?, result = ?"
            " WHERE tenant = ? AND id = ? AND applied_at IS NULL",
            (owner, self.now(), json.dumps(result, default=str), tenant, request_id))

    def get_admin_request(self, tenant: str, request_id: str) -> Optional[AdminRequest]:
        rows = self._all(f"SELECT {_REQUEST_COLUMNS} FROM imap_admin_requests"
                         " WHERE tenant = ? AND id = ?", (tenant, request_id))
        return _admin_request(rows[0]) if rows else None

    def set_inbound_pause(self, tenant: str, provider_id: str, paused: bool) -> bool:
        if paused:
            return self._run(
                "UPDATE email_providers SET inbound_paused_at = COALESCE(inbound_paused_at, ?),"
                " inbound_pause_reason = COALESCE(inbound_pause_reason, 'manual'),"
                " updated_at = ? WHERE tenant = ? AND id = ?",
                (self.now(), self.now(), tenant, provider_id)) > 0
        return self._run(
            "UPDATE email_providers SET inbound_paused_at = NULL, inbound_pause_reason = NULL,"
            " inbound_auth_failure_count = 0, inbound_auth_failure_code = NULL,"
            " updated_at = ? WHERE tenant = ? AND id = ?",
            (self.now(), tenant, provider_id)) > 0

    # -- poison messages (schema/0005) ---------------------------------------

    def note_message_failure(self, tenant: str, provider_id: str, folder: str,
                             uid_validity: str, uid: int, reason: str) -> int:
        now = self.now()

        def run(cur: sqlite3.Cursor) -> int:
            cur.execute(
                "INSERT INTO imap_message_failures (tenant, provider_id, folder, uid_validity,"
                " uid, failures, reason, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)"
                " ON CONFLICT (tenant, provider_id, folder, uid_validity, uid) DO UPDATE"
                " SET failures = failures + 1, reason = excluded.reason,"
                " updated_at = excluded.updated_at",
                (tenant, provider_id, folder, str(uid_validity), int(uid), reason, now, now))
            cur.execute(
                "SELECT failures FROM imap_message_failures WHERE tenant = ? AND provider_id = ?"
                " AND folder = ? AND uid_validity = ? AND uid = ?",
                (tenant, provider_id, folder, str(uid_validity), int(uid)))
            return int(cur.fetchone()[0])

        return int(self._transaction(run))

    def clear_message_failures(self, tenant: str, provider_id: str, folder: str,
                               uid_validity: str, uids: Sequence[int]) -> None:
        def run(cur: sqlite3.Cursor) -> None:
            for uid in uids:
                cur.execute(
                    "DELETE FROM imap_message_failures WHERE tenant = ? AND provider_id = ?"
                    " AND folder = ? AND uid_validity = ? AND uid = ? AND skipped_at IS NULL",
                    (tenant, provider_id, folder, str(uid_validity), int(uid)))

        self._transaction(run)

    def mark_poison_skipped(self, tenant: str, provider_id: str, folder: str,
                            uid_validity: str, uid: int) -> None:
        now = self.now()
        self._run(
            "UPDATE imap_message_failures SET skipped_at = ?, updated_at = ?"
            " WHERE tenant = ? AND provider_id = ? AND folder = ? AND uid_validity = ?"
            " AND uid = ?", (now, now, tenant, provider_id, folder, str(uid_validity), int(uid)))

    def list_poison(self, tenant: Optional[str] = None,
                    provider_id: Optional[str] = None) -> list[PoisonMessage]:
        rows = self._all(
            "SELECT tenant, provider_id, folder, uid_validity, uid, failures, reason,"
            " skipped_at, updated_at FROM imap_message_failures"
            " WHERE (? IS NULL OR tenant = ?) AND (? IS NULL OR provider_id = ?)"
            " ORDER BY updated_at, tenant, provider_id, folder, uid",
            (tenant, tenant, provider_id, provider_id))
        return [PoisonMessage(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), r[6],
                              from_ts(r[7]), from_ts(r[8])) for r in rows]

    def retry_poison(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                     uid: int) -> bool:
        key = (tenant, provider_id, folder, str(uid_validity), int(uid))

        def run(cur: sqlite3.Cursor) -> bool:
            cur.execute(
                "DELETE FROM imap_message_failures WHERE tenant = ? AND provider_id = ?"
                " AND folder = ? AND uid_validity = ? AND uid = ?", key)
            if cur.rowcount == 0:
                return False
            cur.execute(
                "DELETE FROM imap_message_ledger WHERE tenant = ? AND provider_id = ?"
                " AND folder = ? AND uid_validity = ? AND uid = ? AND outcome = 'skipped'", key)
            cur.execute(
                "SELECT folder_state FROM imap_email_provider_config"
                " WHERE tenant = ? AND email_provider_id = ?", (tenant, provider_id))
            row = cur.fetchone()
            state = _json_load(row[0], {}) if row is not None else {}
            cursor = state.get(folder) if isinstance(state, dict) else None
            last = str((cursor or {}).get("last_uid") or "")
            if (isinstance(cursor, dict) and str(cursor.get("uid_validity")) == str(uid_validity)
                    and last.isdigit() and int(last) >= int(uid)):
                cursor["last_uid"] = str(int(uid) - 1)
                cur.execute(
                    "UPDATE imap_email_provider_config SET folder_state = ?, updated_at = ?"
                    " WHERE tenant = ? AND email_provider_id = ?",
                    (json.dumps(state), self.now(), tenant, provider_id))
            return True

        return bool(self._transaction(run))

    def touch_last_sync(self, tenant: str, provider_id: str) -> None:
        self._run("UPDATE email_providers SET last_sync_at = ? WHERE tenant = ? AND id = ?",
                  (self.now(), tenant, provider_id))

    def record_auth_failure(self, tenant: str, provider_id: str, code: Optional[str],
                            pause_after: int) -> tuple[int, bool]:
        def run(cur: sqlite3.Cursor) -> tuple[int, bool]:
            cur.execute(
                "SELECT inbound_auth_failure_count, inbound_paused_at FROM email_providers"
                " WHERE tenant = ? AND id = ?", (tenant, provider_id))
            row = cur.fetchone()
            if row is None:
                return (0, False)
            count = int(row[0] or 0) + 1
            pause = row[1] is None and count >= pause_after
            now = self.now()
            cur.execute(
                "UPDATE email_providers SET inbound_auth_failure_count = ?,"
                " inbound_auth_failure_last_at = ?, inbound_auth_failure_code = ?,"
                " inbound_paused_at = CASE WHEN ? THEN ? ELSE inbound_paused_at END,"
                " inbound_pause_reason = CASE WHEN ? THEN 'auth_failure'"
                "   ELSE inbound_pause_reason END,"
                " updated_at = ? WHERE tenant = ? AND id = ?",
                (count, now, code, int(pause), now, int(pause), now, tenant, provider_id))
            return (count, pause)

        result: tuple[int, bool] = self._transaction(run)
        return result

    def reset_auth_failures(self, tenant: str, provider_id: str) -> None:
        # Skips the write when there is nothing to clear: this runs on every login.
        self._run(
            "UPDATE email_providers SET inbound_auth_failure_count = 0,"
            " inbound_auth_failure_code = NULL,"
            " inbound_paused_at = CASE WHEN inbound_pause_reason = 'auth_failure'"
            "   THEN NULL ELSE inbound_paused_at END,"
            " inbound_pause_reason = CASE WHEN inbound_pause_reason = 'auth_failure'"
            "   THEN NULL ELSE inbound_pause_reason END,"
            " updated_at = ?"
            " WHERE tenant = ? AND id = ? AND (inbound_auth_failure_count <> 0"
            "   OR inbound_auth_failure_code IS NOT NULL"
            "   OR inbound_pause_reason = 'auth_failure')",
            (self.now(), tenant, provider_id))

    # -- OAuth state --------------------------------------------------------

    def put_oauth_state(self, tenant: str, nonce: str, verifier: str,
                        expires_at: datetime) -> None:
        self._run(
            "INSERT INTO imap_oauth_states (tenant, nonce, verifier, expires_at, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (tenant, nonce, verifier, ts(expires_at), self.now()))

    def take_oauth_state(self, tenant: str, nonce: str) -> Optional[str]:
        def run(cur: sqlite3.Cursor) -> Optional[str]:
            now = self.now()
            cur.execute(
                "SELECT verifier FROM imap_oauth_states WHERE tenant = ? AND nonce = ?"
                " AND used_at IS NULL AND expires_at > ?", (tenant, nonce, now))
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute("UPDATE imap_oauth_states SET used_at = ? WHERE tenant = ? AND nonce = ?",
                        (now, tenant, nonce))
            return str(row[0])

        result: Optional[str] = self._transaction(run)
        return result

    def ping(self) -> None:
        self._all("SELECT 1 FROM email_providers LIMIT 1")


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
