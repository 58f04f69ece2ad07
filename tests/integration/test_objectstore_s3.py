"""The S3 object store against a real S3-compatible server (moto's server
mode, signatures checked): the object store contract, a refused signature,
and the store-mode pipeline with the object store failing after the second
upload, then a retry."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

from botocore.credentials import Credentials
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from imapsvc.deferreds import synchronous_runner
from imapsvc.model import FetchedMessage, FolderCursor, Limits
from imapsvc.objectstore import ObjectStoreError
from imapsvc.objectstore.s3 import S3ObjectStore
from imapsvc.objectstore.upload import ObjectUploader
from imapsvc.pipeline import Pipeline
from imapsvc.store.memory import MemoryStore
from tests.attachment_fixtures import THREE_FILES, message_with_attachments
from tests.objectstore_contract import ObjectStoreContract
from tests.rig.s3 import REGION, moto_available, s3_server

T = "11111111-1111-4111-8111-111111111111"
P = "22222222-2222-4222-8222-222222222222"
OWNER = "worker-1"
_buckets = itertools.count(1)


def skip_without_moto() -> None:
    if not moto_available():
        raise unittest.SkipTest("moto[server] is not installed")


@defer.inlineCallbacks
def fresh_store(**kwargs: Any) -> Any:
    server = s3_server()
    store = S3ObjectStore(
        reactor,
        server.endpoint,
        f"imapsvc-test-{next(_buckets)}",
        server.credentials(),
        REGION,
        part_bytes=5 * 1024 * 1024,
        **kwargs,
    )
    yield store.create_bucket()
    return store


class S3Contract(ObjectStoreContract, unittest.TestCase):
    def setUp(self) -> None:
        skip_without_moto()

    def make_store(self) -> Any:
        return fresh_store()

    @defer.inlineCallbacks
    def test_a_wrong_secret_is_refused(self) -> Any:
        good = yield fresh_store()
        server = s3_server()
        bad = S3ObjectStore(
            reactor, server.endpoint, good._bucket,
            Credentials(server.access_key_id, "not-the-secret"), REGION,
        )  # fmt: skip
        with self.assertRaises(ObjectStoreError) as caught:
            yield bad.put("t/x", iter([b"x"]), "text/plain")
        self.assertIn("403", str(caught.exception))
        self.assertNotIn("not-the-secret", str(caught.exception))


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


class StoreModePipelineTests(unittest.TestCase):
    def setUp(self) -> None:
        skip_without_moto()
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
        s3 = yield fresh_store()
        limits = Limits(attachment_mode="store")
        raw = message_with_attachments(THREE_FILES)
        msg = FetchedMessage("INBOX", "9", 5, len(raw), None, raw=raw)
        cursor = FolderCursor("9", "5", "2026-01-10T12:34:56.789Z")

        # The object store dies after the 2nd upload: nothing is recorded.
        failing = FailingAfter(s3, 2)
        with self.assertRaises(ObjectStoreError):
            yield self.pipeline(failing, limits).handle_batch(
                self.provider, "INBOX", OWNER, [msg], cursor
            )
        self.assertEqual(self.successResultOf(self.store.fetch_outbox(100)), [])
        self.assertIsNone(self.successResultOf(self.store.read_cursor(T, P, "INBOX")))

        # The retry (the folder fetches the message again) completes.
        failing.n = None
        result = yield self.pipeline(failing, limits).handle_batch(
            self.provider, "INBOX", OWNER, [msg], cursor
        )
        self.assertEqual(result.published, 1)
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
