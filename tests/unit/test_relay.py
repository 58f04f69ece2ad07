"""The outbox relay on a fake clock, the in-memory store and the memory sink."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from imapsvc.sink.memory import MemorySink
from imapsvc.sink.relay import FIELD_ORDER, Relay, ordered_fields
from imapsvc.store.memory import MemoryStore
from tests.sink_contract import entry

T = "11111111-1111-4111-8111-111111111111"
P = "22222222-2222-4222-8222-222222222222"


class FlakyStore:
    """Wraps a store: ``mark_published`` can fail (a crash between XADD and
    the mark), ``fetch_outbox`` can be held to model a query in flight."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.mark_failures = 0
        self.fetch_failures = 0
        self.hold_fetch = False
        self.held: list[defer.Deferred[Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def fetch_outbox(self, limit: int, owner: Any = None, tenants: Any = ()) -> Any:
        if self.fetch_failures:
            self.fetch_failures -= 1
            return defer.fail(ConnectionError("store down"))
        snapshot = self._store.fetch_outbox(limit, owner, tenants)  # taken now, delivered later
        if not self.hold_fetch:
            return snapshot
        gate: defer.Deferred[Any] = defer.Deferred()
        self.held.append(gate)
        return gate.addCallback(lambda _: snapshot)

    def release_fetch(self) -> None:
        self.hold_fetch = False
        held, self.held = self.held, []
        for d in held:
            d.callback(None)

    def mark_published(self, ids: Any) -> Any:
        if self.mark_failures:
            self.mark_failures -= 1
            return defer.fail(ConnectionError("crash before mark_published"))
        return self._store.mark_published(ids)


class RelayTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.memstore = MemoryStore(self.clock)
        self.store = FlakyStore(self.memstore)
        self.sink = MemorySink(clock=self.clock)

    def relay(self, **kwargs: Any) -> Relay:
        kwargs.setdefault("interval_s", 1.0)
        kwargs.setdefault("max_backoff_s", 30.0)
        kwargs.setdefault("base_backoff_s", 0.5)
        relay = Relay(self.store, self.sink, self.clock, **kwargs)
        self.addCleanup(self.stop, relay)
        return relay

    def stop(self, relay: Relay) -> None:
        if relay.running:
            self.successResultOf(relay.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [], "no timers left behind")

    def add(self, *numbers: int) -> list[str]:
        ids = []
        for n in numbers:
            event_id, fields = entry(n)
            self.successResultOf(self.memstore.add_outbox(T, P, event_id, fields))
            ids.append(event_id)
        return ids

    def pending(self) -> int:
        return len(self.successResultOf(self.memstore.fetch_outbox(10_000)))

    def test_relay_for_some_tenants_leaves_the_others_rows(self) -> None:
        other = "33333333-3333-4333-8333-333333333333"
        mine = self.add(1)
        theirs, fields = entry(2)
        self.successResultOf(self.memstore.add_outbox(other, P, theirs, fields))
        relay = self.relay(owner="w", tenants=(T,))
        relay.startService()
        self.assertEqual(self.sink.event_ids, mine)
        self.assertEqual(self.pending(), 1, "the other tenant's row waits for its replicas")
        self.clock.advance(1.0)  # the timer refreshes the backlog: this replica's tenants only
        self.assertEqual(relay.stats["backlog"], 0)

    def test_wake_publishes_oldest_first_and_marks_published(self) -> None:
        relay = self.relay()
        relay.startService()
        expected = self.add(1, 2, 3)
        relay.wake()
        self.assertEqual(self.sink.event_ids, expected)
        self.assertEqual(self.sink.entries[0][2], entry(1)[1], "fields go out unchanged")
        self.assertEqual(self.pending(), 0)
        self.assertEqual(relay.stats["published"], 3)

    def test_owner_relays_only_rows_it_may(self) -> None:
        # Another replica leases P: its committed rows are its to publish.
        self.memstore.add_provider(tenant=T, provider_id=P)
        self.successResultOf(self.memstore.acquire_lease(T, P, "other", 60000))
        self.add(1, 2)
        relay = self.relay(owner="me")
        relay.startService()
        relay.wake()
        self.assertEqual(self.sink.event_ids, [])
        self.assertEqual(self.pending(), 2)
        # Its lease lapses (the replica died): now they are anybody's.
        self.memstore.expire_lease(T, P)
        relay.wake()
        self.assertEqual(len(self.sink.event_ids), 2)

    def test_not_started_ignores_wake(self) -> None:
        relay = self.relay()
        self.add(1)
        relay.wake()
        self.assertEqual(self.sink.calls, 0)

    def test_start_publishes_leftovers(self) -> None:
        expected = self.add(1, 2)
        relay = self.relay()
        relay.startService()
        self.assertEqual(self.sink.event_ids, expected)

    def test_batches_of_batch_size_in_order(self) -> None:
        relay = self.relay(batch_size=2)
        relay.startService()
        expected = self.add(*range(5))
        relay.wake()
        self.assertEqual(self.sink.calls, 3)
        self.assertEqual(self.sink.event_ids, expected)

    def test_wakes_during_a_run_are_coalesced(self) -> None:
        relay = self.relay()
        relay.startService()
        self.sink.hold()
        first = self.add(1)
        relay.wake()
        self.assertEqual(self.sink.calls, 1)
        second = self.add(2, 3)
        for _ in range(5):
            relay.wake()
        self.assertEqual(self.sink.calls, 1, "one run at a time")
        self.sink.release()
        self.sink.release()
        self.assertEqual(self.sink.event_ids, first + second)
        self.assertEqual(self.sink.calls, 2)
        self.assertEqual(self.pending(), 0)

    def test_commit_during_inflight_fetch_is_not_left_behind(self) -> None:
        # The fetch's snapshot predates the commit; the wake during the run
        # must cause another run, not wait for the timer.
        relay = self.relay()
        relay.startService()
        self.store.hold_fetch = True
        relay.wake()
        late = self.add(1)
        relay.wake()
        self.store.release_fetch()
        self.assertEqual(self.sink.event_ids, late)

    def test_periodic_timer_picks_up_rows_without_wake(self) -> None:
        relay = self.relay(interval_s=1.0)
        relay.startService()
        expected = self.add(1)
        self.assertEqual(self.sink.calls, 0)
        self.clock.advance(1.0)
        self.assertEqual(self.sink.event_ids, expected)

    def test_sink_down_backs_off_exponentially_without_busy_loop(self) -> None:
        relay = self.relay(base_backoff_s=0.5, max_backoff_s=4.0, interval_s=1.0)
        relay.startService()
        self.sink.fail()
        self.add(1)
        relay.wake()
        self.assertEqual(self.sink.calls, 1)
        self.assertTrue(relay.backing_off)
        attempts = [self.clock.seconds()]
        for _ in range(7):
            calls = self.sink.calls
            for _ in range(1000):  # wakes and timer ticks do not force retries
                relay.wake()
                self.clock.advance(0.01)
                if self.sink.calls != calls:
                    break
            self.assertEqual(self.sink.calls, calls + 1)
            attempts.append(self.clock.seconds())
        gaps = [b - a for a, b in zip(attempts, attempts[1:])]
        for gap, want in zip(gaps, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0], strict=True):
            self.assertLess(abs(gap - want), 0.015, (gaps, want))
        self.assertEqual(relay.stats["errors"], 8)
        self.assertIn("SinkDown", relay.stats["last_error"])

    def test_one_outbox_stats_query_at_a_time(self) -> None:
        # A busy store: the backlog query of each tick would queue behind the
        # last one; at most one is out, and the deadline frees the next.
        calls: list[defer.Deferred[Any]] = []

        def slow_stats(tenants: Any = ()) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            calls.append(d)
            return d

        self.store.outbox_stats = slow_stats  # type: ignore[attr-defined]
        relay = self.relay(interval_s=1.0)
        relay.startService()
        from twisted.logger import globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for _ in range(20):
            self.clock.advance(1.0)
        # one query per 5 s deadline (plus the tick that waits for it), not
        # one per tick; a deadline hit is an info line, not a warning
        self.assertIn(len(calls), (3, 4))
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        stats_lines = [e for e in events
                       if "Outbox backlog not refreshed" in e.get("log_format", "")]
        self.assertTrue(stats_lines)
        self.assertEqual({e["log_level"].name for e in stats_lines}, {"info"})
        self.assertFalse([e for e in events if e["log_level"].name in ("warn", "error", "critical")
                          and "outbox stats" in str(e.get("what", ""))])
        asked = len(calls)
        calls[-1].callback((7, 3.0))
        self.assertEqual(relay.stats["backlog"], 7)
        self.clock.advance(1.0)
        self.assertEqual(len(calls), asked + 1)  # answered: the next tick asks again
        calls[-1].callback((0, None))

    def test_ingestion_continues_and_backlog_grows_while_down(self) -> None:
        relay = self.relay(max_backoff_s=2.0)
        relay.startService()
        self.sink.fail()
        self.add(1)
        relay.wake()
        expected_more = self.add(*range(2, 12))
        relay.wake()
        self.clock.advance(0.1)
        self.assertEqual(relay.stats["backlog"], 1)  # refreshed at the failure
        self.clock.advance(2.0)  # a retry fails, refreshes the backlog
        self.assertEqual(relay.stats["backlog"], 11)
        self.sink.recover()
        self.clock.advance(2.0)
        self.assertEqual(self.sink.event_ids, [entry(1)[0]] + expected_more)
        self.assertEqual(relay.stats["backlog"], 0)
        self.assertEqual(relay.stats["consecutive_failures"], 0)
        self.assertFalse(relay.backing_off)

    def test_store_down_backs_off_too(self) -> None:
        relay = self.relay()
        relay.startService()
        self.store.fetch_failures = 1
        expected = self.add(1)
        relay.wake()
        self.assertEqual(self.sink.calls, 0)
        self.assertEqual(relay.stats["errors"], 1)
        self.clock.advance(0.5)
        self.assertEqual(self.sink.event_ids, expected)

    def test_crash_between_publish_and_mark_republishes_same_event_ids(self) -> None:
        relay = self.relay()
        relay.startService()
        self.store.mark_failures = 1
        expected = self.add(1, 2)
        relay.wake()
        self.assertEqual(self.sink.event_ids, expected)
        self.assertEqual(self.pending(), 2, "not marked")
        self.clock.advance(0.5)
        # The relay publishes both again with the same event_ids; the sink
        # (the stream's dedupe window) takes each once.
        self.assertEqual(self.sink.skipped_ids, expected)
        self.assertEqual(self.sink.event_ids, expected)
        self.assertEqual(self.pending(), 0)
        self.assertEqual([f["event_id"] for _, _, f in self.sink.entries], expected)

    def test_crash_then_new_process_republishes_same_event_ids(self) -> None:
        first = self.relay()
        first.startService()
        self.store.mark_failures = 1
        expected = self.add(1)
        first.wake()
        self.successResultOf(first.stopService())  # the process "dies"
        second = self.relay()
        second.startService()
        self.assertEqual(self.sink.skipped_ids, expected)
        self.assertEqual(self.sink.event_ids, expected)
        self.assertEqual(self.pending(), 0)

    def test_prefix_published_before_failure_is_republished(self) -> None:
        relay = self.relay()
        relay.startService()
        self.sink.fail(after=2)
        expected = self.add(1, 2, 3)
        relay.wake()
        self.assertEqual(self.sink.event_ids, expected[:2])
        self.sink.recover()
        self.clock.advance(0.5)
        self.assertEqual(self.sink.skipped_ids, expected[:2])
        self.assertEqual(self.sink.event_ids, expected)

    def test_flush_true_when_drained(self) -> None:
        relay = self.relay()
        relay.startService()
        self.sink.hold()
        self.add(1)
        relay.wake()
        self.add(2)
        d = relay.flush(timeout_s=5)
        self.assertNoResult(d)
        self.sink.release()
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.pending(), 0)

    def test_flush_waits_for_a_run_that_started_after_it(self) -> None:
        relay = self.relay()
        relay.startService()
        self.store.hold_fetch = True
        relay.wake()  # run 1: its (empty) snapshot predates row 1
        expected = self.add(1)
        d = relay.flush(timeout_s=5)
        self.sink.hold()
        self.store.release_fetch()  # run 1 ends "empty": not good enough
        self.assertNoResult(d)
        self.sink.release()
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.sink.event_ids, expected)

    def test_flush_skips_backoff_and_reports_failure(self) -> None:
        relay = self.relay(max_backoff_s=30, base_backoff_s=30)
        relay.startService()
        self.sink.fail()
        self.add(1)
        relay.wake()
        self.assertTrue(relay.backing_off)
        self.sink.recover()
        self.assertIs(self.successResultOf(relay.flush()), True)
        self.assertEqual(self.pending(), 0)
        self.sink.fail()
        self.add(2)
        self.assertIs(self.successResultOf(relay.flush()), False)

    def test_flush_is_bounded(self) -> None:
        relay = self.relay()
        relay.startService()
        self.sink.hold()
        self.add(1)
        d = relay.flush(timeout_s=3)
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertIs(self.successResultOf(d), False)
        self.sink.release()

    def test_stop_waits_for_the_run_in_progress(self) -> None:
        relay = self.relay()
        relay.startService()
        self.sink.hold()
        self.add(1)
        relay.wake()
        d: Optional[defer.Deferred[None]] = relay.stopService()
        self.assertNoResult(d)
        self.sink.release()
        self.successResultOf(d)
        self.assertEqual(self.pending(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class OrderedFieldsTests(unittest.TestCase):
    def test_contract_order_restored_and_unknown_fields_kept_last(self) -> None:
        shuffled = dict(sorted(entry(1)[1].items(), reverse=True))
        shuffled["zz_extra"] = "1"
        got = ordered_fields(shuffled)
        self.assertEqual(list(got), list(FIELD_ORDER) + ["zz_extra"])
        self.assertEqual(got, shuffled)

    def test_relay_publishes_in_contract_order(self) -> None:
        clock = Clock()
        store = MemoryStore(clock)
        sink = MemorySink()
        event_id, fields = entry(1)
        self.successResultOf(store.add_outbox(T, P, event_id, dict(sorted(fields.items()))))
        relay = Relay(store, sink, clock)
        relay.startService()
        self.addCleanup(relay.stopService)
        self.assertEqual(list(sink.entries[0][2]), list(FIELD_ORDER))


class RelayMemoryPathTests(unittest.TestCase):
    """Rows handed over after a commit (:meth:`Relay.offer`) go out without a
    read-back while the relay is caught up; the outbox stays the record."""

    setUp = RelayTests.setUp
    relay = RelayTests.relay
    stop = RelayTests.stop
    add = RelayTests.add
    pending = RelayTests.pending

    def committed(self, *numbers: int) -> list[Any]:
        # What a store reports after a commit: the rows just queued.
        before = {row.id for row in self.successResultOf(self.memstore.fetch_outbox(10_000))}
        self.add(*numbers)
        rows = self.successResultOf(self.memstore.fetch_outbox(10_000))
        return [row for row in rows if row.id not in before]

    def counting_fetches(self) -> list[int]:
        calls: list[int] = []
        original = self.store.fetch_outbox

        def counted(limit: int, *args: Any) -> Any:
            calls.append(limit)
            return original(limit, *args)

        self.store.fetch_outbox = counted  # type: ignore[method-assign]
        return calls

    def test_offer_when_caught_up_publishes_without_reading_the_outbox(self) -> None:
        relay = self.relay()
        relay.startService()  # the start-up read finds nothing: caught up
        fetches = self.counting_fetches()
        rows = self.committed(1, 2)
        relay.offer(rows)
        self.assertEqual(fetches, [], "no read-back on the hot path")
        self.assertEqual(self.sink.event_ids, [r.event_id for r in rows])
        self.assertEqual(self.sink.entries[0][2], entry(1)[1])
        self.assertEqual(self.pending(), 0, "marked published in the outbox")
        self.assertEqual(relay.stats["from_memory"], 2)

    def test_offer_before_caught_up_reads_the_outbox_in_order(self) -> None:
        older = self.add(1)
        self.sink.fail(ConnectionError("down"))
        relay = self.relay()
        relay.startService()  # the start-up run fails: not caught up
        self.assertEqual(self.sink.event_ids, [])
        self.sink.recover()
        self.clock.advance(0.5)  # retry publishes the older row
        rows = self.committed(2)
        relay.offer(rows)
        self.assertEqual(self.sink.event_ids, older + [rows[0].event_id])
        self.assertEqual(self.pending(), 0)

    def test_crash_after_publish_before_mark_republishes_same_event_id(self) -> None:
        relay = self.relay()
        relay.startService()
        rows = self.committed(1)
        self.store.mark_failures = 1  # the process "dies" between XADD and mark
        relay.offer(rows)
        self.assertEqual(self.sink.event_ids, [rows[0].event_id])
        self.assertEqual(self.pending(), 1, "still in the outbox")
        self.clock.advance(0.5)  # the retry reads the outbox
        # Published again with the same event_id, taken once by the sink.
        self.assertEqual(self.sink.skipped_ids, [rows[0].event_id], "same event_id")
        self.assertEqual(self.sink.event_ids, [rows[0].event_id])
        self.assertEqual(self.pending(), 0)

    def test_commit_without_publish_is_recovered_from_the_outbox(self) -> None:
        # Committed, then the process stopped before the relay saw the rows:
        # a new relay publishes them from the outbox at start-up.
        rows = self.committed(1, 2)
        relay = self.relay()
        relay.startService()
        self.assertEqual(self.sink.event_ids, [r.event_id for r in rows])

    def test_offer_during_a_full_read_does_not_duplicate(self) -> None:
        relay = self.relay()
        relay.startService()
        self.store.hold_fetch = True
        relay.wake()  # a read of the outbox is in flight
        rows = self.committed(1)
        relay.offer(rows)
        self.store.release_fetch()
        self.store.hold_fetch = False
        self.assertEqual(self.sink.event_ids, [rows[0].event_id], "published once")
        self.assertEqual(self.pending(), 0)

    def test_offers_during_a_memory_run_keep_commit_order(self) -> None:
        relay = self.relay()
        relay.startService()
        self.sink.hold()
        first = self.committed(1)
        relay.offer(first)
        second = self.committed(2, 3)
        relay.offer(second)
        self.assertEqual(self.sink.calls, 1)
        self.sink.release()
        self.sink.release()
        self.assertEqual(self.sink.event_ids, [r.event_id for r in first + second])
        self.assertEqual(self.pending(), 0)

    def test_memory_cap_falls_back_to_the_outbox(self) -> None:
        relay = self.relay(max_memory_rows=1)
        relay.startService()
        fetches = self.counting_fetches()
        rows = self.committed(1, 2)
        relay.offer(rows)
        self.assertTrue(fetches, "read the outbox instead")
        self.assertEqual(self.sink.event_ids, [r.event_id for r in rows])

    def test_offer_when_stopped_is_ignored(self) -> None:
        relay = self.relay()
        relay.offer(self.committed(1))
        self.assertEqual(self.sink.calls, 0)
