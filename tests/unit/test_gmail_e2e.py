"""End to end on a Gmail-style fixture server (``tests/gmail_server.py``):
the supervisor, folder services and the shared STATUS poller, the real IMAP
client speaking bytes over ``twisted.test.iosim`` to the scripted server, the
real pipeline and the memory store. A fake clock; no sockets.

Done-when of issue 13 (Gmail): one event per message across labels, and
with a connection budget below the folder count every message still comes
once."""

from __future__ import annotations

import json
import random
from typing import Any, Optional

import attr
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides

from imapsvc.deferreds import synchronous_runner
from imapsvc.folder import FolderOptions, FolderService
from imapsvc.imap.protocol import FolderIMAPClient
from imapsvc.model import Limits
from imapsvc.pipeline import Pipeline
from imapsvc.shared_poll import SharedPollService
from imapsvc.store.memory import MemoryStore
from imapsvc.supervisor import Supervisor
from tests.folder_helpers import PASSWORD, USER, PasswordSource
from tests.folder_helpers import message as mail
from tests.gmail_server import ALL_MAIL, GmailIMAPServer, GmailMailbox

OWNER = "worker-1"
LABELS = ("Billing", "Urgent", "Customers/ACME")
POLL_S = 30.0
OPTIONS = FolderOptions(
    max_emails_per_sync=50,
    idle_restart_ms=600000,
    idle_keepalive_ms=240000,
    startup_stagger_ms=2000,
    reconnect_base_ms=2000,
    reconnect_max_ms=60000,
    poll_interval_ms=int(POLL_S * 1000),
    timer_jitter_pct=0.0,
    limits=Limits(),
)


class IosimReactor(MemoryReactorClock):
    """``connectTCP`` connects the factory's client to a new
    :class:`GmailIMAPServer` session over iosim (as if over TLS)."""

    def __init__(self, mailbox: GmailMailbox) -> None:
        super().__init__()
        self.mailbox = mailbox
        self.pumps: list[iosim.IOPump] = []

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,  # noqa: N802
                   bindAddress: Any = None) -> Any:  # noqa: N803
        connector = super().connectTCP(host, port, factory, timeout, bindAddress)
        factory.startedConnecting(connector)
        client = factory.buildProtocol(None)
        server = GmailIMAPServer(self.mailbox)
        server_io = iosim.FakeTransport(server, isServer=True)
        client_io = iosim.FakeTransport(client, isServer=False)
        alsoProvides(client_io, ISSLTransport)
        lost = client.connectionLost

        def connection_lost(reason: Any = None) -> None:
            lost(reason)
            factory.clientConnectionLost(connector, reason)

        client.connectionLost = connection_lost
        self.pumps.append(
            iosim.connect(server, server_io, client, client_io, greet=False, clock=self)
        )
        return connector

    def settle(self) -> None:
        """Let bytes flow until every connection is quiet."""
        for _ in range(10000):
            if not any([pump.pump() for pump in self.pumps]):
                self.pumps = [
                    p for p in self.pumps
                    if not (p.clientIO.disconnected and p.serverIO.disconnected)
                ]
                return
        raise AssertionError("connections never went quiet")

    def run(self, seconds: float, step: float = 1.0) -> None:
        self.settle()
        while seconds > 0:
            self.advance(min(step, seconds))
            seconds -= step
            self.settle()


