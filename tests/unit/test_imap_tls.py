"""STARTTLS only when asked, with the caller's verifying context, refusing
injected bytes; client TLS options verify."""

from __future__ import annotations

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.imap.errors import CleartextRefused, ProtocolViolation, TLSRequired
from imapsvc.imap.tls import client_tls_options
from imapsvc.model import Credentials
from tests.unit.test_imap_protocol import ClientTestCase, TLSCapableTransport, sent

CONTEXT = object()


class StartTLSTests(ClientTestCase):
    def connect_plain(self, greeting):
        return self.connect(tls=False, greeting=greeting, transport=TLSCapableTransport())

    def test_starttls_then_login(self):
        client, transport, clock = self.connect_plain(
            b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n"
        )
        d = client.start_tls(CONTEXT)
        self.assertEqual(sent(transport), b"0001 STARTTLS\r\n")
        client.dataReceived(b"0001 OK Begin TLS negotiation now.\r\n")
        self.assertIs(transport.tls_context, CONTEXT)
        # Capabilities are asked again, over TLS.
        self.assertEqual(sent(transport), b"0002 CAPABILITY\r\n")
        self.assertIsNone(client.capabilities)
        client.dataReceived(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n0002 OK done\r\n")
        self.assertIsNone(self.successResultOf(d))
        login = client.authenticate_with(Credentials("password", "u", "p"))
        self.assertEqual(sent(transport), b'0003 LOGIN "u" "p"\r\n')
        client.dataReceived(b"0003 OK [CAPABILITY IMAP4rev1] in\r\n")
        self.successResultOf(login)

    def test_starttls_not_offered_sends_nothing(self):
        """Twisted's login() would log in over cleartext here."""
        client, transport, clock = self.connect_plain(
            b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"
        )
        d = client.start_tls(CONTEXT)
        self.failureResultOf(d, TLSRequired)
        self.assertEqual(transport.value(), b"")
        self.assertIsNone(transport.tls_context)
        login = client.authenticate_with(Credentials("password", "u", "p"))
        self.failureResultOf(login)
        self.assertEqual(transport.value(), b"")

    def test_no_login_without_starttls(self):
        client, transport, clock = self.connect_plain(
            b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n"
        )
        d = client.authenticate_with(Credentials("password", "u", "p"))
        self.failureResultOf(d, CleartextRefused)
        self.assertEqual(transport.value(), b"")

    def test_bytes_after_starttls_ok_drop(self):
        """A man in the middle appends a forged response to the OK
        (CVE-2011-0411 style); it must never be read as if it came over TLS."""
        client, transport, clock = self.connect_plain(
            b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n"
        )
        d = client.start_tls(CONTEXT)
        sent(transport)
        client.dataReceived(b"0001 OK Begin TLS\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
        self.failureResultOf(d, ProtocolViolation)
        self.assertIsNone(transport.tls_context)
        self.assertDropped(transport)
        self.assertEqual(transport.value(), b"")

    def test_transport_without_tls(self):
        client, transport, clock = self.connect(
            tls=False, greeting=b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n",
            transport=StringTransport(),
        )
        self.failureResultOf(client.start_tls(CONTEXT), TLSRequired)
        self.assertEqual(transport.value(), b"")


class TLSOptionsTests(SynchronousTestCase):
    def test_verifying_by_default(self):
        creator = client_tls_options("imap.example.com")
        self.assertTrue(IOpenSSLClientConnectionCreator.providedBy(creator))
        self.assertEqual(type(creator).__name__, "ClientTLSOptions")

    def test_insecure_is_logged(self):
        events = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        creator = client_tls_options("imap.example.com", insecure=True)
        self.assertTrue(IOpenSSLClientConnectionCreator.providedBy(creator))
        self.assertTrue(any("DISABLED" in e.get("log_format", "") for e in events))

    def test_empty_ca_file_rejected(self):
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("not a cert")
        with self.assertRaises(ValueError):
            client_tls_options("imap.example.com", ca_file=path)


class SharedClientTLSTests(SynchronousTestCase):
    """One TLS options object (one OpenSSL context) per host, shared by all
    folders of that host; rebuilt when the CA file changes."""

    def test_shared_per_host_and_rebuilt_on_ca_change(self):
        import os
        import shutil
        import tempfile

        from imapsvc.imap.tls import SharedClientTLS
        from tests.rig.tls import make_tls_files

        files = make_tls_files(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, os.path.dirname(files.ca_file), True)
        shared = SharedClientTLS(files.ca_file, max_entries=2)
        a = shared("imap.example.com")
        self.assertIs(shared("imap.example.com"), a)
        b = shared("other.example.com")
        self.assertIsNot(b, a)
        # a changed CA file gives new options (not the stale trust store)
        with open(files.ca_file, "ab") as f:
            f.write(b"\n")
        self.assertIsNot(shared("imap.example.com"), a)
        # bounded: never more than max_entries
        shared("third.example.com")
        self.assertLessEqual(len(shared._cache), 2)
