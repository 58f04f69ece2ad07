"""One reconnecting client factory per watched folder.

:class:`FolderClientFactory` owns *when* to connect (startup stagger,
exponential back-off with jitter, a server's throttling hint, giving up on
bad credentials) and *how* (TCP with a connect timeout, implicit TLS by
wrapping the factory in TLS). What happens on the connection is the owner's
business (:class:`imapsvc.folder.FolderService`); the factory tells it about
every step through :class:`imapsvc.interfaces.IConnectionEvents`, one way.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.protocol import ReconnectingClientFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from imapsvc.core.backoff import (
    Rand,
    first_reconnect_delay,
    reconnect_delay,
    startup_stagger,
)
from imapsvc.imap.connect_gate import ConnectGate, GateSlot

#: What the factory reports to (the folder service): the methods of
#: :class:`imapsvc.interfaces.IConnectionEvents`.
FactoryOwner = Any


def set_keepalive(transport: Any, log: Optional[Logger] = None) -> bool:
    """Turn TCP keepalive on for ``transport`` or the TCP transport under its
    TLS wrapper. :return: whether it worked."""
    seen = 0
    while transport is not None and seen < 4:
        setter = getattr(type(transport), "setTcpKeepAlive", None)
        if setter is not None:
            try:
                transport.setTcpKeepAlive(1)
                return True
            except Exception:  # not a TCP socket (tests, UNIX sockets)
                break
        transport = getattr(transport, "transport", None)
        seen += 1
    if log is not None:
        log.debug("TCP keepalive not available on this transport")
    return False


class _ResolvingConnector:
    """Stands in for a connector when an attempt ended before connectTCP
    (its address was refused): ``connect()`` starts a fresh attempt."""

    def __init__(self, factory: FolderClientFactory) -> None:
        self._factory = factory

    def connect(self) -> None:
        self._factory._first_connect()

    def stopConnecting(self) -> None:
        pass


class FolderClientFactory(ReconnectingClientFactory):
    """Connects one folder's IMAP session and reconnects it with back-off.

    :param owner: an :class:`~imapsvc.interfaces.IConnectionEvents` provider.
    :param reactor: provides ``connectTCP`` and ``callLater``.
    :param protocol_factory: ``() -> protocol`` (a
        :class:`~imapsvc.imap.protocol.FolderIMAPClient` in production).
    :param tls_creator: an ``IOpenSSLClientConnectionCreator`` for implicit
        TLS, or ``None`` for a plain (maybe later STARTTLS) connection.
    :param connect_timeout: seconds for the TCP connect.
    :param rand: ``() -> float in [0, 1)`` for jitter and stagger.
    :param gate: the process-wide :class:`ConnectGate`: every attempt waits
        for a slot before it connects and holds it until the owner calls
        :meth:`session_ready` or the connection ends.
    """

    log = Logger()
    noisy = False
    _resolving: Any = None

    def __init__(
        self,
        owner: FactoryOwner,
        reactor: Any,
        host: str,
        port: int,
        protocol_factory: Callable[[], Any],
        tls_creator: Any = None,
        connect_timeout: float = 10.0,
        reconnect_base_ms: int = 2000,
        reconnect_max_ms: int = 60000,
        reconnect_jitter_pct: float = 0.5,
        startup_stagger_ms: int = 0,
        rand: Optional[Rand] = None,
        label: str = "",
        resolve: Optional[Callable[[str, int], Any]] = None,
        gate: Optional[ConnectGate] = None,
    ) -> None:
        self.owner = owner
        self.reactor = reactor
        self.clock: Any = reactor
        self.host = host
        self.port = port
        self.protocol_factory = protocol_factory
        self.tls_creator = tls_creator
        self.connect_timeout = connect_timeout
        self.reconnect_base_ms = reconnect_base_ms
        self.reconnect_max_ms = reconnect_max_ms
        self.reconnect_jitter_pct = reconnect_jitter_pct
        self.startup_stagger_ms = startup_stagger_ms
        self.rand: Rand = rand or random.random
        self.label = label
        self.initialDelay = reconnect_base_ms / 1000.0
        self.maxDelay = reconnect_max_ms / 1000.0  # type: ignore[assignment]  # int in Twisted
        self.delay = self.initialDelay
        self._next_delay: Optional[float] = None
        self._connected = False
        self.connect_calls = 0
        #: ``(host, port) -> Deferred[address]``: the checked address to
        #: connect to (tenant hosts may not reach private ranges); resolved
        #: again on every attempt. ``None`` connects to ``host`` directly.
        self.resolve = resolve
        self.gate = gate
        self._slot: Optional[GateSlot] = None
        self._gate_wait: Optional[defer.Deferred[Any]] = None

    # -- starting and stopping ----------------------------------------------

    def start(self, stagger: bool = True) -> float:
        """Schedule the first connection after a random startup stagger.

        :return: the stagger delay in seconds.
        """
        self.continueTrying = True
        self.retries = 0
        delay = startup_stagger(self.startup_stagger_ms, self.rand) if stagger else 0.0
        self._cancel_pending()
        self._leave_gate()
        self._callID = self.clock.callLater(delay, self._first_connect)
        return delay

    def _first_connect(self) -> None:
        self._callID = None
        if not self.continueTrying:
            return
        self._through_gate(self._connect_fresh)

    def _through_gate(self, connect: Callable[[], None]) -> None:
        """``connect()`` once the gate has a slot for this attempt."""
        self._release_slot()  # a new attempt: the last one's slot goes back
        if self.gate is None:
            connect()
            return
        d = self._gate_wait = self.gate.acquire()
        d.addCallback(self._gate_open, connect)
        d.addErrback(lambda f: f.trap(defer.CancelledError))  # stopped while waiting

    def _gate_open(self, slot: GateSlot, connect: Callable[[], None]) -> None:
        self._gate_wait = None
        if not self.continueTrying:
            slot.release()
            return
        self._slot = slot
        connect()

    def _release_slot(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()

    def _leave_gate(self) -> None:
        """Stop waiting for a slot and give back the one held."""
        waiting, self._gate_wait = self._gate_wait, None
        if waiting is not None:
            waiting.cancel()
        self._release_slot()

    def session_ready(self) -> None:
        """The owner's session is set up (idling or polling): its gate slot
        goes to the next folder waiting to connect."""
        self._release_slot()

    def _connect_fresh(self) -> None:
        factory: Any = self
        if self.tls_creator is not None:
            factory = TLSMemoryBIOFactory(self.tls_creator, True, self)
        self.connect_calls += 1
        if self.resolve is None:
            self.connector = self.reactor.connectTCP(
                self.host, self.port, factory, timeout=self.connect_timeout
            )
            return
        self._resolving = d = self.resolve(self.host, self.port)
        d.addCallbacks(self._connect_to, self._unresolved, callbackArgs=(factory,))

    def _connect_to(self, address: str, factory: Any) -> None:
        self._resolving = None
        if not self.continueTrying:
            return
        self.connector = self.reactor.connectTCP(
            address, self.port, factory, timeout=self.connect_timeout
        )

    def _unresolved(self, reason: Failure) -> None:
        # Refused or unresolvable: a failed attempt like a refused connect,
        # with the same back-off (the name may be fixed or the DNS may heal).
        self._resolving = None
        self._release_slot()
        if not self.continueTrying:
            return
        self._connected = False
        self.owner.factory_connection_ended(reason, False)
        self.retry(_ResolvingConnector(self))

    def _cancel_pending(self) -> None:
        if self._callID is not None and self._callID.active():
            self._callID.cancel()
        self._callID = None

    def stopTrying(self) -> None:
        """Never reconnect again (until :meth:`start`); a pending attempt is
        cancelled, a connection in progress is abandoned."""
        self._cancel_pending()
        self.continueTrying = 0
        self._leave_gate()
        if self.connector is not None and not self._connected:
            try:
                self.connector.stopConnecting()
            except Exception:  # not connecting any more: nothing to stop
                pass

    def resetDelay(self) -> None:
        """Back to the base delay; called after a successful sync (not merely
        on connect, so a server that accepts and then fails every session
        still backs off)."""
        self.retries = 0
        self.delay = self.initialDelay
        self._next_delay = None

    def set_next_delay(self, seconds: float, capped: bool = True) -> None:
        """Use ``seconds`` (a server's throttling hint) for the next retry
        instead of the computed back-off (never more than ten times the
        configured maximum unless ``capped`` is false: a quarantine)."""
        limit = 10 * self.maxDelay if capped else float("inf")
        self._next_delay = max(0.0, min(float(seconds), limit))

    def reconnect_now(self) -> None:
        """Cancel a pending back-off wait and connect at once."""
        if self._callID is not None and self._callID.active() and self.continueTrying:
            self._callID.reset(0)

    # -- ClientFactory -------------------------------------------------------

    def startedConnecting(self, connector: Any) -> None:
        self.owner.factory_connecting()

    def buildProtocol(self, addr: Any) -> Any:
        proto = self.protocol_factory()
        proto.factory = self
        self._connected = True
        self.owner.factory_protocol(proto)
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._release_slot()
        self._connected = False
        self.owner.factory_connection_ended(reason, False)
        self.retry(connector)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self._release_slot()
        self._connected = False
        self.owner.factory_connection_ended(reason, True)
        self.retry(connector, lost=True)

    def retry(self, connector: Any = None, lost: bool = False) -> None:
        """Schedule the next attempt: the throttling hint if the server gave
        one, else exponential back-off with jitter (``core.backoff``)."""
        if not self.continueTrying:
            return
        if connector is None:
            connector = self.connector
        if connector is None:
            raise ValueError("no connector to retry")
        if self._next_delay is not None:
            delay, self._next_delay = self._next_delay, None
        elif lost and self.retries == 0:
            # A healthy session dropped (a server restart drops them all):
            # spread the first retry over the stagger window.
            delay = first_reconnect_delay(
                self.reconnect_base_ms,
                self.reconnect_jitter_pct,
                self.startup_stagger_ms,
                self.rand,
            )
        else:
            delay = reconnect_delay(
                self.retries,
                self.reconnect_base_ms,
                self.reconnect_max_ms,
                self.reconnect_jitter_pct,
                self.rand,
            )
        self.retries += 1
        self.delay = delay

        def reconnector() -> None:
            self._callID = None
            if not self.continueTrying:
                return
            if self.resolve is not None:
                # A fresh lookup and check on every attempt.
                self._first_connect()
                return

            def connect() -> None:
                self.connect_calls += 1
                connector.connect()

            self._through_gate(connect)

        self._cancel_pending()
        self._callID = self.clock.callLater(delay, reconnector)
        self.owner.factory_retry_scheduled(delay)
