"""PostgresStore's leases, folder status, replicas and admin requests
(one service across replicas, schema/0004)."""

from __future__ import annotations

import json
import uuid
from typing import Any, Optional, Sequence

from psycopg2.extras import Json
from twisted.internet import defer

from imapsvc.core.cluster import cap_error, grant
from imapsvc.interfaces import LeaseLost
from imapsvc.model import FolderStatus, LeaseGrant
from imapsvc.store.pg_base import ADMIN_CHANNEL, LOCK_LEASE, PgBase, admin_request_from_row, dumps
from imapsvc.store.sql_rows import REQUEST_COLUMNS


class PgCluster(PgBase):
    """Leases, folder status, replicas, admin requests."""

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
            yield cur.execute(LOCK_LEASE, (tenant, provider_id, owner))
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
                " RETURNING " + REQUEST_COLUMNS,
                (tenant, request_id, provider_id, action, folder, requested_by))
            row = cur.fetchall()[0]
            # Delivered at commit: the owner never wakes before the row exists.
            yield cur.execute("SELECT pg_notify(%s, %s)", (ADMIN_CHANNEL, json.dumps(
                {"tenant": tenant, "id": request_id, "provider_id": provider_id})))
            return admin_request_from_row(row)

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
            " RETURNING " + ", ".join("r." + c.strip() for c in REQUEST_COLUMNS.split(",")),
            (owner, float(stale_s), owner, int(limit)))
        return sorted((admin_request_from_row(r) for r in rows),
                      key=lambda r: (r.created_at, r.id))

    def complete_admin_request(self, tenant: str, request_id: str, owner: str,
                               result: Any) -> defer.Deferred:
        return self._query(
            "UPDATE imap_admin_requests SET applied_by = %s, applied_at = now(), result = %s"
            " WHERE tenant = %s AND id = %s AND applied_at IS NULL",
            (owner, Json(result, dumps=dumps), tenant, request_id),
        ).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def get_admin_request(self, tenant: str, request_id: str) -> Any:
        rows = yield self._query(
            "SELECT " + REQUEST_COLUMNS + " FROM imap_admin_requests"
            " WHERE tenant = %s AND id = %s", (tenant, request_id))
        return admin_request_from_row(rows[0]) if rows else None
