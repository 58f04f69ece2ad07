"""The folder engine with the real client on a string transport, against a
scripted IMAP server: hostile answers byte for byte (issue 11).

- a BODYSTRUCTURE nested 3,000 deep: the message is fetched whole
  (``BODY.PEEK[]``) and published, the folder goes on;
- ``NO`` to the FETCH of one UID, every time: after the chunk is split and
  the UID refused ``IMAP_POISON_AFTER`` times it is skipped in the ledger
  with its reason, the cursor passes it, the next UIDs are published.
"""

from __future__ import annotations

import re

import attr
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from imapsvc import folder_state as S
from imapsvc.deferreds import synchronous_runner
from imapsvc.folder import FolderOptions, FolderService
from imapsvc.imap.protocol import FolderIMAPClient
from imapsvc.model import FolderCursor, Limits, ProviderConfig
from imapsvc.pipeline import Pipeline
from imapsvc.store.memory import MemoryStore
from tests.folder_helpers import PasswordSource

TENANT = "8a0c7c1e-1111-4d5e-9f00-0000000000cc"
PID = "8a0c7c1e-2222-4d5e-9f00-0000000000dd"
OWNER = "worker-bytes"
VALIDITY = 7

GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE LITERAL+ AUTH=PLAIN] ready\r\n"
LEAF = b'("text" "plain" ("charset" "utf-8") NIL NIL "7bit" %d 1 NIL NIL NIL)'


def message(n: int) -> bytes:
    return (b"From: Alice <alice@example.org>\r\nSubject: m%d\r\n"
            b"Message-ID: <m%d@example.org>\r\n\r\nbody %d\r\n" % (n, n, n))


