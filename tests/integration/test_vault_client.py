"""The Vault provider (:class:`imapsvc.secret_providers.VaultSecrets`, over treq)
against the rig's KV v2 endpoint on loopback (:mod:`tests.rig.vault`):
reads, absence, the token, check-and-set writes that lose no key, and
slow, stalled, oversized and failing answers that end as a transient error
within the bound."""

from __future__ import annotations

from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from imapsvc.secret_chain import SecretBackendUnavailable, VaultSecrets, vault_read_app_sync
from tests.rig.vault import VaultKV2

T = "11111111-1111-1111-1111-111111111111"
NAME = "imap_refresh_token_22222222-2222-2222-2222-222222222222"


class VaultClientTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.vault = VaultKV2(reactor)
        self.vault.start()
        self.addCleanup(self.vault.stop)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)
        self.path = self.vault.tenant_path(T)

    def client(self, token=None, timeout_s=2.0, max_bytes=1024 * 1024):
        return VaultSecrets(
            self.http, reactor, self.vault.addr, token or self.vault.token,
            timeout_s=timeout_s, max_bytes=max_bytes,
        )  # fmt: skip

    @defer.inlineCallbacks
    def test_reads_data_data_name(self):
        self.vault.put(self.path, {NAME: "rt-1", "other": "x"})
        value = yield self.client().get(T, NAME)
        self.assertEqual(value, "rt-1")
        self.assertEqual(self.vault.requests, [("GET", f"kv/data/{self.path}", True)])

    @defer.inlineCallbacks
    def test_absent_document_and_absent_key_are_none(self):
        self.assertIsNone((yield self.client().get(T, NAME)))
        self.vault.put(self.path, {"other": "x"})
        self.assertIsNone((yield self.client().get(T, NAME)))
        self.vault.delete_latest(self.path)
        self.assertIsNone((yield self.client().get(T, NAME)))

    @defer.inlineCallbacks
    def test_wrong_token_is_unavailable_never_absent(self):
        self.vault.put(self.path, {NAME: "rt"})
        with self.assertRaises(SecretBackendUnavailable) as caught:
            yield self.client(token="wrong-token").get(T, NAME)
        self.assertIn("403", str(caught.exception))
        self.assertNotIn("wrong-token", str(caught.exception))
        self.assertFalse(caught.exception.auth_failure)

    @defer.inlineCallbacks
    def test_server_error_is_unavailable(self):
        self.vault.fail_status = 503
        with self.assertRaises(SecretBackendUnavailable):
            yield self.client().get(T, NAME)

    @defer.inlineCallbacks
    def test_slow_answer_times_out_within_the_bound(self):
        self.vault.put(self.path, {NAME: "rt"})
        self.vault.delay_s = 5.0
        started = reactor.seconds()
        with self.assertRaises(SecretBackendUnavailable) as caught:
            yield self.client(timeout_s=0.5).get(T, NAME)
        self.assertLess(reactor.seconds() - started, 3.0)
        self.assertIn("0.5s", str(caught.exception))
        # Let the delayed answer go out to a closed connection before cleanup.
        yield _sleep(5.1)

    @defer.inlineCallbacks
    def test_stalled_body_times_out_within_the_bound(self):
        self.vault.put(self.path, {NAME: "rt"})
        self.vault.stall = True
        started = reactor.seconds()
        with self.assertRaises(SecretBackendUnavailable) as caught:
            yield self.client(timeout_s=0.5).get(T, NAME)
        self.assertLess(reactor.seconds() - started, 3.0)
        self.assertIn("within 0.5s", str(caught.exception))

    @defer.inlineCallbacks
    def test_oversized_answer_refused(self):
        self.vault.put(self.path, {NAME: "rt"})
        self.vault.pad_to = 200_000
        with self.assertRaises(SecretBackendUnavailable) as caught:
            yield self.client(max_bytes=64 * 1024).get(T, NAME)
        self.assertIn("larger than", str(caught.exception))
        # Within the bound it is read.
        value = yield self.client().get(T, NAME)
        self.assertEqual(value, "rt")

    @defer.inlineCallbacks
    def test_write_creates_with_cas_zero(self):
        yield self.client().put(T, NAME, "rt-new")
        self.assertEqual(self.vault.read(self.path), {NAME: "rt-new"})

    @defer.inlineCallbacks
    def test_write_merges_and_keeps_every_other_key(self):
        self.vault.put(self.path, {"imap_password_x": "pw", NAME: "rt-old"})
        yield self.client().put(T, NAME, "rt-new")
        self.assertEqual(self.vault.read(self.path), {"imap_password_x": "pw", NAME: "rt-new"})
        self.assertEqual(len(self.vault.documents[self.path]), 2)

    @defer.inlineCallbacks
    def test_concurrent_writer_conflict_is_retried_without_losing_its_key(self):
        self.vault.put(self.path, {"a": "1"})
        raced = []

        def other_writer(path):
            # The app writes another key between our read and our write, once.
            if not raced:
                raced.append(path)
                self.vault.put(path, dict(self.vault.read(path) or {}, b="2"))

        self.vault.before_write = other_writer
        yield self.client().put(T, NAME, "rt")
        self.assertEqual(self.vault.read(self.path), {"a": "1", "b": "2", NAME: "rt"})
        posts = [r for r in self.vault.requests if r[0] == "POST"]
        self.assertEqual(len(posts), 2)  # the first was refused (cas), the second merged

    @defer.inlineCallbacks
    def test_persistent_conflict_gives_up_after_bounded_attempts(self):
        self.vault.before_write = lambda path: self.vault.put(path, {"noise": "1"})
        with self.assertRaises(SecretBackendUnavailable) as caught:
            yield self.client().put(T, NAME, "rt")
        self.assertIn("check-and-set", str(caught.exception))
        posts = [r for r in self.vault.requests if r[0] == "POST"]
        self.assertEqual(len(posts), 5)

    @defer.inlineCallbacks
    def test_sync_app_secret_read(self):
        self.vault.put("app/secrets", {"db_password_server": "dbpw"})
        # The synchronous reader blocks: run it in a thread while the reactor serves.
        from twisted.internet.threads import deferToThread

        value = yield deferToThread(
            vault_read_app_sync, self.vault.addr, self.vault.token, "kv/data/app/secrets",
            "db_password_server", 5.0,
        )  # fmt: skip
        self.assertEqual(value, "dbpw")
        missing = yield deferToThread(
            vault_read_app_sync, self.vault.addr, self.vault.token, "kv/data/app/secrets",
            "redis_password", 5.0,
        )  # fmt: skip
        self.assertIsNone(missing)
        with self.assertRaises(SecretBackendUnavailable):
            yield deferToThread(
                vault_read_app_sync, self.vault.addr, "bad", "kv/data/app/secrets", "x", 5.0
            )


def _sleep(seconds: float) -> defer.Deferred:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
