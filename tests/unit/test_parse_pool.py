"""The parse process pool: slicing, order, failure fallback, and one real
round trip through worker processes."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

import imapsvc
from imapsvc import parse_pool, parse_worker
from imapsvc.core.records import build_records, split_balanced
from imapsvc.model import OUTCOME_PUBLISHED, Limits
from imapsvc.parse_pool import ParsePool
from imapsvc.pipeline import Pipeline
from imapsvc.store.memory import MemoryStore
from tests.unit.test_pipeline import OWNER, P, RecordingRunner, T, fetched

NOW = datetime(2026, 1, 10, 12, 34, 56, tzinfo=UTC)


class ImmediateReactor:
    """``callFromThread`` runs the call at once (the futures are done)."""

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


class InlineExecutor(concurrent.futures.Executor):
    """Runs submissions right away; can pretend a worker died."""

    def __init__(self) -> None:
        self.submitted = 0
        self.broken = False
        self.shut = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.submitted += 1
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self.broken:
            future.set_exception(BrokenProcessPool("a worker died"))
        else:
            future.set_result(fn(*args, **kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.shut = True


class SplitTests(unittest.TestCase):
    def test_slices_keep_order_and_cover_everything(self) -> None:
        messages = [fetched(n) for n in range(1, 8)]
        for parts in (1, 2, 3, 7, 20):
            slices = split_balanced(messages, parts)
            self.assertEqual([m for s in slices for m in s], messages)
            self.assertEqual(len(slices), min(parts, len(messages)))
            self.assertTrue(all(slices), "no empty slice")

    def test_balanced_by_bytes(self) -> None:
        big = fetched(1, body="x" * 100_000)
        small = [fetched(n) for n in range(2, 10)]
        slices = split_balanced([big, *small], 2)
        self.assertEqual(slices[0], [big], "the big message alone in one slice")
        self.assertEqual(slices[1], small)

    def test_empty(self) -> None:
        self.assertEqual(split_balanced([], 2), [])


def run_python(code: str) -> str:
    """``code`` in a fresh interpreter that imports this copy of imapsvc
    (the checkout under test, not an installed one); its stdout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(imapsvc.__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    if out.returncode:
        raise AssertionError(out.stderr)
    return out.stdout.strip()


class WorkerImportTests(unittest.TestCase):
    """The fork server and its workers import no Twisted (no reactor state
    to inherit, a fast start)."""

    def test_worker_modules_import_no_twisted(self) -> None:
        modules = sorted({
            *parse_pool.PRELOAD,
            build_records.__module__,
            parse_worker.exit_with.__module__,
            parse_worker.worker_pid.__module__,
        })
        self.assertIn("imapsvc.parse_worker", modules)
        code = (
            "import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted'))\n"
        )
        self.assertEqual(run_python(code), "[]")

    def test_the_check_sees_twisted_when_it_is_imported(self) -> None:
        code = (
            "import sys, imapsvc.pipeline\n"
            "print('twisted' in sys.modules)\n"
        )
        self.assertEqual(run_python(code), "True")


class PoolTests(unittest.TestCase):
    def pool(self, executor: InlineExecutor, workers: int = 2) -> ParsePool:
        pool = ParsePool(ImmediateReactor(), workers, executor_factory=lambda n: executor)
        self.successResultOf(pool.start())
        return pool

    def test_build_returns_records_in_input_order(self) -> None:
        executor = InlineExecutor()
        pool = self.pool(executor)
        messages = [fetched(n) for n in range(1, 6)]
        args = (T, P, "INBOX", NOW, Limits())
        got = self.successResultOf(pool.build(messages, *args))
        self.assertEqual(got, build_records(messages, *args))
        self.assertEqual(executor.submitted, 2 + 2, "2 warm-ups + one slice per worker")

    def test_broken_pool_fails_and_is_replaced(self) -> None:
        executors = [InlineExecutor(), InlineExecutor()]
        made: list[InlineExecutor] = []

        def factory(n: int) -> InlineExecutor:
            made.append(executors[len(made)])
            return made[-1]

        pool = ParsePool(ImmediateReactor(), 2, executor_factory=factory)
        self.successResultOf(pool.start())
        executors[0].broken = True
        self.failureResultOf(pool.build([fetched(1)], T, P, "INBOX", NOW, Limits()))
        self.assertTrue(executors[0].shut)
        self.assertEqual(pool.stats["restarts"], 1)
        got = self.successResultOf(pool.build([fetched(1)], T, P, "INBOX", NOW, Limits()))
        self.assertEqual(len(got), 1)

    def test_not_started_fails(self) -> None:
        pool = ParsePool(ImmediateReactor(), 2, executor_factory=lambda n: InlineExecutor())
        self.failureResultOf(pool.build([fetched(1)], T, P, "INBOX", NOW, Limits()))


class PipelineWithPoolTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_768_048_496.789)
        self.store = MemoryStore(self.clock)
        self.provider = self.store.add_provider(tenant=T, provider_id=P, mailbox="s@example.com")
        self.assertTrue(self.successResultOf(self.store.acquire_lease(T, P, OWNER, 60_000)))

    def test_worker_crash_maps_the_batch_in_a_thread_once(self) -> None:
        executor = InlineExecutor()
        pool = ParsePool(ImmediateReactor(), 2, executor_factory=lambda n: executor)
        self.successResultOf(pool.start())
        executor.broken = True
        runner = RecordingRunner()
        pipeline = Pipeline(
            self.store, lambda: None, self.clock, Limits(), 0, runner, parse_pool=pool
        )
        result = self.successResultOf(
            pipeline.handle_batch(self.provider, "INBOX", OWNER, [fetched(1), fetched(2)], None)
        )
        self.assertEqual(result.outcomes, (OUTCOME_PUBLISHED, OUTCOME_PUBLISHED))
        self.assertEqual(runner.calls, 1)
        self.assertEqual(pipeline.stats["pool_fallbacks"], 1)
        self.assertEqual(len(self.flushLoggedErrors(BrokenProcessPool)), 1, "logged")
        self.assertEqual(len(self.successResultOf(self.store.fetch_outbox(10))), 2)

    def test_pool_maps_large_batches(self) -> None:
        executor = InlineExecutor()
        pool = ParsePool(ImmediateReactor(), 2, executor_factory=lambda n: executor)
        self.successResultOf(pool.start())
        runner = RecordingRunner()
        pipeline = Pipeline(
            self.store, lambda: None, self.clock, Limits(), 0, runner, parse_pool=pool
        )
        self.successResultOf(
            pipeline.handle_batch(self.provider, "INBOX", OWNER, [fetched(1), fetched(2)], None)
        )
        self.assertEqual(runner.calls, 0)
        self.assertEqual(pipeline.stats["processes"], 1)


class RealProcessTests(unittest.TestCase):
    """One round trip through real forkserver workers (about a second)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_records_from_worker_processes_equal_in_process_ones(self) -> Any:
        from twisted.internet import reactor

        pool = ParsePool(reactor, 2)
        yield pool.start()
        self.addCleanup(pool.stop)
        self.assertTrue(pool.running)
        messages = [fetched(n) for n in range(1, 5)]
        args = (T, P, "INBOX", NOW, Limits())
        got = yield pool.build(messages, *args)
        self.assertEqual(got, build_records(messages, *args))
