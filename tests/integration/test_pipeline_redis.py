"""End to end below the IMAP layer: pipeline -> outbox (MemoryStore) -> relay
-> a real Redis stream. Covers the exact field layout, a Redis outage while
messages keep being recorded (none lost, none duplicated), and a crash
between XADD and mark_published (re-published with the same event_id, which
the stream's dedupe window takes once; with the window off it is appended
twice)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from imapsvc.core.event import event_ids
from imapsvc.deferreds import synchronous_runner
from imapsvc.model import FolderCursor, Limits
from imapsvc.pipeline import Pipeline
from imapsvc.sink.redis_stream import RedisStreamSink
from imapsvc.sink.relay import Relay
from imapsvc.store.memory import MemoryStore
from tests.contract_validator import FIELDS
from tests.rig.redis import PrivateRedis, SyncRedis, shared_redis, unique_stream
from tests.unit.test_pipeline import OWNER, P, T, fetched

CONTRACT_FIELDS = list(FIELDS)


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class MarkFailsOnce:
    """A store whose first ``mark_published`` fails: the crash window
    between XADD and the mark."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.failures = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def mark_published(self, ids: Any) -> Any:
        if self.failures:
            self.failures -= 1
            return defer.fail(ConnectionError("process died before mark_published"))
        return self._store.mark_published(ids)


