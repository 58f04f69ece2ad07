"""A server silent while idling (Exchange Online) keeps its connection; a dead
one is still dropped. Byte level: the real FolderService drives the real
FolderIMAPClient on a StringTransport, time is a fake clock.

Timings (defaults): inactivity watchdog 300 s, command deadline 60 s, IDLE
keep-alive 240 s, IDLE restart 1500 s, jitter +/- 10 % (the folder's random
source is fixed at 0.5, i.e. the nominal value).
"""

from __future__ import annotations

import re

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from imapsvc import folder_state as S
from imapsvc.folder import FolderOptions, FolderService
from imapsvc.imap.protocol import FolderIMAPClient
from tests.folder_helpers import PasswordSource, leased_store, recording_pipeline

_TAGGED = re.compile(rb"^([0-9A-F]{4}) (.*)$")  # Twisted tags: 4 hex digits


class SilentIdleServer:
    """Answers the client's commands the way a server that says nothing
    while idling does. ``dead = True``: no answer to anything any more."""

    def __init__(self, client: FolderIMAPClient, transport: StringTransport):
        self.client = client
        self.transport = transport
        self.dead = False
        self.lines: list[bytes] = []  # everything the client wrote, by line
        self.idle_tag: bytes = b""

    def pump(self) -> None:
        while True:
            data = self.transport.value()
            if not data:
                return
            self.transport.clear()
            for line in data.split(b"\r\n")[:-1]:
                self.lines.append(line)
                if not self.dead:
                    self.answer(line)

    def answer(self, line: bytes) -> None:
        if line == b"DONE":
            self.reply(self.idle_tag + b" OK Idle completed")
            return
        m = _TAGGED.match(line)
        assert m, line
        tag, command = m.groups()
        verb = command.split(b" ")[0].upper()
        if verb == b"LOGIN":
            self.reply(tag + b" OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
        elif verb == b"CAPABILITY":
            self.reply(b"* CAPABILITY IMAP4rev1 IDLE\r\n" + tag + b" OK done")
        elif verb == b"LIST":
            self.reply(b'* LIST (\\HasNoChildren) "/" INBOX\r\n' + tag + b" OK done")
        elif verb == b"EXAMINE":
            self.reply(b"* 0 EXISTS\r\n* OK [UIDVALIDITY 7] v\r\n* OK [UIDNEXT 1] n\r\n"
                       + tag + b" OK [READ-ONLY] done")
        elif command.upper().startswith(b"UID SEARCH"):
            self.reply(b"* SEARCH\r\n" + tag + b" OK done")
        elif verb == b"IDLE":
            self.idle_tag = tag
            self.reply(b"+ idling")  # and then: nothing, ever, until DONE
        elif verb == b"LOGOUT":
            self.reply(b"* BYE bye\r\n" + tag + b" OK done")
        else:
            raise AssertionError(f"unexpected command {line!r}")

    def reply(self, data: bytes) -> None:
        self.client.dataReceived(data + b"\r\n")


class _WireRig(SynchronousTestCase):
    """A FolderService idling on a FolderIMAPClient over a StringTransport."""

    options = FolderOptions(startup_stagger_ms=0)
    rand = 0.5

    def setUp(self):
        self.reactor = MemoryReactorClock()
        store, provider = leased_store(self.reactor, host="imap.example.com",
                                       username="support@example.com")
        pipeline = recording_pipeline(store, self.reactor, self.options.limits)
        self.svc = FolderService(
            provider, "INBOX", self.reactor, store, pipeline, PasswordSource(),
            "worker-1", self.options, protocol_factory=self.make_client,
            tls_factory=lambda host: None, rand=lambda: self.rand,
        )
        self.svc.startService()
        self.reactor.advance(0)
        self.client = self.svc.factory.buildProtocol(None)
        self.transport = StringTransport()
        directlyProvides(self.transport, ISSLTransport)  # implicit TLS: LOGIN allowed
        self.client.makeConnection(self.transport)
        self.server = SilentIdleServer(self.client, self.transport)
        self.client.dataReceived(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
        self.server.pump()
        self.assertEqual(self.svc.state, S.IDLING)
        self.assertEqual(self.server.lines[-1], b"0005 IDLE")
        self.server.lines.clear()
        self.addCleanup(self.stop)

    def make_client(self):
        return FolderIMAPClient(
            self.reactor,
            self.options.command_timeout_ms / 1000.0,
            inactivity_timeout=self.options.inactivity_timeout_ms / 1000.0,
        )

    def stop(self):
        d = self.svc.stopService()
        self.server.pump()
        # The StringTransport only records the close: deliver it.
        self.client.connectionLost(_done())
        self.svc.factory.clientConnectionLost(self.reactor.connectors[-1], _done())
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def run_for(self, seconds: float, step: float = 1.0) -> None:
        """Let time pass; the server answers whatever the client sends."""
        end = self.reactor.seconds() + seconds
        while self.reactor.seconds() < end:
            self.reactor.advance(min(step, end - self.reactor.seconds()))
            self.server.pump()



class QuietIdleTests(_WireRig):
    def test_silent_server_keeps_its_connection_for_an_hour(self):
        self.run_for(239)
        self.assertEqual(self.server.lines, [])
        self.run_for(1)
        # The keep-alive at 240 s: exactly DONE, the tagged OK, then a new IDLE.
        self.assertEqual(self.server.lines, [b"DONE", b"0006 IDLE"])
        self.run_for(3600 - 240)
        self.assertFalse(self.transport.disconnecting, "a healthy silent server was dropped")
        self.assertEqual(self.svc.state, S.IDLING)
        self.assertEqual(self.svc.reconnects, {})
        # Never 300 s without a byte from the server: a keep-alive every
        # 240 s within each IDLE period (6 + 6 + 2), and the IDLE restarts at
        # 1500 s and 3000 s, which sync (EXAMINE, SEARCH) before idling on.
        lines = self.server.lines
        self.assertEqual(lines.count(b"DONE"), 16)
        self.assertEqual(len([x for x in lines if x.endswith(b" IDLE")]), 16)
        self.assertEqual(len([x for x in lines if b" EXAMINE " in x]), 2)
        self.assertEqual(self.svc.idle_keepalives, 14)
        tags = [int(x.split()[0], 16) for x in lines if x != b"DONE"]
        self.assertEqual(tags, sorted(set(tags)), "tags reused")

    def test_dead_server_is_dropped(self):
        self.run_for(200)
        self.server.dead = True  # gone without a FIN: nothing answers any more
        self.run_for(40)
        self.assertEqual(self.server.lines, [b"DONE"])
        self.assertFalse(self.transport.disconnecting)
        # 300 s after the last byte from the server ("+ idling" at 0 s): the
        # watchdog (and DONE's 60 s deadline, due at the same time) drops it.
        self.run_for(59)
        self.assertFalse(self.transport.disconnecting)
        self.run_for(1)
        self.assertTrue(self.transport.disconnecting, "a dead server was not dropped")
        self.assertEqual(self.server.lines, [b"DONE"])

    def test_server_answering_done_late_but_in_time_is_kept(self):
        # A slow but alive server: DONE answered 50 s later, inside the deadline.
        self.run_for(240)
        self.assertEqual(self.server.lines, [b"DONE", b"0006 IDLE"])
        self.server.lines.clear()
        self.server.dead = True
        self.run_for(240)
        self.assertEqual(self.server.lines, [b"DONE"])
        self.run_for(50)
        self.server.dead = False
        self.server.answer(b"DONE")
        self.server.pump()
        self.assertEqual(self.server.lines, [b"DONE", b"0007 IDLE"])
        self.run_for(600)
        self.assertFalse(self.transport.disconnecting)


class JitterCapTests(_WireRig):
    """Whatever the jitter draws, the keep-alive stays below the watchdog
    and the IDLE restart below 29 minutes."""

    options = FolderOptions(startup_stagger_ms=0, timer_jitter_pct=1.0, idle_restart_ms=1700000,
                            idle_keepalive_ms=290000)
    rand = 0.9999  # the longest draw: nearly twice the interval

    def test_silent_server_keeps_its_connection_for_an_hour(self):
        # Keep-alive capped at 90 % of the 300 s watchdog: 270 s.
        self.run_for(269)
        self.assertEqual(self.server.lines, [])
        self.run_for(1)
        self.assertEqual(self.server.lines, [b"DONE", b"0006 IDLE"])
        self.run_for(3600)
        self.assertFalse(self.transport.disconnecting)

    def test_restart_below_29_minutes(self):
        examines = lambda: len([x for x in self.server.lines if b" EXAMINE " in x])  # noqa: E731
        self.run_for(29 * 60 - 1.5, step=0.5)
        self.assertEqual(examines(), 0)
        self.run_for(0.5, step=0.5)
        self.assertEqual(examines(), 1)


def _done():
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    return Failure(ConnectionDone())
