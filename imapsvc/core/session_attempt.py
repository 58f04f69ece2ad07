"""What a folder's recovery remembers between connection attempts.

Pure bookkeeping (no I/O): :class:`imapsvc.folder.FolderService` keeps one
:class:`SessionAttempt` and tells it what happened (a new session, a login,
a failure, a BYE, the end of a connection); the record answers the
questions recovery asks (retry a refused token once? warn about file
descriptors again? what ended this connection?). The lifecycle's states
themselves are :mod:`imapsvc.core.folder_machine`'s.
"""

from __future__ import annotations

from typing import Optional

import attrs

from imapsvc.core.auth import OAUTH_MECHANISMS

#: Reconnect causes named here rather than by an error class.
BYE = "bye"
QUARANTINE = "quarantine"


@attrs.define
class SessionAttempt:
    """The recovery bookkeeping of one folder across its sessions."""

    #: The login mechanism of the current session (``password``,
    #: ``xoauth2``, ``oauthbearer``), once it tried to log in.
    login_mechanism: Optional[str] = None
    #: The current session's own error (secret-free), until its connection ends.
    error: Optional[str] = None
    #: Why the current connection is ending (metric label), until it ends.
    reconnect_reason: Optional[str] = None
    #: OAuth2: a refused access token gets one forced refresh and one retry
    #: before the refusal counts; reset by a successful login.
    token_retry_used: bool = False
    #: The next login asks the credential source for a refreshed token.
    force_token_refresh: bool = False
    #: The server's refusal of the token being retried: it stands when no
    #: refreshed token can be had.
    refusal: Optional[Exception] = None
    #: Running out of file descriptors was logged (once until a connect works).
    fd_warned: bool = False

    # -- what happened --------------------------------------------------------

    def connected(self) -> None:
        """A connection was made and a new session built on it."""
        self.fd_warned = False
        self.error = None

    def logging_in(self, mechanism: Optional[str]) -> None:
        self.login_mechanism = mechanism

    def logged_in(self) -> None:
        """The server accepted the login: a later refusal gets its retry again."""
        self.token_retry_used = False
        self.refusal = None

    def failed(self, error: str) -> None:
        """The current session failed with ``error`` (replacing an earlier one)."""
        self.error = error

    def cause(self, reason: str) -> None:
        """Name why the connection ends, unless something already did."""
        self.reconnect_reason = self.reconnect_reason or reason

    def said_bye(self) -> None:
        self.reconnect_reason = BYE

    def quarantined(self) -> None:
        self.reconnect_reason = QUARANTINE

    def connection_ended(self) -> tuple[Optional[str], Optional[str]]:
        """The connection is gone: its ``(reconnect reason, own error)``,
        both forgotten so that they never stick to the next one."""
        ended = (self.reconnect_reason, self.error)
        self.reconnect_reason = self.error = None
        return ended

    # -- what recovery asks -----------------------------------------------------

    def retry_refused_token(self, refusal: Exception) -> bool:
        """The server refused the login: whether this is an access token's
        first refusal since the last login (then refresh it and retry once,
        remembering ``refusal``)."""
        if self.login_mechanism not in OAUTH_MECHANISMS or self.token_retry_used:
            return False
        self.token_retry_used = True
        self.force_token_refresh = True
        self.refusal = refusal
        return True

    def token_refreshed(self) -> None:
        """The forced refresh got a new token."""
        self.force_token_refresh = False

    def refusal_stands(self) -> Optional[Exception]:
        """No refreshed token can be had: the refusal to raise again (if
        there is one); no refresh is forced any more."""
        if self.refusal is None:
            return None
        self.force_token_refresh = False
        return self.refusal

    def warn_fd_exhaustion(self) -> bool:
        """Whether to log running out of file descriptors now (the first
        failed connect of a streak only)."""
        first = not self.fd_warned
        self.fd_warned = True
        return first
