"""RedisStreamSink against a real Redis: the sink contract, MAXLEN, deadlines
while Redis is unreachable, and recovery after a private redis-server restart."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from imapsvc.sink.redis_stream import (
    PUBLISH_ONCE,
    PUBLISH_ONCE_SHA,
    RedisStreamSink,
    SinkUnavailable,
    dedupe_key,
    xadd_args,
)
from tests.rig.redis import PrivateRedis, SyncRedis, free_port, shared_redis, unique_stream
from tests.sink_contract import SinkContractMixin, entry


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[1]
    host, _, port = rest.partition(":")
    return host, int(port or 6379)


class _SharedRedisMixin:
    """Sinks on the shared Redis, each on a stream of its own that goes
    (with its dedupe keys) at clean-up."""

    label = "stream"

    def setUp(self) -> None:
        self.url = shared_redis()
        self.redis = SyncRedis(*_host_port(self.url))
        self.addCleanup(self.redis.close)  # type: ignore[attr-defined]

    def make_sink(self, **kwargs: Any) -> RedisStreamSink:
        stream = unique_stream(self.label)
        self.addCleanup(self.redis.delete_prefix, stream)  # type: ignore[attr-defined]
        sink = RedisStreamSink(reactor, self.url, stream, timeout_s=5.0, **kwargs)
        sink.start()
        self.addCleanup(sink.stop)  # type: ignore[attr-defined]
        return sink


class RedisSinkContractTests(_SharedRedisMixin, SinkContractMixin, unittest.TestCase):
    label = "contract"

    def read_back(self, sink: RedisStreamSink) -> list[tuple[str, dict[str, str]]]:
        return self.redis.xrange(sink.stream)

    @defer.inlineCallbacks
    def test_maxlen_trims_approximately(self) -> Any:
        sink = self.make_sink(maxlen=10)
        yield sink.publish([entry(i) for i in range(1000)])
        length = self.redis.xlen(sink.stream)
        self.assertLess(length, 1000)
        self.assertGreaterEqual(length, 10)

    @defer.inlineCallbacks
    def test_no_maxlen_keeps_everything(self) -> Any:
        sink = self.make_sink()
        yield sink.publish([entry(i) for i in range(1000)])
        self.assertEqual(self.redis.xlen(sink.stream), 1000)

    @defer.inlineCallbacks
    def test_maxlen_with_plain_xadd(self) -> Any:
        sink = self.make_sink(maxlen=10, dedupe_window_ms=0)
        yield sink.publish([entry(i) for i in range(1000)])
        self.assertLess(self.redis.xlen(sink.stream), 1000)


class RedisDedupeTests(_SharedRedisMixin, unittest.TestCase):
    """The dedupe script against a real Redis."""

    label = "dedupe"

    def event_ids(self, sink: RedisStreamSink) -> list[str]:
        return [f["event_id"] for _, f in self.redis.xrange(sink.stream)]

    def test_script_sha_is_what_redis_computes(self) -> None:
        self.assertEqual(self.redis.script_load(PUBLISH_ONCE), PUBLISH_ONCE_SHA)

    @defer.inlineCallbacks
    def test_key_holds_the_stream_id_for_the_window(self) -> Any:
        sink = self.make_sink(dedupe_window_ms=60_000)
        [stream_id] = yield sink.publish([entry(1)])
        key = dedupe_key(sink.stream, entry(1)[0])
        self.assertEqual(self.redis.get(key), stream_id)
        ttl = self.redis.pttl(key)
        self.assertGreater(ttl, 50_000)
        self.assertLessEqual(ttl, 60_000)

    @defer.inlineCallbacks
    def test_republish_counts_skipped_and_keeps_one_entry(self) -> Any:
        sink = self.make_sink()
        yield sink.publish([entry(1), entry(2)])
        yield sink.publish([entry(2), entry(3)])
        self.assertEqual(self.event_ids(sink), [entry(n)[0] for n in (1, 2, 3)])
        self.assertEqual(sink.skipped, 1)

    @defer.inlineCallbacks
    def test_two_replicas_publishing_the_same_rows_at_once(self) -> Any:
        # A lease changing hands: the old owner's relay and the new one's
        # publish the same rows at the same time, on two connections.
        first = self.make_sink()
        second = RedisStreamSink(reactor, self.url, first.stream, timeout_s=5.0)
        second.start()
        self.addCleanup(second.stop)
        batch = [entry(n) for n in range(50)]
        ids = yield defer.gatherResults([first.publish(batch), second.publish(batch[::-1])])
        self.assertEqual(sorted(self.event_ids(first)), sorted(e for e, _ in batch))
        self.assertEqual(first.skipped + second.skipped, 50)
        # Both were told the one stream id each event has.
        self.assertEqual(ids[0], ids[1][::-1])

    @defer.inlineCallbacks
    def test_appended_again_once_the_window_passed(self) -> Any:
        sink = self.make_sink()
        yield sink.publish([entry(1)])
        # What expiry does, without waiting for it.
        self.redis.delete(dedupe_key(sink.stream, entry(1)[0]))
        yield sink.publish([entry(1)])
        self.assertEqual(self.event_ids(sink), [entry(1)[0]] * 2)

    @defer.inlineCallbacks
    def test_window_zero_is_plain_xadd(self) -> Any:
        sink = self.make_sink(dedupe_window_ms=0)
        yield sink.publish([entry(1)])
        yield sink.publish([entry(1)])
        self.assertEqual(self.event_ids(sink), [entry(1)[0]] * 2)
        self.assertIsNone(self.redis.get(dedupe_key(sink.stream, entry(1)[0])))

    @defer.inlineCallbacks
    def test_a_failed_xadd_leaves_no_key(self) -> Any:
        # The stream's key holds a string: XADD fails inside the script, and
        # the event must not be remembered as taken.
        sink = self.make_sink()
        self.redis.set(sink.stream, "not a stream")
        yield self.assertFailure(sink.publish([entry(1)]), SinkUnavailable)
        self.assertIsNone(self.redis.get(dedupe_key(sink.stream, entry(1)[0])))
        self.redis.delete(sink.stream)
        yield sink.publish([entry(1)])
        self.assertEqual(self.event_ids(sink), [entry(1)[0]])

    @defer.inlineCallbacks
    def test_big_payloads_round_trip(self) -> Any:
        from imapsvc.core.event import StreamEntry

        payloads = [b'{"n":%d,"t":"%s"}' % (n, b"\xc3\xa9" * (n * 40_000)) for n in range(3)]
        sink = self.make_sink()
        yield sink.publish([(f"e{n}", StreamEntry({"event_id": f"e{n}"}, p))
                            for n, p in enumerate(payloads)])
        got = [f["payload_json"].encode() for _, f in self.redis.xrange(sink.stream)]
        self.assertEqual(got, payloads)

    @defer.inlineCallbacks
    def test_flushed_script_cache_is_loaded_again(self) -> Any:
        sink = self.make_sink()
        yield sink.publish([entry(1)])
        self.redis.script_flush()
        yield sink.publish([entry(2)])
        self.assertEqual(self.event_ids(sink), [entry(1)[0], entry(2)[0]])


class XaddArgsTests(unittest.TestCase):
    def test_layout(self) -> None:
        self.assertEqual(xadd_args("s", {"a": "1", "b": ""}), ["XADD", "s", "*", "a", "1", "b", ""])
        self.assertEqual(
            xadd_args("s", {"a": "1"}, maxlen=5), ["XADD", "s", "MAXLEN", "~", "5", "*", "a", "1"]
        )


class RedisDownTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_publish_and_ping_fail_within_deadline_when_unreachable(self) -> Any:
        sink = RedisStreamSink(
            reactor, f"redis://127.0.0.1:{free_port()}", "s", timeout_s=0.5, reconnect_max_s=0.2
        )
        sink.start()
        self.addCleanup(sink.stop)
        started = reactor.seconds()
        yield self.assertFailure(sink.publish([entry(1)]), SinkUnavailable)
        yield self.assertFailure(sink.ping(), SinkUnavailable)
        self.assertLess(reactor.seconds() - started, 3.0)

    @defer.inlineCallbacks
    def test_recovers_after_private_server_restart(self) -> Any:
        if not PrivateRedis.available():
            raise unittest.SkipTest("redis-server is not installed")
        server = PrivateRedis(reactor)
        self.addCleanup(server.destroy)
        yield server.start()
        sink = RedisStreamSink(reactor, server.url, "events", timeout_s=0.5, reconnect_max_s=0.2)
        sink.start()
        self.addCleanup(sink.stop)
        yield sink.publish([entry(1)])
        yield server.stop()
        yield self.assertFailure(sink.publish([entry(2)]), SinkUnavailable)
        yield server.start()
        # The pool reconnects on its own (backoff capped at reconnect_max_s).
        for _ in range(100):
            try:
                yield sink.publish([entry(3)])
                break
            except SinkUnavailable:
                yield deferLater(0.05)
        else:
            self.fail("sink did not recover")
        with server.client() as r:
            got = [f["event_id"] for _, f in r.xrange("events")]
        # The server lost its memory on restart (nothing persisted): only 3.
        self.assertEqual(got, [entry(3)[0]])


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


class _FakeFactory:
    """Hands out one protocol on a string transport (no network)."""

    def __init__(self, protocol: Any = None) -> None:
        self.protocol = protocol
        self.waiting: list[defer.Deferred[Any]] = []

    def getConnection(self, peek: bool = False) -> defer.Deferred[Any]:  # noqa: N802
        if self.protocol is None:
            d: defer.Deferred[Any] = defer.Deferred()
            self.waiting.append(d)
            return d
        return defer.succeed(self.protocol)

    def disconnect(self) -> defer.Deferred[None]:
        return defer.succeed(None)


class _WireMixin:
    """A sink on a string transport and a fake clock (no Redis needed)."""

    def setUp(self) -> None:
        import txredisapi
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        self.clock = Clock()
        self.transport = StringTransport()
        self.proto = txredisapi.RedisProtocol(charset="utf-8", convertNumbers=False)
        self.proto.callLater = self.clock.callLater  # its line parser defers leftovers
        self.proto.factory = _FakeFactory()
        self.proto.makeConnection(self.transport)
        self.factory = _FakeFactory(self.proto)


class RedisSinkWireTests(_WireMixin, unittest.TestCase):
    """Byte level, plain XADD."""

    def sink(self, factory: Any = None, **kwargs: Any) -> RedisStreamSink:
        # Plain XADD here; the dedupe script's bytes are DedupeWireTests'.
        kwargs.setdefault("dedupe_window_ms", 0)
        return RedisStreamSink(
            self.clock,
            "redis://127.0.0.1:1",
            "s",
            timeout_s=2.0,
            factory=factory or self.factory,
            **kwargs,
        )

    def test_batch_is_pipelined_before_any_reply(self) -> None:
        d = self.sink().publish([entry(1), entry(2), entry(3)])
        written = self.transport.value()
        self.assertEqual(written.count(b"$4\r\nXADD\r\n"), 3, "all sent before a reply")
        self.assertNoResult(d)
        self.proto.dataReceived(b"$3\r\n1-0\r\n$3\r\n1-1\r\n$3\r\n1-2\r\n")
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), ["1-0", "1-1", "1-2"])

    def test_wire_layout_with_maxlen(self) -> None:
        self.sink(maxlen=100).publish([("e", {"event_id": "e", "uid": "0042"})])
        self.assertEqual(
            self.transport.value(),
            b"*10\r\n$4\r\nXADD\r\n$1\r\ns\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$3\r\n100\r\n"
            b"$1\r\n*\r\n$8\r\nevent_id\r\n$1\r\ne\r\n$3\r\nuid\r\n$4\r\n0042\r\n",
        )

    def test_batch_is_one_write(self) -> None:
        writes: list[list[bytes]] = []
        sequence = self.transport.writeSequence
        self.transport.writeSequence = (  # type: ignore[method-assign]
            lambda data: (writes.append(list(data)), sequence(data)))
        self.sink().publish([entry(1), entry(2), entry(3)])
        self.assertEqual(len(writes), 1)
        self.assertEqual(self.transport.value().count(b"$4\r\nXADD\r\n"), 3)

    def test_encoded_entry_goes_out_with_its_payload_bytes(self) -> None:
        from imapsvc.core.event import StreamEntry

        payload = '{"s":"caf\u00e9 \\"q\\""}'.encode()
        d = self.sink().publish([("e", StreamEntry({"event_id": "e"}, payload))])
        self.assertEqual(
            self.transport.value(),
            b"*7\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$8\r\nevent_id\r\n$1\r\ne\r\n"
            b"$12\r\npayload_json\r\n$%d\r\n%s\r\n" % (len(payload), payload),
        )
        self.proto.dataReceived(b"$3\r\n1-0\r\n")
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), ["1-0"])

    def test_a_bad_entry_writes_nothing(self) -> None:
        d = self.sink().publish([entry(1), ("e", {"event_id": 42})])  # type: ignore[dict-item]
        self.failureResultOf(d, TypeError)
        self.assertEqual(self.transport.value(), b"")

    def test_error_reply_fails_the_batch(self) -> None:
        d = self.sink().publish([entry(1)])
        self.proto.dataReceived(b"-WRONGTYPE Operation against a key\r\n")
        failure = self.failureResultOf(d, SinkUnavailable)
        self.assertIn("WRONGTYPE", str(failure.value))

    def test_deadline_while_waiting_for_replies_aborts_the_connection(self) -> None:
        d = self.sink().publish([entry(1)])
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, SinkUnavailable)
        self.assertTrue(self.transport.disconnected, "a silent socket is dropped")

    def test_deadline_while_no_connection_writes_nothing(self) -> None:
        factory = _FakeFactory(None)
        d = self.sink(factory=factory).publish([entry(1)])
        self.clock.advance(2.1)
        self.failureResultOf(d, SinkUnavailable)
        factory.protocol = self.proto
        for waiter in factory.waiting:
            waiter.callback(self.proto)  # the connection comes back later
        self.assertEqual(self.transport.value(), b"", "a timed-out batch is not sent late")

    def test_url_password_never_in_repr(self) -> None:
        sink = RedisStreamSink(
            self.clock, "redis://user:s3cret-pw@redis.example:6380/2", "s", timeout_s=1.0
        )
        self.assertNotIn("s3cret", repr(sink))
        self.assertIn("redis://redis.example:6380/2", repr(sink))


class DedupeWireTests(_WireMixin, unittest.TestCase):
    """The dedupe script's bytes and replies."""

    def sink(self, factory: Any = None, **kwargs: Any) -> RedisStreamSink:
        kwargs.setdefault("dedupe_window_ms", 1000)
        return RedisStreamSink(self.clock, "redis://127.0.0.1:1", "s", timeout_s=2.0,
                               factory=factory or self.factory, **kwargs)

    def test_error_reply_fails_the_batch(self) -> None:
        d = self.sink().publish([entry(1)])
        self.proto.dataReceived(b"$40\r\n" + PUBLISH_ONCE_SHA.encode() + b"\r\n"
                                b"-WRONGTYPE Operation against a key\r\n")
        for _ in range(3):
            self.clock.advance(0)
        failure = self.failureResultOf(d, SinkUnavailable)
        self.assertIn("WRONGTYPE", str(failure.value))

    def test_a_redis_without_scripts_gets_a_hint(self) -> None:
        d = self.sink().publish([entry(1)])
        self.proto.dataReceived(
            b"-NOPERM User imapsvc has no permissions to run the 'script|load' command\r\n"
            b"-NOPERM User imapsvc has no permissions to run the 'evalsha' command\r\n")
        for _ in range(3):
            self.clock.advance(0)
        failure = self.failureResultOf(d, SinkUnavailable)
        self.assertIn("IMAP_EVENT_DEDUPE_WINDOW_MS=0", str(failure.value))

    def test_no_hint_when_redis_is_merely_down(self) -> None:
        d = self.sink().publish([entry(1)])
        self.clock.advance(2.1)
        failure = self.failureResultOf(d, SinkUnavailable)
        self.assertNotIn("IMAP_EVENT_DEDUPE_WINDOW_MS", str(failure.value))

    def test_script_load_then_one_evalsha_per_batch_in_one_write(self) -> None:
        from imapsvc.sink.redis_stream import script_load_command

        writes: list[list[bytes]] = []
        sequence = self.transport.writeSequence
        self.transport.writeSequence = (  # type: ignore[method-assign]
            lambda data: (writes.append(list(data)), sequence(data)))
        self.sink(maxlen=5).publish([("e", {"event_id": "e"}), ("f", {"event_id": "f"})])
        self.assertEqual(len(writes), 1)
        sha = PUBLISH_ONCE_SHA.encode()
        self.assertEqual(
            self.transport.value(),
            script_load_command()
            # EVALSHA sha 3 | s s:published:e s:published:f | 1000 5 | 2 event_id e | 2 event_id f
            + b"*14\r\n$7\r\nEVALSHA\r\n$40\r\n" + sha + b"\r\n$1\r\n3\r\n"
            b"$1\r\ns\r\n$13\r\ns:published:e\r\n$13\r\ns:published:f\r\n"
            b"$4\r\n1000\r\n$1\r\n5\r\n"
            b"$1\r\n2\r\n$8\r\nevent_id\r\n$1\r\ne\r\n"
            b"$1\r\n2\r\n$8\r\nevent_id\r\n$1\r\nf\r\n",
        )
        self.assertTrue(script_load_command().startswith(b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n"))
        self.assertIn(PUBLISH_ONCE, script_load_command())

    def test_payload_bytes_go_out_as_they_are(self) -> None:
        from imapsvc.core.event import StreamEntry

        # Small payloads are copied into their bulk; big ones are written as
        # they are, between their length line and CRLF: same bytes.
        for payload in ('{"s":"caf\u00e9"}'.encode(), b'{"t":"' + b"x" * 5000 + b'"}'):
            self.transport.clear()
            self.sink().publish([("e", StreamEntry({"event_id": "e"}, payload))])
            self.assertTrue(self.transport.value().endswith(
                b"$12\r\npayload_json\r\n$%d\r\n%s\r\n" % (len(payload), payload)))

    def test_big_payload_is_not_copied_before_the_transport(self) -> None:
        from imapsvc.core.event import StreamEntry

        payload = b'{"t":"' + b"x" * 5000 + b'"}'
        writes: list[list[bytes]] = []
        sequence = self.transport.writeSequence
        self.transport.writeSequence = (  # type: ignore[method-assign]
            lambda data: (writes.append(list(data)), sequence(data)))
        entry_ = StreamEntry({"event_id": "e"}, payload)
        self.sink().publish([("e", entry_)])
        self.assertTrue(any(piece is entry_.wire_payload() for piece in writes[0]))

    def test_replies_give_ids_and_count_what_was_there(self) -> None:
        sink = self.sink()
        d = sink.publish([entry(1), entry(2)])
        self.proto.dataReceived(
            b"$40\r\n" + PUBLISH_ONCE_SHA.encode() + b"\r\n"
            b"*4\r\n$3\r\n1-0\r\n:1\r\n$3\r\n0-7\r\n:0\r\n")
        for _ in range(4):
            self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), ["1-0", "0-7"])
        self.assertEqual(sink.skipped, 1)

    def test_negative_window_refused(self) -> None:
        self.assertRaises(ValueError, self.sink, dedupe_window_ms=-1)


