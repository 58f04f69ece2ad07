"""Map batches in worker processes, so mapping does not share the GIL with
the reactor (:class:`ParsePool`).

The workers run :func:`imapsvc.core.records.build_records` on slices of a batch:
its inputs (:class:`~imapsvc.model.FetchedMessage`, :class:`~imapsvc.model.Limits`,
``datetime``) and outputs (:class:`~imapsvc.model.MessageRecord`) are plain
attrs values that pickle. A batch is split into one contiguous slice per
worker (balanced by bytes) and the slices are mapped in parallel; the
records come back in input order.

Workers come from a ``forkserver`` (never ``fork``: the service process has
threads and open sockets) that preloads the pure mapping code, so a worker
starts in milliseconds and holds no connection, secret or reactor state.
What the workers import is :mod:`imapsvc.parse_worker` and the pure
:mod:`imapsvc.core` code; this module (Twisted side) stays in the service.

Failure contract: :meth:`ParsePool.build` fails when a worker died or the
pool is stopped; the caller (:class:`~imapsvc.pipeline.Pipeline`) then maps
the batch in-process, so a crash costs time, never a message. A broken
executor is replaced on the next call.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from imapsvc import parse_worker
from imapsvc.core.records import build_records, split_balanced
from imapsvc.model import FetchedMessage, MessageRecord

_log = Logger()

#: Modules the fork server imports once, so each worker starts warm. No
#: Twisted in them (see :mod:`imapsvc.parse_worker`).
PRELOAD = [parse_worker.__name__]


def default_workers() -> int:
    """Two worker processes (or one on a single core): mapping a batch in
    two halves halves its wall time on two cores."""
    return max(1, min(2, os.cpu_count() or 1))


class ParsePool:
    """A small process pool for :func:`~imapsvc.core.records.build_records`.

    :param reactor: ``IReactorThreads`` (results come back through
        ``callFromThread``).
    :param workers: worker processes (see :func:`default_workers`).
    :param build: the picklable, module-level mapping function.
    :param executor_factory: ``factory(workers) -> Executor``, for tests.

    :ivar stats: ``batches`` (mapped in the pool), ``failures`` (pool
        errors), ``restarts`` (executors replaced after a crash).
    """

    def __init__(
        self,
        reactor: Any,
        workers: int = 0,
        build: Callable[..., list[MessageRecord]] = build_records,
        executor_factory: Optional[Callable[[int], Any]] = None,
    ) -> None:
        self._reactor = reactor
        self._workers = workers or default_workers()
        self._build = build
        self._factory = executor_factory or _process_executor
        self._executor: Any = None
        self._running = False
        self.stats = {"batches": 0, "failures": 0, "restarts": 0}

    @property
    def running(self) -> bool:
        """Whether :meth:`build` may be used."""
        return self._running

    @property
    def workers(self) -> int:
        return self._workers

    def start(self) -> defer.Deferred[None]:
        """Create the workers; fires once each answered (never fails: a pool
        that does not start leaves :attr:`running` false and is logged)."""
        self._running = True
        self._executor = self._factory(self._workers)
        warm = [self._submit(parse_worker.worker_pid) for _ in range(self._workers)]
        d = defer.gatherResults(warm, consumeErrors=True)

        def ok(pids: Any) -> None:
            _log.info("Parse pool started: {count} workers", count=len(set(pids)))

        def failed(failure: Any) -> None:
            _log.failure("Parse pool did not start; mapping stays in-process", failure)
            self._running = False
            self._shutdown()

        return d.addCallbacks(ok, failed)

    def stop(self) -> defer.Deferred[None]:
        """Stop the workers (batches in flight fail; their callers map them
        in-process or fail the batch, which is then fetched again); fires
        once the workers exited. Never fails."""
        self._running = False
        executor, self._executor = self._executor, None
        if executor is None:
            return defer.succeed(None)
        from twisted.internet.threads import deferToThreadPool

        # Joining the workers blocks; do it off the reactor thread.
        d = deferToThreadPool(
            self._reactor,
            self._reactor.getThreadPool(),
            lambda: executor.shutdown(wait=True, cancel_futures=True),
        )
        return d.addErrback(lambda f: _log.failure("Stopping the parse pool failed", f))

    def build(self, messages: Sequence[FetchedMessage], *args: Any) -> defer.Deferred[Any]:
        """``build_records(messages, *args)`` in the workers.

        :return: Deferred of the records in input order; fails when a worker
            died, the pool is stopped or an argument does not pickle.
        """
        if not self._running:
            return defer.fail(BrokenProcessPool("parse pool is not running"))
        slices = split_balanced(messages, self._workers)
        if not slices:
            return defer.succeed([])
        ds = [self._submit(self._build, part, *args) for part in slices]
        d = defer.gatherResults(ds, consumeErrors=True)

        def joined(results: list[list[MessageRecord]]) -> list[MessageRecord]:
            self.stats["batches"] += 1
            return [record for part in results for record in part]

        def failed(failure: Any) -> Any:
            self.stats["failures"] += 1
            inner = failure
            if isinstance(failure.value, defer.FirstError):
                inner = failure.value.subFailure
            if inner.check(BrokenProcessPool) and self._running:
                self.stats["restarts"] += 1
                self._shutdown()
                self._executor = self._factory(self._workers)
            return inner

        return d.addCallbacks(joined, failed)

    # -- internals -------------------------------------------------------

    def _submit(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        try:
            future = self._executor.submit(f, *args)
        except Exception:
            return defer.fail()

        def done(fut: concurrent.futures.Future[Any]) -> None:
            # Runs in the executor's management thread (or right here).
            exc = fut.exception() if not fut.cancelled() else defer.CancelledError()
            if exc is not None:
                self._reactor.callFromThread(d.errback, exc)
            else:
                self._reactor.callFromThread(d.callback, fut.result())

        future.add_done_callback(done)
        return d

    def _shutdown(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def _process_executor(workers: int) -> concurrent.futures.Executor:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=parse_worker.exit_with,
        initargs=(os.getpid(),),
    )
