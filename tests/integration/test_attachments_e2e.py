"""IMAP_ATTACHMENT_MODE end to end: ``twistd -n imapsvc`` against the rig's
Dovecot (structure path: attachment sections fetched by BODY.PEEK[n]),
Postgres and Redis; for ``store``, moto's S3 server (signatures checked)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from imapsvc.objectstore.s3 import S3ObjectStore
from tests.attachment_fixtures import THREE_FILES, message_with_attachments
from tests.contract_validator import validate_stream_entry
from tests.rig import mail
from tests.rig import postgres as pg
from tests.rig.dovecot import DEFAULT_PASSWORD, unique_user
from tests.rig.s3 import REGION, moto_available, s3_server
from tests.rig.service import ServiceProcess, ServiceRigMixin, add_provider, http_get, wait_for
from tests.rig.tcpproxy import TcpProxy


class AttachmentModeTests(ServiceRigMixin, unittest.TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.set_up_service_rig("attachments")

    def service(self, tenant: str, worker: str = "w1", **env: str) -> ServiceProcess:
        settings = self.service_env(
            IMAP_PROVIDER_REFRESH_MS="1000",
            IMAP_LEASE_TTL_MS="6000",
            IMAP_RECONNECT_BASE_MS="200",
            IMAP_RECONNECT_MAX_MS="1000",
            IMAPSVC_TENANTS=tenant,
        )
        settings.update(env)
        proc = ServiceProcess(settings, worker)
        self.addCleanup(proc.cleanup)
        proc.start()
        return proc

    def outbox_count(self, pid: str) -> int:
        return pg.execute(
            self.dsn, "SELECT count(*) FROM imap_event_outbox WHERE provider_id = %s", (pid,)
        )[0][0]

    def one_event(self) -> dict[str, Any]:
        [(_id, fields)] = self.entries()
        self.assertEqual(validate_stream_entry(fields), [])
        return json.loads(fields["payload_json"])["emailData"]

    def test_inline_mode_carries_the_exact_bytes(self) -> Any:
        return self.inline_mode()

    def test_inline_mode_on_the_whole_message_path(self) -> Any:
        """A host listed as sending broken BODYSTRUCTUREs: BODY.PEEK[] and
        the attachments cut out of the message."""
        return self.inline_mode(IMAP_BROKEN_BODYSTRUCTURE_HOSTS="localhost")

    @defer.inlineCallbacks
    def inline_mode(self, **env: str) -> Any:
        user = self.dovecot.add_user(unique_user("inl"))
        tenant, pid = add_provider(self.dsn, user, DEFAULT_PASSWORD, self.dovecot.ports.imaps)
        big = ("big.bin", "application/octet-stream", b"z" * 300_000)
        files = [*THREE_FILES, big]
        raw = message_with_attachments(files, message_id=f"<inline-{uuid.uuid4().hex}@example.org>")
        # The 4th attachment is over the single cap: listed, reported, no content.
        proc = self.service(
            tenant, IMAP_ATTACHMENT_MODE="inline", IMAP_MAX_ATTACHMENT_BYTES="200000", **env
        )
        yield wait_for(lambda: http_get(proc.url("/readyz"))[0] == 200, 30, "readiness")
        mail.append(user, DEFAULT_PASSWORD, "INBOX", raw)
        yield wait_for(lambda: len(self.entries()) == 1, 30, "the event")
        data = self.one_event()
        atts = data["attachments"]
        self.assertEqual([a["name"] for a in atts], [f[0] for f in files])
        for entry, (_name, _ctype, content) in zip(atts[:3], THREE_FILES):
            self.assertEqual(base64.b64decode(entry["content"]), content)
        self.assertNotIn("content", atts[3])
        self.assertEqual(
            [(r["reason"], r["attachmentName"]) for r in data["ingressSkipReasons"]],
            [("attachment_over_max_bytes", "big.bin")],
        )
        self.assertEqual(data["body"]["text"], "See attached.")
        self.assertEqual(proc.terminate(), 0)

    @defer.inlineCallbacks
    def test_store_mode_survives_an_object_store_outage_and_a_kill(self) -> Any:
        if not moto_available():
            raise unittest.SkipTest("moto[server] is not installed")
        server = s3_server()
        bucket = f"imapsvc-e2e-{uuid.uuid4().hex[:12]}"
        s3 = S3ObjectStore(reactor, server.endpoint, bucket, server.credentials(), REGION)
        yield s3.create_bucket()
        # The service reaches S3 through a proxy the test can break.
        port = int(server.endpoint.rsplit(":", 1)[1])
        proxy = TcpProxy(reactor, "127.0.0.1", port)
        proxy.start()
        self.addCleanup(proxy.stop)
        proxy.pause()

        user = self.dovecot.add_user(unique_user("sto"))
        tenant, pid = add_provider(self.dsn, user, DEFAULT_PASSWORD, self.dovecot.ports.imaps)
        env = dict(
            IMAP_ATTACHMENT_MODE="store",
            IMAP_OBJECT_STORE_URL=f"http://127.0.0.1:{proxy.port}",
            IMAP_OBJECT_STORE_BUCKET=bucket,
            IMAP_OBJECT_STORE_PREFIX="mail",
            **server.environ(),
        )
        first = self.service(tenant, **env)
        raw = message_with_attachments(
            THREE_FILES, message_id=f"<store-{uuid.uuid4().hex}@example.org>"
        )
        uid = mail.append(user, DEFAULT_PASSWORD, "INBOX", raw)
        # It fetched the message and failed to store it: nothing recorded.
        yield wait_for(lambda: "to the object store" in first.log_text(), 30, "a failed upload")
        self.assertEqual(self.outbox_count(pid), 0)
        self.assertEqual(self.entries(), [])
        self.assertNotIn(server.secret_access_key, first.log_text())
        first.kill()
        pg.execute(
            self.dsn,
            "UPDATE imap_email_provider_config SET lease_expires_at = now() - interval '1 second'"
            " WHERE email_provider_id = %s",
            (pid,),
        )
        proxy.resume()
        second = self.service(tenant, worker="w2", **env)
        yield wait_for(lambda: len(self.entries()) >= 1, 40, "the event")
        yield wait_for(lambda: self.outbox_count(pid) == 1, 10, "one outbox row")
        data = self.one_event()
        self.assertEqual(data["imap"]["uid"], uid)
        self.assertEqual(len(data["attachments"]), 3)
        for entry, (_name, _ctype, content) in zip(data["attachments"], THREE_FILES):
            self.assertNotIn("content", entry)
            self.assertTrue(entry["storageKey"].startswith(f"mail/{tenant}/{pid}/INBOX/"))
            got = yield s3.get(entry["storageKey"])
            self.assertEqual(got, content)
            self.assertEqual(entry["sha256"], hashlib.sha256(content).hexdigest())
        self.assertEqual(second.terminate(), 0)
        self.assertEqual(len(self.entries()), 1)

    @defer.inlineCallbacks
    def test_store_mode_in_the_local_folder_with_raw_mime(self) -> Any:
        user = self.dovecot.add_user(unique_user("loc"))
        tenant, pid = add_provider(
            self.dsn, user, DEFAULT_PASSWORD, self.dovecot.ports.imaps, folders=("Support/EU",)
        )
        mail.create_folder(user, DEFAULT_PASSWORD, "Support")
        mail.create_folder(user, DEFAULT_PASSWORD, "Support/EU")
        root = os.path.abspath(self.mktemp())
        proc = self.service(
            tenant,
            IMAP_ATTACHMENT_MODE="store",
            IMAP_STORE_RAW_MIME="true",
            IMAP_OBJECT_STORE_DIR=root,
        )
        yield wait_for(lambda: http_get(proc.url("/readyz"))[0] == 200, 30, "readiness")
        raw = message_with_attachments(
            THREE_FILES, message_id=f"<local-{uuid.uuid4().hex}@example.org>"
        )
        mail.append(user, DEFAULT_PASSWORD, "Support/EU", raw)
        yield wait_for(lambda: len(self.entries()) == 1, 30, "the event")
        data = self.one_event()

        def read(key: str) -> bytes:
            with open(os.path.join(root, *key.split("/")), "rb") as f:
                return f.read()

        for entry, (_name, _ctype, content) in zip(data["attachments"], THREE_FILES):
            # The folder's "/" is one quoted key segment, not two levels.
            self.assertIn(f"/{tenant}/{pid}/Support%2FEU/", "/" + entry["storageKey"])
            self.assertEqual(read(entry["storageKey"]), content)
            self.assertEqual(entry["sha256"], hashlib.sha256(content).hexdigest())
        raw_mime = data["rawMime"]
        self.assertTrue(raw_mime["storageKey"].endswith("/raw.eml"))
        self.assertEqual(read(raw_mime["storageKey"]), raw)
        self.assertEqual(
            (raw_mime["sha256"], raw_mime["size"]), (hashlib.sha256(raw).hexdigest(), len(raw))
        )
        self.assertEqual(proc.terminate(), 0)
