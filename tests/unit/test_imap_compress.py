"""COMPRESS=DEFLATE (RFC 4978) at byte level: what goes out is raw deflate
(sync-flushed per write), what comes in is inflated before line splitting,
a refusal leaves the session plain, a decompression bomb is cut off by the
reader's caps, and the byte budget sees the inflated sizes."""

from __future__ import annotations

import zlib

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from imapsvc.imap.budget import ByteBudget
from imapsvc.imap.compress import (
    INFLATE_PIECE,
    DeflateStreams,
    offers_deflate,
    worth_compressing,
)
from imapsvc.imap.errors import ProtocolViolation
from imapsvc.imap.protocol import FolderIMAPClient
from imapsvc.model import Credentials
from tests.unit import test_imap_fuzz as fuzz
from tests.unit.test_imap_protocol import ClientTestCase, sent

GREETING_COMPRESS = b"* OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE] ready\r\n"
GREETING_PLAIN = b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n"
LOOPBACK = IPv4Address("TCP", "127.0.0.1", 143)
PRIVATE = IPv4Address("TCP", "10.1.2.3", 993)
PUBLIC = IPv4Address("TCP", "142.250.1.108", 993)


class Server:
    """The server's side of the deflate streams."""

    def __init__(self) -> None:
        self.inflater = zlib.decompressobj(-15)
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)

    def read(self, data: bytes) -> bytes:
        return self.inflater.decompress(data)

    def say(self, data: bytes) -> bytes:
        return self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)


def transport_to(peer, tls: bool = True) -> StringTransport:
    transport = StringTransport(peerAddress=peer)
    if tls:
        directlyProvides(transport, ISSLTransport)
    return transport


class CompressTestCase(ClientTestCase):
    def logged_in(self, peer=LOOPBACK, greeting=GREETING_COMPRESS, **kwargs):
        """A client after the greeting and a LOGIN, in authenticated state."""
        client, transport, clock = self.connect(
            transport=transport_to(peer), greeting=greeting, **kwargs
        )
        self.login(client, transport)
        return client, transport, clock

    def login(self, client, transport):
        d = client.authenticate_with(Credentials("password", "user", "secret"))
        sent(transport)
        client.dataReceived(b"0001 OK logged in\r\n")
        sent(transport)  # the CAPABILITY that follows a login without one
        caps = client.capabilities
        client.dataReceived(b"* CAPABILITY " + _cap_line(caps) + b"\r\n0002 OK done\r\n")
        self.successResultOf(d)

    def compressed(self, client, transport, mode="always"):
        """Run COMPRESS DEFLATE to its OK; returns the server's streams."""
        d = client.maybe_compress(mode)
        self.assertEqual(sent(transport), b"0003 COMPRESS DEFLATE\r\n")
        client.dataReceived(b"0003 OK DEFLATE active\r\n")
        self.assertTrue(self.successResultOf(d))
        return Server()


def _cap_line(caps) -> bytes:
    words = []
    for name, values in (caps or {}).items():
        if values:
            words.extend(name + b"=" + value for value in values)
        else:
            words.append(name)
    return b" ".join(words)


