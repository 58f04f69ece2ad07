"""Admin actions carried out by the replica that owns the provider.

Whichever replica an HTTP request (or ``python -m imapsvc reconnect ...``,
which goes through HTTP) reaches, :meth:`AdminRequests.submit` writes a
request row; the store NOTIFYs ``imapsvc_admin`` where it can. Every
replica's dispatcher claims the pending requests of the providers it leases
(and of providers nobody leases) on that NOTIFY, on its own submissions and on
a timer as the fallback for a missed notification; it carries the action out
and writes the result and ``applied_at``. The submitter waits a bounded time
for that result; after it the caller gets the request id to poll.

With one process (the SQLite/embedded mode) the local supervisor is the
owner and everything happens in this process.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer, task
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from imapsvc.core.cluster import ACTIONS
from imapsvc.deferreds import start_loop
from imapsvc.interfaces import IStore
from imapsvc.model import AdminRequest


class UnknownProvider(Exception):
    """No provider with that tenant and id."""


class AdminRequests:
    """Submit admin requests and carry out the ones this replica owns.

    :param store: the admin-request operations of the store.
    :param admin: the local :class:`~imapsvc.interfaces.IAdmin` (the
        supervisor) with ``providers`` keyed by ``(tenant, provider_id)``.
    :param poll_s: the fallback timer.
    :param wait_s: how long :meth:`submit` waits for the result.
    :param stale_s: a claim older than this (its replica died mid-action)
        may be taken over.
    """

    log = Logger()

    def __init__(self, store: IStore, clock: Any, owner: str, admin: Any, *,
                 poll_s: float = 5.0, wait_s: float = 10.0, stale_s: float = 60.0,
                 check_s: float = 0.1):
        self.store = store
        self.clock = clock
        self.owner = owner
        self.admin = admin
        self.poll_s = poll_s
        self.wait_s = wait_s
        self.stale_s = stale_s
        self.check_s = check_s
        self._loop: Optional[LoopingCall] = None
        self._pass: Optional[defer.Deferred] = None
        self._again = False
        #: Requests carried out here (all outcomes).
        self.applied = 0

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._loop = start_loop(self.clock, self.poll_s, self.wake, self.log,
                                "admin request loop")

    @defer.inlineCallbacks
    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._pass is not None:
            try:
                yield self._pass
            except Exception:
                pass

    # -- submitting ---------------------------------------------------------------

    @defer.inlineCallbacks
    def submit(self, tenant: str, provider_id: str, action: str,
               folder: Optional[str] = None, wait_s: Optional[float] = None):
        """Queue ``action`` for the provider's owner and wait up to
        ``wait_s`` for it to be applied.

        :return: the :class:`AdminRequest` as last read (``applied_at`` is
            ``None`` when it was not applied in time).
        :raises UnknownProvider:
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown admin action {action!r}")
        provider = yield self.store.get_provider(tenant, provider_id)
        if provider is None:
            raise UnknownProvider(f"{tenant}/{provider_id}")
        deadline = self.clock.seconds() + (self.wait_s if wait_s is None else wait_s)
        request = yield self.store.add_admin_request(tenant, provider_id, action, folder,
                                                     self.owner)
        # This replica may be the owner (or nobody is): no NOTIFY needed.
        # Not waited for: a long action must not stretch the bounded wait.
        self.wake()
        while True:
            current = yield self.store.get_admin_request(tenant, request.id)
            if current is None or current.applied_at is not None:
                return current or request
            if self.clock.seconds() >= deadline:
                return current
            yield task.deferLater(self.clock, min(self.check_s, max(
                0.0, deadline - self.clock.seconds())), lambda: None)

    def get(self, tenant: str, request_id: str) -> defer.Deferred:
        return defer.maybeDeferred(self.store.get_admin_request, tenant, request_id)

    # -- carrying out ---------------------------------------------------------------

    def wake(self, *_: Any) -> defer.Deferred:
        """Claim and carry out what is pending (NOTIFY, timer and own
        submissions land here; passes never overlap). Fires when the pass
        that covers this wake-up is done."""
        if self._pass is not None:
            self._again = True
            done: defer.Deferred = defer.Deferred()

            def relay(result: Any) -> Any:
                done.callback(None)
                return result

            self._pass.addBoth(relay)
            return done
        self._pass = d = self._run()
        d.addErrback(lambda f: self.log.failure("admin request pass failed", f))

        def finished(_: Any) -> Any:
            self._pass = None
            if self._again:
                self._again = False
                return self.wake()
            return None

        return d.addBoth(finished)

    @defer.inlineCallbacks
    def _run(self):
        while True:
            claimed = yield self.store.claim_admin_requests(self.owner, 10, self.stale_s)
            if not claimed:
                return
            for request in claimed:
                result = yield self._apply(request)
                try:
                    yield self.store.complete_admin_request(request.tenant, request.id,
                                                            self.owner, result)
                except Exception as e:
                    # Claimed stays set: another replica retries once the claim is stale.
                    self.log.warn("admin request {id}: storing the result failed: {err}",
                                  id=request.id, err=str(e))
                self.applied += 1
            if len(claimed) < 10:
                return

    @defer.inlineCallbacks
    def _apply(self, request: AdminRequest):
        key = (request.tenant, request.provider_id)
        running = key in getattr(self.admin, "providers", {})
        self.log.info(
            "admin {action} for {tenant}/{provider} (request {id} from {by}), "
            "provider {where}",
            action=request.action, tenant=request.tenant, provider=request.provider_id,
            id=request.id, by=request.requested_by,
            where="running here" if running else "not running on any replica")
        try:
            result = yield self._dispatch(request, running)
        except Exception as e:
            self.log.warn("admin {action} failed: {err}", action=request.action, err=str(e))
            result = {"success": False, "error": "internal error"}
        result = dict(result or {})
        result.setdefault("running", running)
        return result

    @defer.inlineCallbacks
    def _dispatch(self, request: AdminRequest, running: bool):
        t, p = request.tenant, request.provider_id
        if request.action == "reconnect":
            if not running:
                provider = yield self.store.get_provider(t, p)
                why = "provider is not running on any replica"
                if provider is not None and provider.status == "error":
                    why += " (see its status and error)"
                return {"success": False, "error": why}
            result = yield self.admin.reconnect(t, p)
            return result
        if request.action == "resync":
            result = yield self.admin.resync(t, p, request.folder)
            return result
        if request.action == "test-connection":
            result = yield self.admin.test_connection(t, p)
            return result
        pause = getattr(self.admin, request.action.replace("-", "_"), None)
        if pause is None:
            return {"success": False, "error": f"{request.action} is not supported"}
        result = yield pause(t, p)
        return result
