"""Byte-level tests of the write-back commands of FolderIMAPClient (issue 13
item 3): SELECT, UID STORE, UID MOVE, UID COPY, UID EXPUNGE; and the pure
rules of imapsvc/core/write_back.py."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core import write_back as W
from imapsvc.imap.errors import CommandFailed, ProtocolViolation
from tests.unit.test_imap_protocol import ClientTestCase, sent


class SelectTests(ClientTestCase):
    def test_select(self):
        client, transport, clock = self.connect()
        d = client.select_folder("INBOX")
        self.assertEqual(sent(transport), b'0001 SELECT "INBOX"\r\n')
        client.dataReceived(
            b"* FLAGS (\\Answered \\Seen \\Deleted)\r\n"
            b"* OK [PERMANENTFLAGS (\\Seen \\Deleted \\*)] Flags permitted.\r\n"
            b"* 3 EXISTS\r\n* 0 RECENT\r\n"
            b"* OK [UIDVALIDITY 77] UIDs valid\r\n"
            b"* OK [UIDNEXT 9] Predicted next UID\r\n"
            b"0001 OK [READ-WRITE] Select completed\r\n"
        )
        self.assertEqual(
            self.successResultOf(d),
            {"uidvalidity": 77, "uidnext": 9, "exists": 3, "read_only": False},
        )
        self.assertEqual(client.last_exists, 3)

    def test_select_read_only_answer(self):
        client, transport, clock = self.connect()
        d = client.select_folder("Shared/Folder &AOQ-")
        self.assertEqual(sent(transport), b'0001 SELECT "Shared/Folder &AOQ-"\r\n')
        client.dataReceived(b"* OK [UIDVALIDITY 5] x\r\n0001 OK [READ-ONLY] Select completed\r\n")
        self.assertTrue(self.successResultOf(d)["read_only"])

    def test_select_without_uidvalidity_drops(self):
        client, transport, clock = self.connect()
        d = client.select_folder("INBOX")
        client.dataReceived(b"0001 OK [READ-WRITE] done\r\n")
        self.failureResultOf(d, ProtocolViolation)
        self.assertDropped(transport)


class WriteCommandTests(ClientTestCase):
    def test_store_seen_silent_by_uid(self):
        client, transport, clock = self.connect()
        d = client.uid_store_flags([5, 1, 2, 3], ["\\Seen"])
        self.assertEqual(sent(transport), b"0001 UID STORE 1:3,5 +FLAGS.SILENT (\\Seen)\r\n")
        # An unsolicited FETCH (another client's flag change) is ignored.
        client.dataReceived(b"* 2 FETCH (FLAGS (\\Seen))\r\n0001 OK Store completed.\r\n")
        self.assertIsNone(self.successResultOf(d))

    def test_store_refuses_odd_flags_without_sending(self):
        client, transport, clock = self.connect()
        self.failureResultOf(client.uid_store_flags([1], ["\\Seen) (x"]), ValueError)
        self.assertEqual(sent(transport), b"")

    def test_move_quotes_the_folder(self):
        client, transport, clock = self.connect()
        d = client.uid_move([7, 8], 'Done "x"')
        self.assertEqual(sent(transport), b'0001 UID MOVE 7:8 "Done \\"x\\""\r\n')
        client.dataReceived(
            b"* OK [COPYUID 12 7:8 1:2] Moved UIDs.\r\n"
            b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n0001 OK Move completed.\r\n"
        )
        self.assertIsNone(self.successResultOf(d))

    def test_move_8bit_folder_uses_a_literal(self):
        client, transport, clock = self.connect()
        client.utf8_accept = True  # UTF8=ACCEPT: the name goes out in UTF-8
        d = client.uid_move([1], "Erledigt/&AOQ-")
        self.assertEqual(sent(transport), b"0001 UID MOVE 1 {11+}\r\nErledigt/\xc3\xa4\r\n")
        client.dataReceived(b"0001 OK done\r\n")
        self.successResultOf(d)

    def test_copy_and_expunge(self):
        client, transport, clock = self.connect()
        d1 = client.uid_copy([3], "Processed")
        d2 = client.uid_expunge([3, 4])
        self.assertEqual(sent(transport), b'0001 UID COPY 3 "Processed"\r\n')
        client.dataReceived(b"0001 OK [COPYUID 1 3 10] Copy completed.\r\n")
        self.successResultOf(d1)
        self.assertEqual(sent(transport), b"0002 UID EXPUNGE 3:4\r\n")
        client.dataReceived(b"* 2 EXPUNGE\r\n0002 OK Expunge completed.\r\n")
        self.assertIsNone(self.successResultOf(d2))

    def test_refusal_fails_the_command_and_keeps_the_session(self):
        client, transport, clock = self.connect()
        d = client.uid_move([1], "Processed")
        queued = client.uid_search_from(1)
        sent(transport)
        client.dataReceived(b"0001 NO [TRYCREATE] Mailbox doesn't exist: Processed\r\n")
        failure = self.failureResultOf(d, CommandFailed)
        self.assertEqual(failure.value.code, "TRYCREATE")
        self.assertFalse(transport.disconnecting)
        # The next command goes out and is answered as usual.
        self.assertEqual(sent(transport), b"0002 UID SEARCH UID 1:*\r\n")
        client.dataReceived(b"* SEARCH 1\r\n0002 OK done\r\n")
        self.assertEqual(self.successResultOf(queued), [1])

    def test_bad_fails_softly_too(self):
        client, transport, clock = self.connect()
        d = client.uid_expunge([1])
        client.dataReceived(b"0001 BAD Unknown command\r\n")
        self.failureResultOf(d, CommandFailed)
        self.assertFalse(transport.disconnecting)

    def test_other_commands_still_drop_on_no(self):
        # The soft path is only for write-back: a refused FETCH ends the session.
        client, transport, clock = self.connect()
        d = client.fetch_full([1])
        client.dataReceived(b"0001 NO [SERVERBUG] oops\r\n")
        self.failureResultOf(d, CommandFailed)
        self.assertTrue(transport.disconnecting)

    def test_write_command_timeout_drops(self):
        client, transport, clock = self.connect(command_timeout=30)
        d = client.uid_store_flags([1], ["\\Seen"])
        clock.advance(30)
        self.failureResultOf(d)
        self.assertDropped(transport)


class ModeTests(SynchronousTestCase):
    def test_parse(self):
        self.assertEqual(W.parse_mode(None), W.WriteBack())
        self.assertEqual(W.parse_mode(" none "), W.WriteBack())
        self.assertEqual(W.parse_mode("SEEN"), W.WriteBack(W.SEEN))
        self.assertEqual(W.parse_mode("delete"), W.WriteBack(W.DELETE))
        self.assertEqual(W.parse_mode("move:Processed"), W.WriteBack(W.MOVE, "Processed"))
        self.assertEqual(W.parse_mode("Move: Archiv/2026 "), W.WriteBack(W.MOVE, "Archiv/2026"))
        self.assertEqual(str(W.parse_mode("move:Processed")), "move:Processed")
        self.assertEqual(str(W.parse_mode("seen")), "seen")

    def test_parse_rejects(self):
        too_long = "move:" + "x" * 1001
        for bad in ("move:", "move: ", "archive", "seen,delete", "move:a\r\nb", too_long):
            self.assertRaises(ValueError, W.parse_mode, bad)

    def test_resolve_prefers_the_provider(self):
        self.assertEqual(W.resolve(None, "seen").kind, W.SEEN)
        self.assertEqual(W.resolve("none", "seen").kind, W.NONE)
        self.assertEqual(W.resolve("delete", "none").kind, W.DELETE)

    def test_plans(self):
        move = W.parse_mode("move:P")
        self.assertEqual(W.plan_steps(W.WriteBack(), []), [])
        self.assertEqual(W.plan_steps(W.parse_mode("seen"), []), [W.STEP_SEEN])
        self.assertEqual(W.plan_steps(move, ["MOVE", "UIDPLUS"]), [W.STEP_MOVE])
        self.assertEqual(
            W.plan_steps(move, ["uidplus"]), [W.STEP_COPY, W.STEP_DELETED, W.STEP_EXPUNGE]
        )
        self.assertRaises(W.WriteBackUnsupported, W.plan_steps, move, ["IDLE"])
        delete = W.parse_mode("delete")
        self.assertEqual(W.plan_steps(delete, ["UIDPLUS"]), [W.STEP_DELETED, W.STEP_EXPUNGE])
        # Without UID EXPUNGE a plain EXPUNGE would remove others' \Deleted mail.
        self.assertRaises(W.WriteBackUnsupported, W.plan_steps, delete, ["MOVE"])

    def test_flags(self):
        self.assertFalse(W.WriteBack().enabled)
        self.assertTrue(W.parse_mode("seen").enabled)
        self.assertFalse(W.parse_mode("seen").expunges)
        self.assertTrue(W.parse_mode("delete").expunges)
        self.assertTrue(W.parse_mode("move:x").expunges)

    def test_same_folder(self):
        self.assertTrue(W.same_folder("INBOX", "inbox"))
        self.assertFalse(W.same_folder("Done", "done"))
        self.assertTrue(W.same_folder("Done", "Done"))

    def test_sweep_range(self):
        self.assertIsNone(W.sweep_range(None))
        self.assertIsNone(W.sweep_range("0"))
        self.assertIsNone(W.sweep_range("x"))
        self.assertEqual(W.sweep_range("5", 1000), (1, 5))
        self.assertEqual(W.sweep_range("5000", 1000), (4001, 5000))