class GmailWorld:
    def __init__(self, labels: tuple[str, ...], folders: tuple[str, ...],
                 budget: Optional[int], host: str = "imap.gmail.com") -> None:
        self.mailbox = GmailMailbox(labels, accounts={USER: PASSWORD})
        self.reactor = IosimReactor(self.mailbox)
        self.store = MemoryStore(self.reactor)
        self.provider = self.store.add_provider(
            host=host, port=993, username=USER, mailbox=USER, folder_filters=folders
        )
        self.pipeline = Pipeline(
            self.store, relay_wake=lambda: None, clock=self.reactor, limits=OPTIONS.limits,
            thread_threshold_bytes=1 << 30, threadpool_runner=synchronous_runner,
        )
        self.folder_services: list[FolderService] = []
        self.supervisor = Supervisor(
            self.store, self.reactor, OWNER, self.make_folder,
            refresh_s=60.0, lease_ttl_s=600.0, jitter_pct=0.0, max_connections_per_tenant=15,
            rng=random.Random(7), gmail_connection_budget=budget,
            make_shared_poller=self.make_shared,
        )

    def _common(self) -> dict:
        return dict(tls_factory=lambda host: None, rand=lambda: 0.5)

    def make_folder(self, provider: Any, folder: str, hooks: Any) -> FolderService:
        svc = FolderService(provider, folder, self.reactor, self.store, self.pipeline,
                            PasswordSource(), OWNER, OPTIONS, hooks=hooks, **self._common())
        self.folder_services.append(svc)
        return svc

    def make_shared(self, provider: Any, folders: Any, hooks: Any) -> SharedPollService:
        svc = SharedPollService(provider, folders, self.reactor, self.store, self.pipeline,
                                PasswordSource(), OWNER, OPTIONS, hooks=hooks, **self._common())
        self.folder_services.append(svc)
        return svc

    def start(self) -> None:
        self.supervisor.startService()
        self.reactor.run(5.0)

    def stop(self) -> None:
        d = self.supervisor.stopService()
        self.reactor.run(2.0)
        d.addErrback(lambda f: None)
        # The folder machine refused no transition of any connection.
        assert all(svc.invalid_transitions == 0 for svc in self.folder_services), [
            (svc.label, svc.invalid_transitions) for svc in self.folder_services
        ]

    def events(self) -> list[dict]:
        return [json.loads(row["fields"]["payload_json"]) for row in self.store.outbox_rows()]

    def subjects(self) -> list[str]:
        return sorted(e["emailData"]["subject"] for e in self.events())

    def event_ids(self) -> list[str]:
        return [row["event_id"] for row in self.store.outbox_rows()]

    def cursor(self, folder: str) -> Any:
        return self.store.read_cursor(*self.provider.key, folder).result  # type: ignore[attr-defined]

    def status(self) -> dict:
        return self.supervisor.providers[self.provider.key].snapshot()["folders"]


