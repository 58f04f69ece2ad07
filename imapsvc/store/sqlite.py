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
from datetime import UTC, datetime
from typing import Any, Callable, Optional, Sequence

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from imapsvc.core.event import encode_fields
from imapsvc.interfaces import IStore, LeaseLost, StoreUnavailable
from imapsvc.model import (
    OUTCOME_DUPLICATE,
    OUTCOME_PUBLISHED,
    BatchResult,
    FolderCursor,
    MessageRecord,
    OutboxRow,
    ProviderConfig,
)
from imapsvc.store import (
    check_records,
    first_occurrences,
    last_message_id,
    parse_seen_at,
    sorted_capabilities,
)
from imapsvc.store.sqlite_schema import SchemaTooNew, connect, ensure_schema

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
        max(p.updated_at, c.updated_at)
    FROM email_providers p
    JOIN imap_email_provider_config c ON c.tenant = p.tenant AND c.email_provider_id = p.id
"""


def _provider(row: Sequence[Any]) -> ProviderConfig:
    (tenant, pid, name, mailbox, host, port, secure, starttls, auth_type, username,
     timeout_ms, keepalive, max_emails, filters, authorize_url, token_url, client_id,
     scopes, access_token, token_expires_at, folder_state, caps, lease_owner,
     lease_expires_at, status, is_active, paused_at, failures, updated_at) = row
    filters = _json_load(filters, [])
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
        folder_filters=tuple(str(f) for f in (filters if isinstance(filters, list) else ()) if f),
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
                " lease_expires_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (config.provider_id, config.tenant, config.host, config.port,
                 int(config.secure), int(config.allow_starttls), config.auth_type,
                 config.username, config.connection_timeout_ms,
                 None if config.socket_keepalive is None else int(config.socket_keepalive),
                 config.max_emails_per_sync, json.dumps(list(config.folder_filters)),
                 config.oauth_authorize_url, config.oauth_token_url, config.oauth_client_id,
                 config.oauth_scopes, config.access_token, ts(config.token_expires_at),
                 json.dumps({k: v.to_json() for k, v in config.folder_state.items()}),
                 json.dumps(sorted_capabilities(config.server_capabilities)),
                 config.lease_owner, ts(config.lease_expires_at), now, now))

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
        return [(_provider(r[1:]), r[0]) for r in rows]

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
        return [_provider(r) for r in self._all(sql + " ORDER BY p.tenant, p.id", params)]

    def get_provider(self, tenant: str, provider_id: str) -> Optional[ProviderConfig]:
        rows = self._all(_PROVIDER_SELECT + " WHERE p.tenant = ? AND p.id = ?",
                         (tenant, provider_id))
        return _provider(rows[0]) if rows else None

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
        self._run(
            "UPDATE imap_email_provider_config SET lease_owner = NULL, lease_expires_at = NULL"
            " WHERE tenant = ? AND email_provider_id = ? AND lease_owner = ?",
            (tenant, provider_id, owner))

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

    def purge_ledger(self, older_than_days: float) -> int:
        cutoff = ts_seconds(self._seconds() - float(older_than_days) * 86400)

        def run(cur: sqlite3.Cursor) -> int:
            cur.execute("DELETE FROM imap_message_ledger WHERE created_at < ?", (cutoff,))
            deleted = cur.rowcount
            # Unpublished rows stay whatever their age: they are undelivered events.
            cur.execute("DELETE FROM imap_event_outbox WHERE published_at IS NOT NULL"
                        " AND published_at < ?", (cutoff,))
            return int(deleted + cur.rowcount)

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

    def set_provider_status(self, tenant: str, provider_id: str, status: str,
                            error_message: Optional[str] = None) -> None:
        self._run(
            "UPDATE email_providers SET status = ?, error_message = ?, updated_at = ?"
            " WHERE tenant = ? AND id = ?",
            (status, error_message, self.now(), tenant, provider_id))

    def save_capabilities(self, tenant: str, provider_id: str, capabilities: Any) -> None:
        self._run(
            "UPDATE imap_email_provider_config SET server_capabilities = ?"
            " WHERE tenant = ? AND email_provider_id = ?",
            (json.dumps(sorted_capabilities(capabilities)), tenant, provider_id))

    def save_access_token(self, tenant: str, provider_id: str, access_token: Optional[str],
                          expires_at: Optional[datetime]) -> None:
        self._run(
            "UPDATE imap_email_provider_config SET access_token = ?, token_expires_at = ?,"
            " updated_at = ? WHERE tenant = ? AND email_provider_id = ?",
            (access_token, ts(expires_at), self.now(), tenant, provider_id))

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
    acquire_lease = _delegate("acquire_lease")
    renew_lease = _delegate("renew_lease")
    release_lease = _delegate("release_lease")
    record_batch = _delegate("record_batch")
    add_outbox = _delegate("add_outbox")
    fetch_outbox = _delegate("fetch_outbox")
    mark_published = _delegate("mark_published")
    outbox_stats = _delegate("outbox_stats")
    purge_ledger = _delegate("purge_ledger")
    put_secret = _delegate("put_secret")
    get_secret = _delegate("get_secret")
    delete_secret = _delegate("delete_secret")
    set_provider_status = _delegate("set_provider_status")
    save_capabilities = _delegate("save_capabilities")
    save_access_token = _delegate("save_access_token")
    put_oauth_state = _delegate("put_oauth_state")
    take_oauth_state = _delegate("take_oauth_state")
    record_auth_failure = _delegate("record_auth_failure")
    reset_auth_failures = _delegate("reset_auth_failures")
    touch_last_sync = _delegate("touch_last_sync")
    ping = _delegate("ping")

    def reset_cursors(self, tenant: str, provider_id: str,
                      folder: Optional[str] = None) -> defer.Deferred:
        """See :meth:`imapsvc.interfaces.IStore.reset_cursors`."""
        return self._call("reset_cursors", tenant, provider_id, folder).addCallback(
            lambda _: None)
