"""The connection plumbing, timestamps and row mapping that SqliteOps' parts share."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any, Callable, Optional, Sequence

from twisted.logger import Logger

from imapsvc.core.folders import folder_filters_from_json
from imapsvc.interfaces import LeaseLost
from imapsvc.model import (
    AdminRequest,
    FolderCursor,
    ProviderConfig,
)
from imapsvc.store import (
    parse_seen_at,
)

REQUEST_COLUMNS = ("tenant, id, provider_id, action, folder, requested_by, created_at,"
                    " claimed_by, applied_by, applied_at, result")


def admin_request_from_row(row: Sequence[Any]) -> AdminRequest:
    (tenant, rid, pid, action, folder, by, created, claimed_by, applied_by, applied_at,
     result) = row
    return AdminRequest(str(tenant), str(rid), str(pid), action, folder, by, from_ts(created),
                        claimed_by, applied_by, from_ts(applied_at),
                        json_load(result, None))


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


def json_load(text: Optional[str], default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def cursors_from_json(text: Optional[str]) -> dict[str, FolderCursor]:
    out = {}
    state = json_load(text, {})
    if isinstance(state, dict):
        for folder, data in state.items():
            cursor = FolderCursor.from_json(data if isinstance(data, dict) else None)
            if cursor is not None:
                out[str(folder)] = cursor
    return out


def _opt_bool(value: Optional[int]) -> Optional[bool]:
    return None if value is None else bool(value)


PROVIDER_SELECT = """
    SELECT p.tenant, p.id, p.provider_name, p.mailbox,
        c.host, c.port, c.secure, c.allow_starttls, c.auth_type, c.username,
        c.connection_timeout_ms, c.socket_keepalive, c.max_emails_per_sync, c.folder_filters,
        c.oauth_authorize_url, c.oauth_token_url, c.oauth_client_id, c.oauth_scopes,
        c.access_token, c.token_expires_at, c.folder_state, c.server_capabilities,
        c.lease_owner, c.lease_expires_at,
        p.status, p.is_active, p.inbound_paused_at, p.inbound_auth_failure_count,
        max(p.updated_at, c.updated_at),
        c.oauth_client_secret, c.refresh_token,
        o.write_back
    FROM email_providers p
    JOIN imap_email_provider_config c ON c.tenant = p.tenant AND c.email_provider_id = p.id
    LEFT JOIN imap_provider_options o ON o.tenant = p.tenant AND o.provider_id = p.id
"""


def provider_from_row(row: Sequence[Any]) -> ProviderConfig:
    (tenant, pid, name, mailbox, host, port, secure, starttls, auth_type, username,
     timeout_ms, keepalive, max_emails, filters, authorize_url, token_url, client_id,
     scopes, access_token, token_expires_at, folder_state, caps, lease_owner,
     lease_expires_at, status, is_active, paused_at, failures, updated_at,
     client_secret, refresh_token) = row[:31]
    # imap_provider_options (schema/0007), appended so other columns keep their place.
    write_back = row[31] if len(row) > 31 else None
    try:
        filters = None if filters is None else json.loads(filters)
    except ValueError:
        raise ValueError("folder_filters is not valid JSON") from None
    caps = json_load(caps, [])
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
        folder_state=cursors_from_json(folder_state),
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
    )


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

    def _put_cursor(self, cur: sqlite3.Cursor, tenant: str, provider_id: str, folder: str,
                    cursor: FolderCursor) -> None:
        cur.execute(
            "SELECT folder_state FROM imap_email_provider_config"
            " WHERE tenant = ? AND email_provider_id = ?", (tenant, provider_id))
        row = cur.fetchone()
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