class CompressCommandTests(CompressTestCase):
    def test_both_directions_deflated_after_ok(self):
        client, transport, clock = self.logged_in()
        self.assertFalse(client.compressing)
        server = self.compressed(client, transport)
        self.assertTrue(client.compressing)
        d = client.noop()
        wire = sent(transport)
        self.assertNotIn(b"NOOP", wire)
        # One write is one sync-flushed block: the server can read the whole
        # command without waiting for more.
        self.assertTrue(wire.endswith(b"\x00\x00\xff\xff"))
        self.assertEqual(server.read(wire), b"0004 NOOP\r\n")
        client.dataReceived(server.say(b"* 7 EXISTS\r\n0004 OK NOOP done\r\n"))
        self.assertEqual(self.successResultOf(d), 7)

    def test_compressed_bytes_in_the_same_read_as_the_ok(self):
        client, transport, clock = self.logged_in()
        d = client.maybe_compress("always")
        queued = client.noop()
        self.assertEqual(sent(transport), b"0003 COMPRESS DEFLATE\r\n")
        server = Server()
        # The NOOP went out compressed right after the OK; its answer arrives
        # deflated in the very read that carries the OK.
        client.dataReceived(b"0003 OK DEFLATE active\r\n" + server.say(b"* 3 EXISTS\r\n"))
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(server.read(sent(transport)), b"0004 NOOP\r\n")
        client.dataReceived(server.say(b"0004 OK done\r\n"))
        self.assertEqual(self.successResultOf(queued), 3)

    def test_response_split_across_reads_and_literals(self):
        client, transport, clock = self.logged_in()
        server = self.compressed(client, transport)
        d = client.fetch_full([9])
        self.assertEqual(server.read(sent(transport)), b"0004 UID FETCH 9 (UID BODY.PEEK[])\r\n")
        body = b"Subject: hi\r\n\r\n" + bytes(range(256)) * 40
        wire = server.say(b"* 1 FETCH (UID 9 BODY[] {%d}\r\n" % len(body) + body + b")\r\n")
        wire += server.say(b"0004 OK done\r\n")
        for start in range(0, len(wire), 7):
            client.dataReceived(wire[start : start + 7])
        self.assertEqual(self.successResultOf(d), {9: body})

    def test_idle_done_is_compressed(self):
        client, transport, clock = self.logged_in()
        server = self.compressed(client, transport)
        seen = []
        d = client.idle(seen.append)
        self.assertEqual(server.read(sent(transport)), b"0004 IDLE\r\n")
        client.dataReceived(server.say(b"+ idling\r\n* 4 EXISTS\r\n"))
        self.assertEqual(seen, [4])
        client.done()
        self.assertEqual(server.read(sent(transport)), b"DONE\r\n")
        client.dataReceived(server.say(b"0004 OK Idle completed\r\n"))
        self.successResultOf(d)

    def test_no_answer_leaves_it_off(self):
        client, transport, clock = self.logged_in()
        d = client.maybe_compress("always")
        self.assertEqual(sent(transport), b"0003 COMPRESS DEFLATE\r\n")
        client.dataReceived(b"0003 NO [COMPRESSIONACTIVE] already\r\n")
        self.assertFalse(self.successResultOf(d))
        self.assertFalse(client.compressing)
        d = client.noop()
        self.assertEqual(sent(transport), b"0004 NOOP\r\n")
        client.dataReceived(b"0004 OK done\r\n")
        self.successResultOf(d)

    def test_bad_answer_leaves_it_off(self):
        client, transport, clock = self.logged_in()
        d = client.maybe_compress("always")
        client.dataReceived(b"0003 BAD unknown command\r\n")
        self.assertFalse(self.successResultOf(d))
        self.assertFalse(client.compressing)
        self.assertFalse(transport.disconnecting)

    def test_second_call_sends_nothing(self):
        client, transport, clock = self.logged_in()
        self.compressed(client, transport)
        self.assertTrue(self.successResultOf(client.maybe_compress("always")))
        self.assertEqual(sent(transport), b"")

    def test_corrupt_stream_drops_the_connection(self):
        client, transport, clock = self.logged_in()
        self.compressed(client, transport)
        d = client.noop()
        client.dataReceived(b"\xff\xfe not deflate at all")
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)

    def test_stream_ended_at_logout(self):
        """Dovecot finishes its deflate stream with LOGOUT's answer."""
        client, transport, clock = self.logged_in()
        server = self.compressed(client, transport)
        d = client.logout()
        self.assertEqual(server.read(sent(transport)), b"0004 LOGOUT\r\n")
        final = server.deflater.compress(b"* BYE Logging out\r\n0004 OK Logout completed.\r\n")
        client.dataReceived(final + server.deflater.flush())
        self.successResultOf(d)
        self.assertTrue(transport.disconnecting)

    def test_bytes_after_the_end_of_the_stream_drop_the_connection(self):
        client, transport, clock = self.logged_in()
        server = self.compressed(client, transport)
        d = client.noop()
        ended = server.deflater.compress(b"* 1 EXISTS\r\n") + server.deflater.flush()
        client.dataReceived(ended + b"0004 OK plain text after the end\r\n")
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)

    def test_bytes_in_a_later_read_after_the_end_drop_the_connection(self):
        client, transport, clock = self.logged_in()
        server = self.compressed(client, transport)
        d = client.noop()
        client.dataReceived(server.deflater.compress(b"* 1 EXISTS\r\n") + server.deflater.flush())
        self.assertNoResult(d)
        client.dataReceived(b"x")
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)


