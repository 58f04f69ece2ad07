"""An in-memory :class:`~imapsvc.interfaces.IStore` for tests.

Same semantics as :class:`imapsvc.store.postgres.PostgresStore` (both pass
``tests.store_contract``); the lease clock is the injected clock rather than
the database's. Results come back as already-fired Deferreds. Values are
copied in and out so callers cannot mutate stored state by accident.
"""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Optional, Sequence

import attr
from twisted.internet import defer
from zope.interface import implementer

from imapsvc.interfaces import IClock, IStore, LeaseLost
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

_CONFIG_FIELDS = frozenset(f.name for f in attr.fields(ProviderConfig))

#: Columns of the two provider tables that ProviderConfig does not carry.
_EXTRA_DEFAULTS: dict[str, Any] = {
    "provider_type": "imap",
    "inbound_pause_reason": None,
    "error_message": None,
    "last_sync_at": None,
    "inbound_auth_failure_last_at": None,
    "inbound_auth_failure_code": None,
    "last_processed_message_id": None,
    "uid_validity": None,
    "last_uid": None,
    "last_seen_at": None,
    "last_error": None,
}


def _wrap(fn):  # type: ignore[no-untyped-def]
    """Run ``fn`` now and return its result or exception as a Deferred."""

    def method(*args, **kwargs):  # type: ignore[no-untyped-def]
        return defer.maybeDeferred(fn, *args, **kwargs)

    method.__name__ = fn.__name__
    method.__doc__ = fn.__doc__
    return method


