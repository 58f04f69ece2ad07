"""A TCP port forwarder that a test can break on purpose.

:class:`TcpProxy` listens on ``127.0.0.1:<random port>`` and forwards every
connection to a target (PostgreSQL at ``127.0.0.1:5432`` by default). A test
then simulates network trouble without touching the real server:

- :meth:`TcpProxy.pause`: new connections are accepted and dropped at once
  (the client sees the server go away during its handshake); live ones go on.
- :meth:`TcpProxy.hold`: new connections are accepted and never answered
  (a black hole: only the client's own timeout ends them).
- :meth:`TcpProxy.cut`: every live connection is aborted (both sides).
- :meth:`TcpProxy.resume`: forward new connections again.

Everything runs on the reactor passed in; nothing blocks.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint

FORWARD = "forward"
REFUSE = "refuse"
HOLD = "hold"


class _Upstream(protocol.Protocol):
    """The proxy's connection to the target; relays bytes back to the client."""

    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted name)
        if not self.downstream.proxy.stalled:
            self.downstream.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.downstream.upstream_lost()


class _Downstream(protocol.Protocol):
    """A client's connection to the proxy."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.upstream: Optional[_Upstream] = None
        self._pending: list[bytes] = []
        self._connecting: Optional[defer.Deferred] = None
        self._closed = False

    def connectionMade(self) -> None:  # noqa: N802
        self.proxy.accepted += 1
        if self.proxy.mode == REFUSE:
            self.transport.abortConnection()
            return
        self.proxy.live.add(self)
        if self.proxy.mode == HOLD:
            return
        endpoint = TCP4ClientEndpoint(self.proxy.reactor, self.proxy.target_host,
                                      self.proxy.target_port, timeout=5)
        self._connecting = endpoint.connect(protocol.Factory.forProtocol(
            lambda: _Upstream(self)))
        self._connecting.addCallbacks(self._connected, self._failed)

    def _connected(self, upstream: _Upstream) -> None:
        self._connecting = None
        if self._closed:
            upstream.transport.abortConnection()
            return
        self.upstream = upstream
        for chunk in self._pending:
            upstream.transport.write(chunk)
        self._pending = []

    def _failed(self, f: Any) -> None:
        self._connecting = None
        if not f.check(defer.CancelledError):
            self.abort()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.proxy.stalled:
            return  # a partition: what the client sends is lost
        if self.upstream is not None:
            self.upstream.transport.write(data)
        else:
            self._pending.append(data)

    def upstream_lost(self) -> None:
        self.transport.loseConnection()

    def abort(self) -> None:
        """Abort both sides of this connection."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self.upstream is not None:
            self.upstream.transport.abortConnection()
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self._closed = True
        self.proxy.live.discard(self)
        if self._connecting is not None:
            self._connecting.cancel()
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``.

    :ivar port: the listening port (after :meth:`start`).
    :ivar accepted: connections accepted so far (refused ones included).
    :ivar live: client connections currently open through the proxy.
    """

    def __init__(self, reactor: Any, target_host: str = "127.0.0.1",
                 target_port: int = 5432) -> None:
        self.reactor = reactor
        self.target_host = target_host
        self.target_port = target_port
        self.mode = FORWARD
        self.stalled = False
        self.accepted = 0
        self.live: set[_Downstream] = set()
        self.port = 0
        self._listening: Any = None

    def start(self) -> int:
        """Listen on a free loopback port and return it."""
        factory = protocol.Factory.forProtocol(lambda: _Downstream(self))
        self._listening = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = self._listening.getHost().port
        return self.port

    def pause(self) -> None:
        """Refuse new connections (accept and drop them); live ones go on."""
        self.mode = REFUSE

    def hold(self) -> None:
        """Accept new connections and never answer them."""
        self.mode = HOLD

    def stall(self) -> None:
        """A partition for live connections too: bytes in either direction
        are dropped (sockets stay open) until :meth:`resume`."""
        self.stalled = True
        self.mode = HOLD

    def resume(self) -> None:
        """Forward new connections again (and live ones, after a stall)."""
        self.mode = FORWARD
        self.stalled = False

    def cut(self) -> int:
        """Abort every live connection; returns how many were cut."""
        victims = list(self.live)
        for conn in victims:
            conn.abort()
        return len(victims)

    def stop(self) -> defer.Deferred:
        """Stop listening and abort everything still open."""
        self.cut()
        if self._listening is None:
            return defer.succeed(None)
        listening, self._listening = self._listening, None
        return defer.maybeDeferred(listening.stopListening)
