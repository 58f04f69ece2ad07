"""IMAP extensions against a real Dovecot 2.3: ``ID`` (RFC 2971), ``ENABLE
UTF8=ACCEPT`` (RFC 6855: not offered by 2.3, so only "not sent"),
``COMPRESS=DEFLATE`` (RFC 4978, with the imap_zlib plugin)."""

from __future__ import annotations

from unittest import SkipTest

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from imapsvc.deferreds import synchronous_runner
from imapsvc.folder import FolderOptions, FolderService
from imapsvc.imap.compress import offers_deflate
from imapsvc.imap.extensions import client_id_fields
from imapsvc.imap.tls import client_tls_options
from imapsvc.interfaces import ICredentialSource
from imapsvc.model import Credentials, Limits
from imapsvc.pipeline import Pipeline
from imapsvc.store.memory import MemoryStore
from tests.integration import test_protocol_dovecot as base
from tests.rig import mail
from tests.rig.dovecot import DEFAULT_PASSWORD, get_dovecot, unique_user


@defer.inlineCallbacks
def wait_for(predicate, timeout=10.0, step=0.05):
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        yield task.deferLater(reactor, step, lambda: None)
        waited += step


class DovecotIdTests(TestCase):
    timeout = 60
    open = base.DovecotProtocolTests.open
    login = base.DovecotProtocolTests.login
    _close = base.DovecotProtocolTests._close

    def setUp(self):
        self.dovecot = get_dovecot()
        self.user = self.dovecot.add_user(unique_user("id"))

    def log_lines(self):
        with open(self.dovecot.log_path, encoding="utf-8", errors="replace") as f:
            return [line for line in f if self.user in line and "ID sent" in line]

    @defer.inlineCallbacks
    def test_id_after_login(self):
        client, before, after = yield self.login()
        self.assertIn(b"ID", after)
        server = yield client.send_id(client_id_fields())
        self.assertEqual(server.get("name"), "Dovecot")
        # Dovecot logs what we said (imap_id_log = * in the rig).
        yield wait_for(lambda: self.log_lines())
        version = dict(client_id_fields())["version"]
        self.assertIn(f"name=imapsvc, version={version}", self.log_lines()[-1])
        # The session goes on normally.
        info = yield client.examine_folder("INBOX")
        self.assertTrue(info["read_only"])
        yield client.logout()
        yield client.lost

    @defer.inlineCallbacks
    def test_utf8_accept_only_when_offered(self):
        # Dovecot 2.3 offers ENABLE but not UTF8=ACCEPT (2.4 does): nothing is
        # sent and the session goes on; the byte-level tests cover the rest.
        client, _before, after = yield self.login()
        self.assertIn(b"ENABLE", after)
        offered = b"ACCEPT" in (after.get(b"UTF8") or [])
        enabled = yield client.enable_utf8()
        self.assertEqual(enabled, offered)
        self.assertEqual(client.utf8_accept, offered)
        info = yield client.examine_folder("INBOX")
        self.assertGreater(info["uidvalidity"], 0)
        yield client.logout()
        yield client.lost


class _CountingClient(base._TestClient):
    """Counts the bytes that really cross the socket (compressed or not)."""

    def __init__(self, *args, **kwargs):
        base._TestClient.__init__(self, *args, **kwargs)
        self.wire_in = 0

    def dataReceived(self, data):
        self.wire_in += len(data)
        base._TestClient.dataReceived(self, data)


