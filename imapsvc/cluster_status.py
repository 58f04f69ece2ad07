"""Persist this replica's folder states and heartbeat, so ``/status`` on any
replica shows the whole deployment.

:class:`StatusReporter` is told of every folder change (state, sync,
counters) by the supervisor's provider services and writes the provider's
folders to the store at most once per ``interval_s`` (the first change after
a quiet spell at once, later ones coalesced). Writes are fenced by the
provider's lease: a replica that lost the lease writes nothing. A heartbeat
row says the replica is alive; one silent for two lease TTLs is shown as gone.

A folder may hand over a builder instead of its status
(:meth:`StatusReporter.folder_dirty`): it is called only when the write is
due, so a folder changing state several times between writes (every
session of a reconnect storm goes through five or six states) costs one
status, not one per change.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Callable, Optional, Union

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from imapsvc.core.cluster import deployment_status, next_write_delay
from imapsvc.core.gmail import MODE_SHARED_POLL
from imapsvc.deferreds import start_loop
from imapsvc.interfaces import IClusterStore, LeaseLost
from imapsvc.log_output import redact
from imapsvc.model import FolderStatus

Key = tuple[str, str]
#: A folder's status, or what builds it when the write is due.
Pending = Union[FolderStatus, Callable[[], FolderStatus]]


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def folder_counters(snapshot: dict) -> dict:
    """The counters of a folder's ``snapshot()`` worth showing cluster-wide."""
    reconnects = snapshot.get("reconnects") or {}
    out = {
        "syncs": snapshot.get("syncs"),
        "reconnects": sum(int(v) for v in reconnects.values()) if reconnects else 0,
        "idleWakeups": snapshot.get("idleWakeups"),
        "bytesFetched": snapshot.get("bytesFetched"),
        "handedOff": snapshot.get("handedOff"),
        "uidNext": snapshot.get("uidNext"),
        "lag": snapshot.get("lag"),
    }
    write_back = snapshot.get("writeBack") or {}
    if write_back.get("mode") not in (None, "none"):
        out["writeBackApplied"] = write_back.get("applied")
        out["writeBackFailed"] = write_back.get("failed")
    cursor = snapshot.get("cursor")
    if cursor:
        out["lastUid"] = cursor.get("last_uid")
    if snapshot.get("mode") == MODE_SHARED_POLL:
        # Gmail's budget: polled with STATUS on the provider's shared connection.
        out["mode"] = MODE_SHARED_POLL
    return {k: v for k, v in out.items() if v is not None}


class StatusReporter:
    """Throttled, fenced writes of folder states plus the replica heartbeat.

    :param store: ``write_folder_status``, ``heartbeat_replica``,
        ``forget_replica``, ``read_deployment``.
    :param interval_s: at most one write per provider this often.
    :param heartbeat_s: heartbeat period (a third of the lease TTL).
    :param lease_ttl_s: replicas silent for twice this are shown as gone.
    """

    log = Logger()

    def __init__(self, store: IClusterStore, clock: Any, owner: str, *, interval_s: float = 5.0,
                 heartbeat_s: float = 40.0, lease_ttl_s: float = 120.0,
                 tenants: frozenset[str] = frozenset(),
                 info: Optional[Callable[[], dict]] = None):
        self.store = store
        self.clock = clock
        self.owner = owner
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self.lease_ttl_s = lease_ttl_s
        self.tenants = tenants
        self._info = info or (lambda: {})
        self._pending: dict[Key, dict[str, Pending]] = {}
        self._last_write: dict[Key, float] = {}
        self._calls: dict[Key, Any] = {}
        self._writing: dict[Key, defer.Deferred] = {}
        self._heartbeat: Optional[LoopingCall] = None
        #: Writes that landed / were refused by the fence / failed otherwise.
        self.writes = 0
        self.fenced = 0
        self.failures = 0

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._heartbeat = start_loop(self.clock, self.heartbeat_s, self._beat, self.log,
                                     "replica heartbeat loop")

    @defer.inlineCallbacks
    def stop(self):
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()
        try:
            yield self.store.forget_replica(self.owner)
        except Exception as e:
            self.log.warn("removing the replica row failed: {err}", err=str(e))

    def _beat(self) -> defer.Deferred:
        d = defer.maybeDeferred(self.store.heartbeat_replica, self.owner, self._info())
        return d.addErrback(lambda f: self.log.warn("replica heartbeat failed: {err}",
                                                    err=f.getErrorMessage()))

    # -- folder changes ---------------------------------------------------------

    def folder_changed(self, key: Key, status: FolderStatus) -> None:
        """Remember the folder's latest state; write it when the throttle allows."""
        self.folder_dirty(key, status.folder, status)

    def folder_dirty(self, key: Key, folder: str, status: Pending) -> None:
        """The folder changed: write ``status`` (or what the builder returns
        then) when the throttle allows."""
        self._pending.setdefault(key, {})[folder] = status
        self._schedule(key)

    def _build(self, key: Key, pending: dict[str, Pending]) -> dict[str, FolderStatus]:
        out = {}
        for folder, status in pending.items():
            if callable(status):
                try:
                    status = status()
                except Exception:
                    self.log.failure("status of {tenant}/{provider} {folder} failed",
                                     tenant=key[0], provider=key[1], folder=folder)
                    continue
            out[folder] = status
        return out

    def forget(self, key: Key) -> None:
        """The provider stopped here: nothing more to write for it."""
        self._pending.pop(key, None)
        self._last_write.pop(key, None)
        call = self._calls.pop(key, None)
        if call is not None and call.active():
            call.cancel()

    def _schedule(self, key: Key) -> None:
        if key in self._calls or key in self._writing:
            return  # a write is due or running; it takes the newest state
        delay = next_write_delay(self._last_write.get(key), self.clock.seconds(),
                                 self.interval_s)
        self._calls[key] = self.clock.callLater(delay, self._write, key)

    def _write(self, key: Key) -> None:
        self._calls.pop(key, None)
        batch = self._build(key, self._pending.pop(key, {}))
        if not batch:
            return
        self._last_write[key] = self.clock.seconds()
        d = defer.maybeDeferred(self.store.write_folder_status, key[0], key[1], self.owner,
                                sorted(batch.values(), key=lambda s: s.folder))
        self._writing[key] = d

        def ok(_: Any) -> None:
            self.writes += 1

        def failed(f: Any) -> None:
            if f.check(LeaseLost):
                # Not ours any more: the new owner writes from now on.
                self.fenced += 1
                self._pending.pop(key, None)
                return
            self.failures += 1
            self.log.warn("folder status write for {tenant}/{provider} failed: {err}",
                          tenant=key[0], provider=key[1], err=f.getErrorMessage())
            # Keep what failed unless something newer arrived meanwhile.
            pending = self._pending.setdefault(key, {})
            for folder, built in batch.items():
                pending.setdefault(folder, built)

        def done(_: Any) -> None:
            self._writing.pop(key, None)
            if self._pending.get(key) and key in self._last_write:
                self._schedule(key)

        d.addCallbacks(ok, failed)
        d.addBoth(done)

    # -- reading ----------------------------------------------------------------

    @defer.inlineCallbacks
    def deployment(self):
        """The deployment-wide view (:func:`deployment_status`)."""
        rows = yield self.store.read_deployment(sorted(self.tenants) or None)
        return deployment_status(rows["now"], rows["providers"], rows["folders"],
                                 rows["replicas"], self.lease_ttl_s, redact)
