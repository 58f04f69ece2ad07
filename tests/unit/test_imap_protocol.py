"""Byte-level tests of FolderIMAPClient on a string transport: reading
responses, deadlines, watchdog, BYE, SEARCH, LIST, EXAMINE.

The helpers here are shared by the other ``test_imap_*`` modules.
"""

from __future__ import annotations

from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail.imap4 import IMAP4Client
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides, directlyProvides, implementer

from imapsvc.imap import responses
from imapsvc.imap.errors import (
    CommandFailed,
    CommandTimeout,
    ConnectionGone,
    ProtocolViolation,
    Throttled,
)
from imapsvc.imap.protocol import FolderIMAPClient

GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ IDLE STARTTLS AUTH=PLAIN] ready\r\n"


@implementer(ITLSTransport)
class TLSCapableTransport(StringTransport):
    """A string transport that records ``startTLS`` (and then says it is TLS)."""

    tls_context = None

    def startTLS(self, context_factory):
        self.tls_context = context_factory
        alsoProvides(self, ISSLTransport)


def make_client(
    tls: bool = True,
    greeting: bytes = GREETING,
    command_timeout: float = 30.0,
    inactivity_timeout=None,
    transport=None,
):
    """A connected client on a string transport, greeting consumed.

    :returns: ``(client, transport, clock)``
    """
    clock = Clock()
    client = FolderIMAPClient(clock, command_timeout, inactivity_timeout=inactivity_timeout)
    if transport is None:
        transport = StringTransport()
        if tls:
            directlyProvides(transport, ISSLTransport)
    client.makeConnection(transport)
    if greeting:
        client.dataReceived(greeting)
    return client, transport, clock


def sent(transport) -> bytes:
    """What the client wrote since the last call (and forget it)."""
    value = transport.value()
    transport.clear()
    return value


class ClientTestCase(SynchronousTestCase):
    """Common assertions; subclasses call :func:`make_client`."""

    def connect(self, **kwargs):
        client, transport, clock = make_client(**kwargs)
        self.addCleanup(self._close, client, clock)
        return client, transport, clock

    def _close(self, client, clock):
        if not client._closed:
            client.connectionLost(Failure(ConnectionGone("test over")))
        self.assertEqual(clock.getDelayedCalls(), [], "timers left behind")

    def assertDropped(self, transport, aborted=True):
        self.assertTrue(transport.disconnecting, "connection was not dropped")
        if aborted:
            self.assertTrue(transport.disconnected, "connection was not aborted")


class GreetingTests(ClientTestCase):
    def test_subclass_of_twisted_client(self):
        self.assertTrue(issubclass(FolderIMAPClient, IMAP4Client))

    def test_greeting_capabilities(self):
        clock = Clock()
        client = FolderIMAPClient(clock, 30)
        transport = StringTransport()
        client.makeConnection(transport)
        client.dataReceived(GREETING)
        caps = self.successResultOf(client.greeted)
        self.assertIn(b"IDLE", caps)
        self.assertEqual(caps[b"AUTH"], [b"PLAIN"])
        self.assertEqual(transport.value(), b"")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_greeting_without_capabilities_asks(self):
        client, transport, clock = self.connect(greeting=b"* OK hello\r\n")
        self.assertNoResult(client.greeted)
        self.assertEqual(sent(transport), b"0001 CAPABILITY\r\n")
        client.dataReceived(b"* CAPABILITY IMAP4rev1 IDLE\r\n0001 OK done\r\n")
        self.assertEqual(self.successResultOf(client.greeted), {b"IMAP4REV1": None, b"IDLE": None})

    def test_no_greeting_times_out(self):
        client, transport, clock = self.connect(greeting=b"", command_timeout=10)
        clock.advance(10)
        self.failureResultOf(client.greeted, CommandTimeout)
        self.assertDropped(transport)

    def test_bye_greeting_fails(self):
        client, transport, clock = self.connect(greeting=b"* BYE too many connections\r\n")
        failure = self.failureResultOf(client.greeted)
        self.assertIn("too many connections", str(failure.value))
        self.assertTrue(transport.disconnecting)


