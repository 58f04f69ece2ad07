"""MemoryStore's leases, folder status, replicas and admin requests."""

from __future__ import annotations

import copy
import uuid
from datetime import timedelta
from typing import Any, Optional, Sequence

from imapsvc.core.cluster import cap_error, grant
from imapsvc.interfaces import LeaseLost
from imapsvc.model import AdminRequest, FolderStatus, LeaseGrant
from imapsvc.store.memory_base import MemoryBase, deferred


class MemoryCluster(MemoryBase):
    """Leases, folder status, replicas, admin requests."""

    @deferred
    def acquire_lease(self, tenant: str, provider_id: str, owner: str, ttl_ms: int) -> bool:
        row = self._row(tenant, provider_id)
        if row is None:
            return False
        free = (
            row["lease_owner"] is None
            or row["lease_owner"] == owner
            or row["lease_expires_at"] is None
            or row["lease_expires_at"] <= self.now()
        )
        if not free:
            return False
        row["lease_owner"] = owner
        row["lease_expires_at"] = self.now() + timedelta(milliseconds=ttl_ms)
        return True

    @deferred
    def renew_lease(self, tenant: str, provider_id: str, owner: str, ttl_ms: int) -> bool:
        row = self._row(tenant, provider_id)
        if not self._holds(row, owner):
            return False
        assert row is not None
        row["lease_expires_at"] = self.now() + timedelta(milliseconds=ttl_ms)
        return True

    @deferred
    def release_lease(self, tenant: str, provider_id: str, owner: str) -> None:
        row = self._row(tenant, provider_id)
        if row is not None and row["lease_owner"] == owner:
            row["lease_owner"] = None
            row["lease_expires_at"] = None
            for key, f in self._folders.items():
                if key[:2] == (tenant, provider_id) and f["owner"] == owner:
                    f.update(holds_connection=False, state="Stopped", since=self.now(),
                             updated_at=self.now())

    @deferred
    def acquire_lease_capped(self, tenant: str, provider_id: str, owner: str, ttl_ms: int,
                             folders: Sequence[str],
                             max_connections: Optional[int]) -> LeaseGrant:
        row = self._row(tenant, provider_id)
        if row is None:
            return LeaseGrant(False)
        holder = self._live_owner(row)
        if holder is not None and holder != owner:
            return LeaseGrant(False)
        in_use = 0
        for (t, p, _), f in self._folders.items():
            if t != tenant or p == provider_id or not f["holds_connection"]:
                continue
            other = self._providers.get((t, p))
            if other is not None and self._live_owner(other) == f["owner"]:
                in_use += 1
        granted, waiting = grant(folders, max_connections, in_use)
        error = cap_error(max_connections or 0, in_use, waiting, len(granted))
        now = self.now()
        # Rows of folders that keep their connection under the same owner keep
        # their state (a re-grant must not blank /status).
        kept = {}
        for key in [k for k in self._folders if k[:2] == (tenant, provider_id)]:
            f = self._folders.pop(key)
            if key[2] in granted and f["owner"] == owner and f["holds_connection"]:
                kept[key] = f
        self._folders.update(kept)
        for name in waiting:
            self._folders[(tenant, provider_id, name)] = self._folder_row(
                None if not granted else owner, False, "Waiting", error)
        if error is not None and (row["status"], row["error_message"]) != ("error", error):
            row["status"], row["error_message"] = "error", error
            row["updated_at"] = now
        if not granted:
            if holder == owner:
                row["lease_owner"] = row["lease_expires_at"] = None
            return LeaseGrant(False, (), waiting, in_use, error)
        for name in granted:
            self._folders.setdefault((tenant, provider_id, name), self._folder_row(
                owner, True, "Disconnected", None))
        row["lease_owner"] = owner
        row["lease_expires_at"] = now + timedelta(milliseconds=ttl_ms)
        return LeaseGrant(True, granted, waiting, in_use, error)

    @deferred
    def write_folder_status(self, tenant: str, provider_id: str, owner: str,
                            statuses: Sequence[FolderStatus]) -> None:
        row = self._row(tenant, provider_id)
        if not self._holds(row, owner):
            raise LeaseLost(f"{tenant}/{provider_id}")
        for st in statuses:
            f = self._folders.setdefault(
                (tenant, provider_id, st.folder), self._folder_row(owner, True, st.state, None))
            f.update(owner=owner, state=st.state, since=st.since, last_sync_at=st.last_sync_at,
                     last_error=st.last_error, counters=copy.deepcopy(dict(st.counters)),
                     updated_at=self.now())

    @deferred
    def heartbeat_replica(self, owner: str, info: Any = None) -> None:
        now = self.now()
        r = self._replicas.setdefault(owner, {"owner": owner, "started_at": now})
        r.update(heartbeat_at=now, info=dict(info or {}))

    @deferred
    def forget_replica(self, owner: str) -> None:
        self._replicas.pop(owner, None)

    @deferred
    def read_deployment(self, tenants: Optional[Sequence[str]] = None) -> dict[str, Any]:
        wanted = set(tenants or ())
        providers = []
        for (t, p), row in sorted(self._providers.items()):
            if (wanted and t not in wanted) or row["provider_type"] != "imap":
                continue
            providers.append({
                "tenant": t, "provider_id": p, "mailbox": row["mailbox"],
                "status": row["status"], "error_message": row["error_message"],
                "lease_owner": row["lease_owner"], "lease_expires_at": row["lease_expires_at"],
                "is_active": row["is_active"], "paused": row["inbound_paused_at"] is not None,
                "last_sync_at": row["last_sync_at"],
            })
        folders = [
            dict(copy.deepcopy(f), tenant=t, provider_id=p, folder=name)
            for (t, p, name), f in sorted(self._folders.items())
            if not wanted or t in wanted
        ]
        replicas = [copy.deepcopy(r) for _, r in sorted(self._replicas.items())]
        return {"now": self.now(), "providers": providers, "folders": folders,
                "replicas": replicas}

    @deferred
    def add_admin_request(self, tenant: str, provider_id: str, action: str,
                          folder: Optional[str] = None,
                          requested_by: Optional[str] = None) -> AdminRequest:
        request_id = str(uuid.uuid4())
        r = {"tenant": tenant, "id": request_id, "provider_id": provider_id, "action": action,
             "folder": folder, "requested_by": requested_by, "created_at": self.now(),
             "claimed_by": None, "claimed_at": None, "applied_by": None, "applied_at": None,
             "result": None}
        self._requests[(tenant, request_id)] = r
        return self._request(r)

    @deferred
    def claim_admin_requests(self, owner: str, limit: int = 10,
                             stale_s: float = 60.0) -> list[AdminRequest]:
        now = self.now()
        out: list[AdminRequest] = []
        pending = sorted((r for r in self._requests.values() if r["applied_at"] is None),
                         key=lambda r: r["created_at"])
        for r in pending:
            if len(out) >= limit:
                break
            if r["claimed_at"] is not None and r["claimed_at"] > now - timedelta(seconds=stale_s):
                continue
            row = self._row(r["tenant"], r["provider_id"])
            holder = None if row is None else self._live_owner(row)
            if holder is not None and holder != owner:
                continue
            r["claimed_by"], r["claimed_at"] = owner, now
            out.append(self._request(r))
        return out

    @deferred
    def complete_admin_request(self, tenant: str, request_id: str, owner: str,
                               result: Any) -> None:
        r = self._requests.get((tenant, request_id))
        if r is not None and r["applied_at"] is None:
            r.update(applied_by=owner, applied_at=self.now(), result=copy.deepcopy(result))

    @deferred
    def get_admin_request(self, tenant: str, request_id: str) -> Optional[AdminRequest]:
        r = self._requests.get((tenant, request_id))
        return None if r is None else self._request(r)

    def _folder_row(self, owner: Optional[str], holds: bool, state: str,
                    error: Optional[str]) -> dict[str, Any]:
        now = self.now()
        return {"owner": owner, "holds_connection": holds, "state": state, "since": now,
                "last_sync_at": None, "last_error": error, "counters": {}, "updated_at": now}

    def _request(self, r: dict[str, Any]) -> AdminRequest:
        return AdminRequest(**{k: copy.deepcopy(v) for k, v in r.items() if k != "claimed_at"})