class ScriptGroupsTests(unittest.TestCase):
    def test_groups_by_count_and_by_payload_bytes(self) -> None:
        from imapsvc.core.event import StreamEntry
        from imapsvc.sink.redis_stream import (
            SCRIPT_GROUP_BYTES,
            SCRIPT_GROUP_ENTRIES,
            script_groups,
        )

        small = [entry(n) for n in range(2 * SCRIPT_GROUP_ENTRIES + 1)]
        groups = script_groups(small)
        self.assertEqual([len(g) for g in groups],
                         [SCRIPT_GROUP_ENTRIES, SCRIPT_GROUP_ENTRIES, 1])
        self.assertEqual([e for g in groups for e in g], small)
        big = StreamEntry({"event_id": "b"}, b"x" * SCRIPT_GROUP_BYTES)
        mixed = [entry(1), ("b", big), entry(2)]
        self.assertEqual([len(g) for g in script_groups(mixed)], [2, 1])
        self.assertEqual(script_groups([]), [])

    def test_replies_of_several_groups_line_up_with_the_entries(self) -> None:
        from imapsvc.sink.redis_stream import SCRIPT_GROUP_ENTRIES

        wire = _WireMixin()
        wire.setUp()
        sink = RedisStreamSink(wire.clock, "redis://127.0.0.1:1", "s", timeout_s=2.0,
                               factory=wire.factory)
        count = SCRIPT_GROUP_ENTRIES + 1
        d = sink.publish([entry(n) for n in range(count)])
        self.assertEqual(wire.transport.value().count(b"$7\r\nEVALSHA\r\n"), 2)
        first = b"".join(b"$3\r\n1-%d\r\n:1\r\n" % n for n in range(count - 1))
        wire.proto.dataReceived(
            b"$40\r\n" + PUBLISH_ONCE_SHA.encode() + b"\r\n"
            + b"*%d\r\n" % (2 * (count - 1)) + first + b"*2\r\n$3\r\n0-9\r\n:0\r\n")
        for _ in range(5):
            wire.clock.advance(0)
        self.assertEqual(self.successResultOf(d),
                         [f"1-{n}" for n in range(count - 1)] + ["0-9"])
        self.assertEqual(sink.skipped, 1)