class ReaderTests(ClientTestCase):
    def test_empty_line_is_ignored(self):
        """Twisted's client raises on an empty line (and drops)."""
        client, transport, clock = self.connect()
        d = client.noop()
        sent(transport)
        client.dataReceived(b"\r\n\r\n* 3 EXISTS\r\n\r\n0001 OK NOOP done\r\n")
        self.assertEqual(self.successResultOf(d), 3)
        self.assertFalse(transport.disconnecting)

    def test_literal_as_last_token_keeps_line_end(self):
        """``* LIST () "/" {5}`` + ``INBOX`` + CRLF ends the response; Twisted
        strips that CRLF and glues the next response onto this one."""
        client, transport, clock = self.connect()
        d = client.list_folders()
        self.assertEqual(sent(transport), b'0001 LIST "" "*"\r\n')
        client.dataReceived(
            b'* LIST (\\HasNoChildren) "/" {5}\r\nINBOX\r\n'
            b'* LIST (\\HasNoChildren) "/" "Sent Items"\r\n'
            b"0001 OK LIST done\r\n"
        )
        self.assertEqual(
            self.successResultOf(d),
            [(("\\HasNoChildren",), "/", "INBOX"), (("\\HasNoChildren",), "/", "Sent Items")],
        )

    def test_literal_split_across_reads(self):
        client, transport, clock = self.connect()
        d = client.fetch_full([7])
        sent(transport)
        body = b"Subject: x\r\n\r\nline1\r\n\xff\xfe\r\n"
        wire = b"* 1 FETCH (UID 7 BODY[] {%d}\r\n" % len(body) + body + b")\r\n0001 OK done\r\n"
        for index in range(len(wire)):
            client.dataReceived(wire[index : index + 1])
        self.assertEqual(self.successResultOf(d), {7: body})

    def test_unknown_tag_drops(self):
        client, transport, clock = self.connect()
        d = client.noop()
        client.dataReceived(b"9999 OK what\r\n")
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)

    def test_unbalanced_fetch_is_salvaged(self):
        """One broken BODYSTRUCTURE must not make the folder unreadable."""
        client, transport, clock = self.connect()
        d = client.fetch_meta([5])
        sent(transport)
        client.dataReceived(
            b'* 1 FETCH (UID 5 RFC822.SIZE 10 BODYSTRUCTURE ("text" "plain" (( '
            b"BODY[HEADER] {4}\r\nA: b)\r\n0001 OK done\r\n"
        )
        result = self.successResultOf(d)
        self.assertEqual(result[5]["bodystructure"], None)
        self.assertEqual(result[5]["size"], 10)
        self.assertEqual(result[5]["header"], b"A: b")

    def test_huge_literal_refused(self):
        client, transport, clock = self.connect()
        d = client.fetch_full([1])
        client.dataReceived(b"* 1 FETCH (UID 1 BODY[] {999999999999}\r\n")
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)


class SearchTests(ClientTestCase):
    def test_search_with_many_hits(self):
        """20,000 UIDs on one line: Twisted's 16 KiB line limit drops the
        connection."""
        client, transport, clock = self.connect()
        d = client.uid_search_from(1000)
        self.assertEqual(sent(transport), b"0001 UID SEARCH UID 1000:*\r\n")
        uids = list(range(1000, 21000))
        line = b"* SEARCH " + b" ".join(b"%d" % uid for uid in reversed(uids)) + b"\r\n"
        self.assertGreater(len(line), IMAP4Client.MAX_LENGTH)
        for start in range(0, len(line), 4096):
            client.dataReceived(line[start : start + 4096])
        client.dataReceived(b"0001 OK SEARCH done\r\n")
        self.assertEqual(self.successResultOf(d), uids)
        self.assertFalse(transport.disconnecting)

    def test_search_drops_uids_below_start(self):
        """``n:*`` matches the highest UID even when it is below n."""
        client, transport, clock = self.connect()
        d = client.uid_search_from(43)
        client.dataReceived(b"* SEARCH 42\r\n0001 OK done\r\n")
        self.assertEqual(self.successResultOf(d), [])

    def test_search_no_answer_drops(self):
        client, transport, clock = self.connect()
        d = client.uid_search_from(1)
        queued = client.noop()
        client.dataReceived(b"0001 NO [SERVERBUG] oops\r\n")
        failure = self.failureResultOf(d, CommandFailed)
        self.assertEqual(failure.value.code, "SERVERBUG")
        self.failureResultOf(queued, ConnectionGone)
        self.assertTrue(transport.disconnecting)


