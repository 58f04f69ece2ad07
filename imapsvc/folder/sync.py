"""One sync pass of one folder: the message path.

``EXAMINE (SELECT with write-back) -> read cursor -> UID SEARCH -> chunks of
(fetch_meta -> plan -> fetch_sections | fetch_full -> pipeline.handle_batch
-> write-back) -> cursor``, with the poison path (a failed chunk is split
into suspects, fetched one by one after a probe, counted and skipped at
``poison_after``) and a pending backfill. The pass only drives the session
(:class:`~imapsvc.interfaces.IIMAPSession`), the pipeline and the store; it
tells the lifecycle (:mod:`imapsvc.folder.service`) what happened through
its returned :class:`SyncResult` and its counters. Nothing calls back
into the lifecycle: it sets :attr:`SyncPass.stopping` when the folder
stops, and the pass ends at its next step by raising :class:`Stopping`.
"""

from __future__ import annotations

import itertools
from typing import Any, Optional

import attr
from twisted.internet import defer
from twisted.logger import Logger

from imapsvc.core import plan as P
from imapsvc.core import poison
from imapsvc.core.cursor import (
    REASON_RESCAN,
    REASON_RESUME,
    advance,
    compute_start,
    since_days_ago,
)
from imapsvc.core.folders import WILDCARD
from imapsvc.core.known_store import KnownStore
from imapsvc.folder.modseq import ModseqShortcut
from imapsvc.folder.options import FolderOptions, Stopping
from imapsvc.folder.write_back import WriteBackRunner
from imapsvc.imap.responses import sorted_unique_from
from imapsvc.interfaces import IMessagePipeline, IStore
from imapsvc.model import FolderCursor, ProviderConfig


@attr.s(frozen=True, auto_attribs=True)
class SyncResult:
    """What one pass tells the lifecycle."""

    #: Messages were expunged (write-back): look once more before waiting.
    look_again: bool = False