@implementer(IStore)
class MemoryStore:
    """The fake store.

    :param clock: an :class:`~imapsvc.interfaces.IClock` (a
        ``twisted.internet.task.Clock`` in tests); it is the lease clock and
        stamps every row.
    """

    def __init__(self, clock: IClock) -> None:
        self._clock = clock
        self._providers: dict[tuple[str, str], dict[str, Any]] = {}
        self._ledger: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._outbox: list[dict[str, Any]] = []
        self._next_outbox_id = 1
        self._secrets: dict[tuple[str, str], bytes] = {}
        self._oauth: dict[tuple[str, str], dict[str, Any]] = {}

    # -- test helpers -------------------------------------------------------

    def now(self) -> datetime:
        """The store's clock as an aware UTC datetime."""
        return datetime.fromtimestamp(self._clock.seconds(), tz=UTC)

    def add_provider(
        self, config: Optional[ProviderConfig] = None, **kwargs: Any
    ) -> ProviderConfig:
        """Insert a provider (both tables). Either a :class:`ProviderConfig`
        or its fields as keywords (``tenant``, ``provider_id``, ``host``, ...
        get defaults); extra keywords set columns ProviderConfig lacks
        (``provider_type``, ``inbound_pause_reason``, ...). A paused row
        without a reason gets ``manual``. Returns the stored config."""
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k in _EXTRA_DEFAULTS}
        if config is None:
            kwargs.setdefault("tenant", str(uuid.uuid4()))
            kwargs.setdefault("provider_id", str(uuid.uuid4()))
            kwargs.setdefault("provider_name", "Support")
            kwargs.setdefault("mailbox", f"{kwargs['provider_id']}@example.com")
            kwargs.setdefault("host", "127.0.0.1")
            kwargs.setdefault("port", 993)
            config = ProviderConfig(**kwargs)
        elif kwargs:
            config = attr.evolve(config, **kwargs)
        row = attr.asdict(config, recurse=False)
        row.update(_EXTRA_DEFAULTS)
        row.update(extra)
        if row["inbound_paused_at"] is not None and row["inbound_pause_reason"] is None:
            row["inbound_pause_reason"] = "manual"
        row["folder_state"] = dict(row["folder_state"])
        if row["updated_at"] is None:
            row["updated_at"] = self.now()
        self._providers[config.key] = row
        return self._config(row)

    def update_provider(self, tenant: str, provider_id: str, **columns: Any) -> None:
        """Set columns of a provider directly (as the main app would)."""
        row = self._providers[(tenant, provider_id)]
        for name in columns:
            if name not in row:
                raise KeyError(name)
        row.update(columns)
        row["updated_at"] = self.now()

    def set_active(self, tenant: str, provider_id: str, active: bool) -> None:
        """Switch ``is_active``."""
        self.update_provider(tenant, provider_id, is_active=active)

    def set_paused(self, tenant: str, provider_id: str, reason: Optional[str]) -> None:
        """Pause with ``reason`` (``manual``, ...) or unpause with ``None``."""
        self.update_provider(
            tenant,
            provider_id,
            inbound_paused_at=None if reason is None else self.now(),
            inbound_pause_reason=reason,
        )

    def remove_provider(self, tenant: str, provider_id: str) -> None:
        """Delete a provider (its config goes with it)."""
        del self._providers[(tenant, provider_id)]

    def provider_row(self, tenant: str, provider_id: str) -> dict[str, Any]:
        """A copy of every stored column of one provider."""
        return copy.deepcopy(self._providers[(tenant, provider_id)])

    def expire_lease(self, tenant: str, provider_id: str) -> None:
        """Make the current lease expired by the store clock."""
        row = self._providers[(tenant, provider_id)]
        if row["lease_owner"] is not None:
            row["lease_expires_at"] = self.now() - timedelta(seconds=1)

    def ledger_rows(self, tenant: str, provider_id: str) -> list[dict[str, Any]]:
        """Copies of one provider's ledger rows, in insertion order."""
        return copy.deepcopy(self._ledger.get((tenant, provider_id), []))

    def outbox_rows(self) -> list[dict[str, Any]]:
        """Copies of every outbox row, published or not."""
        return copy.deepcopy(self._outbox)

    # -- internals ----------------------------------------------------------

    def _config(self, row: dict[str, Any]) -> ProviderConfig:
        values = {k: copy.deepcopy(v) for k, v in row.items() if k in _CONFIG_FIELDS}
        values["folder_filters"] = tuple(values["folder_filters"])
        values["server_capabilities"] = tuple(values["server_capabilities"])
        return ProviderConfig(**values)

    def _row(self, tenant: str, provider_id: str) -> Optional[dict[str, Any]]:
        return self._providers.get((tenant, provider_id))

    def _holds(self, row: Optional[dict[str, Any]], owner: str) -> bool:
        return (
            row is not None
            and row["lease_owner"] == owner
            and row["lease_expires_at"] is not None
            and row["lease_expires_at"] > self.now()
        )

    def _put_cursor(self, row: dict[str, Any], folder: str, cursor: FolderCursor) -> None:
        state = dict(row["folder_state"])
        state[folder] = FolderCursor.from_json(cursor.to_json()) or FolderCursor()
        row["folder_state"] = state
        row["uid_validity"] = cursor.uid_validity
        row["last_uid"] = cursor.last_uid
        row["last_seen_at"] = parse_seen_at(cursor.last_seen_at)
        row["updated_at"] = self.now()

    def _append_outbox(self, tenant: str, provider_id: str, event_id: str,
                       fields: Any) -> None:
        self._outbox.append(
            {
                "id": self._next_outbox_id,
                "tenant": tenant,
                "provider_id": provider_id,
                "event_id": event_id,
                "fields": {str(k): str(v) for k, v in fields.items()},
                "created_at": self.now(),
                "published_at": None,
            }
        )
        self._next_outbox_id += 1

    # -- IStore -------------------------------------------------------------

    @_wrap
    def list_active_providers(self, tenant: Optional[str] = None) -> list[ProviderConfig]:
        out = []
        for (row_tenant, _), row in sorted(self._providers.items()):
            if tenant is not None and row_tenant != tenant:
                continue
            if row["provider_type"] != "imap" or not row["is_active"]:
                continue
            if row["inbound_paused_at"] is not None:
                continue
            out.append(self._config(row))
        return out

    @_wrap
    def get_provider(self, tenant: str, provider_id: str) -> Optional[ProviderConfig]:
        row = self._row(tenant, provider_id)
        return None if row is None else self._config(row)

    @_wrap
    def read_cursor(self, tenant: str, provider_id: str, folder: str) -> Optional[FolderCursor]:
        row = self._row(tenant, provider_id)
        if row is None:
            return None
        return row["folder_state"].get(folder)

    @_wrap
    def write_cursor(self, tenant: str, provider_id: str, folder: str, cursor: FolderCursor,
                     owner: str) -> None:
        row = self._row(tenant, provider_id)
        if not self._holds(row, owner):
            raise LeaseLost(f"{tenant}/{provider_id}")
        assert row is not None
        self._put_cursor(row, folder, cursor)

    @_wrap
    def reset_cursors(self, tenant: str, provider_id: str, folder: Optional[str] = None) -> None:
        row = self._row(tenant, provider_id)
        if row is None:
            return
        if folder is None:
            row["folder_state"] = {}
            row["uid_validity"] = row["last_uid"] = row["last_seen_at"] = None
        else:
            row["folder_state"] = {k: v for k, v in row["folder_state"].items() if k != folder}
        row["updated_at"] = self.now()

    @_wrap
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

    @_wrap
    def renew_lease(self, tenant: str, provider_id: str, owner: str, ttl_ms: int) -> bool:
        row = self._row(tenant, provider_id)
        if not self._holds(row, owner):
            return False
        assert row is not None
        row["lease_expires_at"] = self.now() + timedelta(milliseconds=ttl_ms)
        return True

    @_wrap
    def release_lease(self, tenant: str, provider_id: str, owner: str) -> None:
        row = self._row(tenant, provider_id)
        if row is not None and row["lease_owner"] == owner:
            row["lease_owner"] = None
            row["lease_expires_at"] = None

    @_wrap
    def record_batch(self, tenant: str, provider_id: str, folder: str, owner: str,
                     records: Sequence[MessageRecord],
                     cursor: Optional[FolderCursor]) -> BatchResult:
        records = list(records)
        check_records(records)
        row = self._row(tenant, provider_id)
        if not self._holds(row, owner):
            raise LeaseLost(f"{tenant}/{provider_id}")
        assert row is not None
        ledger = self._ledger.setdefault((tenant, provider_id), [])
        known_keys = {r["dedupe_key"] for r in ledger}
        known_ids = {r["message_id_key"] for r in ledger if r["message_id_key"] is not None}
        outcomes = []
        new = []
        for record, first in zip(records, first_occurrences(records)):
            known = record.dedupe_key in known_keys or (
                record.message_id_key is not None and record.message_id_key in known_ids
            )
            is_new = first and not known
            new.append(is_new)
            if not is_new:
                outcomes.append(OUTCOME_DUPLICATE)
                continue
            outcomes.append(record.outcome)
            ledger.append(
                {
                    "tenant": tenant,
                    "provider_id": provider_id,
                    "dedupe_key": record.dedupe_key,
                    "message_id_key": record.message_id_key,
                    "folder": record.folder,
                    "uid_validity": record.uid_validity,
                    "uid": record.uid,
                    "outcome": record.outcome,
                    "reason": record.reason,
                    "event_id": record.event_id,
                    "created_at": self.now(),
                }
            )
            if record.outcome == OUTCOME_PUBLISHED:
                self._append_outbox(tenant, provider_id, record.event_id, record.fields)
        message_id = last_message_id(records, new)
        if message_id is not None:
            row["last_processed_message_id"] = message_id
        if cursor is not None:
            self._put_cursor(row, folder, cursor)
        return BatchResult(tuple(outcomes))

    @_wrap
    def add_outbox(self, tenant: str, provider_id: str, event_id: str, fields: Any) -> None:
        self._append_outbox(tenant, provider_id, event_id, fields)

    @_wrap
    def fetch_outbox(self, limit: int, owner: Optional[str] = None) -> list[OutboxRow]:
        def relayable(r: dict[str, Any]) -> bool:
            if owner is None:
                return True
            row = self._row(r["tenant"], r["provider_id"])
            if row is None or row["lease_owner"] is None or row["lease_owner"] == owner:
                return True
            expires = row["lease_expires_at"]
            return expires is None or expires <= self.now()

        rows = [r for r in self._outbox if r["published_at"] is None and relayable(r)][:limit]
        return [
            OutboxRow(r["id"], r["tenant"], r["provider_id"], r["event_id"], dict(r["fields"]),
                      r["created_at"])
            for r in rows
        ]

    @_wrap
    def mark_published(self, ids: Sequence[int]) -> None:
        wanted = set(ids)
        for r in self._outbox:
            if r["id"] in wanted and r["published_at"] is None:
                r["published_at"] = self.now()

    @_wrap
    def outbox_stats(self) -> tuple[int, Optional[float]]:
        pending = [r for r in self._outbox if r["published_at"] is None]
        if not pending:
            return (0, None)
        oldest = min(r["created_at"] for r in pending)
        return (len(pending), max(0.0, (self.now() - oldest).total_seconds()))

    @_wrap
    def purge_ledger(self, older_than_days: float) -> int:
        cutoff = self.now() - timedelta(days=older_than_days)
        deleted = 0
        for key, rows in self._ledger.items():
            keep = [r for r in rows if r["created_at"] >= cutoff]
            deleted += len(rows) - len(keep)
            self._ledger[key] = keep
        keep_out = [
            r for r in self._outbox if r["published_at"] is None or r["published_at"] >= cutoff
        ]
        deleted += len(self._outbox) - len(keep_out)
        self._outbox = keep_out
        return deleted

    @_wrap
    def put_secret(self, tenant: str, name: str, ciphertext: bytes) -> None:
        self._secrets[(tenant, name)] = bytes(ciphertext)

    @_wrap
    def get_secret(self, tenant: str, name: str) -> Optional[bytes]:
        return self._secrets.get((tenant, name))

    @_wrap
    def delete_secret(self, tenant: str, name: str) -> None:
        self._secrets.pop((tenant, name), None)

    @_wrap
    def set_provider_status(self, tenant: str, provider_id: str, status: str,
                            error_message: Optional[str] = None) -> None:
        row = self._row(tenant, provider_id)
        if row is None:
            return
        if status not in ("connected", "disconnected", "error", "configuring"):
            raise ValueError(f"unknown provider status {status!r}")
        row["status"] = status
        row["error_message"] = error_message
        row["updated_at"] = self.now()

    @_wrap
    def save_capabilities(self, tenant: str, provider_id: str, capabilities: Any) -> None:
        row = self._row(tenant, provider_id)
        if row is not None:
            row["server_capabilities"] = tuple(sorted_capabilities(capabilities))
            row["updated_at"] = self.now()

    @_wrap
    def save_access_token(self, tenant: str, provider_id: str, access_token: Optional[str],
                          expires_at: Optional[datetime]) -> None:
        row = self._row(tenant, provider_id)
        if row is not None:
            row["access_token"] = access_token
            row["token_expires_at"] = expires_at
            row["updated_at"] = self.now()

    @_wrap
    def put_oauth_state(self, tenant: str, nonce: str, verifier: str,
                        expires_at: datetime) -> None:
        self._oauth[(tenant, nonce)] = {
            "verifier": verifier, "expires_at": expires_at, "used_at": None,
        }

    @_wrap
    def take_oauth_state(self, tenant: str, nonce: str) -> Optional[str]:
        state = self._oauth.get((tenant, nonce))
        if state is None or state["used_at"] is not None or state["expires_at"] <= self.now():
            return None
        state["used_at"] = self.now()
        return str(state["verifier"])

    @_wrap
    def record_auth_failure(self, tenant: str, provider_id: str, code: Optional[str],
                            pause_after: int) -> tuple[int, bool]:
        row = self._row(tenant, provider_id)
        if row is None:
            return (0, False)
        row["inbound_auth_failure_count"] += 1
        row["inbound_auth_failure_last_at"] = self.now()
        row["inbound_auth_failure_code"] = code
        paused = False
        if row["inbound_paused_at"] is None and row["inbound_auth_failure_count"] >= pause_after:
            row["inbound_paused_at"] = self.now()
            row["inbound_pause_reason"] = "auth_failure"
            paused = True
        row["updated_at"] = self.now()
        return (row["inbound_auth_failure_count"], paused)

    @_wrap
    def reset_auth_failures(self, tenant: str, provider_id: str) -> None:
        row = self._row(tenant, provider_id)
        if row is None:
            return
        row["inbound_auth_failure_count"] = 0
        row["inbound_auth_failure_code"] = None
        if row["inbound_pause_reason"] == "auth_failure":
            row["inbound_paused_at"] = None
            row["inbound_pause_reason"] = None
        row["updated_at"] = self.now()

    @_wrap
    def touch_last_sync(self, tenant: str, provider_id: str) -> None:
        row = self._row(tenant, provider_id)
        if row is not None:
            row["last_sync_at"] = self.now()

    @_wrap
    def ping(self) -> None:
        return None
