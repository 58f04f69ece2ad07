"""The operator actions of the supervisor (:class:`~imapsvc.interfaces.IAdmin`):
reconnect, resync, pause, resume, test a connection, and ``/status``.

A mixin of :class:`~imapsvc.supervisor.Supervisor`: the actions act on the
providers it runs and the store it holds (the attributes declared below).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer

from imapsvc.log_output import redact
from imapsvc.model import ProviderConfig
from imapsvc.provider_service import ProviderService

Key = tuple[str, str]


class AdminActions:
    """What an operator can ask of this replica (see :class:`IAdmin`)."""

    # Set by the Supervisor.
    store: Any
    owner: str
    providers: dict[Key, ProviderService]
    waiting: dict[Key, str]
    invalid: dict[Key, str]
    discovered_once: bool
    last_discovery_error: Optional[str]
    auth_failures: int
    quarantines: int
    imap_budget: Any
    folder_capacity: Optional[int]
    open_files_limit: Optional[int]
    lag_stats: Any
    connect_gate: Any
    _test_connection: Optional[Callable[[ProviderConfig], defer.Deferred[Any]]]

    def drop_provider(self, key: Key, reason: str, release: bool = True) -> Any:
        raise NotImplementedError

    def connections_of(self, provider: ProviderConfig) -> int:
        raise NotImplementedError

    def _start_provider(self, provider: ProviderConfig, have_lease: bool = False) -> Any:
        raise NotImplementedError

    def request_discovery(self) -> None:
        raise NotImplementedError

    def _known(self, tenant: str, provider_id: str) -> Optional[ProviderService]:
        return self.providers.get((tenant, provider_id))

    def reconnect(self, tenant: str, provider_id: str):
        svc = self._known(tenant, provider_id)
        if svc is None:
            return defer.succeed({"success": False, "error": "provider not running here"})
        svc.reconnect()
        return defer.succeed({"success": True})

    @defer.inlineCallbacks
    def resync(self, tenant: str, provider_id: str, folder: Optional[str] = None):
        # Stop first, so no batch in flight can write its cursor over the
        # reset; then reset; then start again from the recent window.
        svc = self._known(tenant, provider_id)
        if svc is not None:
            yield self.drop_provider(svc.provider.key, "resync", release=False)
        yield self.store.reset_cursors(tenant, provider_id, folder)
        if svc is not None:
            yield self._start_provider(svc.provider, have_lease=True)
        return {"success": True, "running": svc is not None}

    @defer.inlineCallbacks
    def pause(self, tenant: str, provider_id: str):
        """Operator pause (``manual``): the row says so, and the provider
        stops here at once (other replicas see the row change)."""
        # Running before the write: the row change NOTIFYs, and discovery
        # may stop the provider before this method gets to it.
        running = (tenant, provider_id) in self.providers
        known = yield self.store.set_inbound_pause(tenant, provider_id, True)
        if not known:
            return {"success": False, "error": "unknown provider"}
        if (tenant, provider_id) in self.providers:
            yield self.drop_provider((tenant, provider_id), "paused by an operator")
        return {"success": True, "paused": True, "stopped": running}

    @defer.inlineCallbacks
    def resume(self, tenant: str, provider_id: str):
        """Clear any pause (and the auth-failure count); discovery starts it."""
        known = yield self.store.set_inbound_pause(tenant, provider_id, False)
        if not known:
            return {"success": False, "error": "unknown provider"}
        self.request_discovery()
        return {"success": True, "paused": False}

    @defer.inlineCallbacks
    def test_connection(self, tenant: str, provider_id: str):
        provider = yield self.store.get_provider(tenant, provider_id)
        if provider is None:
            return {"success": False, "error": "unknown provider"}
        if self._test_connection is None:
            return {"success": False, "error": "connection test not available"}
        try:
            yield self._test_connection(provider)
        except Exception as e:
            # A generic class only (imapsvc.imap.probe): raw error text would
            # make the probe a scanner of the cluster network.
            return {"success": False, "error": getattr(e, "kind", None) or "connect_failed"}
        return {"success": True}

    def status(self) -> dict:
        return {
            "worker": self.owner,
            "discovered": self.discovered_once,
            "discoveryError": self.last_discovery_error,
            "authFailures": self.auth_failures,
            "quarantines": self.quarantines,
            "imapBudget": None
            if self.imap_budget is None
            else {
                "capacity": self.imap_budget.capacity,
                "used": self.imap_budget.used,
                "peak": self.imap_budget.peak,
                "paused": self.imap_budget.paused,
                "pauses": self.imap_budget.pauses,
            },
            "capacity": {
                "openFilesLimit": self.open_files_limit,
                "folderCapacity": self.folder_capacity,
                # Connections (descriptors), not folders: a budgeted Gmail
                # provider's shared-polled folders share one.
                "foldersOpen": sum(self.connections_of(svc.provider)
                                   for svc in self.providers.values()),
            },
            "reactorLag": self.lag_stats.snapshot() if self.lag_stats is not None else None,
            "connectGate": self.connect_gate.snapshot() if self.connect_gate is not None else None,
            "providers": [svc.snapshot() for _, svc in sorted(self.providers.items())],
            "waiting": [
                {"tenant": k[0], "providerId": k[1], "reason": why}
                for k, why in sorted(self.waiting.items())
            ],
            "invalid": [
                {"tenant": k[0], "providerId": k[1], "reason": redact(why)}
                for k, why in sorted(self.invalid.items())
            ],
        }