class SpecialUseListTests(ClientTestCase):
    def test_list_with_special_use_and_xlist_flags(self):
        """RFC 6154 attributes (and Gmail's XLIST spellings) come through
        LIST as flags; the wildcard filter leaves those folders out."""
        from imapsvc.core.folders import expand_wildcard

        client, transport, clock = self.connect()
        d = client.list_folders()
        self.assertEqual(sent(transport), b'0001 LIST "" "*"\r\n')
        client.dataReceived(
            b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
            b'* LIST (\\HasNoChildren \\Sent) "/" "Sent Items"\r\n'
            b'* LIST (\\HasNoChildren \\Junk) "/" Junk\r\n'
            b'* LIST (\\Trash \\HasNoChildren) "/" Trash\r\n'
            b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts\r\n'
            b'* LIST (\\HasChildren \\Noselect) "/" "[Gmail]"\r\n'
            b'* LIST (\\HasNoChildren \\All) "/" "[Gmail]/All Mail"\r\n'
            b'* LIST (\\HasNoChildren \\Spam) "/" "[Gmail]/Spam"\r\n'
            b'* LIST (\\HasNoChildren \\Archive) "/" Archive\r\n'
            b'* LIST (\\HasNoChildren) "/" Support\r\n'
            b"0001 OK LIST done\r\n"
        )
        listing = self.successResultOf(d)
        self.assertIn((("\\HasNoChildren", "\\Sent"), "/", "Sent Items"), listing)
        self.assertIn((("\\Trash", "\\HasNoChildren"), "/", "Trash"), listing)
        self.assertEqual(expand_wildcard(["*"], listing), ("INBOX", "Archive", "Support"))


class SearchSinceTests(ClientTestCase):
    def test_search_since_bytes(self):
        client, transport, clock = self.connect()
        d = client.uid_search_since("1-Jan-2026")
        self.assertEqual(sent(transport), b"0001 UID SEARCH SINCE 1-Jan-2026\r\n")
        # Every UID found counts: a backfill reads below the cursor too.
        client.dataReceived(b"* SEARCH 9 3 12\r\n0001 OK Search completed\r\n")
        self.assertEqual(self.successResultOf(d), [3, 9, 12])

    def test_search_since_nothing(self):
        client, transport, clock = self.connect()
        d = client.uid_search_since("31-Dec-2025")
        client.dataReceived(b"* SEARCH\r\n0001 OK done\r\n")
        self.assertEqual(self.successResultOf(d), [])

    def test_search_since_refuses_what_is_not_a_date(self):
        client, transport, clock = self.connect()
        for bad in ("1-Jan-2026\r\n0002 LOGOUT", "2026-01-01", "31-Feb-2026", "1-JAN-2026 x"):
            self.failureResultOf(client.uid_search_since(bad), ValueError)
        self.assertEqual(sent(transport), b"")


class ExamineTests(ClientTestCase):
    def test_examine(self):
        client, transport, clock = self.connect()
        d = client.examine_folder("INBOX")
        self.assertEqual(sent(transport), b'0001 EXAMINE "INBOX"\r\n')
        client.dataReceived(
            b"* FLAGS (\\Answered \\Seen)\r\n"
            b"* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n"
            b"* 12 EXISTS\r\n* 0 RECENT\r\n"
            b"* OK [UIDVALIDITY 1735234567] UIDs valid\r\n"
            b"* OK [UIDNEXT 4243] Predicted next UID\r\n"
            b"0001 OK [READ-ONLY] Examine completed\r\n"
        )
        self.assertEqual(
            self.successResultOf(d),
            {"uidvalidity": 1735234567, "uidnext": 4243, "exists": 12, "read_only": True},
        )

    def test_examine_quotes_name(self):
        client, transport, clock = self.connect()
        d = client.examine_folder('Odd "x" \\ &AOQ-')
        self.assertEqual(sent(transport), b'0001 EXAMINE "Odd \\"x\\" \\\\ &AOQ-"\r\n')
        client.dataReceived(b"0001 NO [NONEXISTENT] Mailbox doesn't exist\r\n")
        self.assertEqual(self.failureResultOf(d, CommandFailed).value.code, "NONEXISTENT")

    def test_examine_without_uidvalidity_fails(self):
        client, transport, clock = self.connect()
        d = client.examine_folder("INBOX")
        client.dataReceived(b"* 1 EXISTS\r\n0001 OK [READ-ONLY] done\r\n")
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)


