"""RedisStreamSink against a real Redis: the sink contract, MAXLEN, deadlines
while Redis is unreachable, and recovery after a private redis-server restart."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from imapsvc.sink.redis_stream import RedisStreamSink, SinkUnavailable, xadd_args
from tests.rig.redis import PrivateRedis, SyncRedis, free_port, shared_redis, unique_stream
from tests.sink_contract import SinkContractMixin, entry


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[1]
    host, _, port = rest.partition(":")
    return host, int(port or 6379)


class RedisSinkContractTests(SinkContractMixin, unittest.TestCase):
    def setUp(self) -> None:
        self.url = shared_redis()
        self.redis = SyncRedis(*_host_port(self.url))
        self.addCleanup(self.redis.close)

    def make_sink(self, **kwargs: Any) -> RedisStreamSink:
        stream = unique_stream("contract")
        self.addCleanup(self.redis.command, "DEL", stream)
        sink = RedisStreamSink(reactor, self.url, stream, timeout_s=5.0, **kwargs)
        sink.start()
        self.addCleanup(sink.stop)
        return sink

    def read_back(self, sink: RedisStreamSink) -> list[tuple[str, dict[str, str]]]:
        return self.redis.xrange(sink.stream)

    @defer.inlineCallbacks
    def test_maxlen_trims_approximately(self) -> Any:
        sink = self.make_sink(maxlen=10)
        yield sink.publish([entry(i) for i in range(1000)])
        length = self.redis.command("XLEN", sink.stream)
        self.assertLess(length, 1000)
        self.assertGreaterEqual(length, 10)

    @defer.inlineCallbacks
    def test_no_maxlen_keeps_everything(self) -> Any:
        sink = self.make_sink()
        yield sink.publish([entry(i) for i in range(1000)])
        self.assertEqual(self.redis.command("XLEN", sink.stream), 1000)


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
