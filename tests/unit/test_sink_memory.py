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
