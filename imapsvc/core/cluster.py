"""One service across replicas, the pure parts (no I/O).

- Which folders of a provider get a connection under the per-tenant cap
  (:func:`grant`), and the error that names the cap (:func:`cap_error`).
- The deployment-wide ``/status`` document built from what every replica
  persisted (:func:`deployment_status`).
- When a throttled status write may go out (:func:`next_write_delay`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Mapping, Optional, Sequence

from imapsvc.core.folder_machine import DISCONNECTED, STOPPED, WAITING

#: Admin actions routed to the provider's owner (``imap_admin_requests.action``).
ACTIONS = ("reconnect", "resync", "test-connection", "pause", "resume")

#: The setting the cap error names, so an operator knows what to raise.
CAP_SETTING = "IMAP_MAX_CONNECTIONS_PER_TENANT"


def connection_order(folders: Iterable[str]) -> tuple[str, ...]:
    """Folders in the order they get connections: INBOX first (any case),
    then the configured order."""
    folders = tuple(folders)
    inbox = tuple(f for f in folders if f.upper() == "INBOX")
    return inbox + tuple(f for f in folders if f.upper() != "INBOX")


def grant(folders: Sequence[str], cap: Optional[int], in_use: int
          ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(granted, waiting)``: the first folders (INBOX first) that fit in
    ``cap - in_use`` connections, and the rest. ``cap`` ``None`` means no cap."""
    ordered = connection_order(folders)
    if cap is None:
        return ordered, ()
    room = max(0, cap - max(0, in_use))
    return ordered[:room], ordered[room:]


def cap_error(cap: int, in_use: int, waiting: Sequence[str], granted: int) -> Optional[str]:
    """The provider's ``error_message`` when the cap leaves folders unwatched."""
    if not waiting:
        return None
    names = ", ".join(waiting)
    if granted:
        head = f"{len(waiting)} folder(s) not watched"
    else:
        head = "not started"
    return (
        f"{head}: tenant connection limit {CAP_SETTING}={cap} reached "
        f"({in_use} in use by other providers of this tenant); waiting: {names}"
    )


def next_write_delay(last_written: Optional[float], now: float, interval: float) -> float:
    """Seconds until a throttled write may go out (0: now)."""
    if last_written is None:
        return 0.0
    return max(0.0, last_written + interval - now)


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def replica_alive(heartbeat_at: Optional[datetime], now: datetime, lease_ttl_s: float) -> bool:
    """A replica silent for two lease TTLs is gone."""
    if heartbeat_at is None:
        return False
    return (now - heartbeat_at).total_seconds() <= 2 * lease_ttl_s


def deployment_status(
    now: datetime,
    providers: Sequence[Mapping[str, Any]],
    folders: Sequence[Mapping[str, Any]],
    replicas: Sequence[Mapping[str, Any]],
    lease_ttl_s: float,
    redact: Any = lambda s: s,
) -> dict[str, Any]:
    """Every provider and folder of the deployment, from the rows every
    replica persisted (``imap_folder_status``, ``imap_replicas``) and the
    provider rows.

    :param providers: dicts with ``tenant``, ``provider_id``, ``mailbox``,
        ``status``, ``error_message``, ``lease_owner``, ``lease_expires_at``,
        ``is_active``, ``paused``, ``last_sync_at``.
    :param folders: dicts with ``tenant``, ``provider_id``, ``folder``,
        ``owner``, ``holds_connection``, ``state``, ``since``,
        ``last_sync_at``, ``last_error``, ``counters``, ``updated_at``.
    :param replicas: dicts with ``owner``, ``started_at``, ``heartbeat_at``.
    :param redact: applied to every error text (defence in depth: errors are
        written secret-free already).
    """
    alive = {
        r["owner"]: replica_alive(r.get("heartbeat_at"), now, lease_ttl_s) for r in replicas
    }
    replica_docs = [
        {
            "worker": r["owner"],
            "startedAt": _iso(r.get("started_at")),
            "heartbeatAt": _iso(r.get("heartbeat_at")),
            "state": "alive" if alive[r["owner"]] else "gone",
        }
        for r in sorted(replicas, key=lambda r: r["owner"])
    ]
    by_provider: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for f in folders:
        by_provider.setdefault((str(f["tenant"]), str(f["provider_id"])), []).append(f)
    out = []
    for p in sorted(providers, key=lambda p: (str(p["tenant"]), str(p["provider_id"]))):
        key = (str(p["tenant"]), str(p["provider_id"]))
        expires = p.get("lease_expires_at")
        lease_live = bool(p.get("lease_owner")) and expires is not None and expires > now
        owner = p.get("lease_owner") if lease_live else None
        folder_docs = {}
        for f in sorted(by_provider.get(key, ()), key=lambda f: str(f["folder"])):
            f_owner = f.get("owner")
            current = lease_live and f_owner is not None and f_owner == owner
            state = str(f.get("state") or DISCONNECTED)
            if state != WAITING and not current:
                state = STOPPED  # its replica released or lost the lease
            elif current and not alive.get(str(f_owner), False):
                state = "Gone"  # lease not expired yet, but the replica is silent
            error = f.get("last_error")
            folder_docs[str(f["folder"])] = {
                "state": state,
                "since": _iso(f.get("since")),
                "owner": f_owner,
                "ownerState": (
                    None if f_owner is None
                    else ("alive" if alive.get(str(f_owner)) else "gone")
                ),
                "connection": bool(f.get("holds_connection")) and current,
                "lastSyncAt": _iso(f.get("last_sync_at")),
                "lastError": redact(error) if error else None,
                "counters": dict(f.get("counters") or {}),
                "updatedAt": _iso(f.get("updated_at")),
            }
        error = p.get("error_message")
        out.append(
            {
                "tenant": key[0],
                "providerId": key[1],
                "mailbox": p.get("mailbox"),
                "status": p.get("status"),
                "error": redact(error) if error else None,
                "active": bool(p.get("is_active")),
                "paused": bool(p.get("paused")),
                "owner": owner,
                "ownerState": None if owner is None else (
                    "alive" if alive.get(str(owner)) else "gone"),
                "leaseExpiresAt": _iso(expires) if lease_live else None,
                "lastSyncAt": _iso(p.get("last_sync_at")),
                "folders": folder_docs,
            }
        )
    return {"at": _iso(now), "replicas": replica_docs, "providers": out}
