"""Connections to tenant-chosen endpoints: resolve, check every address
(:mod:`imapsvc.core.netguard`), then connect to the checked address, never
to the name again (a second lookup could answer differently: DNS rebinding).

- :func:`checked_address` for the IMAP folder connections and the
  test-connection probe;
- :func:`guarded_http_client`, a treq ``HTTPClient`` whose every connection
  goes through the same check (OAuth token endpoints);
- :func:`read_capped`, a response body with a size cap.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IResolutionReceiver
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from imapsvc.core.netguard import AddressRefused, Allowlist, check_addresses, ip_literal


@implementer(IResolutionReceiver)
class _Collect:
    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.done: defer.Deferred = defer.Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


def resolve_all(reactor: Any, host: str, port: int) -> defer.Deferred:
    """Every address ``host`` resolves to (IPv4 and IPv6), as strings."""
    literal = ip_literal(host)
    if literal is not None:
        return defer.succeed([literal])
    receiver = _Collect()
    reactor.nameResolver.resolveHostName(receiver, host, port)
    return receiver.done


@defer.inlineCallbacks
def checked_address(reactor: Any, host: str, port: int, allow: Optional[Allowlist]):
    """The first address of ``host`` once every one passed the check.

    ``allow=None`` turns the check off (not used in production wiring).

    :raises AddressRefused: a refused range, or no address at all.
    """
    addresses = yield resolve_all(reactor, host, port)
    if allow is not None:
        addresses = check_addresses(host, addresses, allow)
    if not addresses:
        raise AddressRefused(host, "unresolvable")
    # IPv4 first, as connectTCP(name) always did: "localhost" often lists
    # ::1 first while the server listens on 127.0.0.1 only.
    return sorted(addresses, key=lambda a: ":" in a)[0]


def tcp_endpoint(reactor: Any, address: str, port: int, timeout: float) -> Any:
    if ":" in address:
        return TCP6ClientEndpoint(reactor, address, port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, address, port, timeout=timeout)


class _CheckedEndpoint:
    """Connects to a checked address of ``host``; TLS (SNI and certificate
    name) still uses ``host``."""

    def __init__(self, reactor, host, port, tls_creator, allow, timeout):
        self._reactor = reactor
        self._host = host
        self._port = port
        self._tls = tls_creator
        self._allow = allow
        self._timeout = timeout

    @defer.inlineCallbacks
    def connect(self, factory: Any):
        address = yield checked_address(self._reactor, self._host, self._port, self._allow)
        endpoint = tcp_endpoint(self._reactor, address, self._port, self._timeout)
        if self._tls is not None:
            endpoint = wrapClientTLS(self._tls, endpoint)
        protocol = yield endpoint.connect(factory)
        return protocol


@implementer(IAgentEndpointFactory)
class CheckedEndpointFactory:
    """Endpoints for :class:`~twisted.web.client.Agent` that check addresses."""

    def __init__(self, reactor: Any, allow: Optional[Allowlist], connect_timeout: float = 10.0):
        self._reactor = reactor
        self._allow = allow
        self._timeout = connect_timeout
        self._policy = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802 - Twisted's interface
        host = uri.host.decode("ascii") if isinstance(uri.host, bytes) else uri.host
        tls = None
        if uri.scheme == b"https":
            tls = self._policy.creatorForNetloc(uri.host, uri.port)
        return _CheckedEndpoint(self._reactor, host, uri.port, tls, self._allow, self._timeout)


def guarded_http_client(reactor: Any, allow: Optional[Allowlist]) -> Any:
    """A treq ``HTTPClient`` (non-persistent connections: every request
    resolves and checks again)."""
    from treq.client import HTTPClient

    return HTTPClient(Agent.usingEndpointFactory(reactor, CheckedEndpointFactory(reactor, allow)))


class BodyTooLarge(Exception):
    def __init__(self, cap: int):
        super().__init__(f"response body larger than {cap} bytes")
        self.cap = cap


class _Capped(Protocol):
    def __init__(self, cap: int, done: defer.Deferred):
        self._cap = cap
        self._done = done
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._done.called:
            return
        self._size += len(data)
        if self._size > self._cap:
            self._done.errback(Failure(BodyTooLarge(self._cap)))
            self.stop()
            return
        self._parts.append(data)

    def stop(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            # Drops the connection: the rest of the body is never read.
            transport.stopProducing()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self._done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(reason)


def read_capped(response: Any, cap: int) -> defer.Deferred:
    """The body of ``response``, or :class:`BodyTooLarge` as soon as it
    passes ``cap`` bytes (a declared length above it fails before reading).
    Cancelling the Deferred (a deadline) drops the connection."""
    length = getattr(response, "length", None)
    protocol: Optional[_Capped] = None

    def cancel(d: defer.Deferred) -> None:
        if protocol is not None:
            protocol.stop()

    done: defer.Deferred = defer.Deferred(cancel)
    protocol = _Capped(cap, done)
    if isinstance(length, int) and length > cap:
        # Still delivered to a protocol that stops it: the connection closes.
        response.deliverBody(protocol)
        if not done.called:
            done.errback(Failure(BodyTooLarge(cap)))
        protocol.stop()
        return done
    response.deliverBody(protocol)
    return done
