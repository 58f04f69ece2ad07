"""What :class:`~imapsvc.testing.session.FakeIMAPSession` shares with the
wire: its transport, and the errors a refused command becomes (as
:class:`~imapsvc.imap.protocol.FolderIMAPClient` raises them)."""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from imapsvc.core.auth import is_refusal
from imapsvc.imap import responses
from imapsvc.imap.errors import (
    AuthenticationFailed,
    AuthenticationUnavailable,
    CommandFailed,
    IMAPError,
    Throttled,
)


class FakeSessionTransport(StringTransport):
    """A transport whose close reaches the protocol at once (and then
    ``on_lost(reason)``, e.g. a factory's ``clientConnectionLost``)."""

    def __init__(self, on_lost: Optional[Callable[[Failure], Any]] = None,
                 clock: Any = None) -> None:
        super().__init__()
        self.protocol: Any = None
        self.on_lost = on_lost
        #: With a clock, the close reaches the protocol on the clock's next
        #: turn (``callLater(0)``), as a socket's does: whoever closed it
        #: finishes first.
        self.clock = clock
        self.closed = False
        #: What the engine asked of the socket: SO_KEEPALIVE on or off.
        self.keepalive: Optional[bool] = None

    def setTcpKeepAlive(self, enabled: Any) -> None:  # noqa: N802 - Twisted's name
        self.keepalive = bool(enabled)

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        if self.closed:
            return
        self.closed = True
        self.disconnecting = True
        if self.clock is not None:
            self.clock.callLater(0, self._lost)
        else:
            self._lost()

    def _lost(self) -> None:
        reason = Failure(ConnectionDone("Connection done"))
        if self.protocol is not None:
            self.protocol.connectionLost(reason)
        if self.on_lost is not None:
            self.on_lost(reason)

    abortConnection = loseConnection  # noqa: N815


def refusal_error(command: str, status: str, code: Optional[str], text: str,
                  auth: bool = False) -> IMAPError:
    """The error the real client raises for ``status [code] text`` (see
    ``FolderIMAPClient._error_for``): a throttle, a login refusal or not,
    or a refused command."""
    throttled, delay = responses.throttle_delay(code, text)
    if throttled:
        return Throttled(delay, text)
    if auth:
        if is_refusal(status, code):
            return AuthenticationFailed(code, text)
        return AuthenticationUnavailable(code, text, status)
    return CommandFailed(code, f"{command} {status}: {text}")


class ServerCloses(Exception):
    """The server closes the connection instead of answering."""


