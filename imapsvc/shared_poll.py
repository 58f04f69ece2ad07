"""The shared polling connection of a provider over its connection budget.

Gmail allows 15 simultaneous IMAP connections per account
(``IMAP_GMAIL_CONNECTION_BUDGET``). A provider with more folders than its
budget gives the first ``budget - 1`` folders a connection of their own
(they idle as any folder does) and watches the rest through this one
connection (:func:`imapsvc.core.gmail.split_by_budget`): on a timer
(``IMAP_POLL_INTERVAL_MS``, jittered) it asks ``STATUS <folder> (UIDNEXT
UIDVALIDITY)`` for each folder in turn, and when a folder's UIDNEXT moved
past its cursor (or its UIDVALIDITY changed) runs that folder's ordinary
sync pass on the same connection (EXAMINE, search, fetch, record), then goes
back to STATUS rounds. Nothing is refused: every folder is read, the ones
over the budget with a poll's delay.

:class:`SharedPollService` is a :class:`~imapsvc.folder.FolderService` (the
same login, reconnects, back-off, poison handling and sync pass) whose loop
after login is :meth:`SharedPollService._watch_shared`. :class:`SharedHooks`
hands its connection-wide state to every folder it polls, so ``/status``
shows each of them (with ``mode: shared-poll``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from twisted.internet import defer

from imapsvc.core import folder_machine as M
from imapsvc.core.folders import WILDCARD, display_name, resolve_folder
from imapsvc.core.gmail import (
    MODE_OWN,
    MODE_SHARED_POLL,
    is_gmail,
    split_by_budget,
    status_says_sync,
)
from imapsvc.folder import FolderNotFound, FolderService
from imapsvc.imap.errors import CommandFailed

#: The ``folder_filter`` (and log label) of the shared connection.
SHARED_LABEL = "(shared poll)"


class SharedHooks:
    """Folder hooks of the shared connection: what the connection goes
    through (connecting, a refused login, a sync) is every polled folder's.
    ``make_hooks(folder)`` builds one folder's ordinary hooks."""

    def __init__(self, folders: Sequence[str], make_hooks: Callable[[str], Any]) -> None:
        self._hooks = [make_hooks(folder) for folder in folders]

    def _all(self, name: str, *args: Any) -> None:
        for hooks in self._hooks:
            fn = getattr(hooks, name, None)
            if fn is not None:
                fn(*args)

    def state_changed(self, state: str, reason: str = "", error: Optional[str] = None) -> None:
        self._all("state_changed", state, reason, error)

    def auth_failed(self, code: str, text: str = "") -> None:
        self._all("auth_failed", code, text)

    def credentials_missing(self, text: str = "") -> None:
        self._all("credentials_missing", text)

    def logged_in(self) -> None:
        self._all("logged_in")

    def synced(self) -> None:
        self._all("synced")

    def _first(self, name: str, *args: Any) -> None:
        # Once per connection: a provider-wide action, counted once.
        fn = getattr(self._hooks[0], name, None) if self._hooks else None
        if fn is not None:
            fn(*args)

    def lease_lost(self) -> None:
        self._first("lease_lost")

    def quarantined(self, until: float, text: str) -> None:
        self._first("quarantined", until, text)


