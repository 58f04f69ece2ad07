"""The supervisor: which providers this replica runs, under which lease.

It discovers active IMAP providers (on a jittered timer that never overlaps
itself, and at once when Postgres NOTIFYs a change), leases each provider in
the database, runs one :class:`ProviderService` per leased provider (one
child service per folder) and gives leases back on shutdown. Leases are
renewed on their own timer; a provider whose lease cannot be renewed is
stopped before the lease could have expired, so two replicas never ingest
the same mailbox at once (and the store refuses fenced writes anyway).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any, Callable, Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsvc.core import folder_machine as FS
from imapsvc.core.backoff import jitter_around
from imapsvc.core.capacity import OVER, START, admit, folders_in_use
from imapsvc.core.discovery import aggregate_status, plan_discovery
from imapsvc.deferreds import fire_and_forget
from imapsvc.interfaces import IAdmin, IFolderHooks
from imapsvc.logging import redact
from imapsvc.model import FolderStatus, ProviderConfig

#: The folder's auth-failure code for an OAuth2 provider never consented to
#: (see imapsvc.oauth.AwaitingConsent); kept here to avoid importing oauth.
AWAITING_CONSENT = "awaiting_consent"

Key = tuple[str, str]

#: Folder states from which a discovery pass retries the provider's login.
_REAUTH_STATES = (FS.NEEDS_REAUTH.lower(),)


def jittered(seconds: float, pct: float, rng: random.Random) -> float:
    """``seconds`` jittered by up to ``pct`` either way, as the app does, so
    the timers of many replicas drift apart (``core.backoff.jitter_around``)."""
    return jitter_around(seconds, pct, rng.random)


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
        self._auth_failure_counted = False
        self._credentials_missing_logged = False
        self._last_sync_written = None
        #: Folders the tenant connection cap left without a connection,
        #: with the error naming the cap (shown, and kept in the status).
        self.waiting: dict[str, str] = dict(waiting or {})
        self.folder_since: dict[str, float] = {}
        self.folder_synced_at: dict[str, float] = {}
        for folder in provider.folders if folders is None else folders:
            child = make_folder(provider, folder, FolderHooks(self, folder))
            child.setName(folder)
            child.setServiceParent(self)
            self.folders[folder] = child
            self.folder_states[folder] = (FS.DISCONNECTED, None)
        for folder, error in self.waiting.items():
            self.folder_states[folder] = (FS.WAITING, error)

    # -- hooks from folders -------------------------------------------------

    def folder_state_changed(self, folder: str, state: str, error: Optional[str]) -> None:
        if self.folder_states.get(folder, (None,))[0] != state:
            self.folder_since[folder] = self.supervisor.clock.seconds()
        self.folder_states[folder] = (state, error)
        status = aggregate_status(self.folder_states)
        if status != self._status_written and self.running:
            self._status_written = status
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
        self.report(folder)

    def report(self, folder: str) -> None:
        """Hand the folder's state to the cluster status reporter (throttled there)."""
        reporter = self.supervisor.reporter
        if reporter is None or not self.running or folder not in self.folders:
            return
        from imapsvc.cluster_status import folder_counters, utc

        child = self.folders[folder]
        snap = child.snapshot() if hasattr(child, "snapshot") else {}
        state, error = self.folder_states.get(folder, (FS.DISCONNECTED, None))
        since = self.folder_since.get(folder)
        synced = self.folder_synced_at.get(folder)
        reporter.folder_changed(self.provider.key, FolderStatus(
            folder=folder,
            state=state,
            since=None if since is None else utc(since),
            last_sync_at=None if synced is None else utc(synced),
            last_error=redact(error) if error else None,
            counters=folder_counters(snap),
        ))

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
        return any(state.lower() in _REAUTH_STATES for state, _ in self.folder_states.values())

    def update(self, provider: ProviderConfig) -> None:
        """Settings changed that need no new connection (credentials, caps)."""
        self.provider = provider
        for child in self.folders.values():
            if hasattr(child, "update_provider"):
                child.update_provider(provider)

    def reconnect(self) -> None:
        for child in self.folders.values():
            child.reconnect()

    def snapshot(self) -> dict:
        folders = {}
        for name, child in self.folders.items():
            snap = child.snapshot() if hasattr(child, "snapshot") else {}
            state, error = self.folder_states.get(name, (FS.DISCONNECTED, None))
            snap.setdefault("state", state)
            snap.setdefault("last_error", error)
            if snap.get("last_error"):
                # Errors are written secret-free; /status masks them again anyway.
                snap["last_error"] = redact(str(snap["last_error"]))
            folders[name] = snap
        for name, error in self.waiting.items():
            folders[name] = {"state": FS.WAITING, "last_error": redact(error) if error else None}
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
    import attr

    return attr.evolve(provider, **changes)