class GmailEndToEndTests(SynchronousTestCase):
    def world(self, folders: tuple[str, ...], budget: Optional[int],
              **kw: Any) -> GmailWorld:
        world = GmailWorld(LABELS, folders, budget, **kw)
        self.addCleanup(world.stop)
        return world

    def test_one_event_per_message_across_labels(self) -> None:
        world = self.world(("INBOX", *LABELS), budget=15)
        world.start()
        self.assertEqual(len(world.mailbox.sessions), 4)  # within the budget: one each
        # The real client, speaking bytes to the fixture server.
        self.assertTrue(all(isinstance(svc._proto, FolderIMAPClient)
                            for svc in world.folder_services))
        # Each message under INBOX and one or two labels, delivered while idling.
        a = world.mailbox.deliver(mail(1), ["INBOX", "Billing"])
        world.mailbox.deliver(mail(2), ["INBOX", "Urgent", "Customers/ACME"])
        world.mailbox.deliver(mail(3), ["Billing"])  # not in INBOX: still read once
        # Without a Message-ID, only X-GM-MSGID tells the copies are one mail.
        no_id = b"".join(line for line in mail(4).splitlines(keepends=True)
                         if not line.startswith(b"Message-ID:"))
        world.mailbox.deliver(no_id, ["INBOX", "Urgent"])
        world.reactor.run(2.0)
        # A label added later (a new UID in that folder) is no new event.
        world.mailbox.label(a, "Urgent")
        world.reactor.run(2.0)
        self.assertEqual(world.subjects(), ["case 1", "case 2", "case 3", "case 4"])
        self.assertEqual(len(set(world.event_ids())), 4)
        ledger = world.store.ledger_rows(*world.provider.key)
        self.assertEqual(len(ledger), 4)
        self.assertTrue(all(r["dedupe_key"].startswith("gmail:") for r in ledger))
        # Every folder's cursor went past its copies all the same.
        for folder in ("INBOX", *LABELS):
            self.assertEqual(world.cursor(folder).last_uid,
                             str(world.mailbox.uids(folder)[-1]), folder)
        # X-GM-MSGID was asked for; All Mail was never opened.
        received = [line for s in world.mailbox.sessions for line in s.received]
        self.assertTrue(any(b"X-GM-MSGID" in line for line in received))
        self.assertFalse(any(ALL_MAIL.encode() in line for line in received))
        self.assertEqual({f["mode"] for f in world.status().values()}, {"own"})

    def test_wildcard_skips_all_mail_spam_and_trash(self) -> None:
        world = self.world(("*",), budget=15)
        world.mailbox.deliver(mail(1), ["INBOX", "Billing"])
        world.mailbox.deliver(mail(2), ["[Gmail]/Spam"])
        world.mailbox.deliver(mail(3), ["[Gmail]/Trash"])
        world.mailbox.deliver(mail(4), ["Urgent"])
        world.start()
        self.assertEqual(world.subjects(), ["case 1", "case 4"])
        examined = [line for s in world.mailbox.sessions for line in s.received
                    if b"EXAMINE" in line]
        self.assertFalse([line for line in examined if b"[Gmail]" in line])

    def test_budget_polls_the_folders_past_it_on_one_connection(self) -> None:
        # Budget 2 with INBOX and three labels: INBOX idles on its own
        # connection, the three labels share the other one.
        world = self.world(("INBOX", *LABELS), budget=2)
        world.start()
        self.assertEqual(len(world.mailbox.sessions), 2)
        modes = {name: f["mode"] for name, f in world.status().items()}
        self.assertEqual(modes, {"INBOX": "own", "Billing": "shared-poll",
                                 "Urgent": "shared-poll", "Customers/ACME": "shared-poll"})
        first_round = len(world.mailbox.status_calls)
        self.assertEqual(world.mailbox.status_calls, list(LABELS))

        one = world.mailbox.deliver(mail(1), ["INBOX", "Billing"])
        world.mailbox.deliver(mail(2), ["Urgent", "Customers/ACME"])
        world.mailbox.deliver(mail(3), ["Customers/ACME"])
        world.reactor.run(1.0)
        # INBOX idles: its copy is read at once, the labels wait for the poll.
        self.assertEqual(world.subjects(), ["case 1"])
        world.reactor.run(POLL_S)
        self.assertEqual(world.mailbox.status_calls[first_round:], list(LABELS))
        self.assertEqual(world.subjects(), ["case 1", "case 2", "case 3"])
        ledger = world.store.ledger_rows(*world.provider.key)
        self.assertEqual(sorted(r["dedupe_key"] for r in ledger),
                         sorted(f"gmail:{m}" for m in world.mailbox.copies))
        for folder in ("INBOX", *LABELS):
            self.assertEqual(world.cursor(folder).last_uid,
                             str(world.mailbox.uids(folder)[-1]), folder)

        # After a pass the folder is left (UNSELECT): STATUS never asks
        # about the selected folder.
        shared_lines = [line for s in world.mailbox.sessions
                        if any(b"STATUS" in x for x in s.received) for line in s.received]
        self.assertIn(b"UNSELECT", [line.split(b" ", 1)[1] for line in shared_lines
                                    if b" " in line])
        # A quiet round: STATUS only, no folder opened.
        examines = sum(line.count(b"EXAMINE") for s in world.mailbox.sessions
                       for line in s.received)
        world.reactor.run(POLL_S)
        self.assertEqual(len(world.mailbox.status_calls), first_round + 2 * len(LABELS))
        self.assertEqual(sum(line.count(b"EXAMINE") for s in world.mailbox.sessions
                             for line in s.received), examines)
        self.assertEqual(len(world.events()), 3)

        # A label added to a message read already: synced, not published again.
        world.mailbox.label(one, "Customers/ACME")
        world.reactor.run(POLL_S)
        self.assertEqual(len(world.events()), 3)
        self.assertEqual(world.cursor("Customers/ACME").last_uid,
                         str(world.mailbox.uids("Customers/ACME")[-1]))
        status = world.status()["Customers/ACME"]
        self.assertEqual(status["sharedWith"], ["Billing", "Urgent"])
        self.assertEqual(status["cursor"]["last_uid"], world.cursor("Customers/ACME").last_uid)
        self.assertGreaterEqual(status["syncs"], 2)
        self.assertEqual(status["lag"], 0)
        # /metrics sums folders: the shared connection's counters add up once.
        shared = next(s for s in world.folder_services if isinstance(s, SharedPollService))
        polled = [world.status()[f] for f in LABELS]
        self.assertEqual(sum(f["bytesFetched"] for f in polled), shared.bytes_fetched)
        self.assertEqual(sum(f["handedOff"] for f in polled), shared.handed_off)
        self.assertGreater(shared.bytes_fetched, 0)
        self.assertLessEqual(world.mailbox.most_at_once, 2)

    def test_a_recreated_folder_is_read_again(self) -> None:
        world = self.world(("INBOX", *LABELS), budget=2)
        world.start()
        world.mailbox.deliver(mail(1), ["Urgent"])
        world.reactor.run(POLL_S)
        self.assertEqual(world.subjects(), ["case 1"])
        # Urgent deleted and created again (new UIDVALIDITY, UIDs from 1);
        # a new message under it: UIDNEXT alone would look unchanged.
        old = world.mailbox.folders["Urgent"].uidvalidity
        world.mailbox.recreate("Urgent")
        world.mailbox.deliver(mail(2), ["Urgent"])
        world.reactor.run(POLL_S)
        self.assertEqual(world.subjects(), ["case 1", "case 2"])
        self.assertNotEqual(world.cursor("Urgent").uid_validity, str(old))

    def test_capabilities_learned_at_login_apply_the_budget(self) -> None:
        # Not Gmail by its host name: the first start has one connection per
        # folder; X-GM-EXT-1 at login restarts it within the budget.
        world = self.world(("INBOX", *LABELS), budget=2, host="imap.example.com")
        world.start()
        self.assertEqual(len(world.mailbox.sessions), 4)
        world.reactor.run(61.0)
        self.assertEqual(len(world.mailbox.sessions), 2)
        world.mailbox.deliver(mail(1), ["INBOX", "Billing", "Urgent"])
        world.reactor.run(POLL_S + 1)
        self.assertEqual(world.subjects(), ["case 1"])

    def test_a_folder_gone_from_the_shared_group_does_not_stop_the_others(self) -> None:
        world = self.world(("INBOX", *LABELS), budget=2)
        world.start()
        del world.mailbox.folders["Billing"]  # deleted on the server meanwhile
        world.mailbox.deliver(mail(1), ["Urgent"])
        world.reactor.run(POLL_S)
        self.assertEqual(world.subjects(), ["case 1"])
        billing = world.status()["Billing"]
        self.assertIn("NONEXISTENT", billing["last_error"] or "")
        self.assertEqual(world.status()["Urgent"]["last_error"], None)
        # The same connection went on: no reconnect.
        shared = next(s for s in world.folder_services if isinstance(s, SharedPollService))
        self.assertEqual(dict(shared.reconnects), {})

    def test_write_back_on_the_shared_connection(self) -> None:
        # delete (UIDPLUS): each label's copy is removed after its commit; the
        # expunge asks for one more look, which a full round gives.
        world = self.world(("INBOX", *LABELS), budget=2)
        world.store.add_provider(attr.evolve(world.provider, write_back="delete"))
        world.provider = attr.evolve(world.provider, write_back="delete")
        world.start()
        world.mailbox.deliver(mail(1), ["Billing", "Urgent"])
        world.mailbox.deliver(mail(2), ["Customers/ACME"])
        world.reactor.run(POLL_S)
        self.assertEqual(world.subjects(), ["case 1", "case 2"])
        for folder in LABELS:
            self.assertEqual(world.mailbox.uids(folder), [], folder)
        rounds = len(world.mailbox.status_calls)
        world.reactor.run(POLL_S)
        # Back to one STATUS round per poll interval (no busy loop).
        self.assertEqual(len(world.mailbox.status_calls), rounds + len(LABELS))
        self.assertEqual(len(world.events()), 2)
