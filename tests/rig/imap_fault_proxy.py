"""An IMAP proxy that makes a real server refuse chosen messages.

Clients connect with implicit TLS (the rig's ``localhost`` certificate);
the proxy forwards to the rig Dovecot's plain port on loopback (which
Dovecot treats as secure) and passes every server byte through unchanged.
Client command lines are read one by one: a ``UID FETCH`` whose UID set
touches one of :attr:`FaultProxy.fail_uids` is answered ``NO`` by the proxy
itself and never reaches Dovecot: what a server does for a message it
cannot read (a corrupted file, a broken MIME tree).
"""

from __future__ import annotations

import re
from typing import Any, Optional

from twisted.internet import defer, protocol, ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint

_UID_FETCH = re.compile(rb"^(\S+) UID FETCH ([0-9:,*]{1,1000}) ", re.IGNORECASE)


def uids_in(uid_set: bytes) -> set[int]:
    """The numbers a UID set names (``*`` ignored; ranges expanded)."""
    out: set[int] = set()
    for part in uid_set.split(b","):
        low, _, high = part.partition(b":")
        if not low.isdigit() or (high and not high.isdigit()):
            continue
        a, b = int(low), int(high or low)
        out.update(range(min(a, b), max(a, b) + 1))
    return out


class _Upstream(protocol.Protocol):
    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.downstream.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.downstream.transport.loseConnection()


class _Downstream(protocol.Protocol):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.upstream: Optional[_Upstream] = None
        self._buffer = b""
        self._pending: list[bytes] = []

    def connectionMade(self) -> None:  # noqa: N802
        self.proxy.live.add(self)
        endpoint = TCP4ClientEndpoint(self.proxy.reactor, "127.0.0.1", self.proxy.target_port)
        d = endpoint.connect(protocol.Factory.forProtocol(lambda: _Upstream(self)))
        d.addCallbacks(self._connected, lambda f: self.transport.loseConnection())

    def _connected(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        for chunk in self._pending:
            upstream.transport.write(chunk)
        self._pending = []

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._buffer += data
        while b"\r\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            self._line(line + b"\r\n")

    def _line(self, line: bytes) -> None:
        match = _UID_FETCH.match(line)
        if match and uids_in(match.group(2)) & self.proxy.fail_uids:
            self.proxy.refused += 1
            self.transport.write(match.group(1) + b" NO [UNAVAILABLE] message unreadable\r\n")
            return
        if self.upstream is None:
            self._pending.append(line)
        else:
            self.upstream.transport.write(line)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.proxy.live.discard(self)
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class FaultProxy:
    """:param target_port: the rig Dovecot's plain IMAP port.
    :param cert_file, key_file: PEM files of the certificate clients trust.
    :ivar fail_uids: UIDs whose FETCH is refused (change it any time).
    :ivar refused: how many FETCH commands were refused.
    """

    def __init__(self, reactor: Any, target_port: int, cert_file: str, key_file: str) -> None:
        self.reactor = reactor
        self.target_port = target_port
        self.cert_file = cert_file
        self.key_file = key_file
        self.fail_uids: set[int] = set()
        self.refused = 0
        self.live: set[_Downstream] = set()
        self._port: Any = None

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Listen on a free loopback port; fires with the port number."""
        with open(self.cert_file, "rb") as f:
            cert_pem = f.read()
        with open(self.key_file, "rb") as f:
            key_pem = f.read()
        cert = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem)
        endpoint = SSL4ServerEndpoint(self.reactor, 0, cert.options(), interface="127.0.0.1")
        self._port = yield endpoint.listen(protocol.Factory.forProtocol(lambda: _Downstream(self)))
        return self._port.getHost().port

    def stop(self) -> defer.Deferred:
        for down in list(self.live):
            down.transport.abortConnection()
        return defer.maybeDeferred(self._port.stopListening) if self._port else defer.succeed(None)
