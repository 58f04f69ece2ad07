"""The folder engine driven through verified fakes only: the
:class:`~imapsvc.testing.FakeIMAPSession` (checked against the real client by
``tests/session_contract.py``), the memory store (``tests/store_contract.py``)
and the real :class:`~imapsvc.pipeline.Pipeline` on it. No sockets, a fake
clock. A first step of issue 14: the scenarios of ``test_folder.py`` move
here one by one."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imapsvc import folder_state as S
from imapsvc.deferreds import synchronous_runner
from imapsvc.folder import FolderOptions, FolderService
from imapsvc.interfaces import IIMAPSession
from imapsvc.model import Limits
from imapsvc.pipeline import Pipeline
from imapsvc.store.memory import MemoryStore
from imapsvc.testing import FakeIMAPSession, FakeMailbox
from tests.folder_helpers import PASSWORD, USER, PasswordSource, RecordingHooks

OWNER = "worker-1"

OPTIONS = FolderOptions(
    max_emails_per_sync=5,
    idle_restart_ms=600000,
    idle_keepalive_ms=240000,
    startup_stagger_ms=2000,
    reconnect_base_ms=2000,
    reconnect_max_ms=60000,
    limits=Limits(),
)


def mail(n: int) -> bytes:
    return (
        b"From: Customer <c%d@example.org>\r\nTo: support@example.com\r\n"
        b"Subject: case %d\r\nMessage-ID: <case-%d@example.org>\r\n"
        b"Date: Sat, 10 Jan 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nPrinter %d is on fire.\r\n" % (n, n, n, n)
    )


class World:
    """A mailbox, a memory store holding the provider and its lease, and
    folder services connected to the mailbox through fake sessions."""

    def __init__(self, at_once: bool = True) -> None:
        self.at_once = at_once
        self.mailbox = FakeMailbox(accounts={USER: PASSWORD})
        self.reactor = MemoryReactorClock()
        self.store = MemoryStore(self.reactor)
        self.provider = self.store.add_provider(
            host="imap.example.com", port=993, username=USER, mailbox=USER
        )
        tenant, pid = self.provider.key
        assert self.store.acquire_lease(tenant, pid, OWNER, 600000).result is True  # type: ignore[attr-defined]
        self.pipeline = Pipeline(
            self.store,
            relay_wake=lambda: None,
            clock=self.reactor,
            limits=OPTIONS.limits,
            thread_threshold_bytes=1 << 30,
            threadpool_runner=synchronous_runner,
        )
        self.sessions: list[FakeIMAPSession] = []
        self.hooks = RecordingHooks()

    def folder(self) -> FolderService:
        svc = FolderService(
            self.provider,
            "INBOX",
            self.reactor,
            self.store,
            self.pipeline,
            PasswordSource(),
            OWNER,
            OPTIONS,
            hooks=self.hooks,
            protocol_factory=lambda: FakeIMAPSession(self.mailbox, at_once=self.at_once),
            tls_factory=lambda host: None,
            rand=lambda: 0.5,
        )
        self._connected = svc.factory.connect_calls
        return svc

    def connect(self, svc: FolderService) -> FakeIMAPSession:
        """The connection attempt the factory started succeeds."""
        factory = svc.factory
        assert factory.connect_calls == self._connected + 1, "no connection attempt"
        self._connected = factory.connect_calls
        connector = self.reactor.connectors[-1]
        factory.startedConnecting(connector)
        session = factory.buildProtocol(None)
        session.connect(lambda reason: factory.clientConnectionLost(connector, reason))
        self.sessions.append(session)
        return session

    def start(self, svc: FolderService) -> FakeIMAPSession:
        svc.startService()
        self.reactor.advance(1.0)  # the startup stagger: 2000 ms * 0.5
        return self.connect(svc)

    def subjects(self) -> list[str]:
        return [row["fields"]["payload_json"] for row in self.store.outbox_rows()]

    def recorded_uids(self) -> list[int]:
        return [row["uid"] for row in self.store.ledger_rows(*self.provider.key)]

    def cursor(self) -> Any:
        return self.store.read_cursor(*self.provider.key, "INBOX").result  # type: ignore[attr-defined]


class FolderOnFakeTests(SynchronousTestCase):
    def world(self, at_once: bool = True) -> World:
        world = World(at_once)
        self.addCleanup(self._stop, world)
        return world

    def _stop(self, world: World) -> None:
        for svc in self._services:
            if svc.running:
                stopped = svc.stopService()
                for session in world.sessions:
                    session.flush()
                self.successResultOf(stopped)
            self.assertEqual(svc.invalid_transitions, 0, [t.new for t in svc.history])
        self.assertEqual(world.reactor.getDelayedCalls(), [])

    def setUp(self) -> None:
        self._services: list[FolderService] = []

    def folder(self, world: World) -> FolderService:
        svc = world.folder()
        self._services.append(svc)
        return svc

    def test_the_session_is_the_verified_fake(self) -> None:
        world = self.world()
        session = world.start(self.folder(world))
        self.assertTrue(verifyObject(IIMAPSession, session))

    def test_new_mail_during_idle_is_fetched_and_recorded_once(self) -> None:
        world = self.world()
        svc = self.folder(world)
        session = world.start(svc)
        self.assertEqual(svc.state, S.IDLING)
        self.assertEqual(world.recorded_uids(), [])

        uid = world.mailbox.append(mail(1))
        # The EXISTS ended IDLE; the sync fetched the message and idles again.
        self.assertEqual(svc.state, S.IDLING)
        self.assertEqual(world.recorded_uids(), [uid])
        self.assertEqual(len(world.store.outbox_rows()), 1)
        self.assertIn("case 1", world.subjects()[0])
        self.assertEqual(world.cursor().last_uid, str(uid))
        self.assertEqual(session.commands.count("IDLE"), 2)
        # Only the header and the text part came down, once each.
        self.assertEqual(
            world.mailbox.fetched, [("meta", "INBOX", uid), ("sections", "INBOX", uid)]
        )

        # A wake-up without new mail syncs again and fetches nothing.
        svc.wake()
        self.assertEqual(svc.state, S.IDLING)
        self.assertEqual(len(world.mailbox.fetched), 2)
        self.assertEqual(len(world.store.outbox_rows()), 1)

    def test_a_restart_resumes_from_the_cursor(self) -> None:
        world = self.world()
        for n in (1, 2, 3):
            world.mailbox.append(mail(n))
        first = self.folder(world)
        world.start(first)
        self.assertEqual(world.recorded_uids(), [1, 2, 3])
        self.successResultOf(first.stopService())
        self.assertEqual(first.state, S.STOPPED)

        # Mail arrives while no worker watches the folder.
        world.mailbox.append(mail(4))
        world.mailbox.append(mail(5))
        del world.mailbox.fetched[:]

        second = self.folder(world)
        world.start(second)
        self.assertEqual(world.recorded_uids(), [1, 2, 3, 4, 5])
        self.assertEqual(world.cursor().last_uid, "5")
        self.assertEqual(sorted({uid for _kind, _f, uid in world.mailbox.fetched}), [4, 5])
        self.assertEqual(len(world.store.outbox_rows()), 5)

    def test_a_poison_message_holds_the_cursor_and_reconnects(self) -> None:
        world = self.world()
        svc = self.folder(world)
        world.start(svc)
        world.mailbox.fail_fetch(2, "SERVERBUG", "cannot fetch message 2")
        world.mailbox.append(mail(1))
        world.mailbox.append(mail(2))
        self.assertEqual(world.recorded_uids(), [1])
        self.assertEqual(svc.state, S.BACKOFF)
        self.assertIn("SERVERBUG", svc.last_error or "")
        self.assertEqual(world.cursor().last_uid, "1")

    def test_refused_login_stops_and_reports_the_code(self) -> None:
        world = self.world()
        world.mailbox.refuse_logins("AUTHENTICATIONFAILED", "Authentication failed.")
        svc = self.folder(world)
        world.start(svc)
        self.assertEqual(svc.state, S.NEEDS_REAUTH)
        self.assertIn(("auth_failed", "AUTHENTICATIONFAILED"), world.hooks.events)
        self.assertEqual(world.reactor.getDelayedCalls(), [])

    def test_a_dropped_connection_reconnects_and_fetches_what_came_meanwhile(self) -> None:
        world = self.world()
        svc = self.folder(world)
        world.start(svc)
        world.mailbox.drop_connections(bye="Server shutting down.")
        self.assertEqual(svc.state, S.BACKOFF)
        world.mailbox.append(mail(1))
        self.assertEqual(world.recorded_uids(), [])
        world.reactor.advance(svc.factory.delay)
        world.connect(svc)
        self.assertEqual(svc.state, S.IDLING)
        self.assertEqual(world.recorded_uids(), [1])
        self.assertEqual(svc.reconnects["bye"], 1)

    # -- step by step: the server's turns wait for flush()/step() --------------------

    def test_mail_announced_during_a_sync_is_synced_at_once(self) -> None:
        world = self.world(at_once=False)
        svc = self.folder(world)
        session = world.start(svc)
        session.flush()
        self.assertEqual(svc.state, S.IDLING)
        world.mailbox.append(mail(1))
        while "UID FETCH" not in session.commands:
            self.assertTrue(session.step())
        self.assertEqual(svc.state, S.SYNCING)
        # UID 2 arrives while UID 1 is being fetched: the server reports it
        # with the next answer, and IDLE would not announce it again.
        world.mailbox.append(mail(2))
        session.flush()
        self.assertEqual(world.recorded_uids(), [1, 2])
        self.assertEqual(svc.state, S.IDLING)
        self.assertEqual(session.commands.count("IDLE"), 2)
        self.assertEqual(world.reactor.seconds(), 1.0)  # no timer had to fire

    def test_stop_while_idling_ends_idle_and_logs_out(self) -> None:
        world = self.world(at_once=False)
        svc = self.folder(world)
        session = world.start(svc)
        session.flush()
        self.assertEqual(svc.state, S.IDLING)
        stopped = svc.stopService()
        self.assertNoResult(stopped)
        session.flush()
        self.successResultOf(stopped)
        self.assertEqual(session.commands[-2:], ["DONE", "LOGOUT"])
        self.assertEqual(svc.state, S.STOPPED)
        self.assertTrue(session.transport.closed)
