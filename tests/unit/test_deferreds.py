"""Background Deferreds: a peer that is away is a warning, a bug is a critical entry."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, capturedLogs
from twisted.trial import unittest

from imapsvc.deferreds import DeadlineExceeded, fire_and_forget, start_loop
from imapsvc.interfaces import StoreUnavailable


class FireAndForgetTests(unittest.TestCase):
    def logged(self, exc: BaseException) -> list[dict]:
        log = Logger(namespace="test")
        with capturedLogs() as events:
            d = fire_and_forget(defer.fail(exc), log, "outbox stats")
        self.assertIsNone(self.successResultOf(d))
        return list(events)

    def test_outage_is_one_warning_line(self) -> None:
        for exc in (StoreUnavailable("database unavailable (reconnecting)"),
                    DeadlineExceeded("outbox stats did not finish within 5s"),
                    ConnectionRefusedError("refused")):
            events = self.logged(exc)
            self.assertEqual([e["log_level"] for e in events], [LogLevel.warn], exc)
            self.assertNotIn("log_failure", events[0])
            self.assertIn(type(exc).__name__, events[0]["err"])

    def test_bug_keeps_its_traceback(self) -> None:
        events = self.logged(KeyError("count"))
        self.assertEqual([e["log_level"] for e in events], [LogLevel.critical])
        self.assertIsInstance(events[0]["log_failure"].value, KeyError)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_error_hook_sees_outages_too(self) -> None:
        seen = []
        fire_and_forget(defer.fail(StoreUnavailable("x")), Logger(), "w", on_error=seen.append)
        self.assertEqual(len(seen), 1)


class StartLoopTests(unittest.TestCase):
    def test_runs_now_then_every_interval(self) -> None:
        clock, calls = Clock(), []
        loop = start_loop(clock, 5.0, lambda: calls.append(clock.seconds()),
                          Logger(namespace="test"), "beat")
        clock.advance(5)
        clock.advance(5)
        self.assertEqual(calls, [0, 5, 10])
        loop.stop()
        clock.advance(5)
        self.assertEqual(len(calls), 3)

    def test_a_failure_that_ends_the_loop_is_logged(self) -> None:
        clock = Clock()

        def broken() -> None:
            raise ValueError("bug")

        with capturedLogs() as events:
            loop = start_loop(clock, 5.0, broken, Logger(namespace="test"), "replica heartbeat")
        self.assertFalse(loop.running)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual([e["what"] for e in events if e.get("log_failure")],
                         ["replica heartbeat"])