class DeadlineTests(ClientTestCase):
    def test_command_timeout_drops(self):
        client, transport, clock = self.connect(command_timeout=30)
        d = client.uid_search_from(1)
        queued = client.noop()
        clock.advance(29)
        self.assertNoResult(d)
        clock.advance(1)
        self.failureResultOf(d, CommandTimeout)
        self.failureResultOf(queued, ConnectionGone)
        self.assertDropped(transport)
        # Late bytes after the drop are ignored, nothing raises.
        client.dataReceived(b"* SEARCH 1\r\n0001 OK done\r\n")

    def test_progress_extends_deadline(self):
        """A big literal that keeps arriving is not a hang."""
        client, transport, clock = self.connect(command_timeout=30)
        d = client.fetch_full([1])
        client.dataReceived(b"* 1 FETCH (UID 1 BODY[] {100}\r\n")
        for _ in range(10):
            clock.advance(20)
            client.dataReceived(b"x" * 10)
        client.dataReceived(b")\r\n0001 OK done\r\n")
        self.assertEqual(self.successResultOf(d), {1: b"x" * 100})

    def test_inactivity_watchdog(self):
        client, transport, clock = self.connect(inactivity_timeout=300)
        d = client.idle(lambda n: None)
        client.dataReceived(b"+ idling\r\n")
        clock.advance(120)
        client.dataReceived(b"* OK Still here\r\n")
        clock.advance(299)
        self.assertNoResult(d)
        clock.advance(1)
        self.failureResultOf(d, CommandTimeout)
        self.assertDropped(transport)

    def test_connection_lost_fails_commands(self):
        client, transport, clock = self.connect()
        d = client.noop()
        client.connectionLost(Failure(ConnectionGone("gone")))
        self.failureResultOf(d, ConnectionGone)


class ByeAndThrottleTests(ClientTestCase):
    def test_bye_calls_on_bye(self):
        client, transport, clock = self.connect()
        seen = []
        client.on_bye = seen.append
        d = client.idle(lambda n: None)
        client.dataReceived(b"+ idling\r\n* BYE Server shutting down.\r\n")
        self.assertEqual(seen, ["Server shutting down."])
        client.connectionLost(Failure(ConnectionGone("closed")))
        self.failureResultOf(d, ConnectionGone)

    def test_logout_bye_is_not_on_bye(self):
        client, transport, clock = self.connect()
        seen = []
        client.on_bye = seen.append
        d = client.logout()
        self.assertEqual(sent(transport), b"0001 LOGOUT\r\n")
        client.dataReceived(b"* BYE Logging out\r\n0001 OK Logout completed.\r\n")
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(seen, [])
        self.assertTrue(transport.disconnecting)

    def test_throttled_with_backoff(self):
        client, transport, clock = self.connect()
        d = client.uid_search_from(1)
        client.dataReceived(
            b"0001 NO Request is throttled. Suggested Backoff Time: 12345 milliseconds\r\n"
        )
        failure = self.failureResultOf(d, Throttled)
        self.assertAlmostEqual(failure.value.retry_after, 12.345)

    def test_throttled_code(self):
        client, transport, clock = self.connect()
        d = client.fetch_full([1])
        client.dataReceived(b"0001 NO [LIMIT] Too many concurrent FETCH\r\n")
        failure = self.failureResultOf(d, Throttled)
        self.assertIsNone(failure.value.retry_after)


class PureParsingTests(SynchronousTestCase):
    def test_tokenize(self):
        tokens = responses.tokenize(
            [b'(UID 4 BODY[HEADER.FIELDS (TO)]<0> NIL FLAGS (\\Seen) X "a\\"b" BODY[] {3}', b")"],
            [b"a\r\n"],
        )
        self.assertEqual(
            tokens,
            [["UID", "4", "BODY[HEADER.FIELDS (TO)]<0>", None, "FLAGS", ["\\Seen"], "X",
              b'a"b', "BODY[]", b"a\r\n"]],
        )

    def test_tokenize_literal_size_mismatch(self):
        with self.assertRaises(responses.ResponseParseError):
            responses.tokenize([b"{4}", b""], [b"abc"])

    def test_status(self):
        self.assertEqual(
            responses.parse_status(b"NO [AUTHENTICATIONFAILED] Authentication failed."),
            ("NO", "AUTHENTICATIONFAILED", "", "Authentication failed."),
        )
        self.assertEqual(responses.parse_status(b"OK"), ("OK", None, "", ""))
        self.assertIsNone(responses.parse_status(b"3 EXISTS"))

    def test_uid_set(self):
        self.assertEqual(responses.uid_set([5, 1, 2, 3, 9, 10]), b"1:3,5,9:10")

    def test_capability_strings(self):
        caps = responses.parse_capabilities(["IMAP4rev1", "AUTH=PLAIN", "AUTH=XOAUTH2", "IDLE"])
        self.assertEqual(
            responses.capability_strings(caps), ["AUTH=PLAIN", "AUTH=XOAUTH2", "IDLE", "IMAP4REV1"]
        )

    def test_throttle_delay(self):
        self.assertEqual(responses.throttle_delay("THROTTLED", "slow down"), (True, None))
        self.assertEqual(responses.throttle_delay(None, "No such message"), (False, None))


