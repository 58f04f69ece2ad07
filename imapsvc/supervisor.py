"""The supervisor: which providers this replica runs, under which lease.

It discovers active IMAP providers (on a jittered timer that never overlaps
itself, and at once when Postgres NOTIFYs a change), leases each provider in
the database, runs one :class:`ProviderService` per leased provider (one
child service per folder) and gives leases back on shutdown. Leases are
renewed on their own timer; a provider whose lease cannot be renewed is
stopped before the lease could have expired, so two replicas never ingest
the same mailbox at once (and the store refuses fenced writes anyway).

One provider at run time is a :class:`~imapsvc.provider_service.ProviderService`;
the operator actions (``IAdmin``) are in :mod:`imapsvc.supervisor_admin`.
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

from imapsvc.core.backoff import jitter_around
from imapsvc.core.capacity import OVER, START, admit, folders_in_use
from imapsvc.core.cluster import connection_holders
from imapsvc.core.discovery import plan_discovery
from imapsvc.interfaces import IAdmin, IStore
from imapsvc.log_output import redact
from imapsvc.model import ProviderConfig
from imapsvc.provider_service import FolderHooks, ProviderService
from imapsvc.shared_poll import provider_budget
from imapsvc.supervisor_admin import AdminActions

__all__ = ["AWAITING_CONSENT", "FolderHooks", "ProviderService", "Supervisor", "jittered"]

#: The folder's auth-failure code for an OAuth2 provider never consented to
#: (see imapsvc.oauth.AwaitingConsent); kept here to avoid importing oauth.
AWAITING_CONSENT = "awaiting_consent"

Key = tuple[str, str]


def jittered(seconds: float, pct: float, rng: random.Random) -> float:
    """``seconds`` jittered by up to ``pct`` either way, as the app does, so
    the timers of many replicas drift apart (``core.backoff.jitter_around``)."""
    return jitter_around(seconds, pct, rng.random)



@implementer(IAdmin)
class Supervisor(AdminActions, service.MultiService):
    """Discovers providers, holds their leases, runs their services."""

    log = Logger()

    def __init__(
        self,
        store: IStore,
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
        gmail_connection_budget: Optional[int] = None,
        make_shared_poller: Optional[Callable[..., service.IService]] = None,
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
        #: Gmail: connections one provider may hold, and the builder of the
        #: shared polling connection for its folders past that budget
        #: (``(provider, folders, hooks)``; see imapsvc.shared_poll).
        self.gmail_connection_budget = gmail_connection_budget
        self.make_shared_poller = make_shared_poller
        #: ``imapsvc.core.lag.LagStats`` of the reactor, shown in /status.
        self.lag_stats: Any = None
        #: The process-wide IMAP ConnectGate, shown in /status (set by the runtime).
        self.connect_gate: Any = None

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
            self.connections_of(restarted.get(key, svc.provider))
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
                provider, in_use, self.folder_capacity, self.open_files_limit, self.owner, now,
                need=self.connections_of(provider),
            )
            if outcome == OVER and reason is not None:
                invalid[provider.key] = reason
                yield self._provider_invalid(provider.key, reason)
            elif outcome == START:
                started = yield self._start_provider(provider)
                if started:
                    in_use += self.connections_of(provider)
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

    def connections_of(self, provider: ProviderConfig) -> int:
        """Connections ``provider`` holds with all its folders: one each,
        but at most its Gmail connection budget (the rest share one)."""
        return len(connection_holders(provider.folders, provider_budget(self, provider)))

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
                    svc.provider.folders, self.max_connections_per_tenant,
                    provider_budget(self, svc.provider))
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
                self.max_connections_per_tenant, provider_budget(self, provider))
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
