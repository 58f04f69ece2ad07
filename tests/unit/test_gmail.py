"""Gmail specifics: X-GM-MSGID as the ledger identity, the connection budget's
split and STATUS decisions (pure), and the bytes of ``STATUS`` and of the
X-GM-MSGID fetch item on the real client."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Optional

import attr
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.cluster_status import folder_counters
from imapsvc.core import gmail as G
from imapsvc.core.email_data import map_message
from imapsvc.core.event import event_ids
from imapsvc.core.folders import expand_wildcard
from imapsvc.core.ledger import dedupe_key
from imapsvc.imap.errors import CommandFailed, ProtocolViolation
from imapsvc.imap.status import parse_status
from imapsvc.model import FetchedMessage, Limits, ProviderConfig
from imapsvc.shared_poll import budget_split
from tests.unit.test_imap_protocol import ClientTestCase, sent

GMAIL_GREETING = b"* OK [CAPABILITY IMAP4rev1 X-GM-EXT-1 IDLE LITERAL+ AUTH=PLAIN] Gimap ready\r\n"


class IdentityTests(SynchronousTestCase):
    def test_msgid_parsing(self) -> None:
        self.assertEqual(G.parse_msgid("1278455344230334865"), "1278455344230334865")
        self.assertEqual(G.parse_msgid(b"42"), "42")
        self.assertEqual(G.parse_msgid("0042"), "42")  # one canonical spelling
        self.assertEqual(G.parse_msgid(str(2**64 - 1)), str(2**64 - 1))
        for bad in (None, "", "0", str(2**64), "12a", "-5", "1" * 21, "\u0661\u0662", ["1"], True):
            self.assertIsNone(G.parse_msgid(bad), bad)

    def test_dedupe_key(self) -> None:
        self.assertEqual(dedupe_key("INBOX", "7", 3), "imap:INBOX:7:3")
        self.assertEqual(dedupe_key("INBOX", "7", 3, None), "imap:INBOX:7:3")
        # Gmail: the folder and UID do not matter, only the message.
        self.assertEqual(dedupe_key("INBOX", "7", 3, "99"), "gmail:99")
        self.assertEqual(dedupe_key("Work", "8", 41, "99"), "gmail:99")

    def test_one_event_id_across_labels(self) -> None:
        raw_header = (
            b"From: Customer <c@example.org>\r\nTo: support@example.com\r\n"
            b"Subject: help\r\n\r\n"  # no Message-ID: only X-GM-MSGID ties them
        )
        now = datetime(2026, 1, 10, tzinfo=UTC)
        mapped = [
            map_message(
                FetchedMessage(folder, "7", uid, 100, None, raw=raw_header + b"body\r\n",
                               gm_msgid=msgid),
                "t", "p", now, Limits(),
            )
            for folder, uid, msgid in (("INBOX", 3, "99"), ("Work", 41, "99"), ("Work", 42, None))
        ]
        self.assertEqual([m.dedupe_key for m in mapped], ["gmail:99", "gmail:99", "imap:Work:7:42"])
        ids = [event_ids("t", "p", m.dedupe_key) for m in mapped]
        self.assertEqual(ids[0], ids[1])
        self.assertNotEqual(ids[0], ids[2])
        # The event still says where this copy was read.
        self.assertEqual(mapped[1].email_data["imap"]["mailbox"], "Work")

    def test_detection(self) -> None:
        self.assertTrue(G.is_gmail("imap.gmail.com"))
        self.assertTrue(G.is_gmail("IMAP.GoogleMail.com."))
        self.assertFalse(G.is_gmail("imap.example.com"))
        self.assertTrue(G.is_gmail("127.0.0.1", ("IDLE", "x-gm-ext-1")))
        self.assertFalse(G.is_gmail("127.0.0.1", ("IDLE", "X-GM-EXT-2")))


class BudgetTests(SynchronousTestCase):
    def test_split(self) -> None:
        folders = ("INBOX", "A", "B", "C")
        self.assertEqual(G.split_by_budget(folders, 15), (folders, ()))
        self.assertEqual(G.split_by_budget(folders, 4), (folders, ()))
        # Over the budget: budget - 1 own connections and one shared.
        self.assertEqual(G.split_by_budget(folders, 3), (("INBOX", "A"), ("B", "C")))
        self.assertEqual(G.split_by_budget(folders, 2), (("INBOX",), ("A", "B", "C")))
        for off in (None, 0, 1):
            self.assertEqual(G.split_by_budget(folders, off), (folders, ()))

    def test_which_providers_are_budgeted(self) -> None:
        class Sup:
            gmail_connection_budget: Optional[int] = 2
            make_shared_poller: Any = object()

        folders = ("INBOX", "A", "*", "B")
        gmail = ProviderConfig("t", "p", "S", "m", "imap.gmail.com", 993, folder_filters=folders)
        # "*" keeps its own connection (it polls its many folders already).
        self.assertEqual(budget_split(Sup(), gmail, folders), (("*",), ("INBOX", "A", "B")))
        learned = ProviderConfig("t", "p", "S", "m", "mx.example.net", 993,
                                 server_capabilities=("IDLE", "X-GM-EXT-1"))
        self.assertEqual(budget_split(Sup(), learned, ("A", "B", "C"))[1], ("B", "C"))
        other = ProviderConfig("t", "p", "S", "m", "mx.example.net", 993)
        self.assertEqual(budget_split(Sup(), other, ("A", "B", "C")), (("A", "B", "C"), ()))
        off = Sup()
        off.gmail_connection_budget = None
        self.assertEqual(budget_split(off, gmail, ("A", "B", "C")), (("A", "B", "C"), ()))
        no_poller = Sup()
        no_poller.make_shared_poller = None
        self.assertEqual(budget_split(no_poller, gmail, ("A", "B", "C")), (("A", "B", "C"), ()))

    def test_learning_gmail_restarts_the_provider(self) -> None:
        before = ProviderConfig("t", "p", "S", "m", "mx.example.net", 993)
        after = attr.evolve(before, server_capabilities=("X-GM-EXT-1",))
        self.assertNotEqual(before.connection_signature(), after.connection_signature())
        plain = attr.evolve(before, server_capabilities=("IDLE",))
        self.assertEqual(before.connection_signature(), plain.connection_signature())

    def test_cluster_status_names_the_shared_mode(self) -> None:
        self.assertEqual(folder_counters({"mode": "shared-poll", "syncs": 2}),
                         {"syncs": 2, "reconnects": 0, "mode": "shared-poll"})
        self.assertNotIn("mode", folder_counters({"mode": "own", "syncs": 2}))

    def test_status_decides_the_sync(self) -> None:
        says = G.status_says_sync
        self.assertFalse(says(7, 11, "7", "10"))  # nothing new
        self.assertTrue(says(7, 12, "7", "10"))  # UID 11 (at least) is new
        self.assertTrue(says(8, 11, "7", "10"))  # UIDVALIDITY changed
        self.assertTrue(says(7, 11, None, None))  # no cursor yet
        self.assertTrue(says(None, 11, "7", "10"))  # the server left it out
        self.assertTrue(says(7, None, "7", "10"))
        self.assertTrue(says(7, 5, "7", "x"))
        # A gap above the cursor that the last pass saw already (mail
        # deleted unread) does not make a pass every round ...
        self.assertFalse(says(7, 12, "7", "10", last_pass=("7", "10", 12)))
        # ... until UIDNEXT moves again, or an operator's resync moves the cursor.
        self.assertTrue(says(7, 13, "7", "10", last_pass=("7", "10", 12)))
        self.assertTrue(says(7, 12, "7", "0", last_pass=("7", "10", 12)))

    def test_wildcard_skips_gmails_own_views(self) -> None:
        listing = [
            (("\\HasNoChildren",), "/", "INBOX"),
            (("\\HasNoChildren",), "/", "Work"),
            (("\\HasChildren", "\\Noselect"), "/", "[Gmail]"),
            (("\\All", "\\HasNoChildren"), "/", "[Gmail]/All Mail"),
            (("\\HasNoChildren", "\\Junk"), "/", "[Gmail]/Spam"),
            (("\\HasNoChildren", "\\Trash"), "/", "[Gmail]/Trash"),
            (("\\HasNoChildren", "\\Sent"), "/", "[Gmail]/Sent Mail"),
            (("\\Drafts", "\\HasNoChildren"), "/", "[Gmail]/Drafts"),
            (("\\Flagged", "\\HasNoChildren"), "/", "[Gmail]/Starred"),
            (("\\HasNoChildren", "\\Important"), "/", "[Gmail]/Important"),
            (("\\HasNoChildren",), "/", "[Gmail]/Custom"),
        ]
        self.assertEqual(
            list(expand_wildcard(["*"], listing)), ["INBOX", "Work", "[Gmail]/Custom"]
        )


class StatusParseTests(SynchronousTestCase):
    def test_answer_for_the_folder(self) -> None:
        answer = [("STATUS", ["Work", ["UIDNEXT", "12", "UIDVALIDITY", "7", "MESSAGES", "3"]])]
        self.assertEqual(parse_status(answer, "Work"),
                         {"uidnext": 12, "uidvalidity": 7, "messages": 3})

    def test_other_folders_and_items_ignored(self) -> None:
        answer = [
            ("STATUS", ["Other", ["UIDNEXT", "99"]]),
            ("STATUS", ["inbox", ["UNSEEN", "4", "UIDNEXT", "5", "HIGHESTMODSEQ", "123456789012"]]),
        ]
        self.assertEqual(parse_status(answer, "INBOX"),
                         {"uidnext": 5, "uidvalidity": None, "messages": None})
        self.assertEqual(parse_status([], "INBOX"),
                         {"uidnext": None, "uidvalidity": None, "messages": None})

    def test_modified_utf7_and_utf8_spellings_match(self) -> None:
        # Tokens are the wire bytes as Latin-1 text; UTF8=ACCEPT sends UTF-8.
        utf8 = "Entw\u00fcrfe".encode("utf-8").decode("latin-1")
        answer = [("STATUS", [utf8, ["UIDNEXT", "2"]])]
        self.assertEqual(parse_status(answer, "Entw&APw-rfe")["uidnext"], 2)

    def test_hostile_values_drop_the_session(self) -> None:
        for items in (
            ["UIDNEXT", "4294967296"],  # over 32 bits
            ["UIDNEXT", "1" * 5000],
            ["UIDNEXT", ["1"]],
            ["UIDNEXT", None],
            ["UIDNEXT", "-1"],
            ["UIDNEXT"],  # dangling key
            [["UIDNEXT"], "1"],
        ):
            with self.assertRaises(ProtocolViolation, msg=items):
                parse_status([("STATUS", ["INBOX", items])], "INBOX")
        with self.assertRaises(ProtocolViolation):
            parse_status([("STATUS", ["INBOX", "UIDNEXT 5"])], "INBOX")


class StatusProtocolTests(ClientTestCase):
    def test_command_and_answer_bytes(self) -> None:
        client, transport, _ = self.connect(greeting=GMAIL_GREETING)
        sent(transport)
        d = client.status_folder("[Gmail]/Sent Mail")
        self.assertEqual(
            sent(transport), b'0001 STATUS "[Gmail]/Sent Mail" (UIDNEXT UIDVALIDITY MESSAGES)\r\n'
        )
        client.dataReceived(
            b'* STATUS "[Gmail]/Sent Mail" (MESSAGES 3 UIDNEXT 12 UIDVALIDITY 7)\r\n'
            b"0001 OK [READ-ONLY] Success\r\n"
        )
        self.assertEqual(self.successResultOf(d), {"uidnext": 12, "uidvalidity": 7, "messages": 3})

    def test_literal_name(self) -> None:
        client, transport, _ = self.connect(greeting=GMAIL_GREETING)
        sent(transport)
        d = client.status_folder('a "quoted\\" name')
        self.assertEqual(
            sent(transport),
            b'0001 STATUS "a \\"quoted\\\\\\" name" (UIDNEXT UIDVALIDITY MESSAGES)\r\n',
        )
        client.dataReceived(
            b'* STATUS {16}\r\na "quoted\\" name (UIDNEXT 2 UIDVALIDITY 9)\r\n0001 OK done\r\n'
        )
        self.assertEqual(
            self.successResultOf(d), {"uidnext": 2, "uidvalidity": 9, "messages": None}
        )

    def test_no_keeps_the_session(self) -> None:
        client, transport, _ = self.connect(greeting=GMAIL_GREETING)
        d = client.status_folder("Gone")
        follow = client.noop()
        sent(transport)
        client.dataReceived(b"0001 NO [NONEXISTENT] Unknown Mailbox: Gone\r\n")
        f = self.failureResultOf(d, CommandFailed)
        self.assertEqual(f.value.code, "NONEXISTENT")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(sent(transport), b"0002 NOOP\r\n")
        client.dataReceived(b"0002 OK\r\n")
        self.successResultOf(follow)

    def test_unselect_bytes(self) -> None:
        client, transport, _ = self.connect(
            greeting=b"* OK [CAPABILITY IMAP4rev1 UNSELECT X-GM-EXT-1] ready\r\n"
        )
        sent(transport)
        d = client.unselect()
        self.assertEqual(sent(transport), b"0001 UNSELECT\r\n")
        client.dataReceived(b"0001 OK Returned to authenticated state. (Success)\r\n")
        self.assertTrue(self.successResultOf(d))
        # Not offered: nothing sent (CLOSE would expunge a SELECTed folder).
        client, transport, _ = self.connect(greeting=GMAIL_GREETING)
        sent(transport)
        self.assertFalse(self.successResultOf(client.unselect()))
        self.assertEqual(sent(transport), b"")

    def test_garbage_answer_drops_the_session(self) -> None:
        client, transport, _ = self.connect(greeting=GMAIL_GREETING)
        d = client.status_folder("INBOX")
        client.dataReceived(b"* STATUS INBOX (UIDNEXT 99999999999)\r\n0001 OK done\r\n")
        self.failureResultOf(d, ProtocolViolation)
        self.assertTrue(transport.disconnecting)


class MsgidFetchTests(ClientTestCase):
    def test_asked_for_and_read_when_offered(self) -> None:
        client, transport, _ = self.connect(greeting=GMAIL_GREETING)
        sent(transport)
        d = client.fetch_meta([5])
        self.assertEqual(
            sent(transport),
            b"0001 UID FETCH 5 (UID RFC822.SIZE INTERNALDATE BODYSTRUCTURE X-GM-MSGID"
            b" BODY.PEEK[HEADER])\r\n",
        )
        client.dataReceived(
            b'* 1 FETCH (X-GM-MSGID 1278455344230334865 UID 5 RFC822.SIZE 10 INTERNALDATE'
            b' "10-Jan-2026 12:00:00 +0000" BODYSTRUCTURE ("TEXT" "PLAIN" NIL NIL NIL "7BIT" 2 1'
            b' NIL NIL NIL NIL) BODY[HEADER] {6}\r\nA: b\r\n)\r\n0001 OK Success\r\n'
        )
        meta = self.successResultOf(d)
        self.assertEqual(meta[5]["gm_msgid"], "1278455344230334865")

    def test_garbage_msgid_keeps_the_folder_identity(self) -> None:
        client, transport, _ = self.connect(greeting=GMAIL_GREETING)
        d = client.fetch_meta([5])
        client.dataReceived(
            b"* 1 FETCH (UID 5 X-GM-MSGID NIL RFC822.SIZE 10)\r\n0001 OK Success\r\n"
        )
        self.assertIsNone(self.successResultOf(d)[5]["gm_msgid"])

    def test_not_asked_for_elsewhere(self) -> None:
        client, transport, _ = self.connect()
        sent(transport)
        d = client.fetch_meta([5])
        self.assertNotIn(b"X-GM-MSGID", sent(transport))
        client.dataReceived(b"* 1 FETCH (UID 5 RFC822.SIZE 10)\r\n0001 OK Success\r\n")
        self.assertNotIn("gm_msgid", self.successResultOf(d)[5])
