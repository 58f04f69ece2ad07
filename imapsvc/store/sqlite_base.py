"""The connection plumbing, timestamps and row mapping that SqliteOps' parts share."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any, Callable, Optional, Sequence

from imapsvc.interfaces import LeaseLost
from imapsvc.model import AdminRequest, FolderCursor, ProviderConfig
from imapsvc.store import parse_seen_at
from imapsvc.store.sql_rows import (
    cursors_from_state,
    provider_config,
    provider_select,
    provider_values,
)


def admin_request_from_row(row: Sequence[Any]) -> AdminRequest:
    (tenant, rid, pid, action, folder, by, created, claimed_by, applied_by, applied_at,
     result) = row
    return AdminRequest(str(tenant), str(rid), str(pid), action, folder, by, from_ts(created),
                        claimed_by, applied_by, from_ts(applied_at),
                        json_load(result, None))




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


def json_load(text: Optional[str], default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def cursors_from_json(text: Optional[str]) -> dict[str, FolderCursor]:
    return cursors_from_state(json_load(text, {}))


PROVIDER_SELECT = provider_select("max")

_TIMESTAMPS = ("token_expires_at", "lease_expires_at", "inbound_paused_at", "updated_at")


def provider_from_row(row: Sequence[Any]) -> ProviderConfig:
    """A row of :data:`PROVIDER_SELECT`: timestamps and JSON are text here."""
    values = provider_values(row)
    filters = values["folder_filters"]
    try:
        values["folder_filters"] = None if filters is None else json.loads(filters)
    except ValueError:
        raise ValueError("folder_filters is not valid JSON") from None
    caps = json_load(values["server_capabilities"], [])
    values["server_capabilities"] = caps if isinstance(caps, list) else []
    values["folder_state"] = json_load(values["folder_state"], {})
    for field in _TIMESTAMPS:
        values[field] = from_ts(values[field])
    return provider_config(values)


class SqliteBase:
    """One connection, its transactions and the lease check."""

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

    def _holds(self, cur: sqlite3.Cursor, tenant: str, provider_id: str, owner: str) -> bool:
        cur.execute(
            "SELECT 1 FROM imap_email_provider_config WHERE tenant = ? AND email_provider_id = ?"
            " AND lease_owner = ? AND lease_expires_at > ?",
            (tenant, provider_id, owner, self.now()))
        return cur.fetchone() is not None

    @staticmethod
    def _exists(cur: sqlite3.Cursor, tenant: str, provider_id: str) -> bool:
        """Whether the provider has an ``email_providers`` row."""
        cur.execute("SELECT 1 FROM email_providers WHERE tenant = ? AND id = ?",
                    (tenant, provider_id))
        return cur.fetchone() is not None

    def _put_folder_state(self, cur: sqlite3.Cursor, tenant: str, provider_id: str,
                          state: Any) -> None:
        """Replace the whole ``folder_state`` object (the top-level mirror
        columns stay)."""
        cur.execute(
            "UPDATE imap_email_provider_config SET folder_state = ?, updated_at = ?"
            " WHERE tenant = ? AND email_provider_id = ?",
            (json.dumps(state), self.now(), tenant, provider_id))

    @staticmethod
    def _config_columns(cur: sqlite3.Cursor, tenant: str, provider_id: str,
                        columns: str) -> Optional[tuple[Any, ...]]:
        """``columns`` of the provider's config row, or ``None`` without one."""
        cur.execute(f"SELECT {columns} FROM imap_email_provider_config"
                    " WHERE tenant = ? AND email_provider_id = ?", (tenant, provider_id))
        row: Optional[tuple[Any, ...]] = cur.fetchone()
        return row

    def _put_cursor(self, cur: sqlite3.Cursor, tenant: str, provider_id: str, folder: str,
                    cursor: FolderCursor) -> None:
        row = self._config_columns(cur, tenant, provider_id, "folder_state")
        state = json_load(row[0] if row else None, {})
        if not isinstance(state, dict):
            state = {}
        state[folder] = cursor.to_json()
        cur.execute(
            "UPDATE imap_email_provider_config SET folder_state = ?, uid_validity = ?,"
            " last_uid = ?, last_seen_at = ?, updated_at = ?"
            " WHERE tenant = ? AND email_provider_id = ?",
            (json.dumps(state), cursor.uid_validity, cursor.last_uid,
             ts(parse_seen_at(cursor.last_seen_at)), self.now(), tenant, provider_id))

    def _fenced(self, tenant: str, provider_id: str, owner: Optional[str], sql: str,
                params: Sequence[Any]) -> None:
        """One write; with ``owner``, only while ``owner`` holds the lease
        (checked in the same transaction, as for cursors)."""
        def run(cur: sqlite3.Cursor) -> None:
            if owner is not None and not self._holds(cur, tenant, provider_id, owner):
                raise LeaseLost(f"{tenant}/{provider_id}")
            cur.execute(sql, params)

        self._transaction(run)
