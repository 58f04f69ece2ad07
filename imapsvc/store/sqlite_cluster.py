"""SqliteOps' leases, folder status, replicas and admin requests (one
service across replicas, schema/0004)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from typing import Any, Optional, Sequence

from imapsvc.core.cluster import cap_error, grant
from imapsvc.interfaces import LeaseLost
from imapsvc.model import AdminRequest, FolderStatus, LeaseGrant
from imapsvc.store.sql_rows import REQUEST_COLUMNS
from imapsvc.store.sqlite_base import (
    SqliteBase,
    admin_request_from_row,
    from_ts,
    json_load,
    ts,
    ts_seconds,
)


class SqliteCluster(SqliteBase):
    """Leases, folder status, replicas, admin requests."""

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
             "last_sync_at": from_ts(ls), "last_error": e, "counters": json_load(c, {}),
             "updated_at": from_ts(u)}
            for t, p, f, o, h, st, si, ls, e, c, u in self._all(
                "SELECT tenant, provider_id, folder, owner, holds_connection, state, since,"
                " last_sync_at, last_error, counters, updated_at FROM imap_folder_status"
                + fwhere + " ORDER BY tenant, provider_id, folder", params)
        ]
        replicas = [
            {"owner": o, "started_at": from_ts(s), "heartbeat_at": from_ts(h),
             "info": json_load(i, {})}
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
                cur.execute(f"SELECT {REQUEST_COLUMNS} FROM imap_admin_requests"
                            " WHERE tenant = ? AND id = ?", (tenant, rid))
                out.append(admin_request_from_row(cur.fetchone()))
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
        rows = self._all(f"SELECT {REQUEST_COLUMNS} FROM imap_admin_requests"
                         " WHERE tenant = ? AND id = ?", (tenant, request_id))
        return admin_request_from_row(rows[0]) if rows else None
