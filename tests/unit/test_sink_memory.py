"""The in-memory sink passes the sink contract, and its failure switches work."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from imapsvc.sink.memory import MemorySink, SinkDown
from tests.sink_contract import SinkContractMixin, entry


class MemorySinkContractTests(SinkContractMixin, unittest.TestCase):
    def make_sink(self) -> MemorySink:
        return MemorySink()

    def read_back(self, sink: MemorySink) -> list[tuple[str, dict[str, str]]]:
        return [(stream_id, fields) for stream_id, _, fields in sink.entries]


class MemorySinkControlTests(unittest.TestCase):
    def test_fail_appends_prefix_then_fails(self) -> None:
        sink = MemorySink()
        sink.fail(after=1)
        self.failureResultOf(sink.publish([entry(1), entry(2)]), SinkDown)
        self.assertEqual(sink.event_ids, [entry(1)[0]])
        self.failureResultOf(sink.ping(), SinkDown)
        sink.recover()
        self.assertEqual(len(self.successResultOf(sink.publish([entry(2)]))), 1)

    def test_hold_delays_until_release(self) -> None:
        sink = MemorySink()
        sink.hold()
        d: Any = sink.publish([entry(1)])
        self.assertNoResult(d)
        self.assertEqual(sink.entries, [])
        sink.release()
        self.assertEqual(len(self.successResultOf(d)), 1)

    def test_dedupe_window_follows_the_clock(self) -> None:
        from twisted.internet.task import Clock

        clock = Clock()
        sink = MemorySink(clock=clock, dedupe_window_ms=10_000)
        first = self.successResultOf(sink.publish([entry(1)]))
        clock.advance(9.9)
        self.assertEqual(self.successResultOf(sink.publish([entry(1)])), first)
        self.assertEqual(sink.skipped_ids, [entry(1)[0]])
        self.assertEqual(sink.skipped, 1)
        clock.advance(0.2)
        self.successResultOf(sink.publish([entry(1)]))
        self.assertEqual(sink.event_ids, [entry(1)[0]] * 2)

    def test_window_zero_appends_every_publish(self) -> None:
        sink = MemorySink(dedupe_window_ms=0)
        self.successResultOf(sink.publish([entry(1)]))
        self.successResultOf(sink.publish([entry(1)]))
        self.assertEqual(sink.event_ids, [entry(1)[0]] * 2)
