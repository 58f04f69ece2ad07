"""The contract every :class:`~imapsvc.objectstore.IObjectStore` passes
(the local folder, the in-memory fake and the S3 store against moto).

A test case mixes in :class:`ObjectStoreContract` and provides
``make_store()`` returning the store (or a Deferred of it)."""

from __future__ import annotations

from typing import Any, Iterator

from twisted.internet import defer
from zope.interface.verify import verifyObject

from imapsvc.objectstore import IObjectStore
from tests.attachment_fixtures import payload

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
