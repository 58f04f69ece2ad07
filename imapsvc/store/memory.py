"""An in-memory :class:`~imapsvc.interfaces.IStore` for tests.

Same semantics as :class:`imapsvc.store.postgres.PostgresStore` (both pass
``tests.store_contract``); the lease clock is the injected clock rather than
the database's. Results come back as already-fired Deferreds. Values are
copied in and out so callers cannot mutate stored state by accident.
"""

from __future__ import annotations

import copy
import uuid
from datetime import timedelta
from typing import Any, Optional

import attr
from zope.interface import implementer

from imapsvc.interfaces import IStore
from imapsvc.model import ProviderConfig
from imapsvc.store.memory_base import EXTRA_DEFAULTS
from imapsvc.store.memory_cluster import MemoryCluster
from imapsvc.store.memory_ledger import MemoryLedger
from imapsvc.store.memory_providers import MemoryProviders


@implementer(IStore)
class MemoryStore(MemoryProviders, MemoryLedger, MemoryCluster):
    """The fake store.

    :param clock: an :class:`~imapsvc.interfaces.IClock` (a
        ``twisted.internet.task.Clock`` in tests); it is the lease clock and
        stamps every row.

    The IStore methods come from the role mixins (``memory_providers``,
    ``memory_ledger``, ``memory_cluster``); the methods here are test
    helpers that reach under the interface as the main app or a test would.
    """

    def add_provider(
        self, config: Optional[ProviderConfig] = None, **kwargs: Any
    ) -> ProviderConfig:
        """Insert a provider (both tables). Either a :class:`ProviderConfig`
        or its fields as keywords (``tenant``, ``provider_id``, ``host``, ...
        get defaults); extra keywords set columns ProviderConfig lacks
        (``provider_type``, ``inbound_pause_reason``, ...). A paused row
        without a reason gets ``manual``. Returns the stored config."""
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k in EXTRA_DEFAULTS}
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
        row.update(EXTRA_DEFAULTS)
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
