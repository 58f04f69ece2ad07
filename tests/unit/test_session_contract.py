"""The IMAP session contract (tests/session_contract.py) on the real client,
talking IMAP bytes in memory to a scripted server, and on the fake session;
plus the fake's MIME helpers and the folder hooks' interface."""

from __future__ import annotations

from typing import Any

from twisted.internet import address, task
from twisted.internet.interfaces import ISSLTransport
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides
from zope.interface.verify import verifyObject

from imapsvc.imap.condstore import KnownState
from imapsvc.imap.protocol import FolderIMAPClient
from imapsvc.interfaces import IFolderHooks
from imapsvc.model import Credentials
from imapsvc.testing import FakeIMAPSession, FakeMailbox, section_bytes
from tests.imap_server import ScriptedIMAPServer
from tests.session_contract import MULTIPART, PASSWORD, USER, SessionContractMixin
from tests.session_contract_modseq import QRESYNC_CAPS, ModseqContractMixin

PRIVATE_PEER = address.IPv4Address("TCP", "192.168.1.1", 993)


class RealSessionContractTests(SessionContractMixin, ModseqContractMixin, SynchronousTestCase):
    """FolderIMAPClient <-> ScriptedIMAPServer over iosim, a fake clock."""

    def open_session(self, mailbox: FakeMailbox, tls: bool = True) -> Any:
        self.clock = task.Clock()
        client = FolderIMAPClient(self.clock, 60.0, inactivity_timeout=300.0)
        self.server = ScriptedIMAPServer(mailbox)
        server_io = iosim.FakeTransport(self.server, isServer=True)
        # The peer the fake session's transport reports: a private address.
        client_io = iosim.FakeTransport(client, isServer=False, peerAddress=PRIVATE_PEER)
        if tls:
            alsoProvides(client_io, ISSLTransport)  # as over implicit TLS
        self.pump = iosim.connect(
            self.server, server_io, client, client_io, greet=False, clock=self.clock
        )
        self.addCleanup(self._close, client, client_io, mailbox)
        return client

    def _close(self, client: FolderIMAPClient, client_io: Any, mailbox: FakeMailbox) -> None:
        client_io.loseConnection()
        self.pump.flush()
        mailbox.sessions.clear()
        # The client leaves no timer behind once the connection is gone.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def settle(self) -> None:
        self.pump.flush()

    def test_login_bytes_on_the_wire(self) -> None:
        # The contract's password needs quoting: the server saw it quoted.
        self.logged_in(self.mailbox(), folder=None)
        self.assertIn(b'0001 LOGIN "support@example.com" "pa\\"ss w\\\\rd"', self.server.received)

    def test_qresync_bytes_on_the_wire(self) -> None:
        mailbox = self.mailbox(capabilities=QRESYNC_CAPS)
        mailbox.append(MULTIPART)
        session = self.logged_in(mailbox, folder=None)
        self.result(session.enable_condstore())
        validity = mailbox.folders["INBOX"].uidvalidity
        self.result(session.examine_modseq("INBOX", KnownState(str(validity), 2)))
        self.result(session.examine_modseq("INBOX", None))
        self.assertEqual(self.server.received[-3:], [
            b"0002 ENABLE QRESYNC", b'0003 EXAMINE "INBOX" (QRESYNC (%d 2))' % validity,
            b'0004 EXAMINE "INBOX" (CONDSTORE)'])


    def test_fetches_only_peek(self) -> None:
        # Nothing the client fetches may set \Seen on the server.
        mailbox = self.mailbox()
        mailbox.append(MULTIPART)
        session = self.logged_in(mailbox)
        self.result(session.fetch_meta([1]))
        self.result(session.fetch_sections({1: [("1.1", None), ("1.2", 100)]}))
        self.result(session.fetch_full([1]))
        fetches = [line for line in self.server.received if b"UID FETCH" in line]
        self.assertEqual(len(fetches), 3)
        for line in fetches:
            self.assertNotIn(b" BODY[", line)
            self.assertNotIn(b"RFC822 ", line + b" ")
            self.assertEqual(line.count(b"BODY.PEEK["), max(1, line.count(b"[")))


class FakeSessionContractTests(SessionContractMixin, ModseqContractMixin, SynchronousTestCase):
    def open_session(self, mailbox: FakeMailbox, tls: bool = True) -> Any:
        return FakeIMAPSession(mailbox, tls=tls).connect()

    def settle(self) -> None:
        pass

    def test_opened_records_the_parameters(self) -> None:
        mailbox = self.mailbox(capabilities=QRESYNC_CAPS)
        session = self.logged_in(mailbox, folder=None)
        self.result(session.enable_condstore())
        validity = mailbox.folders["INBOX"].uidvalidity
        self.result(session.examine_modseq("INBOX", KnownState(str(validity), 2), select=True))
        self.result(session.examine_folder("INBOX"))
        self.assertEqual(session.opened, [("SELECT", "INBOX", f"(QRESYNC ({validity} 2))"),
                                          ("EXAMINE", "INBOX", "")])
        self.assertEqual(session.commands[-3:], ["ENABLE", "SELECT", "EXAMINE"])


class StepByStepFakeSessionContractTests(SessionContractMixin, ModseqContractMixin,
                                          SynchronousTestCase):
    """The fake whose server turns wait for flush(), like bytes to pump."""

    def open_session(self, mailbox: FakeMailbox, tls: bool = True) -> Any:
        self.session = FakeIMAPSession(mailbox, tls=tls, at_once=False).connect()
        return self.session

    def settle(self) -> None:
        self.session.flush()

    def test_nothing_happens_before_a_flush(self) -> None:
        mailbox = self.mailbox()
        session = self.open_session(mailbox)
        self.assertNoResult(session.greeted)
        self.settle()
        login = session.authenticate_with(Credentials("password", USER, PASSWORD))
        self.assertNoResult(login)
        self.assertEqual(mailbox.logins, [])
        self.settle()
        self.successResultOf(login)


class SectionTests(SynchronousTestCase):
    def test_sections_of_a_multipart(self) -> None:
        self.assertEqual(section_bytes(MULTIPART, "1.1"), b"plain text body")
        self.assertEqual(section_bytes(MULTIPART, "2.MIME").splitlines()[0],
                         b'Content-Type: application/pdf; name="a.pdf"')
        self.assertIsNone(section_bytes(MULTIPART, "3"))
        self.assertEqual(section_bytes(MULTIPART, ""), MULTIPART)

    def test_single_part_section_one_is_the_body(self) -> None:
        raw = b"Subject: x\r\n\r\nbody\r\n"
        self.assertEqual(section_bytes(raw, "1"), b"body\r\n")
        self.assertIsNone(section_bytes(raw, "2"))


class FolderHooksInterfaceTests(SynchronousTestCase):
    def test_supervisor_folder_hooks_provide_the_interface(self) -> None:
        from imapsvc.provider_service import FolderHooks

        self.assertTrue(verifyObject(IFolderHooks, FolderHooks(object(), "INBOX")))  # type: ignore[arg-type]