class DovecotCompressTests(TestCase):
    """COMPRESS=DEFLATE (RFC 4978) with Dovecot's imap_zlib plugin. The rig
    listens on loopback, where ``auto`` never compresses: these tests use
    ``always``."""

    timeout = 60
    _close = base.DovecotProtocolTests._close

    def setUp(self):
        self.dovecot = get_dovecot()
        self.user = self.dovecot.add_user(unique_user("zlib"))

    @defer.inlineCallbacks
    def login(self):
        client = _CountingClient(reactor, command_timeout=base.TIMEOUT, inactivity_timeout=300)
        endpoint = wrapClientTLS(
            client_tls_options("localhost", ca_file=self.dovecot.ca_file),
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.dovecot.ports.imaps),
        )
        yield connectProtocol(endpoint, client)
        self.addCleanup(self._close, client)
        yield client.greeted.addTimeout(base.TIMEOUT, reactor)
        caps = yield client.authenticate_with(
            Credentials("password", self.user, DEFAULT_PASSWORD)
        )
        if not offers_deflate(caps):
            raise SkipTest("this Dovecot has no imap_zlib plugin (COMPRESS=DEFLATE)")
        return client

    @defer.inlineCallbacks
    def test_auto_does_not_compress_on_loopback(self):
        client = yield self.login()
        self.assertFalse((yield client.maybe_compress("auto")))
        self.assertFalse(client.compressing)
        info = yield client.examine_folder("INBOX")
        self.assertTrue(info["read_only"])
        yield client.logout()
        yield client.lost

    @defer.inlineCallbacks
    def test_always_compresses_fetch_search_and_idle(self):
        text = b"".join(b"line %05d of a long and repetitive ticket\r\n" % n for n in range(5000))
        message = b"Subject: big\r\nFrom: a@example.com\r\n\r\n" + text
        uid = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", message)
        client = yield self.login()
        self.assertTrue((yield client.maybe_compress("always")))
        self.assertTrue(client.compressing)
        yield client.examine_folder("INBOX")
        self.assertEqual((yield client.uid_search_from(1)), [uid])
        before = client.wire_in
        bodies = yield client.fetch_full([uid])
        self.assertEqual(bodies[uid], message)
        # What crossed the socket is a fraction of the message.
        self.assertLess(client.wire_in - before, len(message) // 5)
        # IDLE and DONE through the compressed streams.
        seen = []
        idle = client.idle(seen.append)
        yield wait_for(lambda: client.idling)
        mail.append(self.user, DEFAULT_PASSWORD, "INBOX", b"Subject: second\r\n\r\nx\r\n")
        yield wait_for(lambda: seen)
        client.done()
        yield idle
        self.assertEqual(seen[-1], 2)
        yield client.logout()
        yield client.lost


class DovecotCompressServiceTests(TestCase):
    """A folder with ``IMAP_COMPRESS=always`` compresses right after login
    and still delivers each mail once (verified memory store, real
    pipeline)."""

    timeout = 60

    def setUp(self):
        self.dovecot = get_dovecot()
        self.user = self.dovecot.add_user(unique_user("zsvc"))
        self.sessions = []

    def folder(self, compress):
        store = MemoryStore(reactor)
        provider = store.add_provider(
            host="localhost", port=self.dovecot.ports.imaps, username=self.user, mailbox=self.user
        )
        self.assertTrue(store.acquire_lease(*provider.key, "worker-1", 600000).result)
        pipeline = Pipeline(
            store,
            relay_wake=lambda: None,
            clock=reactor,
            limits=Limits(),
            thread_threshold_bytes=1 << 30,
            threadpool_runner=synchronous_runner,
        )

        def session():
            client = base._TestClient(reactor, command_timeout=base.TIMEOUT)
            self.sessions.append(client)
            return client

        svc = FolderService(
            provider,
            "INBOX",
            reactor,
            store,
            pipeline,
            _Password(),
            "worker-1",
            FolderOptions(startup_stagger_ms=0, compress=compress),
            protocol_factory=session,
            tls_factory=lambda host: client_tls_options(host, ca_file=self.dovecot.ca_file),
        )
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc, store, provider

    @defer.inlineCallbacks
    def test_always_compresses_and_delivers(self):
        svc, store, provider = self.folder("always")
        yield wait_for(lambda: self.sessions and self.sessions[-1].idling)
        if not offers_deflate(self.sessions[-1].capabilities):
            raise SkipTest("this Dovecot has no imap_zlib plugin (COMPRESS=DEFLATE)")
        self.assertTrue(self.sessions[-1].compressing)
        uid = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("zipped"))
        yield wait_for(lambda: [r["uid"] for r in store.ledger_rows(*provider.key)] == [uid])
        self.assertEqual(len(store.outbox_rows()), 1)
        self.assertIn("zipped", store.outbox_rows()[0]["fields"]["payload_json"])

    @defer.inlineCallbacks
    def test_auto_on_loopback_stays_plain(self):
        svc, store, provider = self.folder("auto")
        yield wait_for(lambda: self.sessions and self.sessions[-1].idling)
        self.assertFalse(self.sessions[-1].compressing)


@implementer(ICredentialSource)
class _Password:
    def credentials(self, provider, force_refresh=False):
        return defer.succeed(Credentials("password", provider.username, DEFAULT_PASSWORD))
