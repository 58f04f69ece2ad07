"""The connection half of :class:`~imapsvc.imap.protocol.FolderIMAPClient`:
its state, the command queue, deadlines, the byte budget and writing.

Reading and dispatching the server's responses is in
:mod:`imapsvc.imap.reader`; the commands are in :mod:`imapsvc.imap.protocol`
and the ``*_commands`` modules beside it.
"""

from __future__ import annotations

from typing import Any, Callable, NoReturn, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.mail.imap4 import IMAP4Client
from twisted.python.failure import Failure

from imapsvc.imap import responses
from imapsvc.imap.compress import DeflateStreams
from imapsvc.imap.errors import CommandTimeout, ConnectionGone, ProtocolViolation

log = Logger()

#: A capability dict in Twisted's shape: ``{b"IDLE": None, b"AUTH": [b"XOAUTH2"]}``.
Caps = dict[bytes, Optional[list[bytes]]]

_MIB = 1024 * 1024


class Command:
    """One command in flight or queued.

    :ivar chunks: what to write: the first chunk follows the tag; every
        further chunk is written after a ``+`` continuation (synchronising
        literals).
    :ivar kind: how the answer is interpreted (``"auth"``, ``"idle"``, ...).
    """

    def __init__(self, name: bytes, chunks: list[bytes], kind: str = "plain") -> None:
        self.name = name
        self.chunks = chunks
        self.kind = kind
        self.defer: defer.Deferred[Any] = defer.Deferred()
        self.tag: Optional[bytes] = None
        self.untagged: list[tuple[str, Any]] = []
        self.fetches: dict[int, dict[str, Any]] = {}
        self.codes: list[tuple[str, Optional[str], str, str]] = []
        self.exists: Optional[int] = None
        self.deadline: Any = None
        self.on_continuation: Optional[Callable[[Command, bytes], None]] = None
        self.on_ok: Optional[Callable[[Command, Optional[str]], Any]] = None
        self.on_exists: Optional[Callable[[int], Any]] = None
        self.continuations = 0
        #: Bytes of untagged responses received for this command.
        self.received = 0
        #: Tokens built for this command's FETCH responses (kept until the
        #: tagged answer; each costs ~60 bytes however short on the wire).
        self.tokens = 0