@implementer(IAdmin)
class Supervisor(service.MultiService):
    """Discovers providers, holds their leases, runs their services."""

    log = Logger()

    def __init__(
        self,
        store,
        clock,
        owner: str,
        make_folder: Callable[[ProviderConfig, str, FolderHooks], service.IService],
        *,
        refresh_s: float = 60.0,
        lease_ttl_s: float = 120.0,
        jitter_pct: float = 0.1,
        max_connections_per_tenant: int = 5,
        tenants: frozenset[str] = frozenset(),
        auth_pause_after: int = 3,
        on_auto_paused: Optional[Callable[[ProviderConfig, int, str], Any]] = None,
        test_connection: Optional[Callable[[ProviderConfig], defer.Deferred]] = None,
        last_sync_interval_s: float = 60.0,
        rng: Optional[random.Random] = None,
        reporter: Any = None,
        folder_capacity: Optional[int] = None,
        open_files_limit: Optional[int] = None,
    ):
        super().__init__()
        self.setName("supervisor")
        self.store = store
        self.clock = clock
        self.owner = owner
        self._make_folder = make_folder
        self.refresh_s = refresh_s
        self.lease_ttl_s = lease_ttl_s
        self.jitter_pct = jitter_pct
        self.max_connections_per_tenant = max_connections_per_tenant
        self.tenants = tenants
        self.auth_pause_after = auth_pause_after
        self._on_auto_paused = on_auto_paused
        self._test_connection = test_connection
        self.last_sync_interval_s = last_sync_interval_s
        self._rng = rng or random.Random()
        #: The cluster status reporter (:class:`imapsvc.cluster_status.StatusReporter`).
        self.reporter = reporter
        self.providers: dict[Key, ProviderService] = {}
        self.waiting: dict[Key, str] = {}
        self._lease_ok_at: dict[Key, float] = {}
        self._discovering: Optional[defer.Deferred] = None
        self._again = False
        self._discovery_call = None
        self._renew_call = None
        self.discovered_once = False
        self.last_discovery_error: Optional[str] = None
        #: Providers that cannot run, with the reason written to their
        #: ``error_message`` (see :meth:`_provider_invalid`).
        self.invalid: dict[Key, str] = {}
        self._invalid_written: set[Key] = set()
        self._start_failed_now: set[Key] = set()
        #: Failed logins counted towards auto-pause (``imapsvc_auth_failures``).
        self.auth_failures = 0
        #: Folders put in quarantine (``imapsvc_quarantines``).
        self.quarantines = 0
        #: The process-wide IMAP ByteBudget, shown in /status (set by the runtime).
        self.imap_budget: Any = None
        #: Folders this replica may hold open (``core.capacity``; ``None`` =
        #: unlimited) and the open-file limit it was computed from.
        self.folder_capacity = folder_capacity
        self.open_files_limit = open_files_limit
        #: ``imapsvc.core.lag.LagStats`` of the reactor, shown in /status.
        self.lag_stats: Any = None

    # -- lifecycle ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.reporter is not None:
            self.reporter.start()
        self._discovery_call = self.clock.callLater(0, self.request_discovery)
        self._schedule_renew()

    @defer.inlineCallbacks
    def stopService(self):
        for call in (self._discovery_call, self._renew_call):
            if call is not None and call.active():
                call.cancel()
        self._discovery_call = self._renew_call = None
        if self._discovering is not None:
            try:
                yield self._discovering
            except Exception:
                pass
        keys = list(self.providers)
        yield defer.DeferredList(
            [self.drop_provider(key, "shutting down") for key in keys], consumeErrors=True
        )
        if self.reporter is not None:
            yield self.reporter.stop()
        yield super().stopService()

    # -- discovery --------------------------------------------------------------

    def request_discovery(self) -> None:
        """Run a discovery pass now, or right after the one in progress
        (NOTIFY and the timer both land here; passes never overlap)."""
        if not self.running:
            return
        if self._discovering is not None:
            self._again = True
            return
        if self._discovery_call is not None and self._discovery_call.active():
            self._discovery_call.cancel()
        self._discovering = self._discover()
        self._discovering.addBoth(self._discovery_done)

    def _discovery_done(self, result) -> None:
        self._discovering = None
        if isinstance(result, Failure):
            # Per-provider problems are handled inside the pass; anything
            # reaching here is a bug: say so rather than stall silently.
            self.last_discovery_error = result.getErrorMessage()
            self.log.failure("provider discovery pass failed", result)
        if not self.running:
            return
        if self._again:
            self._again = False
            self.request_discovery()
            return
        delay = jittered(self.refresh_s, self.jitter_pct, self._rng)
        self._discovery_call = self.clock.callLater(delay, self.request_discovery)

    @defer.inlineCallbacks
    def _discover(self):
        try:
            wanted = yield self.store.list_active_providers()
        except Exception as e:
            self.last_discovery_error = str(e)
            self.log.warn("provider discovery failed: {err}", err=str(e))
            return
        self.last_discovery_error = None
        used: dict[str, int] = {}
        for key, svc in self.providers.items():
            used[key[0]] = used.get(key[0], 0) + len(svc.provider.folders)
        running = {key: svc.provider for key, svc in self.providers.items()}
        # The tenant cap is counted by the store when a lease is taken
        # (across replicas), not here: None.
        plan = plan_discovery(wanted, running, used, None, self.tenants)
        invalid = dict(plan.invalid)
        # The replica's own descriptor budget, apart from the tenant cap:
        # providers beyond it get an error naming the limit instead of
        # connects failing with EMFILE.
        restarted = {p.key: p for p in plan.restart}
        in_use = folders_in_use(
            len(restarted[key].folders) if key in restarted else len(svc.provider.folders)
            for key, svc in self.providers.items()
            if key not in plan.stop
        )
        self._start_failed_now = set()
        for key in plan.stop:
            why = invalid.get(key)
            yield self.drop_provider(
                key,
                f"configuration error: {why}" if why else "no longer active, paused or deleted",
            )
        for provider in plan.restart:
            yield self.drop_provider(provider.key, "connection settings changed", release=False)
            yield self._start_provider(provider, have_lease=True)
        for provider in plan.update:
            svc = self.providers.get(provider.key)
            if svc is None:
                continue
            try:
                svc.update(provider)
            except Exception:
                self.log.failure(
                    "updating provider {tenant}/{provider} failed",
                    tenant=provider.tenant,
                    provider=provider.provider_id,
                )
        for key, svc in list(self.providers.items()):
            if svc.needs_reauth():
                # One login retry per discovery pass (or per NOTIFY, e.g. new
                # credentials): slow enough to be no storm, and what counts
                # failures towards the auto-pause.
                yield self.drop_provider(key, "retrying login", release=False)
                yield self._start_provider(svc.provider, have_lease=True)
        capped = dict(self.waiting)
        self.waiting = dict(plan.waiting)
        for key, reason in sorted(invalid.items()):
            yield self._provider_invalid(key, reason)
        now = datetime.fromtimestamp(self.clock.seconds(), tz=UTC)
        for provider in plan.start:
            if provider.key in capped:
                self.waiting[provider.key] = capped[provider.key]
            # One at a time: a lease another replica won frees the room.
            outcome, reason = admit(
                provider, in_use, self.folder_capacity, self.open_files_limit, self.owner, now
            )
            if outcome == OVER and reason is not None:
                invalid[provider.key] = reason
                yield self._provider_invalid(provider.key, reason)
            elif outcome == START:
                started = yield self._start_provider(provider)
                if started:
                    in_use += len(provider.folders)
        yield self._retry_capped()
        # A reason is forgotten once its provider is fine (or gone), so a
        # later breakage is reported again.
        for key in list(self.invalid):
            if key not in invalid and key not in self._start_failed_now:
                self.invalid.pop(key, None)
                self._invalid_written.discard(key)
        self.discovered_once = True

    @defer.inlineCallbacks
    def _provider_invalid(self, key: Key, reason: str):
        """A provider that cannot run: ``status = 'error'`` with ``reason``,
        logged and written once per reason (not on every pass)."""
        if self.invalid.get(key) != reason:
            self.invalid[key] = reason
            self._invalid_written.discard(key)
            self.log.warn(
                "provider {tenant}/{provider} not started: {reason}",
                tenant=key[0],
                provider=key[1],
                reason=reason,
            )
        if key in self._invalid_written:
            return
        try:
            yield self.store.set_provider_status(key[0], key[1], "error", reason)
        except Exception as e:
            # Retried on the next pass.
            self.log.warn("status write for {key} failed: {err}", key=key, err=str(e))
            return
        self._invalid_written.add(key)

    @defer.inlineCallbacks
    def _retry_capped(self):
        """Providers running with fewer folders than configured (the tenant
        cap): restart them when the cap now has room for more."""
        for key, svc in list(self.providers.items()):
            if not svc.waiting or self.providers.get(key) is not svc:
                continue
            try:
                grant = yield self.store.acquire_lease_capped(
                    key[0], key[1], self.owner, int(self.lease_ttl_s * 1000),
                    svc.provider.folders, self.max_connections_per_tenant)
            except Exception as e:
                self.log.warn("lease for {key} failed: {err}", key=key, err=str(e))
                continue
            if not grant.acquired:
                yield self.drop_provider(key, "lease lost", release=False)
            elif len(grant.folders) > len(svc.folders):
                yield self.drop_provider(key, "more connections free", release=False)
                yield self._start_provider(svc.provider, have_lease=True)
            else:
                for folder in svc.folders:
                    svc.report(folder)  # the grant rewrote the rows: write them again

    @defer.inlineCallbacks
    def _start_provider(self, provider: ProviderConfig, have_lease: bool = False):
        key = provider.key
        ttl_ms = int(self.lease_ttl_s * 1000)
        try:
            # The tenant cap is counted in the database, in the same
            # transaction that takes (or re-takes) the lease: it holds
            # across replicas. INBOX gets the first connection.
            grant = yield self.store.acquire_lease_capped(
                key[0], key[1], self.owner, ttl_ms, provider.folders,
                self.max_connections_per_tenant)
        except Exception as e:
            self.log.warn("lease for {key} failed: {err}", key=key, err=str(e))
            return
        if not grant.acquired:
            if grant.error:
                self.waiting[key] = grant.error
                self.log.warn("provider {tenant}/{provider}: {err}", tenant=key[0],
                              provider=key[1], err=grant.error)
            else:
                self.waiting.pop(key, None)
            return
        self.waiting.pop(key, None)
        if not self.running or key in self.providers:
            return
        if grant.error:
            self.log.warn("provider {tenant}/{provider}: {err}", tenant=key[0],
                          provider=key[1], err=grant.error)
        self._lease_ok_at[key] = self.clock.seconds()
        svc = None
        try:
            svc = ProviderService(self, provider, self._make_folder, grant.folders,
                                  {f: grant.error or "" for f in grant.waiting})
            self.providers[key] = svc
            svc.setServiceParent(self)
        except Exception as e:
            # Whatever this row makes fail (a folder that cannot be built,
            # a TLS name nothing caught earlier) stays with this row.
            self.providers.pop(key, None)
            self._lease_ok_at.pop(key, None)
            if svc is not None and svc.parent is not None:
                try:
                    yield svc.disownServiceParent()
                except Exception:
                    pass
            try:
                yield self.store.release_lease(key[0], key[1], self.owner)
            except Exception as err:
                self.log.warn("releasing lease {key} failed: {err}", key=key, err=str(err))
            self._start_failed_now.add(key)
            yield self._provider_invalid(key, f"cannot start: {redact(str(e) or repr(e))}")
            return
        self.log.info(
            "provider {tenant}/{provider} started with {n} folder(s)",
            tenant=key[0],
            provider=key[1],
            n=len(provider.folders),
        )
        return True

    @defer.inlineCallbacks
    def drop_provider(self, key: Key, reason: str, release: bool = True):
        svc = self.providers.pop(key, None)
        self._lease_ok_at.pop(key, None)
        if self.reporter is not None:
            self.reporter.forget(key)
        if svc is not None:
            self.log.info(
                "provider {tenant}/{provider} stopping: {reason}",
                tenant=key[0],
                provider=key[1],
                reason=reason,
            )
            try:
                yield svc.disownServiceParent()
            except Exception as e:
                self.log.warn("stopping {key} failed: {err}", key=key, err=str(e))
        if release:
            try:
                yield self.store.release_lease(key[0], key[1], self.owner)
            except Exception as e:
                self.log.warn("releasing lease {key} failed: {err}", key=key, err=str(e))

    # -- leases ---------------------------------------------------------------

    def _schedule_renew(self) -> None:
        # Three renewals per TTL: one missed renewal never loses the lease.
        # Jitter goes both ways around a nominal that keeps the longest draw
        # at TTL/3, so the "stop before the lease could expire" margin of
        # renew_leases holds as it did with shortening-only jitter.
        nominal = self.lease_ttl_s / 3.0 / (1.0 + max(0.0, min(1.0, self.jitter_pct)))
        delay = jittered(nominal, self.jitter_pct, self._rng)
        self._renew_call = self.clock.callLater(delay, self._renew_all)

    def _renew_all(self) -> None:
        d = self.renew_leases()
        d.addErrback(lambda f: self.log.failure("lease renewal pass failed", f))
        d.addBoth(lambda _: self._schedule_renew() if self.running else None)

    @defer.inlineCallbacks
    def renew_leases(self):
        ttl_ms = int(self.lease_ttl_s * 1000)
        for key in list(self.providers):
            try:
                ok = yield self.store.renew_lease(key[0], key[1], self.owner, ttl_ms)
            except Exception as e:
                # The database may be away. Keep running only while the lease
                # we last confirmed cannot have expired yet (with a margin).
                age = self.clock.seconds() - self._lease_ok_at.get(key, 0)
                if age > self.lease_ttl_s * 0.75:
                    yield self.drop_provider(key, f"lease unconfirmed: {e}", release=False)
                continue
            if ok:
                self._lease_ok_at[key] = self.clock.seconds()
            else:
                yield self.drop_provider(key, "lease taken by another worker", release=False)

    # -- auth failures --------------------------------------------------------

    @defer.inlineCallbacks
    def provider_auth_failed(self, provider: ProviderConfig, code: str):
        if code == AWAITING_CONSENT:
            # Never consented: nothing failed yet, the row just waits for the
            # OAuth callback (which NOTIFYs and starts it at once).
            self.log.info(
                "provider {tenant}/{provider} waits for OAuth consent",
                tenant=provider.tenant,
                provider=provider.provider_id,
            )
            return
        self.auth_failures += 1
        count, paused = yield self.store.record_auth_failure(
            provider.tenant, provider.provider_id, code, self.auth_pause_after
        )
        self.log.warn(
            "provider {tenant}/{provider} authentication failed ({code}), {count} in a row",
            tenant=provider.tenant,
            provider=provider.provider_id,
            code=code,
            count=count,
        )
        if paused:
            if self._on_auto_paused is not None:
                yield self._on_auto_paused(provider, count, code)
            yield self.drop_provider(provider.key, "paused after repeated auth failures")
            # After the drop: a stopping provider writes no status of its own.
            message = (
                f"inbound paused after {count} consecutive authentication failures ({code}); "
                "update the credentials to resume"
            )
            try:
                yield self.store.set_provider_status(
                    provider.tenant, provider.provider_id, "error", message
                )
                yield self.store.set_last_error(provider.tenant, provider.provider_id, message)
            except Exception as e:
                self.log.warn("pause status write failed: {err}", err=str(e))

    # -- admin (IAdmin) -------------------------------------------------------

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
                "foldersOpen": sum(len(svc.provider.folders) for svc in self.providers.values()),
            },
            "reactorLag": self.lag_stats.snapshot() if self.lag_stats is not None else None,
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
