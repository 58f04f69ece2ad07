"""Client IDLE (RFC 2177), which Twisted's client lacks."""

from __future__ import annotations

from imapsvc.imap.errors import CommandTimeout, ProtocolViolation
from imapsvc.imap.protocol import MAX_STATUS_LINES
from tests.unit.test_imap_protocol import ClientTestCase, sent


class IdleTests(ClientTestCase):
    def test_exists_during_idle_and_queued_after_done(self):
        client, transport, clock = self.connect(command_timeout=30)
        seen = []
        d = client.idle(seen.append)
        self.assertEqual(sent(transport), b"0001 IDLE\r\n")
        self.assertFalse(client.idling)
        client.dataReceived(b"+ idling\r\n")
        self.assertTrue(client.idling)
        # Idling is silent by design: no command deadline.
        clock.advance(600)
        client.dataReceived(b"* 4 EXISTS\r\n* 1 RECENT\r\n* OK Still here\r\n* 5 EXISTS\r\n")
        self.assertEqual(seen, [4, 5])
        search = client.uid_search_from(10)
        self.assertEqual(sent(transport), b"", "a command was sent during IDLE")
        client.done()
        client.done()
        self.assertEqual(sent(transport), b"DONE\r\n")
        self.assertFalse(client.idling)
        client.dataReceived(b"0001 OK Idle completed.\r\n")
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(sent(transport), b"0002 UID SEARCH UID 10:*\r\n")
        client.dataReceived(b"* SEARCH 10 11\r\n0002 OK done\r\n")
        self.assertEqual(self.successResultOf(search), [10, 11])

    def test_status_line_flood_ends_the_session(self):
        """A server repeating untagged OK lines without end is dropped (a
        protocol violation, which counts towards quarantine), not parsed for
        as long as the session lasts; a tagged answer starts the count again."""
        client, transport, clock = self.connect()
        d = client.idle(lambda n: None)
        client.dataReceived(b"+ idling\r\n")
        client.dataReceived(b"* OK Still here\r\n" * (MAX_STATUS_LINES - 1))
        client.done()
        client.dataReceived(b"0001 OK Idle completed.\r\n")
        self.successResultOf(d)
        d = client.idle(lambda n: None)
        client.dataReceived(b"+ idling\r\n")
        client.dataReceived(b"* OK have some more\r\n" * MAX_STATUS_LINES)
        self.assertNoResult(d)
        client.dataReceived(b"* OK and more\r\n")
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)

    def test_done_before_continuation(self):
        client, transport, clock = self.connect()
        d = client.idle(lambda n: None)
        client.done()
        self.assertEqual(sent(transport), b"0001 IDLE\r\n")
        client.dataReceived(b"+ idling\r\n")
        self.assertEqual(sent(transport), b"DONE\r\n")
        client.dataReceived(b"0001 OK done\r\n")
        self.successResultOf(d)

    def test_no_answer_to_done_times_out(self):
        client, transport, clock = self.connect(command_timeout=30)
        d = client.idle(lambda n: None)
        client.dataReceived(b"+ idling\r\n")
        client.done()
        clock.advance(30)
        self.failureResultOf(d, CommandTimeout)
        self.assertDropped(transport)

    def test_no_continuation_times_out(self):
        client, transport, clock = self.connect(command_timeout=30)
        d = client.idle(lambda n: None)
        clock.advance(30)
        self.failureResultOf(d, CommandTimeout)

    def test_server_ends_idle(self):
        client, transport, clock = self.connect()
        d = client.idle(lambda n: None)
        client.dataReceived(b"+ idling\r\n0001 OK Idle timed out\r\n")
        self.successResultOf(d)
        self.assertFalse(client.idling)
        client.done()
        self.assertEqual(sent(transport), b"0001 IDLE\r\n")

    def test_callback_error_does_not_break_idle(self):
        client, transport, clock = self.connect()

        def boom(n):
            raise RuntimeError("bug")

        d = client.idle(boom)
        client.dataReceived(b"+ idling\r\n* 3 EXISTS\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        client.done()
        client.dataReceived(b"0001 OK done\r\n")
        self.successResultOf(d)

    def test_untagged_no_during_idle_leaves_idle(self):
        # Dovecot, when the selected folder is deleted under an idling session.
        client, transport, clock = self.connect()
        d = client.idle(lambda n: None)
        client.dataReceived(b"+ idling\r\n")
        self.assertEqual(sent(transport), b"0001 IDLE\r\n")
        client.dataReceived(b"* NO Internal error occurred. Refer to server log.\r\n")
        self.assertEqual(sent(transport), b"DONE\r\n")
        self.assertFalse(client.idling)
        client.dataReceived(b"0001 OK Idle completed.\r\n")
        self.successResultOf(d)

    def test_untagged_ok_during_idle_keeps_idling(self):
        client, transport, clock = self.connect()
        d = client.idle(lambda n: None)
        client.dataReceived(b"+ idling\r\n")
        sent(transport)
        client.dataReceived(b"* OK Still here\r\n")
        self.assertEqual(sent(transport), b"")
        self.assertTrue(client.idling)
        client.done()
        client.dataReceived(b"0001 OK Idle completed.\r\n")
        self.successResultOf(d)


class IdleEndingStateTests(ClientTestCase):
    """The IDLE-ending state is the protocol's, read through two read-only
    properties (the folder asks them instead of keeping its own copy)."""

    def test_done_before_the_continuation_is_ending_but_not_sent(self):
        client, transport, clock = self.connect()
        self.assertFalse(client.idle_ending)
        d = client.idle(lambda n: None)
        self.assertFalse(client.idle_ending)
        client.done()
        self.assertEqual(sent(transport), b"0001 IDLE\r\n")
        self.assertTrue(client.idle_ending)
        self.assertFalse(client.idle_done_sent)
        client.dataReceived(b"+ idling\r\n")
        self.assertEqual(sent(transport), b"DONE\r\n")
        self.assertTrue(client.idle_done_sent)
        client.dataReceived(b"0001 OK Idle completed.\r\n")
        self.successResultOf(d)
        self.assertFalse(client.idle_ending)
        self.assertFalse(client.idle_done_sent)

    def test_a_new_idle_starts_with_nothing_sent(self):
        client, transport, clock = self.connect()
        d = client.idle(lambda n: None)
        client.dataReceived(b"+ idling\r\n")
        client.done()
        self.assertTrue(client.idle_done_sent)
        client.dataReceived(b"0001 OK Idle completed.\r\n")
        self.successResultOf(d)
        d = client.idle(lambda n: None)
        client.dataReceived(b"+ idling\r\n")
        self.assertFalse(client.idle_ending)
        self.assertEqual(sent(transport), b"0001 IDLE\r\nDONE\r\n0002 IDLE\r\n")
        client.done()
        client.dataReceived(b"0002 OK Idle completed.\r\n")
        self.successResultOf(d)

    def test_read_only(self):
        client, transport, clock = self.connect()
        with self.assertRaises(AttributeError):
            client.idle_done_sent = True  # type: ignore[misc]
        with self.assertRaises(AttributeError):
            client.idle_ending = True  # type: ignore[misc]

    def test_connection_lost_while_ending(self):
        client, transport, clock = self.connect()
        d = client.idle(lambda n: None)
        client.dataReceived(b"+ idling\r\n")
        client.done()
        client.connectionLost(None)
        self.failureResultOf(d)
        self.assertFalse(client.idle_ending)
        self.assertFalse(client.idle_done_sent)
