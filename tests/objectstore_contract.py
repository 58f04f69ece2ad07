"""The contract every :class:`~imapsvc.objectstore.IObjectStore` passes
(the local folder, the in-memory fake and the S3 store against moto).

A test case mixes in :class:`ObjectStoreContract` and provides
``make_store()`` returning the store (or a Deferred of it)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator

from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from imapsvc.deferreds import synchronous_runner
from imapsvc.model import FetchedMessage, FolderCursor, Limits
from imapsvc.objectstore import IObjectStore, ObjectStoreError
from imapsvc.objectstore.upload import ObjectUploader
from imapsvc.pipeline import Pipeline
from imapsvc.store.memory import MemoryStore
from tests.attachment_fixtures import THREE_FILES, message_with_attachments, payload

T = "11111111-1111-4111-8111-111111111111"
P = "22222222-2222-4222-8222-222222222222"
OWNER = "worker-1"

MIB = 1024 * 1024


class SourceBroke(Exception):
    pass


def chunked(data: bytes, step: int) -> Iterator[bytes]:
    for i in range(0, len(data), step):
        yield data[i : i + step]


class ObjectStoreContract:
    def make_store(self) -> Any:
        raise NotImplementedError

    @defer.inlineCallbacks
    def store(self) -> Any:
        store = yield defer.maybeDeferred(self.make_store)
        return store

    @defer.inlineCallbacks
    def test_provides_interface(self) -> Any:
        store = yield self.store()
        self.assertTrue(verifyObject(IObjectStore, store))  # type: ignore[attr-defined]
        self.assertIsInstance(store.describe(), str)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_round_trip_of_many_chunks(self) -> Any:
        store = yield self.store()
        data = payload(7, 100_003)
        yield store.put("t/p/INBOX/9/5/2", chunked(data, 4096), "application/pdf")
        got = yield store.get("t/p/INBOX/9/5/2")
        self.assertEqual(got, data)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_missing_key_is_none(self) -> Any:
        store = yield self.store()
        got = yield store.get("t/p/INBOX/9/5/nothing")
        self.assertIsNone(got)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_a_rewrite_replaces_the_object(self) -> Any:
        store = yield self.store()
        yield store.put("t/p/INBOX/9/6/2", iter([b"first version, longer"]), "text/plain")
        yield store.put("t/p/INBOX/9/6/2", iter([b"second"]), "text/plain")
        got = yield store.get("t/p/INBOX/9/6/2")
        self.assertEqual(got, b"second")  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_empty_object(self) -> Any:
        store = yield self.store()
        yield store.put("t/p/INBOX/9/7/2", iter([]), "application/octet-stream")
        got = yield store.get("t/p/INBOX/9/7/2")
        self.assertEqual(got, b"")  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_escaped_key_segments_round_trip(self) -> Any:
        store = yield self.store()
        key = "pre/t/p/Support%2FTickets/9/8/1.2"
        yield store.put(key, iter([b"x"]), "text/plain")
        got = yield store.get(key)
        self.assertEqual(got, b"x")  # type: ignore[attr-defined]
        other = yield store.get("pre/t/p/Support/Tickets/9/8/1.2")
        self.assertIsNone(other)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_large_object_in_parts(self) -> Any:
        """Larger than an S3 part (multipart upload there)."""
        store = yield self.store()
        data = payload(9, 11 * MIB + 123)
        yield store.put("t/p/INBOX/9/9/3", chunked(data, MIB), "application/zip")
        got = yield store.get("t/p/INBOX/9/9/3")
        self.assertEqual(len(got), len(data))  # type: ignore[attr-defined]
        self.assertTrue(got == data)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_a_source_failing_midway_leaves_no_object(self) -> Any:
        store = yield self.store()

        def broken() -> Iterator[bytes]:
            yield payload(1, 6 * MIB)
            yield payload(2, 6 * MIB)
            raise SourceBroke()

        try:
            yield store.put("t/p/INBOX/9/10/2", broken(), "application/pdf")
        except Exception:
            pass
        else:
            self.fail("put succeeded with a broken source")  # type: ignore[attr-defined]
        got = yield store.get("t/p/INBOX/9/10/2")
        self.assertIsNone(got)  # type: ignore[attr-defined]


class FailingAfter:
    """Wraps a store: every put after the first ``n`` fails (the object
    store dying in the middle of a message)."""

    def __init__(self, store: Any, n: int) -> None:
        self.store = store
        self.n = n
        self.puts = 0

    def put(self, key: str, chunks: Any, content_type: str) -> Any:
        if self.n is not None and self.puts >= self.n:
            return defer.fail(ObjectStoreError("object store went away (test)"))
        self.puts += 1
        return self.store.put(key, chunks, content_type)

    def get(self, key: str) -> Any:
        return self.store.get(key)

    def describe(self) -> str:
        return "failing"


class StoreModePipelineContract:
    """The store-mode pipeline on a real object store: one event whose keys
    open with the right bytes, after the store failed midway and a retry."""

    def make_store(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_768_048_496.789)
        self.store = MemoryStore(self.clock)
        self.provider = self.store.add_provider(tenant=T, provider_id=P, mailbox="s@example.com")
        self.assertTrue(self.successResultOf(self.store.acquire_lease(T, P, OWNER, 60_000)))

    def pipeline(self, objects: Any, limits: Limits) -> Pipeline:
        return Pipeline(
            self.store, lambda: None, self.clock, limits, 10**9, synchronous_runner,
            object_uploader=ObjectUploader(objects, limits, "mail"),
        )  # fmt: skip

    @defer.inlineCallbacks
    def test_three_attachments_one_event_keys_open_with_the_right_bytes(self) -> Any:
        s3 = yield defer.maybeDeferred(self.make_store)
        limits = Limits(attachment_mode="store")
        raw = message_with_attachments(THREE_FILES)
        msg = FetchedMessage("INBOX", "9", 5, len(raw), None, raw=raw)
        cursor = FolderCursor("9", "5", "2026-01-10T12:34:56.789Z")

        # The object store dies after the 2nd upload: nothing is recorded.
        failing = FailingAfter(s3, 2)
        pipeline = self.pipeline(failing, limits)
        with self.assertRaises(ObjectStoreError):
            yield pipeline.handle_batch(self.provider, "INBOX", OWNER, [msg], cursor)
        self.assertEqual(self.successResultOf(self.store.fetch_outbox(100)), [])
        self.assertIsNone(self.successResultOf(self.store.read_cursor(T, P, "INBOX")))
        self.assertEqual((pipeline.stats["stored_failures"], pipeline.stats["failures"]), (1, 1))

        # The retry (the folder fetches the message again) completes.
        failing.n = None
        result = yield pipeline.handle_batch(self.provider, "INBOX", OWNER, [msg], cursor)
        self.assertEqual(result.published, 1)
        self.assertEqual(pipeline.stats["stored_objects"], 2 + 3)
        # And a third run (say, a replay after a crash after the commit) is a duplicate.
        again = yield self.pipeline(s3, limits).handle_batch(
            self.provider, "INBOX", OWNER, [msg], cursor
        )
        self.assertEqual((again.published, again.duplicates), (0, 1))

        rows = self.successResultOf(self.store.fetch_outbox(100))
        self.assertEqual(len(rows), 1)
        data = json.loads(rows[0].fields["payload_json"])["emailData"]
        self.assertEqual(len(data["attachments"]), 3)
        for entry, (name, _ctype, content) in zip(data["attachments"], THREE_FILES):
            self.assertEqual(entry["name"], name)
            self.assertNotIn("content", entry)
            got = yield s3.get(entry["storageKey"])
            self.assertEqual(got, content)
            self.assertEqual(entry["sha256"], hashlib.sha256(content).hexdigest())
            self.assertTrue(entry["storageKey"].startswith(f"mail/{T}/{P}/INBOX/9/5/"))
