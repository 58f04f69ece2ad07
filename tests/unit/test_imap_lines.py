"""Byte-level tests of the linear line reader (``imap/lines.py``), the
workaround for Twisted's ``LineReceiver`` re-scanning and re-copying its
whole buffer on every read of a long line."""

from __future__ import annotations

from imapsvc.imap.errors import ProtocolViolation
from tests.unit.test_imap_protocol import ClientTestCase, sent


class LineSplittingTests(ClientTestCase):
    def test_crlf_split_between_reads(self):
        client, transport, clock = self.connect()
        d = client.noop()
        sent(transport)
        client.dataReceived(b"* 4 EXISTS\r")
        client.dataReceived(b"\n0001 OK done\r")
        self.assertNoResult(d)
        client.dataReceived(b"\n")
        self.assertEqual(self.successResultOf(d), 4)

    def test_lone_cr_inside_a_line_is_data(self):
        client, transport, clock = self.connect()
        d = client.noop()
        sent(transport)
        client.dataReceived(b"* OK a\r")
        client.dataReceived(b"b\r\n* 2 EXISTS\r\n0001 OK done\r\n")
        self.assertEqual(self.successResultOf(d), 2)
        self.assertFalse(transport.disconnecting)

    def test_many_responses_in_one_read(self):
        client, transport, clock = self.connect()
        d = client.uid_search_from(1)
        sent(transport)
        client.dataReceived(b"* 1 EXISTS\r\n" * 50 + b"* SEARCH 1 2 3\r\n0001 OK done\r\n")
        self.assertEqual(self.successResultOf(d), [1, 2, 3])

    def test_a_long_line_is_kept_as_its_reads(self):
        """A line arriving over many reads is held as those reads, not glued
        onto one buffer at every read (which made a 4 MiB line cost most of
        a second): each read is kept as the very object received."""
        client, transport, clock = self.connect()
        d = client.uid_search_from(1)
        sent(transport)
        reads = [b"* SEARCH"] + [b" %d" % n for n in range(1, 2001)]
        for data in reads:
            client.dataReceived(data)
        self.assertEqual(len(client._pieces), len(reads))
        self.assertTrue(all(a is b for a, b in zip(client._pieces, reads)))
        self.assertEqual(client._buffer, b"".join(reads))
        client.dataReceived(b"\r\n0001 OK done\r\n")
        self.assertEqual(self.successResultOf(d), list(range(1, 2001)))
        self.assertIsNone(client._pieces)
        self.assertEqual(client._buffer, b"")

    def test_line_reaching_the_cap_without_crlf_drops(self):
        client, transport, clock = self.connect()
        client.MAX_LENGTH = 1000
        d = client.noop()
        client.dataReceived(b"* OK " + b"x" * 900)
        self.assertFalse(transport.disconnecting)
        client.dataReceived(b"x" * 100)
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)

    def test_whole_line_over_the_cap_drops(self):
        client, transport, clock = self.connect()
        client.MAX_LENGTH = 1000
        d = client.noop()
        client.dataReceived(b"* OK " + b"x" * 996 + b"\r\n")
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)

    def test_line_at_the_cap_is_taken(self):
        client, transport, clock = self.connect()
        client.MAX_LENGTH = 1000
        d = client.noop()
        sent(transport)
        client.dataReceived(b"* OK " + b"x" * 995 + b"\r")
        client.dataReceived(b"\n0001 OK done\r\n")
        self.successResultOf(d)
        self.assertFalse(transport.disconnecting)

    def test_nothing_is_read_after_a_drop(self):
        """Responses in the same read after a protocol violation are not
        handed on."""
        client, transport, clock = self.connect()
        d = client.noop()
        client.dataReceived(b"9999 OK what\r\n* 5 EXISTS\r\n0001 OK done\r\n")
        self.failureResultOf(d, ProtocolViolation)
        self.assertIsNone(client.last_exists)

    def test_literals_and_lines_in_one_read(self):
        client, transport, clock = self.connect()
        d = client.fetch_full([7, 8])
        sent(transport)
        first, second = b"A: 1\r\n\r\nbody one\r\n", b"B: 2\r\n\r\n"
        client.dataReceived(
            b"* 1 FETCH (UID 7 BODY[] {%d}\r\n" % len(first) + first + b")\r\n"
            b"* 2 FETCH (UID 8 BODY[] {%d}\r\n" % len(second) + second + b")\r\n"
            b"0001 OK done\r\n"
        )
        self.assertEqual(self.successResultOf(d), {7: first, 8: second})

    def test_literal_ending_a_read_then_crlf(self):
        client, transport, clock = self.connect()
        d = client.fetch_full([7])
        sent(transport)
        body = b"C: 3\r\n\r\nx"
        client.dataReceived(b"* 1 FETCH (UID 7 BODY[] {%d}\r\n" % len(body) + body)
        client.dataReceived(b")\r\n0001 OK done\r\n")
        self.assertEqual(self.successResultOf(d), {7: body})