class WhenToCompressTests(CompressTestCase):
    def test_auto_on_loopback_sends_nothing(self):
        client, transport, clock = self.logged_in(peer=LOOPBACK)
        self.assertFalse(self.successResultOf(client.maybe_compress("auto")))
        self.assertEqual(sent(transport), b"")

    def test_auto_on_private_network_sends_nothing(self):
        client, transport, clock = self.logged_in(peer=PRIVATE)
        self.assertFalse(self.successResultOf(client.maybe_compress("auto")))
        self.assertEqual(sent(transport), b"")

    def test_auto_on_public_server_compresses(self):
        client, transport, clock = self.logged_in(peer=PUBLIC)
        self.compressed(client, transport, mode="auto")
        self.assertTrue(client.compressing)

    def test_off_never(self):
        client, transport, clock = self.logged_in(peer=PUBLIC)
        self.assertFalse(self.successResultOf(client.maybe_compress("off")))
        self.assertEqual(sent(transport), b"")

    def test_not_offered_never(self):
        client, transport, clock = self.logged_in(peer=PUBLIC, greeting=GREETING_PLAIN)
        self.assertFalse(self.successResultOf(client.maybe_compress("always")))
        self.assertEqual(sent(transport), b"")

    def test_not_before_login(self):
        client, transport, clock = self.connect(
            transport=transport_to(PUBLIC), greeting=GREETING_COMPRESS
        )
        self.assertFalse(self.successResultOf(client.maybe_compress("always")))
        self.assertEqual(sent(transport), b"")

    def test_choice(self):
        self.assertTrue(worth_compressing("always", "127.0.0.1"))
        self.assertFalse(worth_compressing("off", "142.250.1.108"))
        self.assertFalse(worth_compressing("auto", "::1"))
        self.assertFalse(worth_compressing("auto", "192.168.0.10"))
        self.assertFalse(worth_compressing("auto", "fd00::1"))
        self.assertFalse(worth_compressing("auto", "::ffff:10.0.0.1"))
        self.assertTrue(worth_compressing("auto", "2a00:1450:400c:c00::6c"))
        self.assertTrue(worth_compressing("auto", None))
        self.assertFalse(worth_compressing("bogus", "142.250.1.108"))

    def test_ipv6_peer(self):
        client, transport, clock = self.logged_in(peer=IPv6Address("TCP", "::1", 143))
        self.assertFalse(self.successResultOf(client.maybe_compress("auto")))

    def test_offers_deflate(self):
        self.assertTrue(offers_deflate({b"COMPRESS": [b"DEFLATE"]}))
        self.assertTrue(offers_deflate({b"COMPRESS": [b"deflate"]}))
        self.assertFalse(offers_deflate({b"COMPRESS": [b"LZ4"]}))
        self.assertFalse(offers_deflate({b"COMPRESS": None}))
        self.assertFalse(offers_deflate(None))


class BombTests(CompressTestCase):
    def test_endless_line_is_cut_after_the_line_cap(self):
        """64 MiB of one byte deflate to ~64 KiB; the client inflates only
        until the line cap is passed, never the whole of it."""
        client, transport, clock = self.logged_in()
        client.MAX_LENGTH = 64 * 1024
        self.compressed(client, transport)
        d = client.noop()
        bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
        chunk = b"A" * (1024 * 1024)
        wire = b"".join(bomb.compress(chunk) for _ in range(64)) + bomb.flush(zlib.Z_SYNC_FLUSH)
        self.assertLess(len(wire), 200 * 1024)
        client.dataReceived(wire)
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)
        streams = client._deflate
        self.assertLessEqual(streams.inflated, client.MAX_LENGTH + 2 * INFLATE_PIECE)
        self.assertEqual(len(client._buffer), 0)

    def test_oversized_literal_is_refused_before_inflating_it(self):
        client, transport, clock = self.logged_in()
        server = self.compressed(client, transport)
        d = client.fetch_full([1])
        sent(transport)
        size = client.max_literal_bytes + 1
        head = b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % size
        client.dataReceived(server.say(head + b"\x00" * (4 * 1024 * 1024)))
        self.failureResultOf(d, ProtocolViolation)
        self.assertLessEqual(client._deflate.inflated, len(head) + INFLATE_PIECE)


