"""The message pipeline on the in-memory store, with the real mapping and
event building, a fake clock and a synchronous (recording) runner."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from imapsvc.core.event import event_ids
from imapsvc.core.records import batch_bytes, build_records
from imapsvc.deferreds import synchronous_runner
from imapsvc.interfaces import IMessagePipeline, LeaseLost
from imapsvc.model import (
    OUTCOME_DUPLICATE,
    OUTCOME_PUBLISHED,
    OUTCOME_SKIPPED,
    FetchedMessage,
    FolderCursor,
    Limits,
)
from imapsvc.pipeline import Pipeline, build_records_logged
from imapsvc.store.memory import MemoryStore
from tests.contract_validator import FIELDS as CONTRACT_FIELDS

T = "11111111-1111-4111-8111-111111111111"
P = "22222222-2222-4222-8222-222222222222"
OWNER = "worker-1"


def raw_message(n: int, sender: str = "Alice <alice@example.com>", body: str = "hello") -> bytes:
    head = f"From: {sender}\r\n" if sender else ""
    return (
        f"{head}To: support@example.com\r\nSubject: Ticket {n}\r\n"
        f"Message-ID: <msg-{n}@example.com>\r\nDate: Sat, 10 Jan 2026 12:00:00 +0000\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body} {n}\r\n"
    ).encode()


def fetched(n: int, **kwargs: Any) -> FetchedMessage:
    raw = raw_message(n, **kwargs)
    return FetchedMessage(
        mailbox="INBOX",
        uid_validity="77",
        uid=n,
        size=len(raw),
        internal_date="2026-01-10T12:00:01.000Z",
        raw=raw,
    )


class RecordingRunner:
    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.fail:
            return defer.fail(RuntimeError("thread pool is gone"))
        return synchronous_runner(f, *args, **kwargs)


class PipelineTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_768_048_496.789)  # 2026-01-10T12:34:56.789Z
        self.store = MemoryStore(self.clock)
        self.provider = self.store.add_provider(tenant=T, provider_id=P, mailbox="s@example.com")
        self.assertTrue(self.successResultOf(self.store.acquire_lease(T, P, OWNER, 60_000)))
        self.wakes = 0
        self.runner = RecordingRunner()

    def wake(self) -> None:
        self.wakes += 1

    def pipeline(self, threshold: int = 10**9, **kwargs: Any) -> Pipeline:
        return Pipeline(
            self.store, self.wake, self.clock, Limits(), threshold, self.runner, **kwargs
        )

    def cursor(self, uid: int) -> FolderCursor:
        return FolderCursor("77", str(uid), "2026-01-10T12:34:56.789Z")

    def outbox(self) -> list[Any]:
        return self.successResultOf(self.store.fetch_outbox(1000))

    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(IMessagePipeline, self.pipeline()))

    def test_batch_is_recorded_with_exact_stream_fields(self) -> None:
        result = self.successResultOf(
            self.pipeline().handle_batch(
                self.provider, "INBOX", OWNER, [fetched(1), fetched(2)], self.cursor(2)
            )
        )
        self.assertEqual(result.outcomes, (OUTCOME_PUBLISHED, OUTCOME_PUBLISHED))
        self.assertEqual(self.wakes, 1)
        rows = self.outbox()
        self.assertEqual(len(rows), 2)
        fields = rows[0].fields
        expected_event, expected_exec = event_ids(T, P, "imap:INBOX:77:1")
        self.assertEqual(rows[0].event_id, expected_event)
        self.assertEqual(
            sorted(fields),
            sorted(CONTRACT_FIELDS),
        )
        self.assertEqual(fields["event_id"], expected_event)
        self.assertEqual(fields["execution_id"], expected_exec)
        self.assertEqual(fields["event_name"], "INBOUND_EMAIL_RECEIVED")
        self.assertEqual(fields["tenant"], T)
        self.assertEqual(fields["timestamp"], "2026-01-10T12:34:56.789Z")
        payload = json.loads(fields["payload_json"])
        self.assertEqual(payload["providerId"], P)
        data = payload["emailData"]
        self.assertEqual(data["id"], "<msg-1@example.com>")
        self.assertEqual(data["from"]["email"], "alice@example.com")
        self.assertEqual(data["subject"], "Ticket 1")
        self.assertEqual(data["imap"]["uid"], 1)
        cursor = self.successResultOf(self.store.read_cursor(T, P, "INBOX"))
        self.assertEqual(cursor.last_uid, "2")

    def test_message_without_from_is_skipped_with_reason(self) -> None:
        result = self.successResultOf(
            self.pipeline().handle_batch(
                self.provider, "INBOX", OWNER, [fetched(1, sender="")], self.cursor(1)
            )
        )
        self.assertEqual(result.outcomes, (OUTCOME_SKIPPED,))
        self.assertEqual(self.outbox(), [])
        self.assertEqual(self.wakes, 0, "nothing to publish, no wake")
        (row,) = self.store.ledger_rows(T, P)
        self.assertEqual(row["outcome"], OUTCOME_SKIPPED)
        self.assertIn("From", row["reason"])
        self.assertEqual(row["event_id"], event_ids(T, P, "imap:INBOX:77:1")[0])
        self.assertEqual(self.successResultOf(self.store.read_cursor(T, P, "INBOX")).last_uid, "1")

    def test_refetched_batch_is_all_duplicates(self) -> None:
        pipeline = self.pipeline()
        batch = [fetched(1), fetched(2)]
        self.successResultOf(pipeline.handle_batch(self.provider, "INBOX", OWNER, batch, None))
        result = self.successResultOf(
            pipeline.handle_batch(self.provider, "INBOX", OWNER, batch, None)
        )
        self.assertEqual(result.outcomes, (OUTCOME_DUPLICATE, OUTCOME_DUPLICATE))
        self.assertEqual(len(self.outbox()), 2)
        self.assertEqual(self.wakes, 1)
        self.assertEqual(pipeline.stats["duplicates"], 2)

    def test_same_message_gets_the_same_ids_in_another_process(self) -> None:
        self.successResultOf(
            self.pipeline().handle_batch(self.provider, "INBOX", OWNER, [fetched(5)], None)
        )
        other = MemoryStore(self.clock)
        other.add_provider(tenant=T, provider_id=P, mailbox="s@example.com")
        self.successResultOf(other.acquire_lease(T, P, OWNER, 60_000))
        pipeline = Pipeline(other, self.wake, self.clock, Limits(), 10**9, self.runner)
        self.successResultOf(
            pipeline.handle_batch(self.provider, "INBOX", OWNER, [fetched(5)], None)
        )
        a = self.outbox()[0].fields
        b = self.successResultOf(other.fetch_outbox(10))[0].fields
        self.assertEqual((a["event_id"], a["execution_id"]), (b["event_id"], b["execution_id"]))

    def test_lease_lost_records_nothing(self) -> None:
        self.store.expire_lease(T, P)
        self.successResultOf(self.store.acquire_lease(T, P, "someone-else", 60_000))
        pipeline = self.pipeline()
        self.failureResultOf(
            pipeline.handle_batch(self.provider, "INBOX", OWNER, [fetched(1)], self.cursor(1)),
            LeaseLost,
        )
        self.assertEqual(self.outbox(), [])
        self.assertEqual(self.store.ledger_rows(T, P), [])
        self.assertIsNone(self.successResultOf(self.store.read_cursor(T, P, "INBOX")))
        self.assertEqual(self.wakes, 0)
        self.assertEqual(pipeline.stats["failures"], 1)

    def test_big_batches_are_mapped_through_the_runner(self) -> None:
        batch = [fetched(1), fetched(2)]
        size = batch_bytes(batch)
        self.assertGreater(size, 0)
        self.successResultOf(
            self.pipeline(threshold=size).handle_batch(self.provider, "INBOX", OWNER, batch, None)
        )
        self.assertEqual(self.runner.calls, 0, "at the threshold: on the calling thread")
        batch = [fetched(3), fetched(4)]
        result = self.successResultOf(
            self.pipeline(threshold=size - 1).handle_batch(
                self.provider, "INBOX", OWNER, batch, None
            )
        )
        self.assertEqual(self.runner.calls, 1)
        self.assertEqual(result.published, 2)

    def test_a_prepared_batch_is_mapped_once_and_recorded_in_order(self) -> None:
        held: list[defer.Deferred[Any]] = []

        def store_waits(*args: Any) -> Any:
            d: defer.Deferred[Any] = defer.Deferred()
            held.append(d)
            d.addCallback(lambda _: MemoryStore.record_batch(self.store, *args))
            return d

        self.store.record_batch = store_waits  # type: ignore[method-assign]
        pipeline = self.pipeline(threshold=0)
        first, second = [fetched(1)], [fetched(2)]
        d1 = pipeline.handle_batch(self.provider, "INBOX", OWNER, first, self.cursor(1))
        self.assertEqual(self.runner.calls, 1)
        # The read-ahead batch is mapped while the first one commits.
        pipeline.prepare(self.provider, "INBOX", second)
        self.assertEqual(self.runner.calls, 2)
        self.assertEqual(len(held), 1, "nothing of the second batch is recorded yet")
        held[0].callback(None)
        self.assertEqual(self.successResultOf(d1).published, 1)
        # A copy of the batch (same folder, UIDVALIDITY, UIDs) is the same batch.
        d2 = pipeline.handle_batch(self.provider, "INBOX", OWNER, list(second), self.cursor(2))
        self.assertEqual(self.runner.calls, 2, "not mapped again")
        held[1].callback(None)
        self.assertEqual(self.successResultOf(d2).published, 1)
        self.assertEqual(pipeline.stats["prepared"], 1)
        self.assertEqual([r.event_id for r in self.outbox()],
                         [r.event_id for r in build_records(
                             first + second, T, P, "INBOX", datetime.now(UTC), Limits())])

    def test_a_failed_or_foreign_preparation_is_mapped_again(self) -> None:
        pipeline = self.pipeline(threshold=0)
        batch = [fetched(1)]
        self.runner.fail = True
        pipeline.prepare(self.provider, "INBOX", batch)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.runner.fail = False
        result = self.successResultOf(
            pipeline.handle_batch(self.provider, "INBOX", OWNER, batch, self.cursor(1)))
        self.assertEqual((result.published, self.runner.calls), (1, 2))
        # Prepared for another folder: not used for this one.
        other = [fetched(2)]
        pipeline.prepare(self.provider, "Other", other)
        self.successResultOf(
            pipeline.handle_batch(self.provider, "INBOX", OWNER, other, self.cursor(2)))
        self.assertEqual((self.runner.calls, pipeline.stats["prepared"]), (4, 0))
        # Small batches are mapped when handed in; nothing is kept for them.
        pipeline = self.pipeline()
        pipeline.prepare(self.provider, "INBOX", [fetched(3)])
        self.assertEqual((self.runner.calls, len(pipeline._prepared)), (4, 0))
        # Other UIDs: mapped again.
        pipeline = self.pipeline(threshold=0)
        pipeline.prepare(self.provider, "INBOX", [fetched(4)])
        self.successResultOf(
            pipeline.handle_batch(self.provider, "INBOX", OWNER, [fetched(5)], None))
        self.assertEqual((self.runner.calls, pipeline.stats["prepared"]), (6, 0))

    def test_every_folder_keeps_its_prepared_batch(self) -> None:
        pipeline = self.pipeline(threshold=0)
        folders = [f"F{i}" for i in range(10)]
        for i, folder in enumerate(folders):
            pipeline.prepare(self.provider, folder, [fetched(i + 1)])
        for i, folder in enumerate(folders):
            self.successResultOf(
                pipeline.handle_batch(self.provider, folder, OWNER, [fetched(i + 1)], None))
        self.assertEqual((self.runner.calls, pipeline.stats["prepared"]), (10, 10))

    def test_runner_failure_records_nothing(self) -> None:
        self.runner.fail = True
        self.failureResultOf(
            self.pipeline(threshold=0).handle_batch(
                self.provider, "INBOX", OWNER, [fetched(1)], self.cursor(1)
            ),
            RuntimeError,
        )
        self.assertEqual(self.store.ledger_rows(T, P), [])
        self.assertIsNone(self.successResultOf(self.store.read_cursor(T, P, "INBOX")))

    def test_store_failure_fails_the_batch(self) -> None:
        def broken(*args: Any) -> Any:
            return defer.fail(ConnectionError("db down"))

        self.patch(self.store, "record_batch", broken)
        self.failureResultOf(
            self.pipeline().handle_batch(self.provider, "INBOX", OWNER, [fetched(1)], None),
            ConnectionError,
        )
        self.assertEqual(self.wakes, 0)

    def test_entry_build_error_skips_only_that_message(self) -> None:
        from imapsvc.core import event

        def build(tenant: str, provider_id: str, data: Any, *rest: Any) -> dict[str, str]:
            if data["subject"] == "Ticket 2":
                raise ValueError("not JSON-able")
            return event.build_stream_entry(tenant, provider_id, data, *rest)

        def records(*args: Any) -> Any:
            return build_records_logged(*args, build_stream_entry=build)

        result = self.successResultOf(
            self.pipeline(build=records).handle_batch(
                self.provider, "INBOX", OWNER, [fetched(1), fetched(2), fetched(3)], None
            )
        )
        self.assertEqual(result.outcomes, (OUTCOME_PUBLISHED, OUTCOME_SKIPPED, OUTCOME_PUBLISHED))
        reasons = [r["reason"] for r in self.store.ledger_rows(T, P)]
        self.assertEqual(reasons[1], "build_error: ValueError")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_wake_failure_does_not_fail_a_committed_batch(self) -> None:
        def bad_wake() -> None:
            raise RuntimeError("relay gone")

        pipeline = Pipeline(self.store, bad_wake, self.clock, Limits(), 10**9, self.runner)
        result = self.successResultOf(
            pipeline.handle_batch(self.provider, "INBOX", OWNER, [fetched(1)], None)
        )
        self.assertEqual(result.published, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_empty_batch_still_stores_the_cursor(self) -> None:
        result = self.successResultOf(
            self.pipeline().handle_batch(self.provider, "INBOX", OWNER, [], self.cursor(9))
        )
        self.assertEqual(result.outcomes, ())
        self.assertEqual(self.successResultOf(self.store.read_cursor(T, P, "INBOX")).last_uid, "9")