class HostileServerRegressionTests(ClientTestCase):
    """Inputs found by ``test_imap_fuzz`` that used to raise out of
    ``dataReceived``, fail a command with a bare ``ValueError`` or let a
    response grow without bound."""

    BIG = b"1" * 5000  # int() refuses more than 4300 digits

    def test_huge_sequence_number_drops(self):
        client, transport, clock = self.connect()
        d = client.noop()
        sent(transport)
        client.dataReceived(b"* " + self.BIG + b" EXISTS\r\n")
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)

    def test_huge_search_number_drops(self):
        client, transport, clock = self.connect()
        d = client.uid_search_from(1)
        sent(transport)
        client.dataReceived(b"* SEARCH 7 " + self.BIG + b"\r\n0001 OK done\r\n")
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)

    def test_huge_literal_size_digits_drop(self):
        client, transport, clock = self.connect()
        d = client.fetch_full([5])
        sent(transport)
        client.dataReceived(b"* 1 FETCH (UID 5 BODY[] {" + self.BIG + b"}\r\nxyz")
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)
        self.assertEqual(client._literal_chunks, [])

    def test_odd_size_and_date_are_not_errors(self):
        # "\xb2" (superscript two) is str.isdigit() but not int()-able.
        client, transport, clock = self.connect()
        d = client.fetch_meta([5, 6, 7])
        sent(transport)
        client.dataReceived(
            b"* 1 FETCH (UID 5 RFC822.SIZE \xb2 BODY[HEADER] {3}\r\nA:b)\r\n"
            b"* 2 FETCH (UID 6 RFC822.SIZE " + self.BIG + b' INTERNALDATE "d")\r\n'
            b"* 3 FETCH (UID 7 RFC822.SIZE 12 INTERNALDATE (a b))\r\n"
            b"0001 OK done\r\n"
        )
        result = self.successResultOf(d)
        self.assertEqual(result[5]["size"], 0)
        self.assertEqual(result[5]["header"], b"A:b")
        self.assertEqual(result[6]["size"], 0)
        self.assertEqual(result[6]["internaldate"], "d")
        self.assertEqual(result[7]["size"], 12)
        self.assertIsNone(result[7]["internaldate"])
        self.assertFalse(transport.disconnecting)

    def test_huge_section_origin_is_skipped(self):
        client, transport, clock = self.connect()
        d = client.fetch_sections({5: [("1", None)]})
        sent(transport)
        client.dataReceived(
            b"* 1 FETCH (UID 5 BODY[1]<" + self.BIG + b'> "junk" BODY[1] {2}\r\nok)\r\n'
            b"0001 OK done\r\n"
        )
        self.assertEqual(self.successResultOf(d), {5: {"1": b"ok"}})

    def test_chained_literals_bounded(self):
        # Every literal is under max_literal_bytes; the response as a whole
        # must still stop at max_response_bytes.
        client, transport, clock = self.connect()
        client.max_literal_bytes = 100
        client.max_response_bytes = 1000
        d = client.fetch_full([5])
        sent(transport)
        piece = b" BODY[1] {100}\r\n" + b"x" * 100
        client.dataReceived(b"* 1 FETCH (UID 5" + piece * 6)
        self.assertNoResult(d)
        client.dataReceived(piece * 5)
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)
        self.assertLessEqual(sum(map(len, client._literals)), 1000)

    def test_endless_untagged_answer_to_one_command_drops(self):
        client, transport, clock = self.connect(command_timeout=30)
        client.max_command_bytes = 10_000
        d = client.uid_search_from(1)
        sent(transport)
        line = b"* OK still busy " + b"x" * 80 + b"\r\n"
        for _ in range(300):  # each line keeps the deadline alive
            client.dataReceived(line)
            clock.advance(1)
            if transport.disconnecting:
                break
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)

    def test_untagged_budget_is_per_command(self):
        client, transport, clock = self.connect()
        client.max_command_bytes = 200
        for tag in (b"0001", b"0002", b"0003"):
            d = client.uid_search_from(1)
            sent(transport)
            hits = b" ".join(b"%d" % n for n in range(1, 41))
            client.dataReceived(b"* SEARCH " + hits + b"\r\n" + tag + b" OK done\r\n")
            self.assertEqual(len(self.successResultOf(d)), 40)
