"""An in-memory :class:`~imapsvc.interfaces.IStore` for tests.

Same semantics as :class:`imapsvc.store.postgres.PostgresStore` (both pass
``tests.store_contract``); the lease clock is the injected clock rather than
the database's. Results come back as already-fired Deferreds. Values are
copied in and out so callers cannot mutate stored state by accident.
"""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any, Optional, Sequence

import attr
from twisted.internet import defer
from zope.interface import implementer

from imapsvc.core.cluster import cap_error, grant
from imapsvc.core.folders import folder_filters_from_json
from imapsvc.interfaces import IClock, IStore, LeaseLost
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
    backfill_folders,
    check_records,
    first_occurrences,
    last_message_id,
    parse_seen_at,
    provider_or_invalid,
    sorted_capabilities,
)

#: ``config_error`` is no column: only a store reading a bad row sets it.
_CONFIG_FIELDS = frozenset(f.name for f in attr.fields(ProviderConfig)) - {"config_error"}

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
        #: (tenant, provider_id, folder) -> imap_folder_status columns.
        self._folders: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._replicas: dict[str, dict[str, Any]] = {}
        self._requests: dict[tuple[str, str], dict[str, Any]] = {}
        self._failures: dict[tuple[str, str, str, str, int], dict[str, Any]] = {}
        self._first_sync: dict[tuple[str, str], Optional[int]] = {}
        #: (tenant, provider, folder) -> (uid_validity, HIGHESTMODSEQ), schema/0010.
        self._modseqs: dict[tuple[str, str, str], tuple[str, int]] = {}
        self._backfill: dict[tuple[str, str, str], date] = {}

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
        row.pop("config_error", None)
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
        for key in [k for k in self._folders if k[:2] == (tenant, provider_id)]:
            del self._folders[key]
        self._first_sync.pop((tenant, provider_id), None)
        for bkey in [k for k in self._backfill if k[:2] == (tenant, provider_id)]:
            del self._backfill[bkey]

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
        head = [row[k] for k in ("tenant", "provider_id", "provider_name", "mailbox", "host")]
        return provider_or_invalid(self._convert, row, head)

    @staticmethod
    def _convert(row: dict[str, Any]) -> ProviderConfig:
        values = {k: copy.deepcopy(v) for k, v in row.items() if k in _CONFIG_FIELDS}
        # The column may hold anything the app wrote (update_provider), as jsonb would.
        values["folder_filters"] = folder_filters_from_json(values["folder_filters"])
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

    def _fence(self, row: Optional[dict[str, Any]], tenant: str, provider_id: str,
               owner: Optional[str]) -> None:
        """With ``owner``: refuse the write unless ``owner`` holds the lease."""
        if owner is not None and not self._holds(row, owner):
            raise LeaseLost(f"{tenant}/{provider_id}")

    def _live_owner(self, row: dict[str, Any]) -> Optional[str]:
        expires = row["lease_expires_at"]
        if row["lease_owner"] is None or expires is None or expires <= self.now():
            return None
        return str(row["lease_owner"])

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
    def read_modseq(self, tenant: str, provider_id: str,
                    folder: str) -> Optional[tuple[str, int]]:
        return self._modseqs.get((tenant, provider_id, folder))

    @_wrap
    def save_modseq(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                    modseq: Optional[int], owner: str) -> None:
        row = self._row(tenant, provider_id)
        if not self._holds(row, owner):
            raise LeaseLost(f"{tenant}/{provider_id}")
        if modseq is None:
            self._modseqs.pop((tenant, provider_id, folder), None)
        else:
            self._modseqs[(tenant, provider_id, folder)] = (str(uid_validity), int(modseq))

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

    # -- backfill (schema/0008) ---------------------------------------------

    @_wrap
    def read_backfill(self, tenant: str, provider_id: str,
                      folders: Sequence[str]) -> BackfillState:
        days = self._first_sync.get((tenant, provider_id))
        pending = [self._backfill[(tenant, provider_id, f)] for f in folders
                   if (tenant, provider_id, f) in self._backfill]
        return BackfillState(days, min(pending) if pending else None)

    @_wrap
    def set_first_sync_since_days(self, tenant: str, provider_id: str,
                                  days: Optional[int]) -> bool:
        if self._row(tenant, provider_id) is None:
            return False
        if days is not None and days < 0:
            raise ValueError("first_sync_since_days must be >= 0")
        self._first_sync[(tenant, provider_id)] = days
        return True

    @_wrap
    def request_backfill(self, tenant: str, provider_id: str, folder: Optional[str],
                         since: date) -> Optional[list[str]]:
        row = self._row(tenant, provider_id)
        if row is None:
            return None
        folders = backfill_folders(folder, row["folder_state"], row["folder_filters"])
        for name in folders:
            self._backfill[(tenant, provider_id, name)] = since
        return folders

    @_wrap
    def complete_backfill(self, tenant: str, provider_id: str, folders: Sequence[str],
                          since: date) -> None:
        for name in folders:
            key = (tenant, provider_id, name)
            if key in self._backfill and self._backfill[key] >= since:
                del self._backfill[key]

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
            for key, f in self._folders.items():
                if key[:2] == (tenant, provider_id) and f["owner"] == owner:
                    f.update(holds_connection=False, state="Stopped", since=self.now(),
                             updated_at=self.now())

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
        old = [k for k, r in self._failures.items() if r["updated_at"] < cutoff]
        for stale in old:
            del self._failures[stale]
        deleted += len(old)
        # Applied admin requests and long-dead replicas go too (not counted).
        for key in [k for k, r in self._requests.items()
                    if r["applied_at"] is not None and r["applied_at"] < cutoff]:
            del self._requests[key]
        for owner in [o for o, r in self._replicas.items() if r["heartbeat_at"] < cutoff]:
            del self._replicas[owner]
        return deleted

    @_wrap
    def set_write_back(self, tenant: str, provider_id: str, mode: Optional[str]) -> bool:
        row = self._row(tenant, provider_id)
        if row is None:
            return False
        row["write_back"] = mode
        row["updated_at"] = self.now()
        return True

    @_wrap
    def set_oauth_delegate(self, tenant: str, provider_id: str,
                           delegate: Optional[str]) -> bool:
        row = self._row(tenant, provider_id)
        if row is None:
            return False
        row["oauth_delegate"] = delegate
        row["updated_at"] = self.now()
        return True

    @_wrap
    def recorded_uids(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                      first_uid: int, last_uid: int) -> list[int]:
        return sorted(
            {int(r["uid"]) for r in self._ledger.get((tenant, provider_id), [])
             if r["folder"] == folder and r["uid_validity"] == str(uid_validity)
             and first_uid <= int(r["uid"]) <= last_uid}
        )

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
                            error_message: Optional[str] = None,
                            owner: Optional[str] = None) -> None:
        row = self._row(tenant, provider_id)
        self._fence(row, tenant, provider_id, owner)
        if row is None:
            return
        if status not in ("connected", "disconnected", "error", "configuring"):
            raise ValueError(f"unknown provider status {status!r}")
        row["status"] = status
        row["error_message"] = error_message
        row["updated_at"] = self.now()

    @_wrap
    def set_last_error(self, tenant: str, provider_id: str, last_error: Optional[str]) -> None:
        row = self._row(tenant, provider_id)
        if row is not None:
            row["last_error"] = last_error
            row["updated_at"] = self.now()

    @_wrap
    def save_capabilities(self, tenant: str, provider_id: str, capabilities: Any,
                          owner: Optional[str] = None) -> None:
        row = self._row(tenant, provider_id)
        self._fence(row, tenant, provider_id, owner)
        if row is not None:
            row["server_capabilities"] = tuple(sorted_capabilities(capabilities))
            row["updated_at"] = self.now()

    @_wrap
    def save_access_token(self, tenant: str, provider_id: str, access_token: Optional[str],
                          expires_at: Optional[datetime], owner: Optional[str] = None) -> None:
        row = self._row(tenant, provider_id)
        if owner is not None and row is not None and self._live_owner(row) not in (None, owner):
            raise LeaseLost(f"{tenant}/{provider_id}")
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
    def set_inbound_pause(self, tenant: str, provider_id: str, paused: bool) -> bool:
        row = self._row(tenant, provider_id)
        if row is None:
            return False
        if paused and row["inbound_paused_at"] is None:
            row["inbound_paused_at"], row["inbound_pause_reason"] = self.now(), "manual"
        elif not paused:
            row["inbound_paused_at"] = row["inbound_pause_reason"] = None
            row["inbound_auth_failure_count"] = 0
            row["inbound_auth_failure_code"] = None
        row["updated_at"] = self.now()
        return True

    @_wrap
    def note_message_failure(self, tenant: str, provider_id: str, folder: str,
                             uid_validity: str, uid: int, reason: str) -> int:
        key = (tenant, provider_id, folder, str(uid_validity), int(uid))
        row = self._failures.get(key)
        if row is None:
            row = self._failures[key] = {"failures": 0, "skipped_at": None,
                                         "created_at": self.now()}
        row["failures"] += 1
        row["reason"] = reason
        row["updated_at"] = self.now()
        return int(row["failures"])

    @_wrap
    def clear_message_failures(self, tenant: str, provider_id: str, folder: str,
                               uid_validity: str, uids: Sequence[int]) -> None:
        for uid in uids:
            key = (tenant, provider_id, folder, str(uid_validity), int(uid))
            row = self._failures.get(key)
            if row is not None and row["skipped_at"] is None:
                del self._failures[key]

    @_wrap
    def mark_poison_skipped(self, tenant: str, provider_id: str, folder: str,
                            uid_validity: str, uid: int) -> None:
        row = self._failures.get((tenant, provider_id, folder, str(uid_validity), int(uid)))
        if row is not None:
            row["skipped_at"] = row["updated_at"] = self.now()

    @_wrap
    def list_poison(self, tenant: Optional[str] = None,
                    provider_id: Optional[str] = None) -> list[PoisonMessage]:
        out = []
        for (t, p, folder, validity, uid), row in self._failures.items():
            if (tenant is not None and t != tenant) or (
                    provider_id is not None and p != provider_id):
                continue
            out.append(PoisonMessage(t, p, folder, validity, uid, row["failures"],
                                     row["reason"], row["skipped_at"], row["updated_at"]))
        return sorted(out, key=lambda m: (m.updated_at, m.tenant, m.provider_id, m.folder,
                                          m.uid))

    @_wrap
    def retry_poison(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                     uid: int) -> bool:
        key = (tenant, provider_id, folder, str(uid_validity), int(uid))
        if self._failures.pop(key, None) is None:
            return False
        ledger = self._ledger.get((tenant, provider_id), [])
        self._ledger[(tenant, provider_id)] = [
            r for r in ledger
            if not (r["folder"] == folder and r["uid_validity"] == str(uid_validity)
                    and r["uid"] == int(uid) and r["outcome"] == "skipped")
        ]
        row = self._row(tenant, provider_id)
        cursor = None if row is None else row["folder_state"].get(folder)
        if (cursor is not None and cursor.uid_validity == str(uid_validity)
                and cursor.last_uid is not None and int(cursor.last_uid) >= int(uid)):
            assert row is not None
            state = dict(row["folder_state"])
            state[folder] = attr.evolve(cursor, last_uid=str(int(uid) - 1))
            row["folder_state"] = state
            row["updated_at"] = self.now()
        return True

    @_wrap
    def touch_last_sync(self, tenant: str, provider_id: str) -> None:
        row = self._row(tenant, provider_id)
        if row is not None:
            row["last_sync_at"] = self.now()

    @_wrap
    def ping(self) -> None:
        return None

    # -- one service across replicas (schema/0004) ----------------------------

    @_wrap
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

    def _folder_row(self, owner: Optional[str], holds: bool, state: str,
                    error: Optional[str]) -> dict[str, Any]:
        now = self.now()
        return {"owner": owner, "holds_connection": holds, "state": state, "since": now,
                "last_sync_at": None, "last_error": error, "counters": {}, "updated_at": now}

    @_wrap
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

    @_wrap
    def heartbeat_replica(self, owner: str, info: Any = None) -> None:
        now = self.now()
        r = self._replicas.setdefault(owner, {"owner": owner, "started_at": now})
        r.update(heartbeat_at=now, info=dict(info or {}))

    @_wrap
    def forget_replica(self, owner: str) -> None:
        self._replicas.pop(owner, None)

    @_wrap
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

    def _request(self, r: dict[str, Any]) -> AdminRequest:
        return AdminRequest(**{k: copy.deepcopy(v) for k, v in r.items() if k != "claimed_at"})

    @_wrap
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

    @_wrap
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

    @_wrap
    def complete_admin_request(self, tenant: str, request_id: str, owner: str,
                               result: Any) -> None:
        r = self._requests.get((tenant, request_id))
        if r is not None and r["applied_at"] is None:
            r.update(applied_by=owner, applied_at=self.now(), result=copy.deepcopy(result))

    @_wrap
    def get_admin_request(self, tenant: str, request_id: str) -> Optional[AdminRequest]:
        r = self._requests.get((tenant, request_id))
        return None if r is None else self._request(r)
