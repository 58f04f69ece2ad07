"""Which addresses tenant endpoints may reach: the pure rules
(:mod:`imapsvc.core.netguard`), the resolving shell (:mod:`imapsvc.egress`),
the folder factory and the test-connection probe that use it."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core import netguard as n
from imapsvc.egress import checked_address
from imapsvc.imap import errors as E
from imapsvc.imap.factory import FolderClientFactory
from imapsvc.imap.probe import PROBE_ERRORS, ProbeError, classify

NOTHING = n.Allowlist()

PRIVATE_V4 = [ipaddress.ip_network(c) for c in (
    "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4",
)]  # fmt: skip


def in_any(addr, nets):
    return any(addr in net for net in nets)


class RuleTests(SynchronousTestCase):
    def test_refused_by_default(self):
        for addr, reason in [
            ("10.1.2.3", "private"), ("172.31.255.255", "private"), ("192.168.0.1", "private"),
            ("100.64.0.10", "private"), ("127.0.0.1", "loopback"), ("::1", "loopback"),
            ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
            ("fd00::1", "private"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
            ("224.0.0.1", "multicast"), ("::ffff:10.0.0.1", "private"),
            ("::ffff:127.0.0.1", "loopback"), ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:a9fe:a9fe::1", "link-local"),
        ]:
            self.assertEqual(n.refused_reason(addr), reason, addr)

    def test_public_allowed(self):
        for addr in ("8.8.8.8", "142.250.74.101", "2a00:1450:4001:82b::200e", "172.32.0.1",
                     "11.0.0.1", "192.169.0.1"):
            self.assertIsNone(n.refused_reason(addr), addr)

    @given(st.integers(min_value=0, max_value=2**32 - 1))
    def test_every_ipv4_address(self, value):
        addr = ipaddress.IPv4Address(value)
        reason = n.refused_reason(addr)
        if in_any(addr, PRIVATE_V4):
            self.assertIsNotNone(reason, str(addr))
        # Mapped into IPv6, the same verdict (no bypass by spelling).
        mapped = ipaddress.IPv6Address("::ffff:" + str(addr))
        self.assertEqual(n.refused_reason(mapped), reason, str(mapped))

    @given(st.integers(min_value=0, max_value=2**32 - 1), st.booleans())
    def test_one_refused_address_refuses_the_name(self, value, first):
        public = "8.8.4.4"
        other = str(ipaddress.IPv4Address(value))
        addresses = [other, public] if first else [public, other]
        if n.refused_reason(other) is None:
            self.assertEqual(n.check_addresses("h.example", addresses, NOTHING), addresses)
        else:
            with self.assertRaises(n.AddressRefused):
                n.check_addresses("h.example", addresses, NOTHING)

    def test_allowlist_by_network_and_by_name(self):
        allow = n.parse_allowlist(["127.0.0.0/8", "10.20.0.0/16", "mail.corp.example",
                                   ".intra.example"])
        self.assertEqual(n.check_addresses("x", ["127.0.0.1"], allow), ["127.0.0.1"])
        self.assertEqual(n.check_addresses("x", ["10.20.3.4"], allow), ["10.20.3.4"])
        with self.assertRaises(n.AddressRefused):
            n.check_addresses("x", ["10.21.3.4"], allow)
        self.assertEqual(n.check_addresses("MAIL.corp.example.", ["10.9.9.9"], allow),
                         ["10.9.9.9"])
        self.assertEqual(n.check_addresses("imap.intra.example", ["192.168.1.1"], allow),
                         ["192.168.1.1"])
        with self.assertRaises(n.AddressRefused):
            n.check_addresses("intra.example.evil.net", ["192.168.1.1"], allow)
        with self.assertRaises(n.AddressRefused):
            n.check_addresses("nothing.example", [], allow)

    def test_refusal_message_names_host_and_kind_only(self):
        with self.assertRaises(n.AddressRefused) as caught:
            n.check_addresses("db.internal", ["10.0.0.5"], NOTHING)
        message = str(caught.exception)
        self.assertIn("db.internal", message)
        self.assertIn("private", message)
        self.assertNotIn("10.0.0.5", message)

    def test_parse_allow_entry(self):
        self.assertEqual(n.parse_allow_entry(" Mail.Example. "), "mail.example")
        self.assertEqual(str(n.parse_allow_entry("10.1.2.3")), "10.1.2.3/32")
        for bad in ("", "not a host", "a/b/c", "x..y"):
            with self.assertRaises(ValueError):
                n.parse_allow_entry(bad)

    def test_https_rule(self):
        self.assertEqual(n.check_https_url("https://a.example/t", "x"), "https://a.example/t")
        for url in ("http://a.example/t", "http://127.0.0.1/t", "javascript:x", "/relative",
                    "https://u:p@a.example/t"):
            with self.assertRaises(n.InsecureURL):
                n.check_https_url(url, "x")
        for url in ("http://127.0.0.1:9/t", "http://localhost/t", "http://[::1]/t"):
            self.assertEqual(n.check_https_url(url, "x", allow_http_loopback=True), url)
        with self.assertRaises(n.InsecureURL):
            n.check_https_url("http://10.0.0.1/t", "x", allow_http_loopback=True)

    def test_k8s_list_matches_the_rules(self):
        for cidr in n.PRIVATE_IPV4_CIDRS:
            net = ipaddress.ip_network(cidr)
            self.assertIsNotNone(n.refused_reason(net.network_address), cidr)
            self.assertIsNotNone(n.refused_reason(net.broadcast_address), cidr)


class FakeResolver:
    """``reactor.nameResolver`` answering from a table."""

    def __init__(self, table):
        self.table = table
        self.asked = []

    def resolveHostName(self, receiver, host, port=0, *a, **kw):  # noqa: N802
        self.asked.append(host)
        receiver.resolutionBegan(None)
        for addr in self.table.get(host, []):
            cls = IPv6Address if ":" in addr else IPv4Address
            receiver.addressResolved(cls("TCP", addr, port))
        receiver.resolutionComplete()


class ShellTests(SynchronousTestCase):
    def reactor(self, table):
        reactor = MemoryReactorClock()
        reactor.nameResolver = FakeResolver(table)
        return reactor

    def test_checked_address(self):
        reactor = self.reactor({"imap.example.com": ["::1", "127.0.0.1"],
                                "mixed.example": ["93.184.216.34", "10.0.0.1"],
                                "pub.example": ["2606:2800::1", "93.184.216.34"]})
        self.failureResultOf(checked_address(reactor, "imap.example.com", 993, NOTHING),
                             n.AddressRefused)
        self.failureResultOf(checked_address(reactor, "mixed.example", 993, NOTHING),
                             n.AddressRefused)
        self.failureResultOf(checked_address(reactor, "gone.example", 993, NOTHING),
                             n.AddressRefused)
        self.failureResultOf(checked_address(reactor, "169.254.169.254", 80, NOTHING),
                             n.AddressRefused)
        # IPv4 preferred, as connectTCP(name) did.
        self.assertEqual(
            self.successResultOf(checked_address(reactor, "pub.example", 993, NOTHING)),
            "93.184.216.34",
        )
        allow = n.parse_allowlist(["127.0.0.0/8", "::1/128"])
        self.assertEqual(
            self.successResultOf(checked_address(reactor, "imap.example.com", 993, allow)),
            "127.0.0.1",
        )

    def factory(self, table, allow):
        reactor = self.reactor(table)
        events = []

        class Owner:
            def factory_connecting(self):
                events.append("connecting")

            def factory_protocol(self, proto):
                events.append("protocol")

            def factory_connection_ended(self, reason, connected):
                events.append(("ended", type(reason.value).__name__))

            def factory_retry_scheduled(self, delay):
                events.append("retry")

        f = FolderClientFactory(
            Owner(), reactor, "imap.example.com", 993, object, rand=lambda: 0.0,
            resolve=lambda h, p: checked_address(reactor, h, p, allow),
        )
        return reactor, f, events

    def test_folder_connects_to_the_checked_address(self):
        reactor, f, events = self.factory({"imap.example.com": ["93.184.216.34"]}, NOTHING)
        f.start(stagger=False)
        reactor.advance(0)
        self.assertEqual(reactor.tcpClients[0][:2], ("93.184.216.34", 993))
        # Every attempt resolves again (a changed DNS answer is checked too).
        reactor.nameResolver.table["imap.example.com"] = ["10.0.0.7"]
        f.clientConnectionFailed(reactor.connectors[-1], Failure(error.ConnectionRefusedError()))
        reactor.advance(f.delay)
        self.assertEqual(len(reactor.tcpClients), 1)
        self.assertIn(("ended", "AddressRefused"), events)
        self.assertEqual(reactor.nameResolver.asked, ["imap.example.com"] * 2)
        f.stopTrying()

    def test_folder_never_connects_to_a_refused_host(self):
        reactor, f, events = self.factory({"imap.example.com": ["169.254.169.254"]}, NOTHING)
        f.start(stagger=False)
        for _ in range(3):
            reactor.advance(max(f.delay, 0.01))
        self.assertEqual(reactor.tcpClients, [])
        self.assertEqual(events.count(("ended", "AddressRefused")), 3)
        self.assertEqual(events.count("retry"), 3)
        f.stopTrying()


class ProbeClassTests(SynchronousTestCase):
    def test_classes_are_generic(self):
        cases = [
            (n.AddressRefused("h", "private"), "address_refused"),
            (error.ConnectionRefusedError("10.0.0.5:5432 refused"), "connect_failed"),
            (error.DNSLookupError("db.internal"), "connect_failed"),
            (defer.TimeoutError(), "timeout"),
            (error.TimeoutError(), "timeout"),
            (E.CommandTimeout("LOGIN"), "timeout"),
            (E.AuthenticationFailed("AUTHENTICATIONFAILED", "nope"), "auth_failed"),
            (E.TLSRequired("no STARTTLS"), "tls_failed"),
            (E.ProtocolViolation("banner: +OK redis"), "protocol_error"),
            (ProbeError("config_error"), "config_error"),
        ]
        for err, kind in cases:
            self.assertEqual(classify(err), kind, repr(err))
            self.assertIn(kind, PROBE_ERRORS)
        self.assertEqual(str(ProbeError("timeout")), "timeout")
