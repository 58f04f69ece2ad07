"""The :class:`~imapsvc.interfaces.ISink` contract, run against every sink.

A test case mixes :class:`SinkContractMixin` into a ``trial`` ``TestCase`` and
provides:

- ``make_sink()`` -> a started sink (or a Deferred of one), cleaned up by the
  test case itself (``addCleanup``);
- ``read_back(sink)`` -> ``[(stream_id, fields), ...]`` (or a Deferred of it):
  everything that sink appended, in order, read back independently of it.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from zope.interface.verify import verifyObject

from imapsvc.interfaces import ISink


def entry(n: int, **extra: str) -> tuple[str, dict[str, str]]:
    """A realistic stream entry with event id ``evt-<n>``."""
    event_id = f"00000000-0000-4000-8000-{n:012d}"
    fields = {
        "event_id": event_id,
        "execution_id": f"10000000-0000-4000-8000-{n:012d}",
        "event_name": "INBOUND_EMAIL_RECEIVED",
        "event_type": "INBOUND_EMAIL_RECEIVED",
        "tenant": "11111111-1111-4111-8111-111111111111",
        "timestamp": "2026-01-10T12:34:56.789Z",
        "user_id": "",
        "from_state": "",
        "to_state": "",
        "payload_json": json.dumps({"n": n, "subject": f"message {n}"}),
    }
    fields.update(extra)
    return event_id, fields


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)


class SinkContractMixin:
    """The behaviour every sink must show."""

    def make_sink(self) -> Any:
        raise NotImplementedError

    def read_back(self, sink: Any) -> Any:
        raise NotImplementedError

    @defer.inlineCallbacks
    def test_provides_interface(self) -> Any:
        sink = yield self.make_sink()
        self.assertTrue(verifyObject(ISink, sink))

    @defer.inlineCallbacks
    def test_publish_appends_in_order_and_returns_ids(self) -> Any:
        sink = yield self.make_sink()
        batch = [entry(i) for i in range(3)]
        ids = yield sink.publish(batch)
        got = yield self.read_back(sink)
        self.assertEqual([i for i, _ in got], ids)
        self.assertEqual([f for _, f in got], [f for _, f in batch])
        keys = [_id_key(i) for i in ids]
        self.assertEqual(keys, sorted(set(keys)), "ids must strictly increase")

    @defer.inlineCallbacks
    def test_fields_round_trip_exactly(self) -> Any:
        # Number-looking strings stay strings ("0042"), unicode and newlines
        # survive, empty strings stay empty (not dropped, not None).
        sink = yield self.make_sink()
        event_id, fields = entry(
            7,
            user_id="",
            payload_json=json.dumps({"subject": "Grüße ☃\nzweite Zeile", "x": "0042"}),
            uid="0042",
        )
        yield sink.publish([(event_id, fields)])
        got = yield self.read_back(sink)
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0][1], fields)
        self.assertEqual(list(got[0][1]), list(fields), "field order is kept")
        self.assertEqual(json.loads(got[0][1]["payload_json"])["x"], "0042")

    @defer.inlineCallbacks
    def test_batches_append_after_each_other(self) -> Any:
        sink = yield self.make_sink()
        first = yield sink.publish([entry(1), entry(2)])
        second = yield sink.publish([entry(3)])
        got = yield self.read_back(sink)
        self.assertEqual([f["event_id"] for _, f in got], [entry(n)[0] for n in (1, 2, 3)])
        self.assertLess(_id_key(first[-1]), _id_key(second[0]))

    @defer.inlineCallbacks
    def test_empty_publish_is_a_no_op(self) -> Any:
        sink = yield self.make_sink()
        ids = yield sink.publish([])
        self.assertEqual(list(ids), [])
        got = yield self.read_back(sink)
        self.assertEqual(got, [])

    @defer.inlineCallbacks
    def test_republish_within_the_window_is_not_appended_again(self) -> Any:
        # The relay is at-least-once (a crash between the append and
        # ``published_at`` publishes the row again); the sink takes an event
        # once and answers the first stream id for the second publish.
        sink = yield self.make_sink()
        first = yield sink.publish([entry(5)])
        second = yield sink.publish([entry(4), entry(5), entry(6)])
        got = yield self.read_back(sink)
        self.assertEqual([f["event_id"] for _, f in got], [entry(n)[0] for n in (5, 4, 6)])
        self.assertEqual(second[1], first[0])
        self.assertEqual([second[0], second[2]], [i for i, _ in got[1:]])

    @defer.inlineCallbacks
    def test_prefix_of_a_failed_batch_is_not_appended_twice(self) -> Any:
        # A batch that failed after a prefix was appended is published again
        # whole: only the rest is appended.
        sink = yield self.make_sink()
        yield sink.publish([entry(1), entry(2)])
        yield sink.publish([entry(1), entry(2), entry(3)])
        got = yield self.read_back(sink)
        self.assertEqual([f["event_id"] for _, f in got], [entry(n)[0] for n in (1, 2, 3)])

    @defer.inlineCallbacks
    def test_one_event_twice_in_a_batch_is_appended_once(self) -> Any:
        sink = yield self.make_sink()
        ids = yield sink.publish([entry(8), entry(8)])
        got = yield self.read_back(sink)
        self.assertEqual([f["event_id"] for _, f in got], [entry(8)[0]])
        self.assertEqual(ids, [got[0][0]] * 2)

    @defer.inlineCallbacks
    def test_non_string_field_fails_and_writes_nothing(self) -> Any:
        sink = yield self.make_sink()
        bad = dict(entry(2)[1])
        bad["size"] = 42  # type: ignore[assignment]
        yield self.assertFailure(sink.publish([entry(1), ("x", bad)]), TypeError)
        got = yield self.read_back(sink)
        self.assertEqual(got, [])

    @defer.inlineCallbacks
    def test_large_batch_keeps_order(self) -> Any:
        sink = yield self.make_sink()
        batch = [entry(i) for i in range(500)]
        ids = yield sink.publish(batch)
        self.assertEqual(len(ids), 500)
        got = yield self.read_back(sink)
        self.assertEqual([f["event_id"] for _, f in got], [e for e, _ in batch])

    @defer.inlineCallbacks
    def test_ping_answers(self) -> Any:
        sink = yield self.make_sink()
        yield sink.ping()