class IMAPConnection(IMAP4Client):
    """The state, command queue and deadlines of one IMAP connection; the
    base of :class:`~imapsvc.imap.protocol.FolderIMAPClient`.

    :param clock: ``IReactorTime`` used for every deadline.
    :param command_timeout: seconds of silence after which an outstanding
        command (or a missing greeting) drops the connection.
    :param contextFactory: kept for ``IMAP4Client`` compatibility; TLS is
        started only by :meth:`start_tls` with an explicit creator.
    :param inactivity_timeout: seconds without any byte from the server
        after which the connection is dropped (``None``: off). Must exceed the
        server's keepalive interval (Dovecot: 2 minutes) and the IDLE
        re-issue interval for servers that send no keepalive.
    :param caps: :class:`~imapsvc.core.wire_caps.WireCaps` derived from the
        settings; ``None`` keeps the class defaults.
    :param budget: the process-wide :class:`~imapsvc.imap.budget.ByteBudget`
        (``None``: no budget). Over budget, reading pauses (backpressure);
        command deadlines and the watchdog are suspended while paused.

    :ivar greeted: fires with the capability dict after the greeting (a
        ``CAPABILITY`` is issued when the greeting carries none).
    :ivar capabilities: the latest capability dict (Twisted's shape:
        ``{b"IDLE": None, b"AUTH": [b"XOAUTH2"]}``) or ``None``.
    :ivar on_bye: ``callable(text)`` called once when the server says BYE
        outside LOGOUT; a normal reason to reconnect, not an error.
    :ivar idling: ``True`` between the server's ``+`` to IDLE and DONE
        (set by the IDLE command in :mod:`imapsvc.imap.protocol`).
    :ivar last_exists: the last ``* n EXISTS`` seen, whatever the command.
    """

    state: Optional[str] = None  # type: ignore[assignment]

    # A "* SEARCH" answer is one line: 1,000,000 UIDs of 7 digits are 8 MB.
    # Literals (message bodies) do not count against this; this bounds only
    # the memory a hostile or broken server can make us buffer for a line.
    MAX_LENGTH = 16 * _MIB
    #: Largest literal accepted; the engine fetches at most the raw-MIME cap
    #: (25 MiB) in one literal, anything far beyond that is an attack or a bug.
    max_literal_bytes = 64 * _MIB
    #: Largest response (its lines and all its literals): without it a
    #: server could chain literals under the cap into one endless response.
    #: The engine's largest legitimate response is one message's sections
    #: (at most the raw-MIME cap plus text parts), far below this.
    max_response_bytes = 128 * _MIB
    #: Largest total of untagged responses for one command: a server must
    #: not keep one command open with endless SEARCH/FETCH/OK lines. The
    #: engine's largest legitimate answer is a chunk of sections (a few MiB)
    #: or one message up to the raw-MIME cap.
    max_command_bytes = 256 * _MIB
    #: Most tokens the FETCH responses of one command may build: a metadata
    #: chunk of 100 messages needs a few hundred each; ``()`` repeated would
    #: otherwise turn a command's bytes into ~30x as much memory. Responses
    #: beyond it are salvaged without BODYSTRUCTURE (whole-message path, with
    #: its caps), which keeps only their literals and a few numbers.
    max_command_tokens = 4 * responses.MAX_TOKENS
    #: What one token is charged to the byte budget.
    TOKEN_COST = 64

    def __init__(
        self,
        clock: IReactorTime,
        command_timeout: float,
        contextFactory: Any = None,
        inactivity_timeout: Optional[float] = None,
        caps: Any = None,
        budget: Any = None,
    ) -> None:
        IMAP4Client.__init__(self, contextFactory)
        if caps is not None:
            self.MAX_LENGTH = caps.max_line
            self.max_literal_bytes = caps.max_literal
            self.max_response_bytes = caps.max_response
            self.max_command_bytes = caps.max_command
        self.budget = budget
        self.budget_paused = False
        self.clock = clock
        self.command_timeout = command_timeout
        self.inactivity_timeout = inactivity_timeout
        self.greeted: defer.Deferred[Caps] = defer.Deferred()
        self.capabilities: Optional[Caps] = None
        #: The login mechanism last used (``"password"``, ``"xoauth2"``,
        #: ``"oauthbearer"``), or ``None`` before a login.
        self.auth_mechanism: Optional[str] = None
        self.on_bye: Optional[Callable[[str], Any]] = None
        self.bye_text: Optional[str] = None
        self.idling = False
        self.last_exists: Optional[int] = None
        self._current: Optional[Command] = None
        self._waiting: list[Command] = []
        self._texts: Optional[list[bytes]] = None
        self._literals: list[bytes] = []
        self._literal_left = 0
        self._response_bytes = 0
        self._literal_chunks: list[bytes] = []
        self._closed = False
        self._tls_started = False
        self._logging_out = False
        self._greeting_deadline: Any = None
        #: Untagged status lines since the last tagged answer (MAX_STATUS_LINES).
        self._status_lines = 0
        self._watchdog: Any = None
        #: ``ENABLE UTF8=ACCEPT`` (RFC 6855) is in force: the server spells
        #: mailbox names in UTF-8 (see :meth:`enable_utf8`).
        self.utf8_accept = False
        #: COMPRESS=DEFLATE (RFC 4978) streams once the server accepted it.
        self._deflate: Optional[DeflateStreams] = None
        #: Inflating now (budget_resume may re-enter from the parse).
        self._inflating = False

    # -- connection lifecycle -------------------------------------------

    def connectionMade(self) -> None:
        self._greeting_deadline = self.clock.callLater(
            self.command_timeout, self._greeting_timed_out
        )
        if self.inactivity_timeout:
            self._watchdog = self.clock.callLater(self.inactivity_timeout, self._inactive)

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        was_closed = self._closed
        self._closed = True
        self.idling = False
        self._cancel_timers()
        self._forget_budget()
        if reason is None:
            reason = Failure(ConnectionGone("connection lost"))
        commands = self._take_all_commands()
        for cmd in commands:
            if cmd.kind == "logout":
                cmd.defer.callback(None)  # the server closing is LOGOUT's answer
            else:
                cmd.defer.errback(reason)
        if not self.greeted.called:
            self.greeted.errback(reason)
        if not was_closed:
            log.info("IMAP connection lost: {why}", why=reason.getErrorMessage())

    def _cancel_timers(self) -> None:
        for timer in (self._greeting_deadline, self._watchdog):
            if timer is not None and timer.active():
                timer.cancel()
        self._greeting_deadline = self._watchdog = None
        if self._current is not None:
            self._disarm(self._current)

    def _take_all_commands(self) -> list[Command]:
        commands = ([self._current] if self._current is not None else []) + self._waiting
        self._current = None
        self._waiting = []
        for cmd in commands:
            self._disarm(cmd)
        return commands

    def _drop(self, error: Exception, abort: bool = True) -> None:
        """Fail the outstanding command with ``error``, the queued ones with
        :class:`ConnectionGone`, and close the connection."""
        if self._closed:
            return
        self._closed = True
        self.idling = False
        self._cancel_timers()
        self._forget_budget()
        commands = self._take_all_commands()
        log.warn("Dropping IMAP connection: {error}", error=str(error))
        for index, cmd in enumerate(commands):
            if index == 0:
                cmd.defer.errback(Failure(error))
            else:
                cmd.defer.errback(Failure(ConnectionGone(f"connection dropped: {error}")))
        if not self.greeted.called:
            self.greeted.errback(Failure(error))
        transport: Any = self.transport
        if transport is not None:
            if abort and hasattr(transport, "abortConnection"):
                transport.abortConnection()
            else:
                transport.loseConnection()

    def _greeting_timed_out(self) -> None:
        self._greeting_deadline = None
        self._drop(CommandTimeout(f"no greeting within {self.command_timeout}s"))

    def _inactive(self) -> None:
        self._watchdog = None
        self._drop(CommandTimeout(f"no data from the server for {self.inactivity_timeout}s"))

    # -- the process-wide budget ------------------------------------------

    def _forget_budget(self) -> None:
        if self.budget is not None:
            self.budget.forget(self)
        self.budget_paused = False

    def budget_pause(self) -> None:
        """Called by the budget: stop reading until :meth:`budget_resume`."""
        if self._closed or self.budget_paused:
            return
        self.budget_paused = True
        transport: Any = self.transport
        if transport is not None:
            transport.pauseProducing()
        # Silence while paused is ours, not the server's: no deadline runs.
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        if self._current is not None:
            self._disarm(self._current)

    def budget_resume(self) -> None:
        """Called by the budget: read again, deadlines restart."""
        if not self.budget_paused:
            return
        self.budget_paused = False
        if self._closed:
            return
        transport: Any = self.transport
        if transport is not None:
            transport.resumeProducing()
        if self.inactivity_timeout and self._watchdog is None:
            self._watchdog = self.clock.callLater(self.inactivity_timeout, self._inactive)
        cmd = self._current
        if cmd is not None and not (cmd.kind == "idle" and self.idling):
            self._arm(cmd)

    def _release_budget(self) -> None:
        if self.budget is not None and self.budget.held(self):
            self.budget.release(self)

    # -- writing ----------------------------------------------------------

    def sendCommand(self, cmd: Any) -> NoReturn:
        """Twisted's command path is disabled: use the documented methods."""
        raise NotImplementedError("FolderIMAPClient supports only its own command methods")

    def _submit(self, cmd: Command) -> defer.Deferred[Any]:
        if self._closed:
            return defer.fail(ConnectionGone("connection is closed"))
        self._waiting.append(cmd)
        if self._current is None:
            self._send_next()
        return cmd.defer

    def _send_next(self) -> None:
        if self._current is not None or not self._waiting or self._closed:
            return
        cmd = self._waiting.pop(0)
        cmd.tag = self._next_tag()
        self._current = cmd
        if len(cmd.chunks) > 1 and cmd.on_continuation is None:
            cmd.on_continuation = self._send_next_chunk
        first, cmd.chunks = cmd.chunks[0], cmd.chunks[1:]
        self._arm(cmd)
        self._write(cmd.tag + b" " + first + b"\r\n")

    def _next_tag(self) -> bytes:
        """Tags as Twisted spells them (``0001``, ``0002``, ...)."""
        tag = b"%04X" % self.tagID
        self.tagID += 1
        return tag

    def _send_next_chunk(self, cmd: Command, text: bytes) -> None:
        if not cmd.chunks:
            self._drop(ProtocolViolation("continuation request with nothing left to send"))
            return
        chunk, cmd.chunks = cmd.chunks[0], cmd.chunks[1:]
        self._write(chunk + b"\r\n")

    def _write(self, data: bytes) -> None:
        transport: Any = self.transport
        if self._deflate is not None:
            data = self._deflate.compress(data)
        transport.write(data)

    @property
    def compressing(self) -> bool:
        """COMPRESS=DEFLATE is in force (both directions)."""
        return self._deflate is not None

    def _arm(self, cmd: Command) -> None:
        self._disarm(cmd)
        cmd.deadline = self.clock.callLater(self.command_timeout, self._timed_out, cmd)

    def _disarm(self, cmd: Command) -> None:
        if cmd.deadline is not None and cmd.deadline.active():
            cmd.deadline.cancel()
        cmd.deadline = None

    def _timed_out(self, cmd: Command) -> None:
        cmd.deadline = None
        if cmd is self._current:
            self._drop(
                CommandTimeout(
                    f"{cmd.name.decode('ascii')} got no answer within {self.command_timeout}s"
                )
            )

    def _arguments(self, prefix: bytes, values: list[bytes]) -> list[bytes]:
        """Chunks for ``prefix`` followed by string arguments: quoted when
        possible, else a literal (non-synchronising with LITERAL+)."""
        caps = self.capabilities or {}
        chunks: list[bytes] = []
        current = prefix
        for value in values:
            if not responses.needs_literal(value):
                current += b" " + responses.quote(value)
            elif b"LITERAL+" in caps:
                current += b" {%d+}\r\n" % len(value) + value
            else:
                chunks.append(current + b" {%d}" % len(value))
                current = value
        chunks.append(current)
        return chunks

    # -- commands valid in any state (RFC 3501 6.1) ------------------------

    def capability(self) -> defer.Deferred[Caps]:
        """``CAPABILITY``; fires with the new capability dict."""
        cmd = Command(b"CAPABILITY", [b"CAPABILITY"])
        cmd.on_ok = lambda cmd, code: self.capabilities or {}
        return self._submit(cmd)

    def noop(self) -> defer.Deferred[Optional[int]]:
        """``NOOP``; fires with the last EXISTS count seen during it (or None)."""
        cmd = Command(b"NOOP", [b"NOOP"])
        cmd.on_ok = lambda cmd, code: cmd.exists
        return self._submit(cmd)

    def logout(self) -> defer.Deferred[None]:
        """``LOGOUT``, then close. The server's BYE does not call
        :attr:`on_bye`."""
        self._logging_out = True
        cmd = Command(b"LOGOUT", [b"LOGOUT"], kind="logout")

        def close(cmd: Command, code: Optional[str]) -> None:
            transport: Any = self.transport
            transport.loseConnection()

        cmd.on_ok = close
        return self._submit(cmd)
