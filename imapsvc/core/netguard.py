"""Which addresses a tenant-chosen endpoint may reach (pure, no I/O).

A tenant picks its own IMAP host and OAuth endpoints. Without a check the
service would connect wherever that name points: the cluster's Postgres and
Redis, the cloud metadata service, the pod network. So the addresses a name
*resolves to* are checked (every one of them; one refused address refuses the
name, so a DNS answer mixing public and private addresses cannot slip
through), and the connection then goes to a checked address, never to the
name again (DNS rebinding).

Refused by default: private (RFC 1918, ULA), shared/CGNAT (100.64/10, often
a cluster's pod range), loopback, link-local (169.254/16 incl. cloud
metadata, fe80::/10), unspecified, multicast, reserved and documentation
ranges. An allowlist of CIDRs and host names opens them for on-premises
servers (and for the tests, whose servers listen on 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Optional, Union
from urllib.parse import urlsplit

import attr

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: (network, reason). Checked in order; the first match names the reason.
_REFUSED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), reason)
    for net, reason in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "private"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),
        ("192.0.2.0/24", "reserved"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved"),
        ("198.51.100.0/24", "reserved"),
        ("203.0.113.0/24", "reserved"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("100::/64", "reserved"),
        ("2001:db8::/32", "reserved"),
        ("fc00::/7", "private"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "private"),
        ("ff00::/8", "multicast"),
    )
)

#: The IPv4 ranges above as CIDRs, for the k8s NetworkPolicy ``except`` list
#: (tests/integration/test_k8s_manifests.py checks the manifest against it).
PRIVATE_IPV4_CIDRS: tuple[str, ...] = tuple(
    str(net) for net, _ in _REFUSED if net.version == 4 and str(net) != "0.0.0.0/8"
)


@attr.s(frozen=True, auto_attribs=True)
class Allowlist:
    """Networks and host names allowed although in a refused range.

    A host entry matches that exact name; an entry starting with ``.``
    (``.corp.example``) matches every name below it.
    """

    networks: tuple[IPNetwork, ...] = ()
    hosts: tuple[str, ...] = ()

    def allows_host(self, host: str) -> bool:
        name = normalise_host(host)
        for entry in self.hosts:
            if entry.startswith("."):
                if name.endswith(entry):
                    return True
            elif name == entry:
                return True
        return False

    def allows_address(self, address: IPAddress) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)


def normalise_host(host: str) -> str:
    return (host or "").strip().lower().rstrip(".")


def parse_allow_entry(text: str) -> Union[IPNetwork, str]:
    """A CIDR or address (-> network) or a host name (-> the normalised name).

    :raises ValueError: neither.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty entry")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        pass
    name = normalise_host(text)
    label_chars = set("abcdefghijklmnopqrstuvwxyz0123456789-.")
    if not name or not set(name) <= label_chars or ".." in name.lstrip("."):
        raise ValueError("not a CIDR, address or host name")
    return name


def parse_allowlist(entries: Iterable[str]) -> Allowlist:
    networks: list[IPNetwork] = []
    hosts: list[str] = []
    for entry in entries:
        parsed = parse_allow_entry(entry)
        if isinstance(parsed, str):
            hosts.append(parsed)
        else:
            networks.append(parsed)
    return Allowlist(tuple(networks), tuple(hosts))


def refused_reason(address: Union[str, IPAddress]) -> Optional[str]:
    """Why ``address`` is refused by default, or ``None`` for a public one.

    IPv4-mapped and 6to4/NAT64-embedded IPv4 addresses are judged by the
    IPv4 address inside them.
    """
    addr = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(addr, ipaddress.IPv6Address):
        inner = addr.ipv4_mapped or addr.sixtofour
        if inner is None and addr in ipaddress.ip_network("64:ff9b::/96"):
            inner = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if inner is not None:
            return refused_reason(inner)
        if addr.teredo is not None:
            return "reserved"
    for net, reason in _REFUSED:
        if addr.version == net.version and addr in net:
            return reason
    return None


class AddressRefused(Exception):
    """A tenant endpoint resolves to a range that is refused by default.
    The message names the host and the range kind, never more."""

    def __init__(self, host: str, reason: str):
        super().__init__(
            f"{host} resolves to a {reason} address, which is refused for tenant endpoints "
            "(IMAPSVC_PRIVATE_NETWORK_ALLOWLIST opens it)"
        )
        self.host = host
        self.reason = reason


def check_addresses(host: str, addresses: Iterable[str], allow: Allowlist) -> list[str]:
    """The addresses ``host`` resolved to, in order, when every one may be
    used; else :class:`AddressRefused` for the first refused one.

    :raises AddressRefused: also when there is no address at all.
    """
    checked: list[str] = []
    host_allowed = allow.allows_host(host)
    for text in addresses:
        try:
            addr = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            raise AddressRefused(host, "malformed") from None
        reason = refused_reason(addr)
        if reason is not None and not host_allowed and not allow.allows_address(addr):
            raise AddressRefused(host, reason)
        checked.append(str(addr))
    if not checked:
        raise AddressRefused(host, "unresolvable")
    return checked


def ip_literal(host: str) -> Optional[str]:
    """``host`` as an address when it is one (``[::1]`` too), else ``None``."""
    text = (host or "").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback_host(host: str) -> bool:
    name = normalise_host(host)
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    literal = ip_literal(name)
    return literal is not None and refused_reason(literal) == "loopback"


class InsecureURL(ValueError):
    """An OAuth endpoint or return URL that is not https (and not a loopback
    http URL while that is explicitly allowed)."""


def check_https_url(url: str, what: str, allow_http_loopback: bool = False) -> str:
    """``url`` when it is an absolute https URL without user info (or an
    http URL to a loopback host and ``allow_http_loopback``).

    :raises InsecureURL: otherwise; the message names ``what``, not the URL.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise InsecureURL(f"{what} is not a valid URL") from None
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise InsecureURL(f"{what} must be an absolute URL without user info")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and allow_http_loopback and is_loopback_host(parts.hostname):
        return url
    raise InsecureURL(f"{what} must use https")
