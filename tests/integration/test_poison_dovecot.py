"""A message the server refuses to deliver (``NO`` to its FETCH) is skipped
as poison after ``IMAP_POISON_AFTER`` attempts and does not stop the
messages after it, end to end: real Dovecot (through a proxy that answers
``NO`` for one UID), the real client, folder engine, pipeline and store."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from imapsvc.deferreds import synchronous_runner
from imapsvc.folder import FolderOptions, FolderService
from imapsvc.imap.tls import client_tls_options
from imapsvc.model import MIB, Limits, ProviderConfig
from imapsvc.pipeline import Pipeline
from imapsvc.store.memory import MemoryStore
from tests.integration.test_folder_backlog import PasswordSource, wait_for
from tests.integration.test_folder_uidvalidity import RecordingPipeline
from tests.rig import mail
from tests.rig.dovecot import DEFAULT_PASSWORD, get_dovecot, unique_user
from tests.rig.imap_fault_proxy import FaultProxy, uids_in

TENANT = "8a0c7c1e-1111-4d5e-9f00-0000000000aa"
PROVIDER = "8a0c7c1e-2222-4d5e-9f00-0000000000bb"
OWNER = "worker-poison"


class UidSetTests(TestCase):
    def test_uids_in(self) -> None:
        self.assertEqual(uids_in(b"1:3,7,9:8"), {1, 2, 3, 7, 8, 9})
        self.assertEqual(uids_in(b"5:*"), set())


class PoisonOnDovecotTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.dovecot = get_dovecot()
        self.user = self.dovecot.add_user(unique_user("poison"))
        self.proxy = FaultProxy(reactor, self.dovecot.ports.imap, self.dovecot.tls.server_cert,
                                self.dovecot.tls.server_key)
        self.port = yield self.proxy.start()
        self.addCleanup(self.proxy.stop)
        self.store = MemoryStore(reactor)
        self.provider = self.store.add_provider(ProviderConfig(
            tenant=TENANT, provider_id=PROVIDER, provider_name="Support", mailbox=self.user,
            host="localhost", port=self.port, username=self.user))
        ok = yield self.store.acquire_lease(TENANT, PROVIDER, OWNER, 600_000)
        self.assertTrue(ok)
        limits = Limits(max_raw_mime_bytes=25 * MIB)
        self.pipeline = RecordingPipeline(
            Pipeline(self.store, lambda: None, reactor, limits, 10 * MIB, synchronous_runner))
        self.options = FolderOptions(
            max_emails_per_sync=50, startup_stagger_ms=0, reconnect_base_ms=100,
            reconnect_max_ms=300, limits=limits, poison_after=2, fetch_chunk=10)

    def append(self, n: int) -> int:
        return mail.append(self.user, DEFAULT_PASSWORD, "INBOX",
                           mail.make_message(f"m{n}", message_id=f"<poison-{n}@example.org>"),
                           dovecot=self.dovecot)

    def uids(self) -> list[int]:
        return sorted(uid for _v, uid in self.pipeline.handed)

    @defer.inlineCallbacks
    def test_refused_message_is_skipped_and_later_ones_arrive(self):  # type: ignore[no-untyped-def]
        uids = [self.append(n) for n in range(1, 6)]
        poison = uids[2]
        self.proxy.fail_uids = {poison}
        svc = FolderService(
            self.provider, "INBOX", reactor, self.store, self.pipeline,
            PasswordSource(self.user), OWNER, self.options,
            tls_factory=lambda host: client_tls_options(host, ca_file=self.dovecot.ca_file))
        svc.startService()
        self.addCleanup(svc.stopService)
        yield from wait_for(lambda: len(self.uids()) == 4, timeout=30, what="4 messages")
        self.assertEqual(self.uids(), [u for u in uids if u != poison])
        yield from wait_for(lambda: svc.poison_skipped == 1, timeout=30, what="poison skip")
        rows = self.store.ledger_rows(TENANT, PROVIDER)
        [row] = [r for r in rows if r["uid"] == poison]
        self.assertEqual(row["outcome"], "skipped")
        self.assertIn("poison: CommandFailed", row["reason"])
        self.assertIn("message unreadable", row["reason"])
        # Chunk refused once, then the lone UID twice (IMAP_POISON_AFTER=2).
        self.assertEqual(self.proxy.refused, 3)
        [entry] = self.store.list_poison(TENANT).result
        self.assertEqual((entry.uid, entry.failures), (poison, 2))
        # The folder goes on: a new message arrives through IDLE.
        later = self.append(6)
        yield from wait_for(lambda: later in self.uids(), timeout=30, what="the next message")
        cursor = self.store.read_cursor(TENANT, PROVIDER, "INBOX").result
        self.assertEqual(cursor.last_uid, str(later))
        self.assertEqual(self.proxy.refused, 3)
