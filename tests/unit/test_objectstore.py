"""The object store contract on the local folder and the in-memory fake;
the uploader's keys, hashes and failure behaviour."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from imapsvc.model import RAW_MIME_SECTION, FetchedMessage, Limits
from imapsvc.objectstore.local import LocalFolderStore
from imapsvc.objectstore.memory import MemoryObjectStore
from imapsvc.objectstore.s3 import _parts
from imapsvc.objectstore.upload import ObjectUploader
from tests.attachment_fixtures import THREE_FILES, message_with_attachments, sha256
from tests.objectstore_contract import ObjectStoreContract, StoreModePipelineContract

T = "11111111-1111-4111-8111-111111111111"
PID = "22222222-2222-4222-8222-222222222222"


class MemoryContract(ObjectStoreContract, unittest.TestCase):
    def make_store(self) -> Any:
        return MemoryObjectStore()


class LocalFolderContract(ObjectStoreContract, unittest.TestCase):
    def make_store(self) -> Any:
        return LocalFolderStore(reactor, self.mktemp())

    def test_no_temporary_file_is_left_behind(self) -> Any:
        root = self.mktemp()
        store = LocalFolderStore(reactor, root)

        def broken() -> Any:
            yield b"abc"
            raise RuntimeError("source broke")

        d = store.put("t/p/INBOX/1/1/2", broken(), "text/plain")

        def check(_: Any) -> None:
            self.assertEqual(os.listdir(os.path.join(root, "t/p/INBOX/1/1")), [])

        return self.assertFailure(d, RuntimeError).addCallback(check)

    def test_keys_cannot_climb_out(self) -> Any:
        store = LocalFolderStore(reactor, self.mktemp())
        return self.assertFailure(store.put("a/../../b", iter([b"x"]), "x"), Exception)


class PartsTests(unittest.TestCase):
    def test_regrouping_gives_exact_parts(self) -> None:
        chunks = [b"a" * 3, b"b" * 7, b"c" * 1, b"d" * 10]
        got = list(_parts(chunks, 5))
        self.assertEqual([len(p) for p in got], [5, 5, 5, 5, 1])
        self.assertEqual(b"".join(got), b"".join(chunks))
        self.assertEqual(list(_parts([], 5)), [])


def message(raw: bytes, uid: int = 5) -> FetchedMessage:
    return FetchedMessage("INBOX", "9", uid, len(raw), None, raw=raw)


class UploaderTests(unittest.TestCase):
    def test_every_attachment_is_stored_under_its_key_with_its_hash(self) -> None:
        store = MemoryObjectStore()
        uploader = ObjectUploader(store, Limits(attachment_mode="store"), "mail")
        raw = message_with_attachments(THREE_FILES)
        [out] = self.successResultOf(uploader.store_batch(T, PID, "INBOX", [message(raw)]))
        self.assertEqual(sorted(out.stored), ["2", "3", "4"])
        for (_name, ctype, data), section in zip(THREE_FILES, ("2", "3", "4")):
            ref = out.stored[section]
            self.assertEqual(ref["storageKey"], f"mail/{T}/{PID}/INBOX/9/5/{section}")
            self.assertEqual(store.objects[ref["storageKey"]], data)
            self.assertEqual(ref["sha256"], sha256(data))
            self.assertEqual(store.content_types[ref["storageKey"]], ctype)
        self.assertEqual(out.contents, {})
        self.assertEqual(uploader.stats["objects"], 3)

    def test_raw_mime_is_stored_when_asked(self) -> None:
        store = MemoryObjectStore()
        limits = Limits(attachment_mode="store", store_raw_mime=True)
        raw = message_with_attachments(THREE_FILES)
        [out] = self.successResultOf(
            ObjectUploader(store, limits).store_batch(T, PID, "INBOX", [message(raw)])
        )
        ref = out.stored[RAW_MIME_SECTION]
        self.assertEqual(store.objects[ref["storageKey"]], raw)
        self.assertEqual((ref["sha256"], ref["size"]), (sha256(raw), len(raw)))

    def test_a_failure_fails_the_batch_and_a_retry_writes_the_same_keys(self) -> None:
        store = MemoryObjectStore(fail_after=2)
        uploader = ObjectUploader(store, Limits(attachment_mode="store"))
        raw = message_with_attachments(THREE_FILES)
        self.failureResultOf(uploader.store_batch(T, PID, "INBOX", [message(raw)]))
        first = list(store.puts)
        self.assertEqual(len(first), 2)
        store.fail_after = None
        self.successResultOf(uploader.store_batch(T, PID, "INBOX", [message(raw)]))
        self.assertEqual(store.puts[2:4], first)
        self.assertEqual(len(store.objects), 3)


class MemoryStoreModePipeline(StoreModePipelineContract, unittest.TestCase):
    def make_store(self) -> Any:
        return MemoryObjectStore()


class LocalFolderStoreModePipeline(StoreModePipelineContract, unittest.TestCase):
    def make_store(self) -> Any:
        return LocalFolderStore(reactor, self.mktemp())


class MetricsTests(unittest.TestCase):
    def test_store_counters_are_exported(self) -> None:
        from imapsvc.metrics import ServiceCollector, make_registry, render

        stats = {"stored_objects": 3, "stored_bytes": 1234, "stored_failures": 1}
        text = render(make_registry(ServiceCollector(dict, None, lambda: stats))).decode()
        self.assertIn("imapsvc_objects_stored_total 3.0", text)
        self.assertIn("imapsvc_object_bytes_stored_total 1234.0", text)
        self.assertIn("imapsvc_object_store_failures_total 1.0", text)
