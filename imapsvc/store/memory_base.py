"""The state and internals that MemoryStore's parts share."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from typing import Any, Optional

import attr
from twisted.internet import defer

from imapsvc.core.folders import folder_filters_from_json
from imapsvc.interfaces import IClock, LeaseLost
from imapsvc.model import FolderCursor, ProviderConfig
from imapsvc.store import parse_seen_at, provider_or_invalid

#: ``config_error`` is no column: only a store reading a bad row sets it.
_CONFIG_FIELDS = frozenset(f.name for f in attr.fields(ProviderConfig)) - {"config_error"}


#: Columns of the two provider tables that ProviderConfig does not carry.
EXTRA_DEFAULTS: dict[str, Any] = {
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


def deferred(fn):  # type: ignore[no-untyped-def]
    """Run ``fn`` now and return its result or exception as a Deferred."""

    def method(*args, **kwargs):  # type: ignore[no-untyped-def]
        return defer.maybeDeferred(fn, *args, **kwargs)

    method.__name__ = fn.__name__
    method.__doc__ = fn.__doc__
    return method


class MemoryBase:
    """The tables (dicts) and the lease check."""

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
        self._backfill: dict[tuple[str, str, str], date] = {}
        #: (tenant, provider, folder) -> (uid_validity, HIGHESTMODSEQ), schema/0010.
        self._modseqs: dict[tuple[str, str, str], tuple[str, int]] = {}

    def now(self) -> datetime:
        """The store's clock as an aware UTC datetime."""
        return datetime.fromtimestamp(self._clock.seconds(), tz=UTC)

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
