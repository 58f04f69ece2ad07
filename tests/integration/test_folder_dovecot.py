"""The folder engine against a real Dovecot 2.3 (``tests.rig.dovecot``):
real protocol, real TLS, the real reactor; the memory store and the real
pipeline, recording what it committed."""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from imapsvc import folder_state as S
from imapsvc.folder import FolderOptions, FolderService
from imapsvc.imap.tls import client_tls_options
from imapsvc.model import FolderCursor, ProviderConfig
from tests.folder_helpers import PasswordSource, memory_backend, write_cursor
from tests.rig import mail
from tests.rig.dovecot import DEFAULT_PASSWORD, get_dovecot, unique_user


@defer.inlineCallbacks
def wait_for(predicate, timeout=10.0, step=0.02):
    """Poll ``predicate`` on the reactor (no sleeping) until true."""
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        yield task.deferLater(reactor, step, lambda: None)
        waited += step


class FolderDovecotTests(TestCase):
    timeout = 120

    def setUp(self):
        self.dovecot = get_dovecot()
        self.user = self.dovecot.add_user(unique_user("folder"))
        self.store, self.provider, self.pipeline = memory_backend(reactor)

    def service(self, folder="INBOX", **options):
        provider = ProviderConfig(
            tenant="t1",
            provider_id="p1",
            provider_name="test",
            mailbox=self.user,
            host="localhost",
            port=self.dovecot.ports.imaps,
            username=self.user,
        )
        creds = PasswordSource(DEFAULT_PASSWORD, self.user)
        svc = FolderService(
            provider,
            folder,
            reactor,
            self.store,
            self.pipeline,
            creds,
            "worker-1",
            FolderOptions(
                startup_stagger_ms=0, reconnect_base_ms=200, reconnect_max_ms=1000, **options
            ),
            tls_factory=lambda host: client_tls_options(host, ca_file=self.dovecot.ca_file),
        )
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc

    @defer.inlineCallbacks
    def test_append_while_idling_is_handed_off_fast_and_unseen(self):
        svc = self.service()
        yield wait_for(lambda: svc.state == S.IDLING)
        start = reactor.seconds()
        uid = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("hi"))
        yield wait_for(lambda: uid in self.pipeline.uids, timeout=5)
        self.assertLess(reactor.seconds() - start, 1.5)
        self.assertEqual(mail.flags(self.user, DEFAULT_PASSWORD, "INBOX", uid), set())
        msg = self.pipeline.messages[-1]
        self.assertIn(b"Subject: hi", msg.header)

    @defer.inlineCallbacks
    def test_non_ascii_folder_and_other_case(self):
        mail.create_folder(self.user, DEFAULT_PASSWORD, "Entwürfe")
        uid = mail.append(self.user, DEFAULT_PASSWORD, "Entwürfe", mail.make_message("x"))
        write_cursor(self.store, self.provider, FolderCursor(None, "0", None), "Entw&APw-rfe")
        svc = self.service(folder="ENTWÜRFE")
        yield wait_for(lambda: uid in self.pipeline.uids)
        self.assertEqual(svc.server_name, "Entw&APw-rfe")

    @defer.inlineCallbacks
    def test_kick_mid_idle_reconnects_and_catches_up(self):
        svc = self.service()
        yield wait_for(lambda: svc.state == S.IDLING)
        self.dovecot.kick(self.user)
        uid = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("later"))
        yield wait_for(lambda: uid in self.pipeline.uids)
        self.assertIn(S.BACKOFF, [t.new for t in svc.history])

    @defer.inlineCallbacks
    def test_idle_keepalive_reissues_idle_and_still_hears_new_mail(self):
        # A keep-alive every ~0.3 s: Dovecot answers DONE and takes the new
        # IDLE on the same connection, with no sync in between.
        svc = self.service(idle_keepalive_ms=300)
        yield wait_for(lambda: svc.state == S.IDLING)
        syncs = svc.sync_count
        yield wait_for(lambda: svc.idle_keepalives >= 3)
        self.assertEqual(svc.sync_count, syncs)
        self.assertEqual(dict(svc.reconnects), {})
        start = reactor.seconds()
        uid = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("kept"))
        yield wait_for(lambda: uid in self.pipeline.uids, timeout=5)
        self.assertLess(reactor.seconds() - start, 2.0)
        self.assertEqual(dict(svc.reconnects), {})