class BudgetTests(SynchronousTestCase):
    """The budget is charged with inflated sizes, and a paused connection
    stops inflating until it is resumed."""

    def client(self, budget, clock):
        client = FolderIMAPClient(clock, 30.0, inactivity_timeout=300.0, budget=budget)
        transport = transport_to(PUBLIC)
        client.makeConnection(transport)
        client.dataReceived(GREETING_COMPRESS)
        client.state = "auth"
        self.addCleanup(lambda: client._closed or client.connectionLost(None))
        return client, transport

    def start(self, client, transport):
        d = client.maybe_compress("always")
        self.assertEqual(sent(transport), b"0001 COMPRESS DEFLATE\r\n")
        client.dataReceived(b"0001 OK DEFLATE active\r\n")
        self.assertTrue(self.successResultOf(d))
        return Server()

    def test_budget_sees_inflated_bytes(self):
        clock = Clock()
        budget = ByteBudget(1024 * 1024 * 1024)
        client, transport = self.client(budget, clock)
        server = self.start(client, transport)
        d = client.fetch_full([1])
        sent(transport)
        body = b"\x00" * (2 * 1024 * 1024)
        wire = server.say(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(body) + body + b")\r\n")
        self.assertLess(len(wire), 10 * 1024)
        client.dataReceived(wire)
        self.assertGreaterEqual(budget.held(client), len(body))
        client.dataReceived(server.say(b"0002 OK done\r\n"))
        self.assertEqual(self.successResultOf(d), {1: body})
        self.assertGreaterEqual(budget.peak, len(body))
        self.assertEqual(budget.used, 0)

    def test_paused_connection_stops_inflating(self):
        clock = Clock()
        budget = ByteBudget(256 * 1024)
        other, other_transport = self.client(budget, clock)
        client, transport = self.client(budget, clock)
        server = self.start(client, transport)
        # Another reader holds bytes: over budget, ours is the one paused.
        held = other.noop()
        other.dataReceived(b"* 1 EXISTS" + b" x" * 1000)
        d = client.fetch_full([1])
        sent(transport)
        body = b"\x00" * (4 * 1024 * 1024)
        wire = server.say(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(body) + body + b")\r\n")
        client.dataReceived(wire + server.say(b"0002 OK done\r\n"))
        self.assertTrue(client.budget_paused)
        self.assertTrue(client._deflate.pending)
        self.assertLess(client._deflate.inflated, 256 * 1024 + 2 * INFLATE_PIECE)
        self.assertNoResult(d)
        # The other reader's answer releases its bytes: ours resumes and
        # inflates the rest without any new read.
        other.dataReceived(b"\r\n0001 OK done\r\n")
        self.successResultOf(held)
        self.assertEqual(self.successResultOf(d), {1: body})
        self.assertFalse(client._deflate.pending)


class DeflateStreamsTests(SynchronousTestCase):
    def test_round_trip_with_a_small_window(self):
        streams = DeflateStreams()
        server = Server()
        for line in (b"0001 NOOP\r\n", b"0002 UID FETCH 1:* (UID)\r\n" * 50):
            self.assertEqual(server.read(streams.compress(line)), line)

    def test_inflate_is_capped_per_call(self):
        streams = DeflateStreams()
        streams.feed(Server().say(b"z" * (10 * INFLATE_PIECE)))
        pieces = []
        while streams.pending:
            piece = streams.inflate(INFLATE_PIECE)
            self.assertLessEqual(len(piece), INFLATE_PIECE)
            pieces.append(piece)
        self.assertEqual(b"".join(pieces), b"z" * (10 * INFLATE_PIECE))
        self.assertEqual(streams.inflate(), b"")



class CompressedFuzzTests(SynchronousTestCase):
    """The fuzz harness's arbitrary server bytes, deflated: the same bounds
    hold and every outcome is a result or an IMAP error; garbage that is
    not deflate at all is a protocol violation, never a crash."""

    def run_state(self, state, chunks, deflated=True):
        harness = fuzz.Harness(state)
        harness.client._deflate = DeflateStreams()
        server = Server()
        wire = [server.say(chunk) for chunk in chunks] if deflated else chunks
        harness.feed(wire)
        harness.check(self)
        harness.clock.advance(31)
        harness.check(self)
        harness.close(self)

    @fuzz.FUZZ
    @given(chunks=fuzz.chunked(), state=st.sampled_from(["idling", *fuzz.COMMANDS]))
    def test_deflated_server_bytes(self, chunks, state):
        self.run_state(state, chunks)

    @fuzz.FUZZ
    @given(chunks=fuzz.chunked(), state=st.sampled_from(["idling", *fuzz.COMMANDS]))
    def test_raw_bytes_where_deflate_is_expected(self, chunks, state):
        self.run_state(state, chunks, deflated=False)
