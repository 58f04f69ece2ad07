"""The CONDSTORE/QRESYNC part (RFC 7162) of the session contract: the real
client against the scripted server and the fake session give the same
answers to ``enable_condstore`` and ``examine_modseq``, and the same when
the server offers neither.

Mixed in next to :class:`tests.session_contract.SessionContractMixin`,
whose helpers (``mailbox``, ``logged_in``, ``result``, ``failure``) it uses.
"""

from __future__ import annotations

from typing import Any

from imapsvc.imap.condstore import KnownState, OpenState
from imapsvc.imap.errors import CommandFailed, ProtocolViolation
from imapsvc.testing import FakeMailbox
from imapsvc.testing.mailbox import FETCH_GARBLED
from tests.session_contract import plain

PLAIN_CAPS = ("IMAP4rev1", "ENABLE", "IDLE", "AUTH=PLAIN")
CONDSTORE_CAPS = ("IMAP4rev1", "ENABLE", "CONDSTORE", "IDLE", "AUTH=PLAIN")
QRESYNC_CAPS = ("IMAP4rev1", "ENABLE", "CONDSTORE", "QRESYNC", "IDLE", "UIDPLUS",
                "AUTH=PLAIN")


class ModseqContractMixin:
    """Assertions on mod-sequences every session passes."""

    # Provided by SessionContractMixin and the TestCase.
    mailbox: Any
    logged_in: Any
    result: Any
    failure: Any
    assertEqual: Any
    assertIsNone: Any
    assertNotIn: Any
    assertIsNotNone: Any

    def modseq_mailbox(self, caps: tuple[str, ...], count: int = 3) -> FakeMailbox:
        mailbox = self.mailbox(capabilities=caps)
        for n in range(count):
            mailbox.append(plain(n))
        return mailbox

    def nothing_sent(self, mailbox: FakeMailbox) -> None:
        """``ENABLE`` was not sent: its scripted garbled answer (which would
        have ended the session) is still due."""
        self.assertIsNotNone(mailbox.command_failure("ENABLE"))

    def highest(self, mailbox: FakeMailbox, folder: str = "INBOX") -> int:
        return mailbox.folders[folder].highest_modseq

    def test_modseq_not_offered(self) -> None:
        mailbox = self.modseq_mailbox(PLAIN_CAPS)
        mailbox.fail_command("ENABLE", how=FETCH_GARBLED)
        session = self.logged_in(mailbox, folder=None)
        self.assertIsNone(session.modseq_mode)
        self.assertIsNone(self.result(session.enable_condstore()))
        self.assertIsNone(session.modseq_mode)
        self.nothing_sent(mailbox)
        # Without a mode, a plain EXAMINE: the answer has no "modseq".
        info = self.result(session.examine_modseq("INBOX", KnownState("1", 5)))
        self.assertEqual(info, {"uidvalidity": mailbox.folders["INBOX"].uidvalidity,
                                "uidnext": 4, "exists": 3, "read_only": True})

    def test_condstore_needs_no_command_and_follows_every_change(self) -> None:
        mailbox = self.modseq_mailbox(CONDSTORE_CAPS)
        mailbox.fail_command("ENABLE", how=FETCH_GARBLED)
        session = self.logged_in(mailbox, folder=None)
        self.assertEqual(self.result(session.enable_condstore()), "CONDSTORE")
        self.assertEqual(session.modseq_mode, "CONDSTORE")
        self.nothing_sent(mailbox)
        info = self.result(session.examine_modseq("INBOX", None))
        self.assertEqual((info["uidnext"], info["exists"], info["read_only"]), (4, 3, True))
        self.assertEqual(info["modseq"], OpenState(self.highest(mailbox)))
        seen = [info["modseq"].highest_modseq]
        # New mail, a flag change, an expunge: each moves HIGHESTMODSEQ.
        changes = (lambda: mailbox.append(plain(4)),
                   lambda: mailbox.store_flags("INBOX", [1], ["\\Flagged"]),
                   lambda: mailbox.expunge("INBOX", [2], only_deleted=False))
        for change in changes:
            change()
            state = self.result(session.examine_modseq("INBOX", None))["modseq"]
            self.assertEqual(state, OpenState(self.highest(mailbox)))
            self.assertEqual(state.highest_modseq > seen[-1], True)
            seen.append(state.highest_modseq)
        # Nothing changed: the same value; a flag already set changes nothing.
        mailbox.store_flags("INBOX", [1], ["\\Flagged"])
        state = self.result(session.examine_modseq("INBOX", KnownState("1", 1)))["modseq"]
        self.assertEqual(state.highest_modseq, seen[-1])
        # The session goes on.
        self.assertEqual(self.result(session.uid_search_from(1)), [1, 3, 4])

    def test_qresync_enable_and_vanished_earlier(self) -> None:
        mailbox = self.modseq_mailbox(QRESYNC_CAPS, count=5)
        session = self.logged_in(mailbox, folder=None)
        self.assertEqual(self.result(session.enable_condstore()), "QRESYNC")
        self.assertEqual(session.modseq_mode, "QRESYNC")
        validity = str(mailbox.folders["INBOX"].uidvalidity)
        known = KnownState(validity, self.highest(mailbox))
        state = self.result(session.examine_modseq("INBOX", known))["modseq"]
        self.assertEqual(state, OpenState(known.modseq))
        # Expunged (2 and 4) and flagged (1) since: VANISHED (EARLIER) names
        # the two, and the changed message's FETCH does not disturb.
        mailbox.expunge("INBOX", [2, 4], only_deleted=False)
        mailbox.store_flags("INBOX", [1], ["\\Seen"])
        info = self.result(session.examine_modseq("INBOX", known, select=True))
        self.assertEqual(info["modseq"], OpenState(self.highest(mailbox), vanished=2))
        self.assertEqual((info["exists"], info["read_only"]), (3, False))
        # Another UIDVALIDITY: the server ignores the rest (no VANISHED).
        other = KnownState(str(int(validity) + 1), known.modseq)
        state = self.result(session.examine_modseq("INBOX", other))["modseq"]
        self.assertEqual(state, OpenState(self.highest(mailbox)))
        # Asked for CONDSTORE only, a QRESYNC server needs no command.
        mailbox.fail_command("ENABLE", how=FETCH_GARBLED)
        session = self.logged_in(mailbox, folder=None)
        self.assertEqual(self.result(session.enable_condstore(qresync=False)), "CONDSTORE")
        self.nothing_sent(mailbox)
        state = self.result(session.examine_modseq("INBOX", known))["modseq"]
        self.assertEqual(state, OpenState(self.highest(mailbox)))

    def test_nomodseq(self) -> None:
        mailbox = self.modseq_mailbox(QRESYNC_CAPS)
        mailbox.set_nomodseq()
        session = self.logged_in(mailbox, folder=None)
        self.result(session.enable_condstore())
        known = KnownState(str(mailbox.folders["INBOX"].uidvalidity), 2)
        state = self.result(session.examine_modseq("INBOX", known))["modseq"]
        self.assertEqual(state, OpenState(None, nomodseq=True))
        mailbox.set_nomodseq(False)
        state = self.result(session.examine_modseq("INBOX", known))["modseq"]
        self.assertEqual(state, OpenState(self.highest(mailbox)))

    def test_enable_refused_keeps_the_session(self) -> None:
        mailbox = self.modseq_mailbox(QRESYNC_CAPS)
        mailbox.fail_command("ENABLE", code=None, text="not now")
        session = self.logged_in(mailbox, folder=None)
        self.assertIsNone(self.result(session.enable_condstore()))
        self.assertIsNone(session.modseq_mode)
        info = self.result(session.examine_modseq("INBOX", KnownState("1", 5)))
        self.assertNotIn("modseq", info)
        self.assertEqual(self.result(session.uid_search_from(1)), [1, 2, 3])

    def test_garbled_enable_answer_is_a_protocol_violation(self) -> None:
        mailbox = self.modseq_mailbox(QRESYNC_CAPS)
        mailbox.fail_command("ENABLE", how=FETCH_GARBLED)
        session = self.logged_in(mailbox, folder=None)
        self.failure(session.enable_condstore(), ProtocolViolation)
        self.assert_session_over(session)  # type: ignore[attr-defined]

    def test_examine_modseq_of_a_missing_folder_fails(self) -> None:
        session = self.logged_in(self.modseq_mailbox(CONDSTORE_CAPS), folder=None)
        self.result(session.enable_condstore())
        f = self.failure(session.examine_modseq("Nope", None), CommandFailed)
        self.assertEqual(f.value.code, "NONEXISTENT")

    def test_refused_enable_utf8_keeps_the_session(self) -> None:
        # The same scripted ENABLE refusal, for UTF8=ACCEPT (advisory too).
        mailbox = self.modseq_mailbox(("IMAP4rev1", "ENABLE", "UTF8=ACCEPT", "AUTH=PLAIN"))
        mailbox.fail_command("ENABLE", code=None, text="not now")
        session = self.logged_in(mailbox, folder=None)
        self.assertEqual(self.result(session.enable_utf8()), False)
        self.assertEqual(session.utf8_accept, False)
        self.assertEqual(self.result(session.examine_folder("INBOX"))["exists"], 3)
