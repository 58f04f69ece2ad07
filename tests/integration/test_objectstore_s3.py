"""The S3 object store against a real S3-compatible server (moto's server
mode, signatures checked): the object store contract, a refused signature,
and the store-mode pipeline with the object store failing after the second
upload, then a retry."""

from __future__ import annotations

import itertools
from typing import Any

from botocore.credentials import Credentials
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from imapsvc.objectstore import ObjectStoreError
from imapsvc.objectstore.s3 import S3ObjectStore
from tests.objectstore_contract import ObjectStoreContract, StoreModePipelineContract
from tests.rig.s3 import REGION, moto_available, s3_server

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
        runner=lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a),
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


class S3StoreModePipeline(StoreModePipelineContract, unittest.TestCase):
    def setUp(self) -> None:
        skip_without_moto()
        super().setUp()

    def make_store(self) -> Any:
        return fresh_store()