class SyncPass:
    """The sync passes of one watched folder, and what they keep between
    passes and connections: the cursor, the counters for ``/status``, the
    suspect UIDs of failed chunks, the write-back state.
    """

    log = Logger()

    def __init__(
        self,
        provider: ProviderConfig,
        folder_filter: str,
        clock: Any,
        store: IStore,
        pipeline: IMessagePipeline,
        owner: str,
        options: FolderOptions,
        parser: Any,
        label: str,
    ) -> None:
        self.provider = provider
        self.folder_filter = folder_filter
        self.clock = clock
        self.store = store
        self.pipeline = pipeline
        self.owner = owner
        self.options = options
        self.parser = parser
        self.trust_structure = not P.host_has_broken_bodystructure(
            provider.host, options.broken_bodystructure_hosts
        )
        self.label = label
        self.write_back = WriteBackRunner(store, label)
        #: CONDSTORE/QRESYNC (RFC 7162): skips a pass's UID SEARCH when nothing changed.
        self.modseq = ModseqShortcut(store, provider.tenant, provider.provider_id, owner, label)
        self.cursor: Optional[FolderCursor] = None
        self.uid_next: Optional[int] = None
        self.sync_count = 0
        self.handed_off = 0
        self.bytes_fetched = 0
        self.poison_skipped = 0
        #: ``last_exists`` of the session when the last pass examined the
        #: folder: EXISTS that arrives during a pass is no IDLE event.
        self.exists_at_start: Optional[int] = None
        #: UIDs (per UIDVALIDITY) of chunks whose FETCH failed: fetched one by
        #: one until they succeed or are skipped as poison. Kept across
        #: reconnects; the failure counts themselves are in the store.
        self.suspects: dict[str, set[int]] = {}
        self._fetched_ok = False
        self._nothing_to_probe = False
        #: Per server folder name, the cursor the store holds as far as this
        #: folder knows (read at a pass, or written by it and committed).
        self._cursors: KnownStore[FolderCursor] = KnownStore()
        #: Server name -> its configured filter, when one connection watches
        #: several configured folders (the shared poller).
        self.filter_of: dict[str, str] = {}

    def session_lost(self) -> None:
        """The session dropped (not an operator's reconnect): the first pass
        of the next one resumes from the cursor this folder knows the store
        holds instead of reading it again. Cursor writes are fenced by this
        replica's lease, so nobody else moved it; a server restart drops
        every folder at once, and a read per folder is load the database
        does not need then. An operator's reconnect (:meth:`reload`) reads
        the store again: a backfill request or a reset comes that way."""
        self._cursors.session_lost()
        self.modseq.session_lost()

    def reload(self) -> None:
        """Read cursor and backfill state from the store at the next pass."""
        self._cursors.reload()
        self.modseq.reload()

    @property
    def stopping(self) -> bool:
        """Set by the lifecycle (from its machine) when the folder stops;
        handed down to write-back, which checks it itself."""
        return self.write_back.stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self.write_back.stopping = value

    def check(self) -> None:
        """End the pass (raise :class:`Stopping`) once the folder stops."""
        if self.stopping:
            raise Stopping()

    def new_session(self) -> None:
        """A new connection: whether a FETCH worked in it (evidence for the
        poison path that the server delivers messages), or nothing could be
        probed, starts over."""
        self._fetched_ok = False
        self._nothing_to_probe = False

    @defer.inlineCallbacks
    def run(self, proto: Any, name: str, capabilities: list[str]):  # type: ignore[no-untyped-def]
        """One pass over folder ``name`` on session ``proto``.

        :return: (Deferred) a :class:`SyncResult`.
        """
        self.sync_count += 1
        look_again = False
        write_back = self.write_back.mode(self.provider.write_back, self.options.write_back)
        # Write-back needs the folder read-write (SELECT); nothing else differs.
        info = yield self.modseq.open(proto, name, select=write_back.enabled)
        self.check()
        # EXISTS that arrives during this sync's commands is not an IDLE
        # event: remember where we started so the loop can sync again.
        self.exists_at_start = proto.last_exists
        self.uid_next = info.get("uidnext")
        tenant, pid = self.provider.tenant, self.provider.provider_id
        start = None
        known_cursor = self._cursors.value(name)
        if self._cursors.take_trusted(name) and known_cursor is not None:
            known = compute_start(
                known_cursor, info["uidvalidity"], info.get("uidnext"),
                self.options.max_emails_per_sync,
            )
            if known.reason in (REASON_RESUME, REASON_RESCAN):
                # Back after a lost session: nothing to read (see session_lost);
                # other plans take the stored dates (a first sync by date).
                stored, start, backfill = known_cursor, known, (None, None)
        if start is None:
            # Read at every other pass so an operator's resync is seen by
            # this worker; anything but a plain resume needs the stored
            # dates too (a first sync by date, a backfill request).
            stored = yield self.store.read_cursor(tenant, pid, name)
            self.check()
            self._remember(name, stored)
            backfill = yield self._read_backfill(name)
            start = compute_start(
                stored, info["uidvalidity"], info.get("uidnext"),
                self.options.max_emails_per_sync,
                first_sync_since=backfill[0], backfill_since=backfill[1],
            )
        if start.reason != REASON_RESUME:
            self.log.info(
                "{label}: starting at UID {first} ({reason}: {detail})",
                label=self.label,
                first=start.first_uid,
                reason=start.reason,
                detail=start.detail,
            )
        self.cursor = stored or start.cursor
        if write_back.enabled:
            # What an earlier sync failed to write back, and after a start
            # what a crash may have left: all at or below the cursor.
            expunged = yield self.write_back.retry(
                proto, tenant, pid, name, write_back, start.cursor.uid_validity or "",
                start.cursor, capabilities,
            )
            look_again = look_again or expunged
        uids: Any = []
        if start.search_range and not self.modseq.skip_search(info, start):
            uids = yield proto.uid_search_from(start.first_uid)
            self.check()
        # Sorted, unique, > last_uid; stays a compact UidArray (8 bytes a UID).
        uids = sorted_unique_from(uids, start.last_uid + 1)
        if start.keep_last is not None:
            uids = uids[-start.keep_last :]
        if start.since is not None:
            # By date (first sync or resync --since): below the cursor too;
            # the ledger drops what was recorded before.
            found = yield proto.uid_search_since(start.since)
            self.check()
            uids = sorted(set(uids).union(found))
        cursor = start.cursor
        validity = start.cursor.uid_validity or ""
        if not uids and start.reason != REASON_RESUME and stored != start.cursor:
            # A new (or reset) cursor with nothing to fetch yet must still be
            # stored: otherwise the next sync computes the recent window
            # again from a higher UIDNEXT and skips what arrived meanwhile.
            yield self.store.write_cursor(tenant, pid, name, start.cursor, self.owner)
            self._remember(name, start.cursor)
            self.check()
        suspects = self.suspects.get(validity)
        if suspects:
            # A chunk failed before: its UIDs go one per command (poison path).
            chunks = poison.chunk_isolating(uids, self.options.fetch_chunk, suspects)
        else:
            chunks = list(P.chunk_by_count(uids, self.options.fetch_chunk))
        ahead: Optional[defer.Deferred] = None
        for i, chunk in enumerate(chunks):
            self.check()
            if ahead is None and suspects and chunk[0] in suspects and not self._fetched_ok:
                # Before a suspect's failure can count against it, show that
                # this server delivers other messages: a server failing every
                # FETCH (an outage) must not get messages skipped one by one.
                yield self._probe(proto, start.last_uid, uids, suspects)
            fetching = ahead if ahead is not None else self._fetch_chunk(
                proto, name, validity, chunk
            )
            ahead = None
            try:
                messages = yield fetching
            except Exception as exc:
                if not poison.counts_against_message(exc):
                    raise
                # Recorded (or the chunk split) before the session ends, so
                # the next connection goes past the message or isolates it.
                yield self._fetch_failed(name, validity, chunk, cursor, exc)
                raise
            self._fetched_ok = True
            self.check()
            if i + 1 < len(chunks):
                # Fetch the next chunk while this one is mapped and committed,
                # so IMAP round trips overlap the pipeline's work. One chunk
                # ahead at most; batches are still handed off in UID order.
                ahead = self._fetch_chunk(proto, name, validity, chunks[i + 1])
                ahead.addCallback(self._map_ahead, name)
            after = advance(cursor, chunk[-1], self.clock.seconds())
            # hold_cursor: the cursor moves with the last chunk only.
            write: Optional[FolderCursor] = after
            if start.hold_cursor and i + 1 < len(chunks):
                write, after = None, cursor
            try:
                if messages:
                    before = self._cursors.forget(name)  # unsure until committed
                    yield self.pipeline.handle_batch(
                        self.provider, name, self.owner, messages, write
                    )
                    self._remember(name, write if write is not None else before)
                    self.handed_off += len(messages)
                    if write_back.enabled:
                        # Only now: the batch (ledger, outbox, cursor) is committed.
                        expunged = yield self.write_back.apply(
                            proto, name, write_back, validity, [m.uid for m in messages],
                            capabilities,
                        )
                        look_again = look_again or expunged
            except BaseException:
                if ahead is not None:
                    # The session is dropped for this failure; the chunk read
                    # ahead dies with the connection and is fetched again.
                    ahead.addErrback(lambda _f: None)
                raise
            cursor = after
            self.cursor = after
            if suspects and suspects.intersection(chunk):
                # Fetched after all: forget them and what they were counted.
                suspects.difference_update(chunk)
                yield self.store.clear_message_failures(
                    tenant, pid, name, validity, [int(u) for u in chunk]
                )

        if backfill[1] is not None:
            # Committed: the request is done (a crash before this line only
            # repeats the pass, which the ledger deduplicates).
            yield self.store.complete_backfill(
                tenant, pid, self._backfill_keys(name), backfill[1]
            )
            self.log.info(
                "{label}: backfill since {since} done ({count} messages read)",
                label=self.label, since=backfill[1].isoformat(), count=len(uids),
            )
        yield self.modseq.committed(name, info)
        return SyncResult(look_again=look_again)

    def _remember(self, name: str, cursor: Optional[FolderCursor]) -> None:
        if cursor is None:
            self._cursors.forget(name)
        else:
            self._cursors.remember(name, cursor)

    def _backfill_keys(self, name: str) -> list[str]:
        # A request names the server's spelling or the configured filter
        # (not "*": each folder it finds goes by its own name).
        # The shared poller (imapsvc.shared_poll) names each folder's filter.
        configured = self.filter_of.get(name, self.folder_filter)
        keys = [name] if configured.strip() == WILDCARD else [name, configured]
        return list(dict.fromkeys(keys))

    @defer.inlineCallbacks
    def _read_backfill(self, name: str):  # type: ignore[no-untyped-def]
        """``(first_sync_since, backfill_since)`` dates for compute_start."""
        days: Optional[int] = self.options.first_sync_since_days
        pending = None
        read = getattr(self.store, "read_backfill", None)
        if read is not None:  # stores of older tests lack it
            state = yield read(
                self.provider.tenant, self.provider.provider_id, self._backfill_keys(name)
            )
            self.check()
            if state.first_sync_since_days is not None:
                days = state.first_sync_since_days
            pending = state.pending_since
        return since_days_ago(self.clock.seconds(), days), pending

    @defer.inlineCallbacks
    def _probe(self, proto: Any, last_uid: int, uids: Any, suspects: set[int]):  # type: ignore[no-untyped-def]
        """FETCH one message that is not a suspect (the last one recorded,
        else the first other new one; skipped ones stay suspects). Its
        answer, even empty, proves the server delivers messages; its failure
        ends the session without counting against anyone."""
        first = [last_uid] if last_uid > 0 else []
        probe = next((u for u in itertools.chain(first, uids) if u not in suspects), None)
        if probe is None:
            self._nothing_to_probe = True  # a failure counts as it is
            return
        yield proto.fetch_meta([int(probe)])
        self._fetched_ok = True

    @defer.inlineCallbacks
    def _fetch_failed(self, name: str, validity: str, chunk: Any, cursor: Any, exc: Exception):  # type: ignore[no-untyped-def]
        """A chunk's FETCH failed in a way a message can cause: split the
        chunk into suspects, or count a lone suspect's failure and skip it
        as poison at ``poison_after``. Marks ``exc`` as the message's doing,
        so it does not count towards the provider's quarantine."""
        exc.imapsvc_poison = True  # type: ignore[attr-defined]
        self._cursors.forget(name)  # a skip moves the cursor: read it next time
        tenant, pid = self.provider.tenant, self.provider.provider_id
        suspects = self.suspects.setdefault(validity, set())
        if len(chunk) > 1 or int(chunk[0]) not in suspects:
            # A first failure only makes suspects: they are fetched alone,
            # after a probe (see _probe), before anything is counted.
            suspects.update(int(u) for u in chunk)
            self.log.warn(
                "{label}: FETCH of {n} message(s) failed ({error}); fetching them one by one",
                label=self.label, n=len(chunk), error=poison.describe(exc),
            )
            return
        uid = int(chunk[0])
        reason = poison.describe(exc)
        if not (self._fetched_ok or self._nothing_to_probe):
            # Not shown to be this message's fault: the server may be failing
            # every FETCH (an outage); never skip messages for that.
            self.log.warn("{label}: UID {uid} failed before any other FETCH worked: {error}",
                          label=self.label, uid=uid, error=reason)
            return
        count = yield self.store.note_message_failure(tenant, pid, name, validity, uid, reason)
        if count < self.options.poison_after:
            self.log.warn(
                "{label}: UID {uid} failed {count} of {limit} times: {error}",
                label=self.label, uid=uid, count=count, limit=self.options.poison_after,
                error=reason,
            )
            return
        from imapsvc.core.event import event_ids
        from imapsvc.core.ledger import dedupe_key
        from imapsvc.model import OUTCOME_SKIPPED, POISON_REASON_PREFIX, MessageRecord

        key = dedupe_key(name, validity, uid)
        record = MessageRecord(
            dedupe_key=key, folder=name, uid_validity=validity, uid=uid, message_id_key=None,
            outcome=OUTCOME_SKIPPED, event_id=event_ids(tenant, pid, key)[0],
            reason=POISON_REASON_PREFIX + reason,
        )
        after = advance(cursor, uid, self.clock.seconds())
        yield self.store.record_batch(tenant, pid, name, self.owner, [record], after)
        yield self.store.mark_poison_skipped(tenant, pid, name, validity, uid)
        self.cursor = after
        # It stays in ``suspects`` (below the cursor now): never a probe.
        self.poison_skipped += 1
        # A server that breaks limits on message after message is the
        # server's problem: each message it made us skip counts once
        # towards the quarantine (a single bad message does not).
        exc.imapsvc_poison_skipped = True  # type: ignore[attr-defined]
        self.log.error(
            "{label}: UID {uid} skipped as poison after {count} failed fetches: {error}",
            label=self.label, uid=uid, count=count, error=reason,
        )

    def _map_ahead(self, messages: Any, name: str) -> Any:
        # The read-ahead chunk starts mapping now, while the batch before it
        # commits (the pipeline still records batches strictly in order).
        prepare = getattr(self.pipeline, "prepare", None)
        if prepare is not None and messages:
            prepare(self.provider, name, messages)
        return messages

    @defer.inlineCallbacks
    def _fetch_chunk(self, proto: Any, name: str, validity: str, chunk: list[int]):  # type: ignore[no-untyped-def]
        meta = yield proto.fetch_meta(chunk)
        plans = []
        for uid in chunk:
            if uid not in meta:
                self.log.info("{label}: UID {uid} vanished before FETCH", label=self.label, uid=uid)
                continue
            plans.append(
                P.plan_message(
                    uid, meta[uid], self.options.limits, self.trust_structure, self.parser
                )
            )
        sections: dict[int, dict[str, bytes]] = {}
        raws: dict[int, bytes] = {}
        by_uid = {p.uid: p for p in plans}
        wanted = [
            (p.uid, p.expected_bytes) for p in plans if p.kind == P.KIND_STRUCTURE and p.sections
        ]
        for group in P.chunk_by_bytes(wanted, self.options.fetch_chunk, self.options.fetch_bytes):
            self.check()
            got = yield proto.fetch_sections({u: list(by_uid[u].sections) for u in group})
            sections.update(got)
        full = [(p.uid, p.expected_bytes) for p in plans if p.kind == P.KIND_FULL]
        for group in P.chunk_by_bytes(full, self.options.fetch_chunk, self.options.fetch_bytes):
            self.check()
            got = yield proto.fetch_full(group)
            raws.update(got)
        messages = []
        for p in plans:
            if p.kind == P.KIND_FULL and p.uid not in raws:
                self.log.info(
                    "{label}: UID {uid} vanished before FETCH", label=self.label, uid=p.uid
                )
                continue
            if p.kind == P.KIND_HEADER_ONLY:
                self.log.info(
                    "{label}: UID {uid} ({size} bytes) not downloaded: {reason}",
                    label=self.label,
                    uid=p.uid,
                    size=p.size,
                    reason=p.reason,
                )
            messages.append(
                P.build_message(
                    p, meta[p.uid], name, validity, sections.get(p.uid), raws.get(p.uid)
                )
            )
        self.bytes_fetched += sum(
            len(m.header) + sum(len(t) for t in m.texts.values()) + len(m.raw or b"")
            for m in messages
        )
        return messages