class SharedPollService(FolderService):
    """One connection polling ``folders`` (configured filters) with STATUS.

    Takes :class:`~imapsvc.folder.FolderService`'s arguments, with the
    folder filters in place of the one filter.
    """

    def __init__(self, provider: Any, folders: Sequence[str], *args: Any, **kwargs: Any) -> None:
        super().__init__(provider, SHARED_LABEL, *args, **kwargs)
        self.folders = tuple(folders)
        #: filter -> what ``/status`` shows of it (see :meth:`folder_snapshot`).
        self._per_folder: dict[str, dict[str, Any]] = {
            f: {"serverName": None, "cursor": None, "uidNext": None, "syncs": 0,
                "handedOff": 0, "bytesFetched": 0, "statusChecks": 0, "lastError": None}
            for f in self.folders
        }
        #: server name -> (uid_validity, last_uid, uid_next) after its last pass.
        self._last_pass: dict[str, tuple[str, str, int]] = {}
        #: STATUS commands sent (all folders), for /status and tests.
        self.status_checks = 0
        #: Server name -> configured filter (also the sync pass's backfill keys).
        self._filter_of: dict[str, str] = self.sync.filter_of

    def _watch_many(self) -> Optional[Callable[[Any, Any], defer.Deferred]]:
        return self._watch_shared

    @defer.inlineCallbacks
    def _watch_shared(self, proto: Any, listing: Any):  # type: ignore[no-untyped-def]
        names: list[str] = []
        for folder in self.folders:
            name = resolve_folder(folder, listing)
            info = self._per_folder[folder]
            if name is None:
                info["lastError"] = f"no selectable folder matches {folder!r}"
                continue
            info["serverName"] = name
            info["lastError"] = None
            self._filter_of[name] = folder
            names.append(name)
        del listing
        if not names:
            raise FolderNotFound(f"no selectable folder matches {list(self.folders)!r}")
        self.server_name = ", ".join(display_name(n) for n in names)[:500]
        self._fire(M.FOLDER_FOUND, f"{len(names)} folder(s) polled with STATUS")
        self.log.info(
            "{label}: over the connection budget, polling {count} folder(s) with STATUS: {names}",
            label=self.label, count=len(names), names=self.server_name,
        )
        while True:
            # A wake-up (an operator, or write-back that expunged) syncs every
            # folder of the round; a sync pass is what consumes it.
            everything = self.machine.wake_pending
            for name in names:
                self._check()
                if self.machine.token_refresh_due:
                    yield self._end_for_token_refresh(proto)
                yield self._poll_one(proto, name, everything)
            self.violations = 0
            self.quarantined_until = None
            self.factory.resetDelay()
            self._hook("synced")
            if not self.machine.wake_pending and not self.machine.token_refresh_due:
                yield self._poll()

    @defer.inlineCallbacks
    def _poll_one(self, proto: Any, name: str, everything: bool = False):  # type: ignore[no-untyped-def]
        """STATUS one folder; run its sync pass when the answer says so (or
        ``everything``)."""
        info = self._per_folder[self._filter_of[name]]
        try:
            status = yield proto.status_folder(name)
        except CommandFailed as e:
            # Deleted or renamed meanwhile: this folder's error, not the
            # connection's; the LIST of the next connection looks again.
            info["lastError"] = str(e)[:300]
            self.log.warn("{label}: STATUS {name} failed: {err}", label=self.label,
                          name=display_name(name), err=str(e)[:300])
            return
        self._check()
        self.status_checks += 1
        info["statusChecks"] += 1
        info["uidNext"] = status.get("uidnext")
        stored = yield self.store.read_cursor(self.provider.tenant, self.provider.provider_id, name)
        self._check()
        if stored is not None:
            info["cursor"] = stored.to_json()
        if not everything and not status_says_sync(
            status.get("uidvalidity"),
            status.get("uidnext"),
            None if stored is None else stored.uid_validity,
            None if stored is None else stored.last_uid,
            self._last_pass.get(name),
        ):
            return
        before, bytes_before = self.handed_off, self.bytes_fetched
        yield self._sync(proto, name)
        # STATUS is not meant for the selected folder (RFC 3501 6.3.10).
        yield proto.unselect()
        self._check()
        cursor = self.cursor
        if cursor is not None and cursor.uid_validity and self.uid_next is not None:
            self._last_pass[name] = (
                str(cursor.uid_validity), str(cursor.last_uid), int(self.uid_next)
            )
        info.update(
            cursor=self.cursor.to_json() if self.cursor else None,
            uidNext=self.uid_next,
            syncs=info["syncs"] + 1,
            handedOff=info["handedOff"] + self.handed_off - before,
            bytesFetched=info["bytesFetched"] + self.bytes_fetched - bytes_before,
            lastError=None,
        )

    def folder_snapshot(self, folder: str) -> dict:
        """One polled folder for ``/status``: the connection's state, this
        folder's own cursor, UIDNEXT, lag, syncs, messages and bytes. The
        connection's other counters (reconnects, write-backs, poison, IDLE)
        are shown on the first folder of the group only, so /metrics, which
        sums folders, counts them once."""
        snap = self.snapshot()
        own = dict(self._per_folder.get(folder, {}))
        error = own.pop("lastError", None)
        snap.update(own)
        if error:
            snap["last_error"] = error
        snap["folder"] = folder
        snap["mode"] = MODE_SHARED_POLL
        snap["sharedWith"] = [f for f in self.folders if f != folder]
        snap["lag"] = _lag(own.get("uidNext"), own.get("cursor"))
        if self.folders and folder != self.folders[0]:
            snap.update(reconnects={}, poisonSkipped=0, idleWakeups=0, idleKeepalives=0,
                        quarantines=0)
            snap["writeBack"] = dict(snap.get("writeBack") or {}, applied=0, failed=0, pending=0)
        return snap


def _lag(uid_next: Optional[int], cursor: Optional[dict]) -> Optional[int]:
    """Messages beyond the cursor, as :meth:`FolderService.lag`."""
    try:
        return max(0, int(uid_next) - 1 - int((cursor or {})["last_uid"]))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        return None


# -- the provider's side (imapsvc.supervisor.ProviderService) ------------------


def budget_split(
    supervisor: Any, provider: Any, folders: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(own, shared)`` folders of a provider being started: the budget
    applies to Gmail (by host, or the capabilities of an earlier login) when
    the supervisor can build a shared poller."""
    budget = getattr(supervisor, "gmail_connection_budget", None)
    if getattr(supervisor, "make_shared_poller", None) is None or not budget:
        return tuple(folders), ()
    if not is_gmail(provider.host, provider.server_capabilities):
        return tuple(folders), ()
    # "*" already watches many folders on its one connection: never shared.
    ordered = sorted(folders, key=lambda f: f.strip() != WILDCARD)
    return split_by_budget(ordered, budget)


def folder_snapshot(child: Any, folder: str) -> dict:
    """One folder of a provider for ``/status``, with its ``mode``."""
    shared = getattr(child, "folder_snapshot", None)
    if shared is not None:
        return dict(shared(folder))
    snap = child.snapshot() if hasattr(child, "snapshot") else {}
    snap.setdefault("mode", MODE_OWN)
    return snap
