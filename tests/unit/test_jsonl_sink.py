"""The JSON Lines sink: the sink contract on a temp file, plus restart
behaviour (partial last line, id sequence) and failed writes."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from imapsvc.sink.jsonl import JsonLinesSink, read_entries
from tests.sink_contract import SinkContractMixin, entry


class JsonLinesContractTests(SinkContractMixin, unittest.TestCase):
    def make_sink(self) -> JsonLinesSink:
        path = self.mktemp()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        sink = JsonLinesSink(path, stream="test:stream")
        self.successResultOf(sink.start())
        self.addCleanup(sink.stop)
        return sink

    def read_back(self, sink: JsonLinesSink) -> list[tuple[str, dict[str, str]]]:
        out = []
        for line in read_entries(sink.path):
            self.assertEqual(line["stream"], "test:stream")
            out.append((line["id"], line["fields"]))
        return out


class JsonLinesRestartTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def sink(self) -> JsonLinesSink:
        s = JsonLinesSink(self.path, stream="s", clock=self.clock)
        self.successResultOf(s.start())
        self.addCleanup(s.stop)
        return s

    def test_one_line_per_entry_in_documented_shape(self) -> None:
        ids = self.successResultOf(self.sink().publish([entry(1), entry(2)]))
        self.assertEqual(ids, ["1700000000000-0", "1700000000000-1"])
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        self.assertEqual(lines[-1], "", "file ends with a newline")
        first = json.loads(lines[0])
        self.assertEqual(set(first), {"stream", "id", "fields"})
        self.assertEqual(first["fields"], entry(1)[1])

    def test_partial_last_line_is_cut_off_on_restart(self) -> None:
        s = self.sink()
        self.successResultOf(s.publish([entry(1)]))
        self.successResultOf(s.stop())
        with open(self.path, "ab") as f:
            f.write(b'{"stream":"s","id":"1700000000000-1","fiel')
        s2 = self.sink()
        self.clock.advance(0.001)
        ids = self.successResultOf(s2.publish([entry(2)]))
        self.assertEqual(ids, ["1700000000001-0"])
        got = [e["fields"]["event_id"] for e in read_entries(self.path)]
        self.assertEqual(got, [entry(1)[0], entry(2)[0]])
        with open(self.path, "rb") as f:
            for line in f:
                json.loads(line)  # every line parses

    def test_ids_keep_increasing_across_restart_even_if_clock_went_back(self) -> None:
        s = self.sink()
        self.successResultOf(s.publish([entry(1)]))
        self.successResultOf(s.stop())
        clock = Clock()  # time 0: far behind the ids in the file
        s2 = JsonLinesSink(self.path, stream="s", clock=clock)
        self.successResultOf(s2.start())
        self.addCleanup(s2.stop)
        ids = self.successResultOf(s2.publish([entry(2)]))
        self.assertEqual(ids, ["1700000000000-1"])

    def test_file_with_only_a_partial_line_starts_empty(self) -> None:
        with open(self.path, "wb") as f:
            f.write(b'{"stream":')
        s = self.sink()
        self.successResultOf(s.publish([entry(1)]))
        self.assertEqual(len(list(read_entries(self.path))), 1)

    def test_failed_write_leaves_no_partial_line(self) -> None:
        s = self.sink()
        self.successResultOf(s.publish([entry(1)]))
        real_fsync = os.fsync
        calls: list[Any] = []

        def broken_fsync(fd: int) -> None:
            calls.append(fd)
            raise OSError(28, "No space left on device")

        self.patch(os, "fsync", broken_fsync)
        self.failureResultOf(s.publish([entry(2)]), OSError)
        self.patch(os, "fsync", real_fsync)
        self.assertTrue(calls)
        self.assertEqual([e["fields"]["event_id"] for e in read_entries(self.path)], [entry(1)[0]])
        ids = self.successResultOf(s.publish([entry(3)]))
        self.assertEqual(ids, ["1700000000000-1"], "the failed batch's ids are reused")

    def test_a_failed_write_is_not_remembered_as_taken(self) -> None:
        s = self.sink()
        self.patch(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "full")))
        self.failureResultOf(s.publish([entry(2)]), OSError)
        self.patch(os, "fsync", lambda fd: None)
        self.successResultOf(s.publish([entry(2)]))
        self.assertEqual([e["fields"]["event_id"] for e in read_entries(self.path)], [entry(2)[0]])


class JsonLinesDedupeTests(unittest.TestCase):
    """The dedupe window, driven by a fake clock, across restarts."""

    def setUp(self) -> None:
        self.path = self.mktemp()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def sink(self, window_ms: int = 60_000) -> JsonLinesSink:
        s = JsonLinesSink(self.path, stream="s", clock=self.clock, dedupe_window_ms=window_ms)
        self.successResultOf(s.start())
        self.addCleanup(s.stop)
        return s

    def event_ids(self) -> list[str]:
        return [e["fields"]["event_id"] for e in read_entries(self.path) if "fields" in e]

    def test_restart_remembers_the_recent_events_of_the_file(self) -> None:
        s = self.sink()
        first = self.successResultOf(s.publish([entry(1), entry(2)]))
        self.successResultOf(s.stop())
        self.clock.advance(30)
        s2 = self.sink()
        ids = self.successResultOf(s2.publish([entry(2), entry(3)]))
        self.assertEqual(self.event_ids(), [entry(n)[0] for n in (1, 2, 3)])
        self.assertEqual(ids[0], first[1])
        self.assertEqual(s2.skipped, 1)

    def test_restart_forgets_what_is_older_than_the_window(self) -> None:
        s = self.sink()
        self.successResultOf(s.publish([entry(1)]))
        self.clock.advance(61)
        self.successResultOf(s.publish([entry(2)]))
        self.successResultOf(s.stop())
        s2 = self.sink()
        self.successResultOf(s2.publish([entry(1), entry(2)]))
        self.assertEqual(self.event_ids(), [entry(n)[0] for n in (1, 2, 1)])

    def test_appended_again_once_the_window_passed(self) -> None:
        s = self.sink()
        self.successResultOf(s.publish([entry(1)]))
        self.clock.advance(59)
        self.successResultOf(s.publish([entry(1)]))
        self.assertEqual(self.event_ids(), [entry(1)[0]])
        self.clock.advance(2)
        self.successResultOf(s.publish([entry(1)]))
        self.assertEqual(self.event_ids(), [entry(1)[0]] * 2)

    def test_a_batch_taken_before_whole_is_counted_skipped(self) -> None:
        s = self.sink()
        first = self.successResultOf(s.publish([entry(1), entry(2)]))
        self.assertEqual(self.successResultOf(s.publish([entry(1), entry(2)])), first)
        self.assertEqual(s.skipped, 2)
        self.assertEqual(self.event_ids(), [entry(1)[0], entry(2)[0]])

    def test_window_zero_appends_every_publish(self) -> None:
        s = self.sink(window_ms=0)
        self.successResultOf(s.publish([entry(1)]))
        self.successResultOf(s.publish([entry(1)]))
        self.assertEqual(self.event_ids(), [entry(1)[0]] * 2)

    def test_long_lines_and_foreign_lines_are_read_back(self) -> None:
        # Lines longer than the read block, and a line that is not ours.
        big = entry(1, payload_json=json.dumps({"x": "y" * 200_000}))
        s = self.sink()
        self.successResultOf(s.publish([big, entry(2)]))
        self.successResultOf(s.stop())
        with open(self.path, "ab") as f:
            f.write(b'{"not": "an entry"}\n')
        s2 = self.sink()
        self.successResultOf(s2.publish([big, entry(2), entry(3)]))
        self.assertEqual(self.event_ids(), [entry(n)[0] for n in (1, 2)] + [entry(3)[0]])
