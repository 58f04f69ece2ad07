"""The :class:`~imapsvc.interfaces.IIMAPSession` contract, run against the real
:class:`~imapsvc.imap.protocol.FolderIMAPClient` (over real IMAP bytes to
:class:`tests.imap_server.ScriptedIMAPServer`, in memory) and against
:class:`imapsvc.testing.FakeIMAPSession`: the same assertions, so a folder
test that passes on the fake says something about the real client.

A test case mixes in :class:`SessionContractMixin` and implements
:meth:`~SessionContractMixin.open_session` (a connected session over the
given mailbox) and :meth:`~SessionContractMixin.settle` (let bytes flow).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from zope.interface.verify import verifyObject

from imapsvc.core.bodystructure import parse_bodystructure
from imapsvc.imap.errors import (
    AuthenticationFailed,
    AuthenticationUnavailable,
    CleartextRefused,
    CommandFailed,
    ConnectionGone,
    MechanismUnsupported,
    ProtocolViolation,
    Throttled,
    TLSRequired,
)
from imapsvc.interfaces import IIMAPSession
from imapsvc.model import Credentials
from imapsvc.testing import FakeMailbox, bodystructure_of, split_header
from imapsvc.testing.mailbox import FETCH_DROP, FETCH_GARBLED

USER, PASSWORD, TOKEN = "support@example.com", 'pa"ss w\\rd', "ya29.token-value"


def plain(n: int, body: bytes = b"") -> bytes:
    return (
        b"From: Customer <c%d@example.org>\r\nTo: support@example.com\r\n"
        b"Subject: case %d\r\nMessage-ID: <m%d@example.org>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n" % (n, n, n)
    ) + (body or b"Hello %d.\r\n" % n)


#: Bytes that trip naive IMAP code: a literal marker, parentheses, 8-bit
#: text, a bare LF, trailing spaces, no final CRLF.
AWKWARD = plain(
    9,
    b"a line ending in {5}\r\n) (BODY[] NIL\r\n\xc3\xa9t\xc3\xa9 8-bit\nbare LF  \r\nno end",
)

MULTIPART = (
    b"From: c@example.org\r\nSubject: with parts\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
    b"preamble\r\n--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
    b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain text body\r\n"
    b"--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html body</p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n"
    b'Content-Disposition: attachment; filename="a.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n"
    b"--outer--\r\nepilogue\r\n"
)


class SessionContractMixin:
    """Assertions every :class:`~imapsvc.interfaces.IIMAPSession` passes."""

    # -- to implement ----------------------------------------------------------

    def open_session(self, mailbox: FakeMailbox, tls: bool = True) -> Any:
        """A session connected to a server over ``mailbox`` (greeting sent),
        over TLS unless ``tls`` is false."""
        raise NotImplementedError

    def settle(self) -> None:
        """Deliver every byte in flight both ways."""
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------

    def result(self, d: Any) -> Any:
        self.settle()
        return self.successResultOf(d)  # type: ignore[attr-defined]

    def failure(self, d: Any, *errors: type) -> Any:
        self.settle()
        return self.failureResultOf(d, *errors)  # type: ignore[attr-defined]

    def mailbox(self, **kw: Any) -> FakeMailbox:
        kw.setdefault("accounts", {USER: PASSWORD})
        return FakeMailbox(**kw)

    def logged_in(self, mailbox: FakeMailbox, folder: str = "INBOX") -> Any:
        session = self.open_session(mailbox)
        self.result(session.greeted)
        self.result(session.authenticate_with(Credentials("password", USER, PASSWORD)))
        if folder is not None:
            self.result(session.examine_folder(folder))
        return session

    def assert_session_over(self, session: Any) -> None:
        """Every later command fails with ConnectionGone."""
        self.failure(session.uid_search_from(1), ConnectionGone)

    # -- greeting and login -------------------------------------------------------

    def test_provides_interface(self) -> None:
        session = self.open_session(self.mailbox())
        self.assertTrue(verifyObject(IIMAPSession, session))  # type: ignore[attr-defined]
        # Greeted before the connection is closed: a greeting Deferred that
        # fails at clean-up is an unhandled error whenever the collector runs.
        self.result(session.greeted)

    def test_greeting_fires_with_capabilities(self) -> None:
        mailbox = self.mailbox()
        session = self.open_session(mailbox)
        caps = self.result(session.greeted)
        self.assertEqual(caps, mailbox.capabilities())  # type: ignore[attr-defined]
        self.assertEqual(caps[b"AUTH"], [b"PLAIN", b"XOAUTH2", b"OAUTHBEARER"])  # type: ignore[attr-defined]
        self.assertEqual(session.capabilities, caps)  # type: ignore[attr-defined]

    def test_password_login_returns_capabilities(self) -> None:
        mailbox = self.mailbox()
        session = self.open_session(mailbox)
        self.result(session.greeted)
        caps = self.result(session.authenticate_with(Credentials("password", USER, PASSWORD)))
        self.assertIn(b"IDLE", caps)  # type: ignore[attr-defined]
        self.assertEqual([login[:2] for login in mailbox.logins], [("password", USER)])  # type: ignore[attr-defined]

    def test_oauth_login_picks_the_mechanism(self) -> None:
        mailbox = self.mailbox(accounts={USER: TOKEN})
        session = self.open_session(mailbox)
        self.result(session.greeted)
        creds = Credentials("xoauth2", USER, TOKEN)
        self.result(session.authenticate_with(creds, oauth_mechanism="oauthbearer",
                                              host="imap.example.com", port=993))
        self.assertEqual([login[:2] for login in mailbox.logins], [("oauthbearer", USER)])  # type: ignore[attr-defined]

    def test_oauth_login_without_sasl_ir(self) -> None:
        mailbox = self.mailbox(
            capabilities=("IMAP4rev1", "IDLE", "AUTH=XOAUTH2"), accounts={USER: TOKEN}
        )
        session = self.open_session(mailbox)
        self.result(session.greeted)
        caps = self.result(session.authenticate_with(Credentials("xoauth2", USER, TOKEN),
                                                     oauth_mechanism="auto"))
        self.assertEqual(caps[b"AUTH"], [b"XOAUTH2"])  # type: ignore[attr-defined]
        self.assertEqual([login[:2] for login in mailbox.logins], [("xoauth2", USER)])  # type: ignore[attr-defined]

    def test_starttls_not_offered(self) -> None:
        session = self.open_session(self.mailbox(), tls=False)
        self.result(session.greeted)
        self.failure(session.start_tls(object()), TLSRequired)
        self.assert_session_over(session)

    def test_refused_login_raises_authentication_failed_with_code(self) -> None:
        mailbox = self.mailbox()
        mailbox.refuse_logins("AUTHENTICATIONFAILED", "Authentication failed.")
        session = self.open_session(mailbox)
        self.result(session.greeted)
        f = self.failure(
            session.authenticate_with(Credentials("password", USER, PASSWORD)),
            AuthenticationFailed,
        )
        self.assertEqual((f.value.code, f.value.text),  # type: ignore[attr-defined]
                         ("AUTHENTICATIONFAILED", "Authentication failed."))
        self.assertNotIn(PASSWORD, str(f.value))  # type: ignore[attr-defined]
        self.assert_session_over(session)

    def test_no_login_without_tls(self) -> None:
        mailbox = self.mailbox()
        session = self.open_session(mailbox, tls=False)
        self.result(session.greeted)
        self.failure(
            session.authenticate_with(Credentials("password", USER, PASSWORD)), CleartextRefused
        )
        self.assertEqual(mailbox.logins, [])  # type: ignore[attr-defined]

    def test_oauth_mechanism_not_offered(self) -> None:
        mailbox = self.mailbox(capabilities=("IMAP4rev1", "IDLE", "AUTH=PLAIN"))
        session = self.open_session(mailbox)
        self.result(session.greeted)
        f = self.failure(
            session.authenticate_with(Credentials("xoauth2", USER, TOKEN)),
            MechanismUnsupported,
        )
        self.assertEqual(f.value.code, "UNSUPPORTED")  # type: ignore[attr-defined]
        self.assertEqual(mailbox.logins, [])  # type: ignore[attr-defined]

    def test_wrong_password_is_refused(self) -> None:
        session = self.open_session(self.mailbox())
        self.result(session.greeted)
        f = self.failure(
            session.authenticate_with(Credentials("password", USER, "wrong")),
            AuthenticationFailed,
        )
        self.assertEqual(f.value.code, "AUTHENTICATIONFAILED")  # type: ignore[attr-defined]

    def test_unavailable_login_is_not_a_refusal(self) -> None:
        mailbox = self.mailbox()
        mailbox.refuse_logins("UNAVAILABLE", "Try again later.")
        session = self.open_session(mailbox)
        self.result(session.greeted)
        f = self.failure(
            session.authenticate_with(Credentials("password", USER, PASSWORD)),
            AuthenticationUnavailable,
        )
        self.assertEqual(f.value.code, "UNAVAILABLE")  # type: ignore[attr-defined]

    def test_bad_login_answer_is_not_a_refusal(self) -> None:
        mailbox = self.mailbox()
        mailbox.refuse_logins(None, "Error in IMAP command", status="BAD")
        session = self.open_session(mailbox)
        self.result(session.greeted)
        f = self.failure(
            session.authenticate_with(Credentials("password", USER, PASSWORD)),
            AuthenticationUnavailable,
        )
        self.assertEqual((f.value.code, f.value.text), (None, "Error in IMAP command"))  # type: ignore[attr-defined]
        self.assert_session_over(session)

    def test_throttled_login(self) -> None:
        mailbox = self.mailbox()
        mailbox.refuse_logins("THROTTLED", "Slow down.", times=None)
        session = self.open_session(mailbox)
        self.result(session.greeted)
        f = self.failure(
            session.authenticate_with(Credentials("password", USER, PASSWORD)), Throttled
        )
        self.assertIsNone(f.value.retry_after)  # type: ignore[attr-defined]
        mailbox.accept_logins()
        session = self.open_session(mailbox)
        self.result(session.greeted)
        self.result(session.authenticate_with(Credentials("password", USER, PASSWORD)))

    # -- ID and ENABLE (RFC 2971, RFC 6855) ----------------------------------------------

    def test_id_when_offered(self) -> None:
        mailbox = self.mailbox(capabilities=("IMAP4rev1", "ID", "AUTH=PLAIN"))
        mailbox.server_id = {"name": "Scripted", "vendor": "x"}
        session = self.logged_in(mailbox, folder=None)
        got = self.result(session.send_id([("name", "imapsvc"), ("version", "1.2.3")]))
        self.assertEqual(got, {"name": "Scripted", "vendor": "x"})  # type: ignore[attr-defined]
        self.assertEqual(mailbox.client_ids, [{"name": "imapsvc", "version": "1.2.3"}])  # type: ignore[attr-defined]

    def test_id_not_offered_sends_nothing(self) -> None:
        mailbox = self.mailbox()
        session = self.logged_in(mailbox, folder=None)
        self.assertIsNone(self.result(session.send_id([("name", "imapsvc")])))  # type: ignore[attr-defined]
        self.assertEqual(mailbox.client_ids, [])  # type: ignore[attr-defined]

    def test_enable_utf8(self) -> None:
        caps = ("IMAP4rev1", "ENABLE", "UTF8=ACCEPT", "AUTH=PLAIN")
        session = self.logged_in(self.mailbox(capabilities=caps), folder=None)
        self.assertFalse(session.utf8_accept)  # type: ignore[attr-defined]
        self.assertIs(self.result(session.enable_utf8()), True)  # type: ignore[attr-defined]
        self.assertTrue(session.utf8_accept)  # type: ignore[attr-defined]
        for caps in (("IMAP4rev1", "ENABLE", "AUTH=PLAIN"), ("IMAP4rev1", "UTF8=ACCEPT")):
            session = self.logged_in(self.mailbox(capabilities=caps), folder=None)
            self.assertIs(self.result(session.enable_utf8()), False)  # type: ignore[attr-defined]
            self.assertFalse(session.utf8_accept)  # type: ignore[attr-defined]

    # -- COMPRESS=DEFLATE (RFC 4978) -------------------------------------------------

    COMPRESS_CAPS = ("IMAP4rev1", "IDLE", "COMPRESS=DEFLATE", "AUTH=PLAIN")

    def test_compress_always_when_offered_and_the_session_still_works(self) -> None:
        mailbox = self.mailbox(capabilities=self.COMPRESS_CAPS)
        mailbox.append(AWKWARD)
        session = self.logged_in(mailbox, folder=None)
        self.assertFalse(session.compressing)  # type: ignore[attr-defined]
        self.assertIs(self.result(session.maybe_compress("always")), True)  # type: ignore[attr-defined]
        self.assertTrue(session.compressing)  # type: ignore[attr-defined]
        self.assertEqual(mailbox.compressions, 1)  # type: ignore[attr-defined]
        # Asked again: already on, nothing sent.
        self.assertIs(self.result(session.maybe_compress("always")), True)  # type: ignore[attr-defined]
        self.assertEqual(mailbox.compressions, 1)  # type: ignore[attr-defined]
        self.result(session.examine_folder("INBOX"))
        self.assertEqual(self.result(session.fetch_full([1])), {1: AWKWARD})  # type: ignore[attr-defined]

    def test_compress_not_asked_for(self) -> None:
        # off never; not offered never; auto not towards the session's
        # private-network peer (both transports' default address).
        for caps, mode in (
            (self.COMPRESS_CAPS, "off"),
            (self.COMPRESS_CAPS, "auto"),
            (("IMAP4rev1", "IDLE", "AUTH=PLAIN"), "always"),
        ):
            mailbox = self.mailbox(capabilities=caps)
            session = self.logged_in(mailbox, folder=None)
            self.assertIs(self.result(session.maybe_compress(mode)), False)  # type: ignore[attr-defined]
            self.assertFalse(session.compressing)  # type: ignore[attr-defined]
            self.assertEqual(mailbox.compressions, 0)  # type: ignore[attr-defined]

    def test_compress_refused_keeps_the_session(self) -> None:
        mailbox = self.mailbox(capabilities=self.COMPRESS_CAPS)
        mailbox.fail_command("COMPRESS", code=None, text="not now")
        session = self.logged_in(mailbox, folder=None)
        self.assertIs(self.result(session.maybe_compress("always")), False)  # type: ignore[attr-defined]
        self.assertFalse(session.compressing)  # type: ignore[attr-defined]
        self.assertEqual(mailbox.compressions, 0)  # type: ignore[attr-defined]
        self.assertEqual(self.result(session.examine_folder("INBOX"))["read_only"], True)  # type: ignore[index]

    # -- folders --------------------------------------------------------------------

    def test_refused_list(self) -> None:
        mailbox = self.mailbox()
        mailbox.fail_command("LIST", "SERVERBUG", "no listing")
        session = self.logged_in(mailbox, folder=None)
        f = self.failure(session.list_folders(), CommandFailed)
        self.assertEqual((f.value.code, f.value.text), ("SERVERBUG", "LIST NO: no listing"))  # type: ignore[attr-defined]
        self.assert_session_over(session)

    def test_garbled_list_answer_is_a_protocol_violation(self) -> None:
        mailbox = self.mailbox()
        mailbox.fail_command("LIST", how=FETCH_GARBLED)
        session = self.logged_in(mailbox, folder=None)
        self.failure(session.list_folders(), ProtocolViolation)
        self.assert_session_over(session)

    def test_throttled_examine_says_how_long_to_wait(self) -> None:
        mailbox = self.mailbox()
        mailbox.fail_command("EXAMINE", None, "Request is throttled. "
                             "Suggested Backoff Time: 12345 milliseconds")
        session = self.logged_in(mailbox, folder=None)
        f = self.failure(session.examine_folder("INBOX"), Throttled)
        self.assertEqual(f.value.retry_after, 12.345)  # type: ignore[attr-defined]
        self.assert_session_over(session)

    def test_list_folders(self) -> None:
        mailbox = self.mailbox(folders=("INBOX", "Support Queue"))
        session = self.logged_in(mailbox, folder=None)
        listing = self.result(session.list_folders())
        self.assertEqual(  # type: ignore[attr-defined]
            listing,
            [(("\\HasNoChildren",), "/", "INBOX"), (("\\HasNoChildren",), "/", "Support Queue")],
        )

    def test_list_one_folder_by_name(self) -> None:
        mailbox = self.mailbox(folders=("INBOX", "Support Queue", "Support"))
        session = self.logged_in(mailbox, folder=None)
        listing = self.result(session.list_folders("Support Queue"))
        self.assertEqual(  # type: ignore[attr-defined]
            listing, [(("\\HasNoChildren",), "/", "Support Queue")]
        )
        listing = self.result(session.list_folders("inbox"))
        self.assertEqual([e[2] for e in listing], ["INBOX"])  # type: ignore[attr-defined]
        self.assertEqual(self.result(session.list_folders("Gone")), [])  # type: ignore[attr-defined]

    def test_examine_answers(self) -> None:
        mailbox = self.mailbox()
        for n in range(3):
            mailbox.append(plain(n))
        session = self.logged_in(mailbox, folder=None)
        info = self.result(session.examine_folder("INBOX"))
        self.assertEqual(  # type: ignore[attr-defined]
            info,
            {"uidvalidity": mailbox.folders["INBOX"].uidvalidity, "uidnext": 4, "exists": 3,
             "read_only": True},
        )
        self.assertIsInstance(info["uidvalidity"], int)  # type: ignore[attr-defined]
        self.assertEqual(session.last_exists, 3)  # type: ignore[attr-defined]

    def test_examine_of_a_missing_folder_fails(self) -> None:
        session = self.logged_in(self.mailbox(), folder=None)
        f = self.failure(session.examine_folder("Nope"), CommandFailed)
        self.assertEqual(f.value.code, "NONEXISTENT")  # type: ignore[attr-defined]
        self.assertEqual(str(f.value.text), "EXAMINE NO: Mailbox doesn't exist: Nope")  # type: ignore[attr-defined]
        self.assert_session_over(session)

    def test_search_from_a_uid(self) -> None:
        mailbox = self.mailbox()
        for n in range(5):
            mailbox.append(plain(n))
        session = self.logged_in(mailbox)
        self.assertEqual(self.result(session.uid_search_from(3)), [3, 4, 5])  # type: ignore[attr-defined]
        self.assertEqual(self.result(session.uid_search_from(0)), [1, 2, 3, 4, 5])  # type: ignore[attr-defined]
        # "6:*" matches the highest UID on the wire; it is not >= 6.
        self.assertEqual(self.result(session.uid_search_from(6)), [])  # type: ignore[attr-defined]

    def test_search_since_a_date(self) -> None:
        # SEARCH SINCE looks at the INTERNALDATE's day only (time and zone
        # disregarded), whatever the UID order.
        mailbox = self.mailbox()
        mailbox.append(plain(1), internaldate="31-Dec-2025 23:59:59 +0000")
        mailbox.append(plain(2), internaldate=" 1-Jan-2026 00:00:00 -0800")
        mailbox.append(plain(3), internaldate="15-Nov-2025 10:00:00 +0000")
        mailbox.append(plain(4), internaldate="02-Feb-2026 08:00:00 +0100")
        session = self.logged_in(mailbox)
        self.assertEqual(self.result(session.uid_search_since("1-Jan-2026")), [2, 4])  # type: ignore[attr-defined]
        self.assertEqual(self.result(session.uid_search_since("1-Mar-2026")), [])  # type: ignore[attr-defined]
        self.assertEqual(self.result(session.uid_search_since("1-Jan-2020")), [1, 2, 3, 4])  # type: ignore[attr-defined]

    # -- write-back (issue 13 item 3) -------------------------------------------------

    def selected(self, mailbox: FakeMailbox, count: int = 3) -> Any:
        for n in range(count):
            mailbox.append(plain(n))
        session = self.logged_in(mailbox, folder=None)
        info = self.result(session.select_folder("INBOX"))
        self.assertFalse(info["read_only"])  # type: ignore[attr-defined]
        self.assertEqual(info["exists"], count)  # type: ignore[attr-defined]
        return session

    def test_select_answers_read_write(self) -> None:
        mailbox = self.mailbox()
        session = self.selected(mailbox)
        info = self.result(session.select_folder("INBOX"))
        self.assertEqual(  # type: ignore[attr-defined]
            info,
            {"uidvalidity": mailbox.folders["INBOX"].uidvalidity, "uidnext": 4, "exists": 3,
             "read_only": False},
        )
        f = self.failure(session.select_folder("Nope"), CommandFailed)
        self.assertEqual(f.value.code, "NONEXISTENT")  # type: ignore[attr-defined]

    def test_store_seen_sets_the_flag_of_those_uids_only(self) -> None:
        mailbox = self.mailbox()
        session = self.selected(mailbox)
        self.assertIsNone(self.result(session.uid_store_flags([1, 3, 99], ["\\Seen"])))  # type: ignore[attr-defined]
        self.assertEqual(mailbox.flags(1), {"\\Seen"})  # type: ignore[attr-defined]
        self.assertEqual(mailbox.flags(2), set())  # type: ignore[attr-defined]
        self.assertEqual(mailbox.flags(3), {"\\Seen"})  # type: ignore[attr-defined]
        # Again: harmless.
        self.result(session.uid_store_flags([1], ["\\Seen"]))
        self.assertEqual(mailbox.flags(1), {"\\Seen"})  # type: ignore[attr-defined]

    def test_store_on_an_examined_folder_changes_nothing(self) -> None:
        # As Dovecot answers it (tests/integration/test_write_back_dovecot.py):
        # OK, flags unchanged. The folder SELECTs before any write-back.
        mailbox = self.mailbox()
        mailbox.append(plain(1))
        session = self.logged_in(mailbox)  # EXAMINE
        self.assertIsNone(self.result(session.uid_store_flags([1], ["\\Seen"])))  # type: ignore[attr-defined]
        self.assertEqual(mailbox.flags(1), set())  # type: ignore[attr-defined]
        self.assertEqual(self.result(session.uid_search_from(1)), [1])  # type: ignore[attr-defined]

    def test_move_moves_by_uid(self) -> None:
        mailbox = self.mailbox(
            capabilities=("IMAP4rev1", "IDLE", "MOVE", "AUTH=PLAIN"), folders=("INBOX", "Done")
        )
        session = self.selected(mailbox, 4)
        self.assertIsNone(self.result(session.uid_move([2, 3, 99], "Done")))  # type: ignore[attr-defined]
        self.assertEqual(mailbox.uids("INBOX"), [1, 4])  # type: ignore[attr-defined]
        self.assertEqual(mailbox.uids("Done"), [1, 2])  # type: ignore[attr-defined]
        self.assertEqual(mailbox.folders["Done"].messages[1].raw, plain(1))  # type: ignore[attr-defined]
        # Moving what is gone again changes nothing; the session goes on.
        self.result(session.uid_move([2, 3], "Done"))
        self.assertEqual(mailbox.uids("Done"), [1, 2])  # type: ignore[attr-defined]
        self.assertEqual(self.result(session.uid_search_from(1)), [1, 4])  # type: ignore[attr-defined]

    def test_move_to_a_missing_folder_fails_softly(self) -> None:
        mailbox = self.mailbox(capabilities=("IMAP4rev1", "MOVE", "AUTH=PLAIN"))
        session = self.selected(mailbox, 2)
        f = self.failure(session.uid_move([1], "Processed"), CommandFailed)
        self.assertEqual(f.value.code, "TRYCREATE")  # type: ignore[attr-defined]
        self.assertEqual(  # type: ignore[attr-defined]
            str(f.value.text), "UID MOVE NO: Mailbox doesn't exist: Processed"
        )
        self.assertEqual(mailbox.uids(), [1, 2])  # type: ignore[attr-defined]
        self.assertEqual(self.result(session.uid_search_from(1)), [1, 2])  # type: ignore[attr-defined]

    def test_copy_deleted_expunge(self) -> None:
        mailbox = self.mailbox(
            capabilities=("IMAP4rev1", "UIDPLUS", "AUTH=PLAIN"), folders=("INBOX", "Done")
        )
        session = self.selected(mailbox, 3)
        mailbox.store_flags("INBOX", [3], ["\\Deleted"])  # somebody else's
        self.result(session.uid_copy([1, 2], "Done"))
        self.assertEqual(mailbox.uids("INBOX"), [1, 2, 3])  # type: ignore[attr-defined]
        self.assertEqual(mailbox.uids("Done"), [1, 2])  # type: ignore[attr-defined]
        self.result(session.uid_store_flags([1, 2], ["\\Deleted"]))
        self.result(session.uid_expunge([1, 2]))
        # UID EXPUNGE leaves the other \Deleted message alone.
        self.assertEqual(mailbox.uids("INBOX"), [3])  # type: ignore[attr-defined]

    def test_move_and_expunge_need_their_extension(self) -> None:
        mailbox = self.mailbox(capabilities=("IMAP4rev1", "AUTH=PLAIN"), folders=("INBOX", "Done"))
        session = self.selected(mailbox, 1)
        f = self.failure(session.uid_move([1], "Done"), CommandFailed)
        self.assertEqual(str(f.value.text), "UID MOVE BAD: Unknown command")  # type: ignore[attr-defined]
        self.failure(session.uid_expunge([1]), CommandFailed)
        self.assertEqual(mailbox.uids(), [1])  # type: ignore[attr-defined]
        self.assertEqual(self.result(session.uid_search_from(1)), [1])  # type: ignore[attr-defined]

    def test_scripted_write_failure(self) -> None:
        mailbox = self.mailbox()
        session = self.selected(mailbox, 1)
        mailbox.fail_write("UID STORE", "SERVERBUG", "try later")
        f = self.failure(session.uid_store_flags([1], ["\\Seen"]), CommandFailed)
        self.assertEqual(f.value.code, "SERVERBUG")  # type: ignore[attr-defined]
        self.result(session.uid_store_flags([1], ["\\Seen"]))
        self.assertEqual(mailbox.flags(1), {"\\Seen"})  # type: ignore[attr-defined]

    # -- fetching --------------------------------------------------------------------

    def test_fetch_full_gives_exact_bytes_by_uid(self) -> None:
        mailbox = self.mailbox()
        mailbox.append(plain(1))
        mailbox.append(AWKWARD)
        mailbox.append(MULTIPART)
        session = self.logged_in(mailbox)
        got = self.result(session.fetch_full([2, 3, 99]))
        self.assertEqual(got, {2: AWKWARD, 3: MULTIPART})  # type: ignore[attr-defined]

    def test_fetch_meta_gives_header_size_date_and_structure(self) -> None:
        mailbox = self.mailbox()
        mailbox.append(AWKWARD, internaldate="02-Feb-2026 08:30:00 +0100")
        mailbox.append(MULTIPART)
        session = self.logged_in(mailbox)
        meta = self.result(session.fetch_meta([1, 2, 7]))
        self.assertEqual(sorted(meta), [1, 2])  # type: ignore[attr-defined]
        first = meta[1]
        self.assertEqual(set(first), {"size", "internaldate", "bodystructure", "header"})  # type: ignore[attr-defined]
        self.assertEqual(first["size"], len(AWKWARD))  # type: ignore[attr-defined]
        self.assertEqual(first["internaldate"], "02-Feb-2026 08:30:00 +0100")  # type: ignore[attr-defined]
        self.assertEqual(first["header"], split_header(AWKWARD)[0])  # type: ignore[attr-defined]
        self.assertTrue(first["header"].endswith(b"charset=utf-8\r\n\r\n"))  # type: ignore[attr-defined]
        self.assertEqual(first["bodystructure"], bodystructure_of(AWKWARD))  # type: ignore[attr-defined]
        parts = parse_bodystructure(meta[2]["bodystructure"])
        assert parts is not None
        self.assertEqual(  # type: ignore[attr-defined]
            [(p.section, p.content_type) for p in parts],
            [("1.1", "text/plain"), ("1.2", "text/html"), ("2", "application/pdf")],
        )

    def test_fetch_meta_gives_x_gm_msgid_when_gmail(self) -> None:
        # Gmail (X-GM-EXT-1): one X-GM-MSGID for the copies in two labels.
        caps = ("IMAP4rev1", "IDLE", "AUTH=PLAIN", "X-GM-EXT-1")
        mailbox = self.mailbox(capabilities=caps, folders=("INBOX", "Work"))
        mailbox.append(plain(1), gm_msgid="1789012345678901234")
        mailbox.append(plain(2), gm_msgid="18446744073709551615")  # 2**64 - 1
        mailbox.append(plain(1), folder="Work", gm_msgid="1789012345678901234")
        session = self.logged_in(mailbox)
        meta = self.result(session.fetch_meta([1, 2]))
        self.assertEqual(meta[1]["gm_msgid"], "1789012345678901234")  # type: ignore[attr-defined]
        self.assertEqual(meta[2]["gm_msgid"], "18446744073709551615")  # type: ignore[attr-defined]
        self.result(session.examine_folder("Work"))
        meta = self.result(session.fetch_meta([1]))
        self.assertEqual(meta[1]["gm_msgid"], "1789012345678901234")  # type: ignore[attr-defined]

    def test_status_answers_without_selecting(self) -> None:
        mailbox = self.mailbox(folders=("INBOX", "Support Queue"))
        for n in range(3):
            mailbox.append(plain(n), folder="Support Queue")
        session = self.logged_in(mailbox)
        info = self.result(session.status_folder("Support Queue"))
        self.assertEqual(  # type: ignore[attr-defined]
            info,
            {"uidnext": 4, "uidvalidity": mailbox.folders["Support Queue"].uidvalidity,
             "messages": 3},
        )
        self.assertEqual(mailbox.status_calls, ["Support Queue"])  # type: ignore[attr-defined]
        # INBOX stays selected: its search still answers.
        self.assertEqual(self.result(session.uid_search_from(1)), [])  # type: ignore[attr-defined]

    def test_unselect_when_offered(self) -> None:
        mailbox = self.mailbox(capabilities=("IMAP4rev1", "AUTH=PLAIN", "UNSELECT"))
        session = self.logged_in(mailbox)
        self.assertTrue(self.result(session.unselect()))  # type: ignore[attr-defined]
        # Nothing selected any more: a search is refused (and ends the session).
        self.failure(session.uid_search_from(1), CommandFailed)
        plain_server = self.logged_in(self.mailbox())
        self.assertFalse(self.result(plain_server.unselect()))  # type: ignore[attr-defined]
        self.assertEqual(self.result(plain_server.uid_search_from(1)), [])  # type: ignore[attr-defined]

    def test_status_of_a_missing_folder_fails_softly(self) -> None:
        session = self.logged_in(self.mailbox())
        f = self.failure(session.status_folder("Nope"), CommandFailed)
        self.assertEqual(f.value.code, "NONEXISTENT")  # type: ignore[attr-defined]
        # The session goes on.
        self.assertIn("uidnext", self.result(session.status_folder("INBOX")))  # type: ignore[attr-defined]

    def test_fetch_sections_gives_exact_bytes_by_uid(self) -> None:
        mailbox = self.mailbox()
        mailbox.append(MULTIPART)
        mailbox.append(AWKWARD)
        session = self.logged_in(mailbox)
        got = self.result(session.fetch_sections({
            1: [("1.1", None), ("1.2", 6), ("2", None)],
            2: [("1", None)],
        }))
        self.assertEqual(  # type: ignore[attr-defined]
            got,
            {
                1: {"1.1": b"plain text body", "1.2": b"<p>htm", "2": b"JVBERi0xLjQK"},
                2: {"1": split_header(AWKWARD)[1]},
            },
        )

    def test_no_on_one_uid_fails_the_fetch_and_ends_the_session(self) -> None:
        mailbox = self.mailbox()
        for n in range(3):
            mailbox.append(plain(n))
        mailbox.fail_fetch(2, "SERVERBUG", "cannot fetch message 2")
        session = self.logged_in(mailbox)
        self.assertEqual(sorted(self.result(session.fetch_meta([1, 3]))), [1, 3])  # type: ignore[attr-defined]
        f = self.failure(session.fetch_full([1, 2, 3]), CommandFailed)
        self.assertEqual(f.value.code, "SERVERBUG")  # type: ignore[attr-defined]
        self.assertEqual(f.value.text, "UID FETCH NO: cannot fetch message 2")  # type: ignore[attr-defined]
        self.assert_session_over(session)

    def test_garbled_fetch_answer_is_a_protocol_violation(self) -> None:
        mailbox = self.mailbox()
        mailbox.append(plain(1))
        mailbox.append(plain(2))
        mailbox.fail_fetch(2, how=FETCH_GARBLED)
        session = self.logged_in(mailbox)
        self.failure(session.fetch_meta([1, 2]), ProtocolViolation)
        self.assert_session_over(session)

    def test_fetch_the_server_drops(self) -> None:
        mailbox = self.mailbox()
        mailbox.append(plain(1))
        mailbox.fail_fetch(1, how=FETCH_DROP)
        session = self.logged_in(mailbox)
        self.failure(session.fetch_full([1]), ConnectionDone)
        self.assert_session_over(session)
        # Healed, a new session reads it.
        mailbox.heal_fetch(1)
        session = self.logged_in(mailbox)
        self.assertEqual(self.result(session.fetch_full([1])), {1: plain(1)})  # type: ignore[attr-defined]

    def test_no_on_one_uid_fails_fetch_sections(self) -> None:
        mailbox = self.mailbox()
        mailbox.append(plain(1))
        mailbox.append(plain(2))
        mailbox.fail_fetch(2)
        session = self.logged_in(mailbox)
        self.failure(session.fetch_sections({1: [("1", None)], 2: [("1", None)]}), CommandFailed)

    # -- IDLE -------------------------------------------------------------------------

    def test_idle_wakes_on_exists_and_done_ends_it(self) -> None:
        mailbox = self.mailbox()
        mailbox.append(plain(1))
        session = self.logged_in(mailbox)
        seen: list[int] = []
        d = session.idle(seen.append)
        self.settle()
        self.assertNoResult(d)  # type: ignore[attr-defined]
        mailbox.append(plain(2))
        self.settle()
        self.assertEqual(seen, [2])  # type: ignore[attr-defined]
        self.assertEqual(session.last_exists, 2)  # type: ignore[attr-defined]
        self.assertNoResult(d)  # type: ignore[attr-defined]
        session.done()
        self.assertIsNone(self.result(d))  # type: ignore[attr-defined]
        # The session goes on after IDLE.
        self.assertEqual(self.result(session.uid_search_from(2)), [2])  # type: ignore[attr-defined]

    def test_idle_ending_is_the_sessions_to_know(self) -> None:
        session = self.logged_in(self.mailbox())
        self.assertFalse(session.idle_ending)  # type: ignore[attr-defined]
        d = session.idle(lambda n: None)
        self.settle()
        self.assertFalse(session.idle_ending)  # type: ignore[attr-defined]
        session.done()
        # DONE is out until the server's answer (an at-once fake answers
        # within done()): a second reason to end the IDLE must not send another.
        self.assertEqual(session.idle_ending, not d.called)  # type: ignore[attr-defined]
        self.assertIsNone(self.result(d))  # type: ignore[attr-defined]
        self.assertFalse(session.idle_ending)  # type: ignore[attr-defined]
        # Also when asked before the server's "+"; and a new IDLE starts afresh.
        d = session.idle(lambda n: None)
        session.done()
        self.assertEqual(session.idle_ending, not d.called)  # type: ignore[attr-defined]
        self.assertIsNone(self.result(d))  # type: ignore[attr-defined]
        self.assertFalse(session.idle_ending)  # type: ignore[attr-defined]

    def test_done_before_the_server_accepted_idle(self) -> None:
        session = self.logged_in(self.mailbox())
        d = session.idle(lambda n: None)
        session.done()
        session.done()  # once only
        self.assertIsNone(self.result(d))  # type: ignore[attr-defined]
        self.assertEqual(self.result(session.uid_search_from(1)), [])  # type: ignore[attr-defined]

    def test_command_during_idle_runs_after_it(self) -> None:
        mailbox = self.mailbox()
        mailbox.append(plain(1))
        session = self.logged_in(mailbox)
        d = session.idle(lambda n: None)
        self.settle()
        search = session.uid_search_from(1)
        self.settle()
        self.assertNoResult(search)  # type: ignore[attr-defined]
        session.done()
        self.assertIsNone(self.result(d))  # type: ignore[attr-defined]
        self.assertEqual(self.successResultOf(search), [1])  # type: ignore[attr-defined]

    def test_exists_before_idle_is_reported_in_idle(self) -> None:
        mailbox = self.mailbox()
        session = self.logged_in(mailbox)
        mailbox.append(plain(1))
        seen: list[int] = []
        d = session.idle(seen.append)
        self.settle()
        self.assertEqual(seen, [1])  # type: ignore[attr-defined]
        session.done()
        self.assertIsNone(self.result(d))  # type: ignore[attr-defined]

    def test_exists_between_commands_updates_last_exists(self) -> None:
        mailbox = self.mailbox()
        session = self.logged_in(mailbox)
        self.assertEqual(session.last_exists, 0)  # type: ignore[attr-defined]
        mailbox.append(plain(1))
        self.result(session.uid_search_from(1))
        self.assertEqual(session.last_exists, 1)  # type: ignore[attr-defined]

    # -- the end ----------------------------------------------------------------------

    def test_logout(self) -> None:
        session = self.logged_in(self.mailbox())
        self.assertIsNone(self.result(session.logout()))  # type: ignore[attr-defined]
        self.assert_session_over(session)

    def test_connection_loss_fails_idle(self) -> None:
        mailbox = self.mailbox()
        session = self.logged_in(mailbox)
        d = session.idle(lambda n: None)
        self.settle()
        mailbox.drop_connections()
        self.failure(d, ConnectionDone)
        self.assert_session_over(session)

    def test_bye_is_reported_and_ends_the_session(self) -> None:
        mailbox = self.mailbox()
        session = self.logged_in(mailbox)
        byes: list[str] = []
        session.on_bye = byes.append
        d = session.idle(lambda n: None)
        self.settle()
        mailbox.drop_connections(bye="Server shutting down.")
        self.failure(d, ConnectionDone)
        self.assertEqual(byes, ["Server shutting down."])  # type: ignore[attr-defined]

    def test_logout_bye_is_not_reported(self) -> None:
        session = self.logged_in(self.mailbox())
        byes: list[str] = []
        session.on_bye = byes.append
        self.result(session.logout())
        self.assertEqual(byes, [])  # type: ignore[attr-defined]
