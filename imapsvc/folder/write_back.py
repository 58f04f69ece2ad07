"""Write-back (issue 13 item 3): flag, move or delete what a sync committed.

Called by the sync pass (:mod:`imapsvc.folder.sync`) once a batch is
recorded; the rules (steps per mode and capabilities, the pending cap, the
sweep window) are pure code in :mod:`imapsvc.core.write_back`.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger

from imapsvc.core import write_back as WB
from imapsvc.core.folders import encode_mutf7
from imapsvc.folder.options import Stopping, describe
from imapsvc.interfaces import ILedgerStore
from imapsvc.log_output import redact


class WriteBackRunner:
    """One folder's write-back: its counters for ``/status`` and
    ``/metrics``, the UIDs whose write-back failed (by UIDVALIDITY, retried
    at the next sync while this process runs) and the once-per-start sweep.
    The sync pass sets :attr:`stopping` when the folder stops; :meth:`check`
    then ends the sync.
    """

    log = Logger()

    def __init__(self, store: ILedgerStore, label: str) -> None:
        self.store = store
        self.label = label
        self.stopping = False
        self.applied = 0
        self.failed = 0
        self.error: Optional[str] = None
        self.pending: dict[str, set[int]] = {}
        self.swept = False

    def check(self) -> None:
        if self.stopping:
            raise Stopping()

    def mode(self, provider_mode: Any, default: str) -> WB.WriteBack:
        """The provider's option, else IMAP_WRITE_BACK; an unusable value
        (written past the CLI) is reported and means ``none``."""
        try:
            return WB.resolve(provider_mode, default)
        except ValueError as e:
            text = f"write-back option ignored: {e}"
            if self.error != text:
                self.log.warn("{label}: {error}", label=self.label, error=text)
            self.error = text
            return WB.WriteBack()

    def status(self, provider_mode: Any, default: str) -> dict:
        try:
            mode = str(WB.resolve(provider_mode, default))
        except ValueError:
            mode = "invalid"
        return {
            "mode": mode,
            "applied": self.applied,
            "failed": self.failed,
            "pending": sum(len(u) for u in self.pending.values()),
            "lastError": redact(self.error) if self.error else None,
        }

    @defer.inlineCallbacks
    def apply(self, proto: Any, name: str, mode: WB.WriteBack, validity: str,
              uids: list[int], capabilities: list[str]):  # type: ignore[no-untyped-def]
        """Carry ``mode`` out on ``uids`` (recorded already). A refusal is
        counted and the UIDs kept for a retry; it never fails the sync (the
        events are safe in the ledger). A lost connection does fail it, as
        any command's would: the retry then comes from the pending set or
        the sweep.

        :return: (Deferred) whether messages were expunged: EXPUNGE shifts
            sequence numbers and EXISTS counts, so a new message announced
            meanwhile could look like no change; the caller looks once more
            (UIDs only grow; the cursor is unaffected).
        """
        uids = sorted(set(uids))
        if not uids:
            return False
        try:
            steps = WB.plan_steps(mode, capabilities)
        except WB.WriteBackUnsupported as e:
            self._failed(validity, uids, str(e), retry=False)
            return False
        target = None
        if mode.folder is not None:
            target = encode_mutf7(mode.folder)
            if WB.same_folder(target, name):
                self._failed(
                    validity, uids, "write-back move target is the watched folder itself",
                    retry=False,
                )
                return False
        from imapsvc.imap.errors import CommandFailed

        try:
            for step in steps:
                self.check()
                if step == WB.STEP_SEEN:
                    yield proto.uid_store_flags(uids, ["\\Seen"])
                elif step == WB.STEP_MOVE:
                    yield proto.uid_move(uids, target)
                elif step == WB.STEP_COPY:
                    yield proto.uid_copy(uids, target)
                elif step == WB.STEP_DELETED:
                    yield proto.uid_store_flags(uids, ["\\Deleted"])
                elif step == WB.STEP_EXPUNGE:
                    yield proto.uid_expunge(uids)
        except (CommandFailed, ValueError) as e:
            self._failed(validity, uids, describe(e), retry=True)
            return False
        self.applied += len(uids)
        pending = self.pending.get(validity)
        if pending:
            pending.difference_update(uids)
        return mode.expunges

    def _failed(self, validity: str, uids: list[int], text: str, retry: bool) -> None:
        self.failed += len(uids)
        self.error = text
        self.log.warn(
            "{label}: write-back of {count} messages failed ({error}); {what}",
            label=self.label,
            count=len(uids),
            error=text,
            what="retried at the next sync" if retry else "not retried",
        )
        if not retry:
            return
        pending = self.pending.setdefault(validity, set())
        pending.update(uids)
        if len(pending) > WB.MAX_PENDING:
            for uid in sorted(pending)[: len(pending) - WB.MAX_PENDING]:
                pending.discard(uid)

    @defer.inlineCallbacks
    def retry(self, proto: Any, tenant: str, pid: str, name: str, mode: WB.WriteBack,
              validity: str, cursor: Any, capabilities: list[str]):  # type: ignore[no-untyped-def]
        """Before fetching: retry failed write-backs at or below the cursor,
        and once per start (move, delete) sweep recorded messages still in
        the folder within :data:`~imapsvc.core.write_back.SWEEP_WINDOW` UIDs
        below the cursor: what a crash between commit and write-back left.

        :return: (Deferred) whether messages were expunged (see :meth:`apply`).
        """
        for other in [v for v in self.pending if v != validity]:
            del self.pending[other]  # UIDs of another UIDVALIDITY mean nothing
        try:
            last = int(getattr(cursor, "last_uid", None) or 0)
        except ValueError:
            last = 0
        uids = {u for u in self.pending.get(validity, ()) if u <= last}
        try:
            WB.plan_steps(mode, capabilities)
        except WB.WriteBackUnsupported:
            return False  # reported with each batch; nothing to retry on this server
        if not self.swept and mode.expunges:
            self.swept = True
            span = WB.sweep_range(str(last))
            if span is not None:
                present = yield proto.uid_search_from(span[0])
                self.check()
                present = {u for u in present if span[0] <= u <= span[1]}
                if present:
                    recorded = yield self.store.recorded_uids(
                        tenant, pid, name, validity, span[0], span[1]
                    )
                    self.check()
                    uids |= present & set(recorded)
        if not uids:
            return False
        expunged = yield self.apply(proto, name, mode, validity, sorted(uids), capabilities)
        return expunged
