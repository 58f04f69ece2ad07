"""From fetched messages to one recorded batch (:class:`IMessagePipeline`).

The records of a batch come from the pure
:func:`imapsvc.core.records.build_records` (mapping, deterministic ids,
encoded stream entry). Then one ``store.record_batch`` writes ledger rows,
outbox rows and the folder cursor in one transaction, and the relay is woken
to publish.

Mapping is pure but not cheap (MIME, charsets, HTML to text): a batch whose
downloaded bytes exceed ``thread_threshold_bytes`` is mapped by the injected
``threadpool_runner`` (a thread pool in production), so the reactor keeps
serving IDLE connections meanwhile, or by the optional parse pool
(:class:`~imapsvc.parse_pool.ParsePool`, worker processes).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, Callable, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsvc.core.records import SKIP_BUILD_ERROR, batch_bytes, build_records, message_bytes
from imapsvc.interfaces import ILedgerStore, IMessagePipeline
from imapsvc.model import (
    BatchResult,
    FetchedMessage,
    FolderCursor,
    Limits,
    MessageRecord,
    ProviderConfig,
)

_log = Logger()

#: Kept importable here: the pipeline is where callers met these names.
__all__ = [
    "Pipeline",
    "SKIP_BUILD_ERROR",
    "batch_bytes",
    "build_records_logged",
    "message_bytes",
]


def _log_build_error(folder: str, msg: FetchedMessage) -> None:
    # Called inside the except block: the failure carries the traceback.
    _log.failure(
        "Could not build the stream entry of {folder} UID {uid}", folder=folder, uid=msg.uid
    )


def build_records_logged(*args: Any, **kwargs: Any) -> list[MessageRecord]:
    """:func:`~imapsvc.core.records.build_records` that logs each entry it
    could not build, with its traceback (the in-process mapping)."""
    kwargs.setdefault("on_build_error", _log_build_error)
    return build_records(*args, **kwargs)


def _log_pool_build_errors(folder: str, records: Sequence[MessageRecord]) -> None:
    # A worker process has no log of its own; the record keeps the error type.
    for record in records:
        if record.reason and record.reason.startswith(SKIP_BUILD_ERROR):
            _log.error(
                "Could not build the stream entry of {folder} UID {uid} ({reason})",
                folder=folder,
                uid=record.uid,
                reason=record.reason,
            )


def _batch_uids(messages: Sequence[FetchedMessage]) -> tuple[tuple[str, int], ...]:
    # UIDs name the messages of a folder exactly (within one UIDVALIDITY).
    return tuple((m.uid_validity, m.uid) for m in messages)


@implementer(IMessagePipeline)
class Pipeline:
    """Parse, dedupe and record batches; wake the relay after each commit.

    :param store: the :class:`~imapsvc.interfaces.IStore`.
    :param relay_wake: called with no arguments after a batch that queued
        outbox rows was committed (``Relay.wake``).
    :param clock: ``IReactorTime`` (the fetch time of a batch).
    :param limits: the size caps (:class:`~imapsvc.model.Limits`).
    :param thread_threshold_bytes: batches holding more bytes than this are
        mapped through ``threadpool_runner``; smaller ones on the calling thread.
    :param threadpool_runner: ``runner(f, *args) -> Deferred`` (see
        :func:`imapsvc.deferreds.thread_runner`;
        :func:`imapsvc.deferreds.synchronous_runner` in tests).
    :param parse_pool: optional :class:`~imapsvc.parse_pool.ParsePool`
        (``running`` and ``build(messages, *args) -> Deferred``): while it
        runs, large batches are mapped in its worker processes; when it fails
        the batch is mapped once more through ``threadpool_runner``.
    :param relay_offer: optional ``offer(outbox_entries)`` of the relay
        (:meth:`~imapsvc.sink.relay.Relay.offer`): the committed entries are
        handed over in memory, so the relay need not read them back.
    :param object_uploader: ``IMAP_ATTACHMENT_MODE=store``: an
        :class:`~imapsvc.objectstore.upload.ObjectUploader` whose
        ``store_batch`` runs before the batch is mapped and recorded.

    :ivar stats: counters for metrics: ``batches``, ``messages``,
        ``published``, ``skipped``, ``duplicates``, ``failures`` (batches not
        recorded), ``threaded`` (batches mapped in the pool).
    """

    def __init__(
        self,
        store: ILedgerStore,
        relay_wake: Callable[[], Any],
        clock: Any,
        limits: Limits,
        thread_threshold_bytes: int,
        threadpool_runner: Callable[..., defer.Deferred[Any]],
        build: Callable[..., list[MessageRecord]] = build_records_logged,
        parse_pool: Any = None,
        relay_offer: Optional[Callable[[Any], Any]] = None,
        object_uploader: Any = None,
    ) -> None:
        self._store = store
        self._relay_wake = relay_wake
        self._clock = clock
        self._limits = limits
        self._threshold = thread_threshold_bytes
        self._runner = threadpool_runner
        self._build = build
        self._pool = parse_pool
        self._relay_offer = relay_offer
        #: IMAP_ATTACHMENT_MODE=store (imapsvc.objectstore.upload.ObjectUploader).
        self._uploader = object_uploader
        # The batch mapped ahead (prepare) per folder: (tenant, provider,
        # folder) -> (_batch_uids, Deferred of the records or None).
        self._prepared: OrderedDict[tuple[str, str, str], tuple[Any, Any]] = OrderedDict()
        self.stats: dict[str, int] = {
            "batches": 0,
            "messages": 0,
            "published": 0,
            "skipped": 0,
            "duplicates": 0,
            "failures": 0,
            "threaded": 0,
            "processes": 0,
            "pool_fallbacks": 0,
            "prepared": 0,
        }

    #: Folders with a batch mapped ahead and not handed in yet, at most. A
    #: folder has one read-ahead chunk at a time (a newer one replaces it);
    #: the bound only matters for folders whose session dropped and that
    #: never came back.
    MAX_PREPARED = 1024

    def prepare(self, provider: ProviderConfig, folder: str,
                messages: Sequence[FetchedMessage]) -> None:
        """Start mapping a batch that :meth:`handle_batch` will get next
        (the folder's read-ahead chunk), so it is mapped while the batch
        before it commits. Only batches big enough to be mapped off the
        reactor; :meth:`handle_batch` with the same messages (same folder,
        UIDVALIDITY and UIDs) uses the result, or maps again if it failed.
        Never fails."""
        try:
            self._prepare(provider, folder, messages)
        except Exception:
            _log.failure("Could not start mapping a batch ahead")

    def _prepare(self, provider: ProviderConfig, folder: str,
                 messages: Sequence[FetchedMessage]) -> None:
        if not messages or batch_bytes(messages) <= self._threshold:
            return
        now = datetime.fromtimestamp(self._clock.seconds(), tz=UTC)
        key = (provider.tenant, provider.provider_id, folder)
        args = (list(messages), provider.tenant, provider.provider_id, folder, now, self._limits)
        d = self._map_off_reactor(args)
        done: defer.Deferred[Any] = defer.Deferred()

        def settled(result: Any) -> None:
            if isinstance(result, Failure):
                # handle_batch maps the batch again (and fails there if it must).
                _log.failure("Mapping a batch ahead failed", failure=result)
                result = None
            done.callback(result)

        d.addBoth(settled)
        self._prepared.pop(key, None)
        self._prepared[key] = (_batch_uids(messages), done)
        while len(self._prepared) > self.MAX_PREPARED:
            self._prepared.popitem(last=False)

    def handle_batch(
        self,
        provider: ProviderConfig,
        folder: str,
        owner: str,
        messages: Sequence[FetchedMessage],
        cursor: Optional[FolderCursor],
    ) -> defer.Deferred[BatchResult]:
        """See :meth:`IMessagePipeline.handle_batch`. A failure (mapping,
        store, lost lease) means nothing of the batch was recorded."""
        ready = None
        if self._prepared:
            prepared = self._prepared.pop((provider.tenant, provider.provider_id, folder), None)
            if prepared is not None and prepared[0] == _batch_uids(messages):
                ready = prepared[1]
        d = self._handle(provider, folder, owner, list(messages), cursor, ready)

        def failed(failure: Any) -> Any:
            self.stats["failures"] += 1
            return failure

        return d.addErrback(failed)

    @defer.inlineCallbacks
    def _handle(
        self,
        provider: ProviderConfig,
        folder: str,
        owner: str,
        messages: list[FetchedMessage],
        cursor: Optional[FolderCursor],
        ready: Optional[defer.Deferred[Any]] = None,
    ) -> Any:
        tenant, provider_id = provider.tenant, provider.provider_id
        now = datetime.fromtimestamp(self._clock.seconds(), tz=UTC)
        if self._uploader is not None and messages:
            # store mode: the objects first, so the event is recorded only
            # once everything it names is stored (a failure records nothing).
            try:
                messages = yield self._uploader.store_batch(tenant, provider_id, folder, messages)
            finally:
                for key, value in self._uploader.stats.items():
                    self.stats[f"stored_{key}"] = value  # /metrics reads them here
        args = (messages, tenant, provider_id, folder, now, self._limits)
        records = None
        if ready is not None:
            mapped = yield ready
            if isinstance(mapped, list) and len(mapped) == len(messages):
                records = mapped
                self.stats["prepared"] += 1
        if records is None:
            if messages and batch_bytes(messages) > self._threshold:
                records = yield self._map_off_reactor(args)
            else:
                records = self._build(*args)
        result = yield self._store.record_batch(tenant, provider_id, folder, owner, records, cursor)
        self.stats["batches"] += 1
        self.stats["messages"] += len(records)
        self.stats["published"] += result.published
        self.stats["skipped"] += result.skipped
        self.stats["duplicates"] += result.duplicates
        _log.info(
            "Recorded {count} messages of {tenant}/{provider_id} {folder}: "
            "{published} to publish, {skipped} skipped, {duplicates} duplicates",
            count=len(records),
            tenant=tenant,
            provider_id=provider_id,
            folder=folder,
            published=result.published,
            skipped=result.skipped,
            duplicates=result.duplicates,
        )
        if result.published:
            try:
                outbox = getattr(result, "outbox", None)
                if self._relay_offer is not None and outbox:
                    self._relay_offer(outbox)
                else:
                    self._relay_wake()
            except Exception:
                # The batch is committed; the relay's timer will catch up.
                _log.failure("Waking the relay failed")
        return result

    @defer.inlineCallbacks
    def _map_off_reactor(self, args: tuple[Any, ...]) -> Any:
        pool = self._pool
        if pool is not None and pool.running:
            try:
                records = yield pool.build(*args)
                self.stats["processes"] += 1
                _log_pool_build_errors(args[3], records)
                return records
            except Exception:
                # A worker died (or the pool stopped): nothing is recorded
                # yet, so mapping the batch here instead loses nothing.
                self.stats["pool_fallbacks"] += 1
                _log.failure("Parse pool failed; mapping the batch in a thread")
        self.stats["threaded"] += 1
        records = yield self._runner(self._build, *args)
        return records