class PipelineToRedisTests(unittest.TestCase):
    """On the in-memory store (the Postgres variant below reuses every test)."""

    def setUp(self) -> Any:
        self.store = MemoryStore(reactor)
        self.provider = self.store.add_provider(tenant=T, provider_id=P, mailbox="s@example.com")
        return self.take_lease()

    @defer.inlineCallbacks
    def take_lease(self) -> Any:
        taken = yield self.store.acquire_lease(T, P, OWNER, 600_000)
        self.assertTrue(taken)

    def wire(self, url: str, stream: str, store: Any = None,
             **sink_options: Any) -> tuple[Pipeline, Relay]:
        sink = RedisStreamSink(reactor, url, stream, timeout_s=0.5, reconnect_max_s=0.2,
                               **sink_options)
        self.sink = sink
        sink.start()
        self.addCleanup(sink.stop)
        relay = Relay(
            store or self.store,
            sink,
            reactor,
            batch_size=50,
            interval_s=0.2,
            max_backoff_s=0.5,
            base_backoff_s=0.1,
        )
        relay.startService()
        self.addCleanup(relay.stopService)
        pipeline = Pipeline(self.store, relay.wake, reactor, Limits(), 10**9, synchronous_runner)
        return pipeline, relay

    @defer.inlineCallbacks
    def pending(self) -> Any:
        count, _age = yield self.store.outbox_stats()
        return count

    @defer.inlineCallbacks
    def drain(self, relay: Relay, within_s: float = 20.0) -> Any:
        deadline = reactor.seconds() + within_s
        left = -1
        while reactor.seconds() < deadline:
            ok = yield relay.flush(timeout_s=2.0)
            left = yield self.pending()
            if ok and left == 0:
                return
            yield sleep(0.1)
        self.fail(f"outbox not drained within {within_s}s ({left} left)")

    @defer.inlineCallbacks
    def test_exact_field_layout_in_the_stream(self) -> Any:
        url = shared_redis()
        stream = unique_stream("e2e")
        pipeline, relay = self.wire(url, stream)
        with SyncRedis(*_host_port(url)) as r:
            self.addCleanup(lambda: _delete(url, stream))
            yield pipeline.handle_batch(
                self.provider,
                "INBOX",
                OWNER,
                [fetched(1), fetched(2)],
                FolderCursor("77", "2", None),
            )
            yield self.drain(relay)
            entries = r.xrange(stream)
        self.assertEqual(len(entries), 2)
        for (_, fields), uid in zip(entries, (1, 2), strict=True):
            self.assertEqual(list(fields), CONTRACT_FIELDS)
            event_id, execution_id = event_ids(T, P, f"imap:INBOX:77:{uid}")
            self.assertEqual(fields["event_id"], event_id)
            self.assertEqual(fields["execution_id"], execution_id)
            self.assertEqual(fields["event_name"], "INBOUND_EMAIL_RECEIVED")
            self.assertEqual(fields["event_type"], "INBOUND_EMAIL_RECEIVED")
            self.assertEqual(fields["tenant"], T)
            self.assertEqual(
                (fields["user_id"], fields["from_state"], fields["to_state"]), ("", "", "")
            )
            self.assertRegex(fields["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            payload = json.loads(fields["payload_json"])
            self.assertEqual(payload["tenantId"], T)
            self.assertEqual(payload["emailData"]["id"], f"<msg-{uid}@example.com>")
            self.assertEqual(payload["emailData"]["imap"]["uid"], uid)

    @defer.inlineCallbacks
    def test_redis_outage_loses_and_duplicates_nothing(self) -> Any:
        if not PrivateRedis.available():
            raise unittest.SkipTest("redis-server is not installed")
        server = PrivateRedis(reactor)
        self.addCleanup(server.destroy)
        yield server.start()
        pipeline, relay = self.wire(server.url, "workflow:events:global")
        yield relay.flush()
        yield server.stop()
        # 200 messages recorded while Redis is down: ingestion goes on.
        for start in range(1, 201, 20):
            batch = [fetched(uid) for uid in range(start, start + 20)]
            result = yield pipeline.handle_batch(
                self.provider, "INBOX", OWNER, batch, FolderCursor("77", str(start + 19), None)
            )
            self.assertEqual(result.published, 20)
            yield sleep(0.05)  # let the relay try (and fail) in between
        pending = yield self.pending()
        self.assertEqual(pending, 200)
        self.assertGreater(relay.stats["errors"], 0)
        self.assertEqual(relay.stats["published"], 0)
        yield server.start()
        yield self.drain(relay)
        with server.client() as r:
            ids = [f["event_id"] for _, f in r.xrange("workflow:events:global")]
        expected = [event_ids(T, P, f"imap:INBOX:77:{uid}")[0] for uid in range(1, 201)]
        self.assertEqual(len(set(ids)), 200, "none lost")
        self.assertEqual(len(ids), 200, "none duplicated")
        self.assertEqual(ids, expected, "in commit order")
        self.assertEqual(relay.stats["published"], 200)

    @defer.inlineCallbacks
    def crash_between_xadd_and_mark(self, **sink_options: Any) -> Any:
        """Five messages whose first mark_published fails (the process
        "dies" after the XADD); what the stream holds once drained."""
        url = shared_redis()
        stream = unique_stream("crash")
        self.addCleanup(lambda: _delete(url, stream))
        pipeline, relay = self.wire(url, stream, store=MarkFailsOnce(self.store), **sink_options)
        yield pipeline.handle_batch(
            self.provider, "INBOX", OWNER, [fetched(uid) for uid in range(1, 6)], None
        )
        yield self.drain(relay)
        with SyncRedis(*_host_port(url)) as r:
            return r.xrange(stream)

    @defer.inlineCallbacks
    def test_crash_between_xadd_and_mark_is_taken_once(self) -> Any:
        entries = yield self.crash_between_xadd_and_mark()
        ids = [f["event_id"] for _, f in entries]
        self.assertEqual(len(ids), 5, "the batch went out twice and was taken once")
        self.assertEqual(len(set(ids)), 5)
        self.assertEqual(self.sink.skipped, 5)

    @defer.inlineCallbacks
    def test_crash_between_xadd_and_mark_republishes_same_event_id(self) -> Any:
        # With the window off: at-least-once, identical copies.
        entries = yield self.crash_between_xadd_and_mark(dedupe_window_ms=0)
        ids = [f["event_id"] for _, f in entries]
        self.assertEqual(len(ids), 10, "the batch went out twice")
        self.assertEqual(ids[:5], ids[5:])
        self.assertEqual(len(set(ids)), 5)
        self.assertEqual(
            [f for _, f in entries[:5]], [f for _, f in entries[5:]], "identical copies"
        )


class PipelineToRedisPostgresTests(PipelineToRedisTests):
    """The same, with the outbox in the real Postgres store."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        from imapsvc.store.postgres import PostgresStore
        from tests.integration.test_postgres_store import insert_provider
        from tests.rig import postgres as pg

        dsn = pg.database_dsn()
        pg.truncate_all(dsn)
        self.store = PostgresStore(dsn, reactor, pool_size=2)
        yield self.store.start()
        self.addCleanup(self.store.stop)
        self.provider = insert_provider(
            dsn,
            tenant=T,
            provider_id=P,
            provider_name="Support",
            mailbox="s@example.com",
            host="127.0.0.1",
            port=993,
        )
        yield self.take_lease()


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[1]
    host, _, port = rest.partition(":")
    return host, int(port or 6379)


def _delete(url: str, stream: str) -> None:
    with SyncRedis(*_host_port(url)) as r:
        r.delete_prefix(stream)  # the stream and its dedupe keys
