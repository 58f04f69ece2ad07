"""One leased provider at run time (:class:`ProviderService`): a child
service per folder, and what its folders report (:class:`FolderHooks`).

The folders' reports (state changes, logins, failed logins, syncs, lost
leases) become the provider row's ``status``/``last_error``, the cluster
status document and the supervisor's decisions (auto-pause, dropping the
provider). The :class:`~imapsvc.supervisor.Supervisor` starts and stops
these services.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import attr
from twisted.application import service
from twisted.logger import Logger
from zope.interface import implementer

from imapsvc.core.cluster import next_write_delay
from imapsvc.core.discovery import aggregate_status
from imapsvc.core.folder_machine import DISCONNECTED, NEEDS_REAUTH, WAITING
from imapsvc.deferreds import fire_and_forget
from imapsvc.interfaces import IFolderHooks
from imapsvc.log_output import redact
from imapsvc.model import FolderStatus, ProviderConfig
from imapsvc.shared_poll import SHARED_LABEL, SharedHooks, budget_split, folder_snapshot

if TYPE_CHECKING:
    from imapsvc.supervisor import Supervisor

#: Provider status writes are at most this far apart (the first change after
#: a quiet spell goes out in the next reactor turn): in a reconnect storm the
#: status message changes with every folder that comes back.
STATUS_WRITE_INTERVAL_S = 2.0


@implementer(IFolderHooks)
class FolderHooks:
    """What a folder reports to its provider. One instance per folder."""

    def __init__(self, provider_service: ProviderService, folder: str):
        self._provider = provider_service
        self.folder = folder

    def state_changed(self, state: str, reason: str = "", error: Optional[str] = None) -> None:
        self._provider.folder_state_changed(self.folder, state, error)

    def auth_failed(self, code: str, text: str = "") -> None:
        self._provider.auth_failed(self.folder, code)

    def credentials_missing(self, text: str = "") -> None:
        self._provider.credentials_missing(self.folder, text)

    def logged_in(self) -> None:
        self._provider.logged_in(self.folder)

    def synced(self) -> None:
        self._provider.synced(self.folder)

    def lease_lost(self) -> None:
        self._provider.lease_lost(self.folder)

    def quarantined(self, until: float, text: str) -> None:
        self._provider.quarantined(self.folder, until, text)


class ProviderService(service.MultiService):
    """One leased provider: a child service per configured folder."""

    log = Logger()

    def __init__(self, supervisor: Supervisor, provider: ProviderConfig, make_folder,
                 folders: Optional[tuple[str, ...]] = None,
                 waiting: Optional[dict[str, str]] = None):
        super().__init__()
        self.supervisor = supervisor
        self.provider = provider
        self.setName("imap:{}/{}".format(*provider.key))
        self._make_folder = make_folder
        self.folder_states: dict[str, tuple[str, Optional[str]]] = {}
        self.folders: dict[str, Any] = {}
        self._status_written: Optional[tuple[str, Optional[str]]] = None
        self._status_call: Any = None
        self._status_at: Optional[float] = None
        self._auth_failure_counted = False
        self._credentials_missing_logged = False
        self._last_sync_written = None
        #: Folders the tenant connection cap left without a connection,
        #: with the error naming the cap (shown, and kept in the status).
        self.waiting: dict[str, str] = dict(waiting or {})
        self.folder_since: dict[str, float] = {}
        self.folder_synced_at: dict[str, float] = {}
        # Gmail's connection budget: folders past it share one polling
        # connection (imapsvc.shared_poll) instead of one each.
        own, shared = budget_split(supervisor, provider,
                                   provider.folders if folders is None else folders)
        for folder in own:
            child = make_folder(provider, folder, FolderHooks(self, folder))
            child.setName(folder)
            child.setServiceParent(self)
            self.folders[folder] = child
            self.folder_states[folder] = (DISCONNECTED, None)
        if shared:
            hooks = SharedHooks(shared, lambda folder: FolderHooks(self, folder))
            make_shared = supervisor.make_shared_poller
            assert make_shared is not None  # budget_split checked it
            child = make_shared(provider, shared, hooks)
            child.setName(SHARED_LABEL)
            child.setServiceParent(self)
            for folder in shared:  # one child, shown (and reported) per folder
                self.folders[folder] = child
                self.folder_states[folder] = (DISCONNECTED, None)
        for folder, error in self.waiting.items():
            self.folder_states[folder] = (WAITING, error)

    # -- hooks from folders -------------------------------------------------

    def folder_state_changed(self, folder: str, state: str, error: Optional[str]) -> None:
        if self.folder_states.get(folder, (None,))[0] != state:
            self.folder_since[folder] = self.supervisor.clock.seconds()
        self.folder_states[folder] = (state, error)
        if self._status_call is None and self.running:
            # Aggregated once per turn and throttled: a server restart ends
            # the sessions of hundreds of folders in one turn, and each
            # change would otherwise sort every folder and maybe write twice.
            clock = self.supervisor.clock
            delay = next_write_delay(self._status_at, clock.seconds(), STATUS_WRITE_INTERVAL_S)
            self._status_call = clock.callLater(delay, self._write_status)
        self.report(folder)

    def stopService(self) -> Any:
        call = self._status_call
        if call is not None and call.active():
            # Write what is pending now rather than drop it: a provider the
            # supervisor restarts on every discovery pass (credentials
            # missing) would otherwise never show its error.
            call.cancel()
            self._write_status()
        self._status_call = None
        return super().stopService()

    def _write_status(self) -> None:
        """The provider row's ``status``/``error_message`` (and ``last_error``)
        from its folders' states, when they changed."""
        self._status_call = None
        status = aggregate_status(self.folder_states)
        if status != self._status_written and self.running:
            self._status_written = status
            self._status_at = self.supervisor.clock.seconds()
            tenant, pid = self.provider.key
            # Fenced: a replica that lost the lease must not overwrite the
            # new owner's status.
            fire_and_forget(
                self.supervisor.store.set_provider_status(
                    tenant, pid, status[0], status[1], owner=self.supervisor.owner),
                self.log,
                "provider status write failed",
            )
            # The config row's last_error as the app reads it: the error while
            # there is one, cleared once every folder is connected; kept while
            # merely (re)connecting, so the last cause stays visible.
            if status[0] in ("error", "connected"):
                fire_and_forget(
                    self.supervisor.store.set_last_error(tenant, pid, status[1]),
                    self.log,
                    "provider last_error write failed",
                )

    def report(self, folder: str) -> None:
        """Tell the cluster status reporter the folder changed; it builds the
        folder's status when its throttled write is due."""
        reporter = self.supervisor.reporter
        if reporter is None or not self.running or folder not in self.folders:
            return
        reporter.folder_dirty(self.provider.key, folder, lambda: self._folder_status(folder))

    def _folder_status(self, folder: str) -> FolderStatus:
        from imapsvc.cluster_status import folder_counters, utc

        child = self.folders.get(folder)
        snap = folder_snapshot(child, folder) if child is not None else {}
        state, error = self.folder_states.get(folder, (DISCONNECTED, None))
        since = self.folder_since.get(folder)
        synced = self.folder_synced_at.get(folder)
        return FolderStatus(
            folder=folder,
            state=state,
            since=None if since is None else utc(since),
            last_sync_at=None if synced is None else utc(synced),
            last_error=redact(error) if error else None,
            counters=folder_counters(snap),
        )

    def auth_failed(self, folder: str, code: str) -> None:
        # Several folders of one provider failing in the same attempt are one
        # failure: count once per start of the provider.
        if self._auth_failure_counted:
            return
        self._auth_failure_counted = True
        fire_and_forget(
            self.supervisor.provider_auth_failed(self.provider, code),
            self.log,
            "auth failure bookkeeping failed",
        )

    def credentials_missing(self, folder: str, text: str) -> None:
        # Not an authentication failure: inbound_auth_failure_count stays as
        # it is and nothing is paused. The folder's error (names and places
        # looked up, never values) becomes status = error / error_message
        # through folder_state_changed; discovery retries the login.
        if not self._credentials_missing_logged:
            self._credentials_missing_logged = True
            self.log.warn(
                "provider {tenant}/{provider}: {text}; retrying on the next discovery pass",
                tenant=self.provider.tenant,
                provider=self.provider.provider_id,
                text=text,
            )

    def logged_in(self, folder: str) -> None:
        if self.provider.inbound_auth_failure_count:
            self.provider = _with(self.provider, inbound_auth_failure_count=0)
            fire_and_forget(
                self.supervisor.store.reset_auth_failures(*self.provider.key),
                self.log,
                "auth failure reset failed",
            )

    def synced(self, folder: str) -> None:
        now = self.supervisor.clock.seconds()
        self.folder_synced_at[folder] = now
        self.report(folder)
        interval = self.supervisor.last_sync_interval_s
        if self._last_sync_written is None or now - self._last_sync_written >= interval:
            self._last_sync_written = now
            fire_and_forget(
                self.supervisor.store.touch_last_sync(*self.provider.key),
                self.log,
                "last_sync_at write failed",
            )

    def quarantined(self, folder: str, until: float, text: str) -> None:
        """A folder's server broke protocol limits repeatedly: say so in
        ``error_message`` (the folder itself waits out the quarantine)."""
        self.supervisor.quarantines += 1
        self._status_written = ("error", text)
        tenant, pid = self.provider.key
        fire_and_forget(
            self.supervisor.store.set_provider_status(tenant, pid, "error", text),
            self.log,
            "provider status write failed",
        )

    def lease_lost(self, folder: str) -> None:
        fire_and_forget(
            self.supervisor.drop_provider(self.provider.key, "lease lost during a write"),
            self.log,
            "stopping provider after lease loss failed",
        )

    # -- queries and actions ------------------------------------------------

    def needs_reauth(self) -> bool:
        return any(state == NEEDS_REAUTH for state, _ in self.folder_states.values())

    def update(self, provider: ProviderConfig) -> None:
        """Settings changed that need no new connection (credentials, caps)."""
        self.provider = provider
        for child in list(self):
            if hasattr(child, "update_provider"):
                child.update_provider(provider)

    def reconnect(self) -> None:
        for child in list(self):  # the shared poller once, not per folder
            child.reconnect()

    def snapshot(self) -> dict:
        folders = {}
        for name, child in self.folders.items():
            snap = folder_snapshot(child, name)
            state, error = self.folder_states.get(name, (DISCONNECTED, None))
            snap.setdefault("state", state)
            snap.setdefault("last_error", error)
            if snap.get("last_error"):
                # Errors are written secret-free; /status masks them again anyway.
                snap["last_error"] = redact(str(snap["last_error"]))
            folders[name] = snap
        for name, error in self.waiting.items():
            folders[name] = {"state": WAITING, "last_error": redact(error) if error else None}
        status, error = aggregate_status(self.folder_states)
        return {
            "tenant": self.provider.tenant,
            "providerId": self.provider.provider_id,
            "mailbox": self.provider.mailbox,
            "host": self.provider.host,
            "status": status,
            "error": redact(error) if error else None,
            "folders": folders,
        }


def _with(provider: ProviderConfig, **changes) -> ProviderConfig:
    return attr.evolve(provider, **changes)