def split(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", body


class ScriptedServer:
    """Answers the client's commands from :attr:`messages` (UID -> raw)."""

    def __init__(self) -> None:
        self.messages: dict[int, bytes] = {}
        self.structures: dict[int, bytes] = {}  # UID -> BODYSTRUCTURE text
        self.refuse: set[int] = set()
        self.commands: list[bytes] = []
        self.refused = 0

    def add(self, n: int) -> None:
        uid = max(self.messages, default=0) + 1
        self.messages[uid] = message(n)

    def answer(self, line: bytes) -> bytes:
        self.commands.append(line)
        if line == b"DONE":
            return b"%s OK IDLE done\r\n" % self.idle_tag
        tag, _, rest = line.partition(b" ")
        word = rest.split(b" ", 1)[0].upper()
        if word == b"LOGIN":
            return tag + b" OK [CAPABILITY IMAP4rev1 IDLE LITERAL+] logged in\r\n"
        if word == b"CAPABILITY":
            return b"* CAPABILITY IMAP4rev1 IDLE LITERAL+\r\n" + tag + b" OK\r\n"
        if word == b"LIST":
            return b'* LIST () "/" "INBOX"\r\n' + tag + b" OK\r\n"
        if word == b"EXAMINE":
            nxt = max(self.messages, default=0) + 1
            return (b"* %d EXISTS\r\n* OK [UIDVALIDITY %d] v\r\n* OK [UIDNEXT %d] n\r\n"
                    % (len(self.messages), VALIDITY, nxt) + tag + b" OK [READ-ONLY] done\r\n")
        if word == b"IDLE":
            self.idle_tag = tag
            return b"+ idling\r\n"
        if word == b"LOGOUT":
            return b"* BYE bye\r\n" + tag + b" OK\r\n"
        if rest.startswith(b"UID SEARCH UID "):
            first = int(rest.split()[3].split(b":")[0])
            uids = [u for u in sorted(self.messages) if u >= first] or [max(self.messages)]
            return b"* SEARCH " + b" ".join(b"%d" % u for u in uids) + b"\r\n" + tag + b" OK\r\n"
        if rest.startswith(b"UID FETCH "):
            return self.fetch(tag, rest)
        return tag + b" BAD unknown\r\n"

    def fetch(self, tag: bytes, rest: bytes) -> bytes:
        uid_set, items = rest[len(b"UID FETCH "):].split(b" ", 1)
        uids = set()
        for part in uid_set.split(b","):
            low, _, high = part.partition(b":")
            uids.update(range(int(low), int(high or low) + 1))
        if uids & self.refuse:
            self.refused += 1
            return tag + b" NO [UNAVAILABLE] message unreadable\r\n"
        out = b""
        for seq, uid in enumerate(sorted(uids & set(self.messages)), 1):
            raw = self.messages[uid]
            header, body = split(raw)
            if b"BODYSTRUCTURE" in items:
                structure = self.structures.get(uid, LEAF % len(body))
                out += (b'* %d FETCH (UID %d RFC822.SIZE %d INTERNALDATE "10-Jan-2026 12:00:00 '
                        b'+0000" BODYSTRUCTURE ' % (seq, uid, len(raw)) + structure
                        + b" BODY[HEADER] {%d}\r\n" % len(header) + header + b")\r\n")
            elif b"BODY.PEEK[]" in items:
                out += b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (seq, uid, len(raw)) + raw + b")\r\n"
            else:
                section = re.search(rb"BODY\.PEEK\[([0-9.]+)\]", items).group(1)
                out += (b"* %d FETCH (UID %d BODY[%s] {%d}\r\n" % (seq, uid, section, len(body))
                        + body + b")\r\n")
        return out + tag + b" OK fetch done\r\n"


class Wire:
    """A FolderService whose connections are string transports served by a
    :class:`ScriptedServer`; time is a MemoryReactorClock."""

    def __init__(self, options: FolderOptions) -> None:
        self.server = ScriptedServer()
        self.reactor = MemoryReactorClock()
        self.store = MemoryStore(self.reactor)
        self.provider = self.store.add_provider(ProviderConfig(
            tenant=TENANT, provider_id=PID, provider_name="Support", mailbox="s@example.com",
            host="imap.example.com", port=993, username="support"))
        assert self.store.acquire_lease(TENANT, PID, OWNER, 10**9).result
        self.pipeline = Pipeline(self.store, lambda: None, self.reactor, options.limits,
                                 10**9, synchronous_runner)
        self.svc = FolderService(
            self.provider, "INBOX", self.reactor, self.store, self.pipeline, PasswordSource(),
            OWNER, options, protocol_factory=self._client, tls_factory=lambda host: None)
        self.clients: list[tuple[FolderIMAPClient, StringTransport]] = []

    def _client(self) -> FolderIMAPClient:
        return FolderIMAPClient(self.reactor, 30.0, inactivity_timeout=600.0)

    def connect(self) -> None:
        """The pending connection attempt succeeds; serve it until it idles
        or is dropped."""
        factory = self.svc.factory
        factory.startedConnecting(self.reactor.connectors[-1])
        client = factory.buildProtocol(None)
        transport = StringTransport()
        directlyProvides(transport, ISSLTransport)
        client.makeConnection(transport)
        self.clients.append((client, transport))
        client.dataReceived(GREETING)
        self.pump()

    def pump(self) -> None:
        client, transport = self.clients[-1]
        for _ in range(1000):
            if transport.disconnecting:
                if not client._closed or client.transport is transport:
                    reason = Failure(ConnectionError("closed"))
                    client.connectionLost(reason)
                    self.svc.factory.clientConnectionLost(self.reactor.connectors[-1], reason)
                    transport.disconnecting = False
                    client.transport = None
                return
            data = transport.value()
            if not data:
                return
            transport.clear()
            for line in data.split(b"\r\n"):
                if line:
                    client.dataReceived(self.server.answer(line))

    def start(self) -> None:
        self.svc.startService()
        self.reactor.advance(0)
        self.connect()

    def reconnect(self) -> None:
        before = self.svc.factory.connect_calls
        for _ in range(120):
            self.reactor.advance(1)
            if self.svc.factory.connect_calls > before:
                self.connect()
                return
        raise AssertionError("no reconnect")

    def published_uids(self) -> list[int]:
        return sorted(r["uid"] for r in self.store.ledger_rows(TENANT, PID)
                      if r["outcome"] == "published")

    def cursor(self) -> FolderCursor:
        return self.store.read_cursor(TENANT, PID, "INBOX").result


OPTIONS = FolderOptions(max_emails_per_sync=50, startup_stagger_ms=0, reconnect_base_ms=1000,
                        reconnect_max_ms=5000, poison_after=2, limits=Limits())


class HostileBytesTests(SynchronousTestCase):
    def wire(self) -> Wire:
        wire = Wire(OPTIONS)
        self.addCleanup(self._stop, wire)
        return wire

    def _stop(self, wire: Wire) -> None:
        if wire.svc.running:
            wire.svc.stopService()
            wire.pump()
        for call in wire.reactor.getDelayedCalls():
            call.cancel()

    def test_deep_bodystructure_takes_the_whole_message_path(self):
        w = self.wire()
        for n in (1, 2, 3):
            w.server.add(n)
        w.server.structures[2] = b"(" * 3000 + LEAF % 8 + b' "mixed")' * 3000
        w.start()
        self.assertEqual(w.svc.state, S.IDLING)
        self.assertEqual(w.published_uids(), [1, 2, 3])
        fetches = [c for c in w.server.commands if b"UID FETCH" in c]
        self.assertTrue(any(c.endswith(b"UID FETCH 2 (UID BODY.PEEK[])") for c in fetches),
                        fetches)
        self.assertEqual(w.cursor().last_uid, "3")
        self.assertEqual(len(w.clients), 1)  # no reconnect was needed

    def test_no_on_fetch_of_one_uid_is_skipped_and_the_folder_goes_on(self):
        w = self.wire()
        for n in range(1, 6):
            w.server.add(n)
        w.server.refuse = {3}
        w.start()
        # The chunk 1..5 was refused: nothing recorded, connection dropped.
        self.assertEqual(w.published_uids(), [])
        self.assertEqual(w.server.refused, 1)
        w.reconnect()  # one UID per command: 1, 2 published, 3 refused (1 of 2)
        self.assertEqual(w.published_uids(), [1, 2])
        self.assertEqual(w.cursor().last_uid, "2")
        w.reconnect()  # 3 refused again: skipped as poison, cursor past it
        rows = {r["uid"]: r for r in w.store.ledger_rows(TENANT, PID)}
        self.assertEqual(rows[3]["outcome"], "skipped")
        self.assertEqual(rows[3]["reason"],
                         "poison: CommandFailed: [UNAVAILABLE] UID FETCH NO: message unreadable")
        self.assertEqual(w.cursor().last_uid, "3")
        w.reconnect()  # the folder goes on with 4 and 5, then idles
        self.assertEqual(w.published_uids(), [1, 2, 4, 5])
        self.assertEqual(w.svc.state, S.IDLING)
        self.assertEqual(w.server.refused, 3)
        [entry] = w.store.list_poison(TENANT).result
        self.assertEqual((entry.uid, entry.failures), (3, 2))
        self.assertIsNotNone(entry.skipped_at)
        self.assertEqual(attr.evolve(w.cursor(), last_seen_at=None),
                         FolderCursor(str(VALIDITY), "5", None))
