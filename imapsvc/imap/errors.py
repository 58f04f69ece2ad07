"""Errors of the IMAP protocol layer.

The folder engine tells them apart to pick its next state: an
:class:`AuthenticationFailed` (the server refused the credentials, see
:func:`imapsvc.core.auth.is_refusal`) means "needs re-authentication" (count
it, maybe pause the provider), :class:`Throttled` means "back off for
``retry_after`` seconds", everything else (including
:class:`AuthenticationUnavailable` and :class:`MechanismUnsupported`) means
"drop and reconnect with back-off", never counted. Messages never carry
secrets.
"""

from __future__ import annotations

from typing import Optional


class IMAPError(Exception):
    """Base class: the server refused a command or the session is unusable."""


class AuthenticationFailed(IMAPError):
    """The server answered NO/BAD to LOGIN/AUTHENTICATE.

    :ivar code: the response code without brackets (``"AUTHENTICATIONFAILED"``,
        ``"AUTHORIZATIONFAILED"``, ...) or ``None`` when the server gave none.
    :ivar text: the human-readable rest of the server's answer.
    """

    def __init__(self, code: Optional[str], text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text

    def __str__(self) -> str:
        if self.code:
            return f"authentication failed [{self.code}] {self.text}"
        return f"authentication failed: {self.text}"


class AuthenticationUnavailable(IMAPError):
    """The server answered LOGIN/AUTHENTICATE without refusing the
    credentials (``NO [UNAVAILABLE]``, ``[SERVERBUG]``, an unknown code,
    ``BAD``): transient, not an authentication failure.

    :ivar code: the response code without brackets, or ``None``.
    :ivar text: the server's text.
    """

    def __init__(self, code: Optional[str], text: str, kind: str = "NO") -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text
        self.kind = kind

    def __str__(self) -> str:
        code = f" [{self.code}]" if self.code else ""
        return f"login not checked now ({self.kind}{code}): {self.text}"


class MechanismUnsupported(IMAPError):
    """The server does not offer the SASL mechanism the login needs (nothing
    was sent): a configuration problem, not an authentication failure.

    :ivar code: always ``"UNSUPPORTED"``.
    """

    code = "UNSUPPORTED"


class CleartextRefused(IMAPError):
    """A password login was requested on a connection that is not TLS;
    nothing was sent."""


class TLSRequired(IMAPError):
    """STARTTLS was required but the server does not offer it (nothing was
    sent), or the TLS upgrade could not be done safely."""


class CommandTimeout(IMAPError):
    """A command got no complete answer within its deadline; the
    connection has been dropped."""


class Throttled(IMAPError):
    """The server asked us to slow down (``[THROTTLED]``, ``[LIMIT]``, or an
    Office 365 style "Suggested Backoff Time: N milliseconds").

    :ivar retry_after: seconds to wait before retrying (``None`` when the
        server suggested nothing).
    """

    def __init__(self, retry_after: Optional[float], text: str = "") -> None:
        super().__init__(retry_after, text)
        self.retry_after = retry_after
        self.text = text

    def __str__(self) -> str:
        return f"throttled (retry after {self.retry_after}s): {self.text}"


class CommandFailed(IMAPError):
    """The server answered NO or BAD to a command other than
    authentication.

    :ivar code: the response code without brackets, or ``None``.
    :ivar text: the server's text.
    """

    def __init__(self, code: Optional[str], text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


class ProtocolViolation(IMAPError):
    """The server sent something we cannot trust (e.g. bytes after the
    STARTTLS OK before the handshake); the connection has been dropped."""


class ConnectionGone(IMAPError):
    """The connection was lost while a command was outstanding."""
