"""The commands that set a session up before a folder is opened: STARTTLS,
login (LOGIN, AUTHENTICATE XOAUTH2/OAUTHBEARER), ID, ENABLE UTF8=ACCEPT and
COMPRESS=DEFLATE.

Twisted's ``login()`` is not used: it falls back to cleartext when STARTTLS
is absent, upgrades with a context that verifies nothing, and wraps the
XOAUTH2 payload at 76 columns (Twisted issue 6817).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport, ITLSTransport

from imapsvc.core.auth import OAUTH_MECHANISMS, choose_oauth_mechanism
from imapsvc.imap import extensions, responses
from imapsvc.imap.compress import (
    COMPRESS_AUTO,
    DeflateStreams,
    offers_deflate,
    peer_host_of,
    worth_compressing,
)
from imapsvc.imap.connection import Caps, Command
from imapsvc.imap.errors import (
    CleartextRefused,
    IMAPError,
    MechanismUnsupported,
    ProtocolViolation,
    TLSRequired,
)
from imapsvc.imap.reader import ResponseReader
from imapsvc.imap.responses import as_text
from imapsvc.model import Credentials


class AuthCommands(ResponseReader):
    """STARTTLS, login, ID, ENABLE and COMPRESS for
    :class:`~imapsvc.imap.protocol.FolderIMAPClient`."""

    def _is_tls(self) -> bool:
        return self._tls_started or ISSLTransport.providedBy(self.transport)

    def start_tls(self, context_factory: Any) -> defer.Deferred[None]:
        """``STARTTLS`` with ``context_factory`` (a verifying
        ``IOpenSSLClientConnectionCreator``), then ``CAPABILITY`` over TLS.

        Fails with :class:`TLSRequired` (nothing sent, connection closed) when
        the server does not offer STARTTLS; bytes received after the tagged OK
        and before the handshake (an injection attempt) drop the connection.
        """
        if self._is_tls():
            return defer.fail(IMAPError("the connection already uses TLS"))
        d: defer.Deferred[Caps] = (
            defer.succeed(self.capabilities) if self.capabilities else self.capability()
        )

        def upgrade(caps: Caps) -> defer.Deferred[Any]:
            if b"STARTTLS" not in caps:
                error = TLSRequired("server does not offer STARTTLS")
            elif ITLSTransport(self.transport, None) is None:
                error = TLSRequired("transport cannot start TLS")
            else:
                cmd = Command(b"STARTTLS", [b"STARTTLS"], kind="starttls")
                cmd.on_ok = lambda cmd, code: self._begin_tls(context_factory)
                return self._submit(cmd)
            self._drop(error, abort=False)
            raise error

        return (
            d.addCallback(upgrade)
            .addCallback(lambda _: self.capability())
            .addCallback(lambda _: None)
        )

    def _begin_tls(self, context_factory: Any) -> None:
        if self._buffer or self._texts is not None:
            raise ProtocolViolation("data received after STARTTLS before the TLS handshake")
        # Whatever was said in cleartext may have been forged.
        self.capabilities = None
        transport: Any = self.transport
        transport.startTLS(context_factory)
        self._tls_started = True

    def authenticate_with(
        self,
        credentials: Credentials,
        oauth_mechanism: Optional[str] = None,
        host: Optional[str] = None,
        port: Optional[int] = None,
    ) -> defer.Deferred[Caps]:
        """Log in with :class:`imapsvc.model.Credentials`; fires with the
        refreshed capability dict.

        :param oauth_mechanism: for an OAuth2 login, ``IMAP_OAUTH_AUTH_MECHANISM``
            (``auto``/``xoauth2``/``oauthbearer``): the mechanism is then
            chosen from the server's ``AUTH=`` capabilities
            (:func:`imapsvc.core.auth.choose_oauth_mechanism`). ``None`` uses
            ``credentials.mechanism`` as it is.
        :param host: the server's host name and ``port``, sent in the
            OAUTHBEARER message (RFC 7628 ``host``/``port`` keys).

        Refuses (:class:`CleartextRefused`, nothing sent) when the connection
        is not TLS, for passwords and bearer tokens alike. A mechanism the
        server does not offer fails with :class:`MechanismUnsupported`.
        """
        mechanism = credentials.mechanism.lower()
        if mechanism in OAUTH_MECHANISMS and oauth_mechanism is not None:
            mechanism = choose_oauth_mechanism(oauth_mechanism, self._auth_offered())
        if not self._is_tls():
            return defer.fail(
                CleartextRefused(f"refusing {mechanism} login over a connection without TLS")
            )
        if mechanism == "password":
            chunks = self._arguments(
                b"LOGIN",
                [credentials.username.encode("utf-8"), credentials.secret.encode("utf-8")],
            )
            cmd = Command(b"LOGIN", chunks, kind="auth")
        elif mechanism in OAUTH_MECHANISMS:
            sasl = self._sasl_command(
                mechanism, credentials.username, credentials.secret, host, port
            )
            if sasl is None:
                return defer.fail(
                    MechanismUnsupported(f"server does not offer AUTH={mechanism.upper()}")
                )
            cmd = sasl
        else:
            return defer.fail(ValueError(f"unknown login mechanism {mechanism!r}"))
        self.auth_mechanism = mechanism
        cmd.on_ok = self._logged_in
        d = self._submit(cmd)
        d.addCallback(lambda had_caps: self.capabilities if had_caps else self.capability())
        return d

    def _auth_offered(self) -> Optional[list[str]]:
        """The server's ``AUTH=`` mechanisms, or ``None`` when unknown."""
        if self.capabilities is None:
            return None
        return [m.decode("ascii", "replace") for m in self.capabilities.get(b"AUTH") or []]

    def _logged_in(self, cmd: Command, code: Optional[str]) -> bool:
        self.state = "auth"
        return code == "CAPABILITY"

    def _sasl_command(
        self,
        mechanism: str,
        username: str,
        token: str,
        host: Optional[str] = None,
        port: Optional[int] = None,
    ) -> Optional[Command]:
        caps = self.capabilities or {}
        name = mechanism.upper().encode("ascii")
        offered = caps.get(b"AUTH") or []
        if self.capabilities is not None and name not in offered:
            return None
        if mechanism == "xoauth2":
            initial = responses.xoauth2_initial(username, token)
            # Google/Microsoft: answer the JSON error challenge with an empty line.
            error_answer = b""
        else:
            initial = responses.oauthbearer_initial(username, token, host, port)
            # RFC 7628 3.2.3: the client answers the error with a single %x01.
            error_answer = b"AQ=="
        # One line, never wrapped (Twisted wraps base64 at 76 columns).
        if b"SASL-IR" in caps:
            cmd = Command(b"AUTHENTICATE", [b"AUTHENTICATE " + name + b" " + initial], "auth")
            initial_sent = True
        else:
            cmd = Command(b"AUTHENTICATE", [b"AUTHENTICATE " + name], "auth")
            initial_sent = False

        def on_continuation(cmd: Command, text: bytes) -> None:
            if not initial_sent and cmd.continuations == 1:
                self._write(initial + b"\r\n")
            elif cmd.continuations <= (1 if initial_sent else 2):
                self._write(error_answer + b"\r\n")
            else:
                self._write(b"*\r\n")  # cancel; the server answers BAD/NO

        cmd.on_continuation = on_continuation
        return cmd

    def send_id(
        self, fields: Sequence[tuple[str, str]]
    ) -> defer.Deferred[Optional[dict[str, str]]]:
        """``ID`` (RFC 2971) with ``fields`` when the server offers ``ID``
        (nothing is sent otherwise); fires with the server's ID dict, or
        ``None`` (not offered, ``NIL``, or refused: ``NO``/``BAD`` does not
        drop the connection). See :mod:`imapsvc.imap.extensions`."""
        if b"ID" not in (self.capabilities or {}):
            return defer.succeed(None)
        cmd = Command(b"ID", [extensions.id_command(fields)], kind="advisory")

        def done(cmd: Command, code: Optional[str]) -> Optional[dict[str, str]]:
            for keyword, tokens in cmd.untagged:
                if keyword == "ID":
                    return extensions.parse_id(tokens)
            return None

        cmd.on_ok = done
        return self._submit(cmd)

    def enable_utf8(self) -> defer.Deferred[bool]:
        """``ENABLE UTF8=ACCEPT`` (RFC 6855) when the server offers ``ENABLE``
        and ``UTF8=ACCEPT`` (or ``UTF8=ONLY``); call it after login, before
        a mailbox is opened. Fires with whether the server enabled it; a
        ``NO``/``BAD`` answer does not drop the connection.

        Once enabled, :meth:`list_folders` still returns modified UTF-7
        names (the spelling the folder cursors are stored under) and
        :meth:`examine_folder` sends them in UTF-8, so nothing above this
        class sees a difference in names.
        """
        caps = self.capabilities or {}
        utf8 = {bytes(v).upper() for v in (caps.get(b"UTF8") or [])}
        if b"ENABLE" not in caps or not utf8 & {b"ACCEPT", b"ONLY"}:
            return defer.succeed(False)
        cmd = Command(b"ENABLE", [b"ENABLE UTF8=ACCEPT"], kind="advisory")

        def done(cmd: Command, code: Optional[str]) -> bool:
            for keyword, tokens in cmd.untagged:
                if keyword == "ENABLED" and any(
                    isinstance(t, (str, bytes)) and as_text(t).upper() == "UTF8=ACCEPT"
                    for t in tokens
                ):
                    self.utf8_accept = True
            return self.utf8_accept

        cmd.on_ok = done
        return self._submit(cmd).addCallback(lambda result: bool(result))

    def maybe_compress(self, mode: str = COMPRESS_AUTO) -> defer.Deferred[bool]:
        """Start COMPRESS=DEFLATE (RFC 4978) after login when ``mode``
        (``IMAP_COMPRESS``) and the server allow it: ``off`` never, ``auto``
        only when offered and the server's address is not loopback or
        private, ``always`` whenever offered. Fires with whether the
        session is now compressed; a refusal keeps the session as it was.
        """
        if self._deflate is not None:
            return defer.succeed(True)
        if not offers_deflate(self.capabilities) or self.state not in ("auth", "selected"):
            return defer.succeed(False)
        if not worth_compressing(mode, peer_host_of(self.transport)):
            return defer.succeed(False)
        cmd = Command(b"COMPRESS", [b"COMPRESS DEFLATE"], kind="advisory")
        cmd.on_ok = lambda cmd, code: self._start_inflating(DeflateStreams())
        return self._submit(cmd).addCallback(lambda _: self._deflate is not None)

