"""The IMAP client protocol the folder engine drives.

:class:`FolderIMAPClient` subclasses :class:`twisted.mail.imap4.IMAP4Client`
but replaces its response reader and command machinery, because the
inherited ones have defects that lose data or hang: results keyed by
sequence number, bodies decoded as text, 16 KiB line limit, a literal at
the end of a line eats the line end, an empty line raises, no client IDLE,
XOAUTH2 wrapped at 76 columns, ``login()`` falling back to cleartext, no
per-command deadline.

Only the methods documented here are supported; the inherited command
methods (``select``, ``fetchSpecific``, ...) are disabled.

Rules every method follows:

- commands go out one at a time, in submission order; a command submitted
  while another (e.g. IDLE) is outstanding goes out after its tagged answer;
- a command that gets NO/BAD, no answer within ``command_timeout`` seconds
  of silence, or a response we cannot parse, fails its Deferred and drops the
  connection (the folder engine reconnects); the other queued commands
  fail with :class:`~imapsvc.imap.errors.ConnectionGone`;
- secrets (passwords, tokens) are never logged nor put in exceptions.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.logger import Logger
from twisted.mail.imap4 import IMAP4Client
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsvc.core.auth import OAUTH_MECHANISMS, choose_oauth_mechanism, is_refusal
from imapsvc.core.cursor import is_imap_date
from imapsvc.core.folders import decode_mutf7, encode_mutf7
from imapsvc.imap import extensions, responses
from imapsvc.imap.errors import (
    AuthenticationFailed,
    AuthenticationUnavailable,
    CleartextRefused,
    CommandFailed,
    CommandTimeout,
    ConnectionGone,
    IMAPError,
    MechanismUnsupported,
    ProtocolViolation,
    Throttled,
    TLSRequired,
)
from imapsvc.imap.responses import ResponseParseError
from imapsvc.interfaces import IIMAPSession

#: Untagged OK/NO/BAD lines one command (or one IDLE) may see. Dovecot says
#: "Still here" every 2 minutes while idling, and the IDLE is re-issued every
#: few minutes: a thousand is only reached by a server flooding the session.
MAX_STATUS_LINES = 1000
log = Logger()

Caps = dict[bytes, Optional[list[bytes]]]

_MIB = 1024 * 1024


class _Command:
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
        self.defer: defer.Deferred = defer.Deferred()
        self.tag: Optional[bytes] = None
        self.untagged: list[tuple[str, Any]] = []
        self.fetches: dict[int, dict[str, Any]] = {}
        self.codes: list[tuple[str, Optional[str], str, str]] = []
        self.exists: Optional[int] = None
        self.deadline: Any = None
        self.on_continuation: Optional[Callable[[_Command, bytes], None]] = None
        self.on_ok: Optional[Callable[[_Command, Optional[str]], Any]] = None
        self.on_exists: Optional[Callable[[int], Any]] = None
        self.continuations = 0
        #: Bytes of untagged responses received for this command.
        self.received = 0
        #: Tokens built for this command's FETCH responses (kept until the
        #: tagged answer; each costs ~60 bytes however short on the wire).
        self.tokens = 0


@implementer(IIMAPSession)
class FolderIMAPClient(IMAP4Client):
    """IMAP client for one folder connection.

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
    :ivar idling: ``True`` between the server's ``+`` to IDLE and DONE.
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
        clock,
        command_timeout: float,
        contextFactory=None,
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
        self.greeted: defer.Deferred = defer.Deferred()
        self.capabilities: Optional[Caps] = None
        #: The login mechanism last used (``"password"``, ``"xoauth2"``,
        #: ``"oauthbearer"``), or ``None`` before a login.
        self.auth_mechanism: Optional[str] = None
        self.on_bye: Optional[Callable[[str], Any]] = None
        self.bye_text: Optional[str] = None
        self.idling = False
        self.last_exists: Optional[int] = None
        self._current: Optional[_Command] = None
        self._waiting: list[_Command] = []
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
        self._idle_cmd: Optional[_Command] = None
        #: ``ENABLE UTF8=ACCEPT`` (RFC 6855) is in force: the server spells
        #: mailbox names in UTF-8 (see :meth:`enable_utf8`).
        self.utf8_accept = False
        self._idle_done_requested = False
        self._idle_done_sent = False

    # -- connection lifecycle -------------------------------------------

    def connectionMade(self) -> None:
        self._greeting_deadline = self.clock.callLater(
            self.command_timeout, self._greeting_timed_out
        )
        if self.inactivity_timeout:
            self._watchdog = self.clock.callLater(self.inactivity_timeout, self._inactive)

    def connectionLost(self, reason=None) -> None:
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

    def _take_all_commands(self) -> list[_Command]:
        commands = ([self._current] if self._current is not None else []) + self._waiting
        self._current = None
        self._waiting = []
        self._idle_cmd = None
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

    # -- reading ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        if self.budget is not None:
            # Charged before parsing: what this read brings is in memory now.
            self.budget.charge(self, len(data))
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(self.inactivity_timeout)
        current = self._current
        # The deadline measures silence: a large literal still arriving is
        # progress, not a hang.
        if current is not None and current.deadline is not None and current.deadline.active():
            current.deadline.reset(self.command_timeout)
        IMAP4Client.dataReceived(self, data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._drop(ProtocolViolation(f"server line longer than {self.MAX_LENGTH} bytes"))

    def lineReceived(self, line: bytes) -> None:
        if self._closed:
            return
        if self._texts is None:
            if not line:
                # Some servers send stray empty lines; Twisted raises on them.
                log.debug("Ignoring an empty line from the IMAP server")
                return
            self._texts = [line]
            self._response_bytes = 0
            self._literals = []
        else:
            # The rest of a line after a literal; may be empty when the
            # literal was the line's last token.
            self._texts.append(line)
        try:
            size = responses.literal_size(line)
        except ValueError:
            # More digits than int() accepts: no literal we would take anyway.
            self._drop(ProtocolViolation("literal size too large to read"))
            return
        if size is not None:
            self._response_bytes += len(line) + size
            if size > self.max_literal_bytes:
                self._drop(ProtocolViolation(f"literal of {size} bytes exceeds the limit"))
                return
            if self._response_bytes > self.max_response_bytes:
                self._drop(ProtocolViolation("response exceeds the size limit"))
                return
            if size == 0:
                self._literals.append(b"")
                return
            self._literal_left = size
            self._literal_chunks = []
            self.setRawMode()
            return
        texts, literals = self._texts, self._literals
        self._texts, self._literals = None, []
        before = self._current
        self._dispatch(texts, literals)
        if self.budget is not None and not self._closed:
            cmd = self._current
            # Bytes stay charged while a command collects its answer; IDLE
            # and unsolicited responses keep nothing once handled.
            if cmd is None or cmd is not before or cmd.kind == "idle":
                self._release_budget()

    def rawDataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        take = data[: self._literal_left]
        rest = data[len(take) :]
        self._literal_chunks.append(take)
        self._literal_left -= len(take)
        if self._literal_left == 0:
            self._literals.append(b"".join(self._literal_chunks))
            self._literal_chunks = []
            # Unlike Twisted we keep the bytes after the literal as they are:
            # a CRLF right there ends the response.
            self.setLineMode(rest)

    def _dispatch(self, texts: list[bytes], literals: list[bytes]) -> None:
        tag, _, first = texts[0].partition(b" ")
        texts = [first] + texts[1:]
        try:
            if tag == b"+":
                self._on_continuation(texts[0])
            elif tag == b"*":
                cmd = self._current
                if cmd is not None:
                    cmd.received += sum(map(len, texts)) + sum(map(len, literals))
                    if cmd.received > self.max_command_bytes:
                        self._drop(ProtocolViolation("command answer exceeds the size limit"))
                        return
                self._on_untagged(texts, literals)
            else:
                self._on_tagged(tag, texts, literals)
        except ValueError as exc:
            # ResponseParseError, and int()/decode errors on hostile input
            # (e.g. a 5000-digit number): the stream cannot be trusted.
            self._drop(ProtocolViolation(f"unparseable server response: {str(exc)[:200]}"))

    # -- responses --------------------------------------------------------

    def _on_continuation(self, text: bytes) -> None:
        cmd = self._current
        if cmd is None or cmd.on_continuation is None:
            self._drop(ProtocolViolation("unexpected continuation request"))
            return
        cmd.continuations += 1
        cmd.on_continuation(cmd, text)

    def _on_untagged(self, texts: list[bytes], literals: list[bytes]) -> None:
        head = texts[0]
        cmd = self._current
        status = responses.parse_status(head) if not literals else None
        if status is not None:
            kind, code, args, text = status
            if self.state is None:
                self._on_greeting(kind, code, args, text)
                return
            if kind == "BYE":
                self._on_bye(text)
                return
            # Untagged OK/NO/BAD cost a parse each and tell us nothing new
            # after the first few: a server repeating them without end (a
            # flood, whatever else it answers) would hold a share of the
            # reactor for as long as the session lasts.
            self._status_lines += 1
            if self._status_lines > MAX_STATUS_LINES:
                self._drop(ProtocolViolation(
                    f"more than {MAX_STATUS_LINES} untagged status lines in one command"))
                return
            if code == "CAPABILITY":
                self.capabilities = responses.parse_capabilities(args.split())
            if cmd is not None and cmd.kind != "idle":
                cmd.codes.append(status)
            elif cmd is not None and kind in ("NO", "BAD"):
                # A warning during IDLE (Dovecot: the selected folder was
                # deleted) is never repeated: leave IDLE so the caller looks
                # at the folder again instead of waiting for the restart.
                log.info("untagged {kind} during IDLE: leaving IDLE", kind=kind)
                self.done()
            return
        word, _, rest = head.partition(b" ")
        if word.isdigit():
            number = _number(word)
            what, _, data = rest.partition(b" ")
            what = what.upper()
            if what == b"EXISTS":
                self.last_exists = number
                if cmd is not None:
                    cmd.exists = number
                    if cmd.on_exists is not None:
                        try:
                            cmd.on_exists(number)
                        except Exception:
                            log.failure("on_exists callback failed")
            elif what == b"FETCH" and cmd is not None and cmd.kind == "fetch":
                self._on_fetch(cmd, number, [data] + texts[1:], literals)
            return
        keyword = word.upper().decode("latin-1")
        if keyword == "SEARCH":
            if cmd is not None and not literals:
                cmd.untagged.append((keyword, responses.parse_search(rest)))
        elif keyword == "CAPABILITY":
            caps = responses.parse_capabilities(rest.decode("latin-1").split())
            self.capabilities = caps
            if cmd is not None:
                cmd.untagged.append((keyword, caps))
        elif keyword in ("LIST", "FLAGS", "ID", "ENABLED") and cmd is not None:
            tokens = responses.tokenize(texts, literals)
            cmd.untagged.append((keyword, tokens[1:]))

    def _on_fetch(self, cmd: _Command, seq: int, texts: list[bytes], literals: list[bytes]):
        try:
            left = max(0, self.max_command_tokens - cmd.tokens)
            tokens, count = responses.tokenize_counted(
                texts, literals, min(responses.MAX_TOKENS, left)
            )
            cmd.tokens += count
            if self.budget is not None:
                self.budget.charge(self, count * self.TOKEN_COST)
            if len(tokens) != 1 or not isinstance(tokens[0], list):
                raise ResponseParseError("FETCH data is not one list")
            pairs = responses.fetch_pairs(tokens[0])
        except ResponseParseError as exc:
            # One odd message (e.g. a broken BODYSTRUCTURE) must not make the
            # whole folder unreadable: keep what can be recovered, mark it.
            log.warn("Unparseable FETCH response for seq {seq}: {error}", seq=seq, error=exc)
            pairs = responses.salvage_fetch(texts, literals)
        cmd.fetches.setdefault(seq, {}).update(pairs)

    def _on_greeting(self, kind: str, code: Optional[str], args: str, text: str) -> None:
        if self._greeting_deadline is not None and self._greeting_deadline.active():
            self._greeting_deadline.cancel()
        self._greeting_deadline = None
        if kind == "OK":
            self.state = "unauth"
        elif kind == "PREAUTH":
            self.state = "auth"
        else:
            self.bye_text = text
            self._drop(IMAPError(f"server refused the connection: {kind} {text}"), abort=False)
            return
        caps = responses.parse_capabilities(args.split()) if code == "CAPABILITY" else None
        if caps is not None:
            self.capabilities = caps
        self.serverGreeting(caps)

    def serverGreeting(self, caps) -> None:
        """Fire :attr:`greeted`, asking for CAPABILITY first when the greeting
        carried none."""
        if caps is not None:
            self.greeted.callback(caps)
            return
        d = self.capability()
        d.addCallbacks(self._greeted_ok, self._greeted_failed)

    def _greeted_ok(self, caps: Caps) -> None:
        if not self.greeted.called:
            self.greeted.callback(caps)

    def _greeted_failed(self, failure: Failure) -> None:
        if not self.greeted.called:
            self.greeted.errback(failure)

    def _on_bye(self, text: str) -> None:
        self.bye_text = text
        if self._logging_out:
            return
        log.info("IMAP server said BYE: {text}", text=text)
        if self.on_bye is not None:
            try:
                self.on_bye(text)
            except Exception:
                log.failure("on_bye callback failed")

    def _on_tagged(self, tag: bytes, texts: list[bytes], literals: list[bytes]) -> None:
        cmd = self._current
        if cmd is None or tag != cmd.tag:
            self._drop(ProtocolViolation(f"answer with unknown tag {tag[:20]!r}"))
            return
        status = responses.parse_status(b"".join(texts) if not literals else texts[0])
        if status is None:
            self._drop(ProtocolViolation(f"bad tagged answer to {cmd.name!r}"))
            return
        kind, code, args, text = status
        self._status_lines = 0
        self._disarm(cmd)
        if code == "CAPABILITY":
            self.capabilities = responses.parse_capabilities(args.split())
        if kind != "OK" and cmd.kind == "advisory":
            # An advisory command (ID) refused is no reason to drop the session.
            log.info(
                "{name} refused by the server: {kind} {text}",
                name=cmd.name.decode("ascii"),
                kind=kind,
                text=text[:200],
            )
            self._current = None
            self._send_next()
            cmd.defer.callback(None)
            return
        if kind != "OK" and cmd.kind == "soft":
            # A refused write-back (target folder missing, quota, ...) is the
            # caller's to record; the session itself is fine.
            self._current = None
            self._send_next()
            cmd.defer.errback(self._error_for(cmd, kind, code, text))
            return
        if kind != "OK":
            self._drop(self._error_for(cmd, kind, code, text), abort=False)
            return
        try:
            result = cmd.on_ok(cmd, code) if cmd.on_ok is not None else None
        except IMAPError as exc:
            self._drop(exc)
            return
        if self._closed:
            return
        self._current = None
        self._send_next()
        cmd.defer.callback(result)

    def _error_for(self, cmd: _Command, kind: str, code: Optional[str], text: str) -> Exception:
        throttled, delay = responses.throttle_delay(code, text)
        if throttled:
            return Throttled(delay, text)
        if cmd.kind == "auth":
            if is_refusal(kind, code):
                return AuthenticationFailed(code, text)
            return AuthenticationUnavailable(code, text, kind)
        return CommandFailed(code, f"{cmd.name.decode('ascii')} {kind}: {text}")

    # -- writing ----------------------------------------------------------

    def sendCommand(self, cmd):
        """Twisted's command path is disabled: use the documented methods."""
        raise NotImplementedError("FolderIMAPClient supports only its own command methods")

    def _submit(self, cmd: _Command) -> defer.Deferred:
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
        cmd.tag = self.makeTag()
        self._current = cmd
        if len(cmd.chunks) > 1 and cmd.on_continuation is None:
            cmd.on_continuation = self._send_next_chunk
        first, cmd.chunks = cmd.chunks[0], cmd.chunks[1:]
        self._arm(cmd)
        self._write(cmd.tag + b" " + first + b"\r\n")

    def _send_next_chunk(self, cmd: _Command, text: bytes) -> None:
        if not cmd.chunks:
            self._drop(ProtocolViolation("continuation request with nothing left to send"))
            return
        chunk, cmd.chunks = cmd.chunks[0], cmd.chunks[1:]
        self._write(chunk + b"\r\n")

    def _write(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data)

    def _arm(self, cmd: _Command) -> None:
        self._disarm(cmd)
        cmd.deadline = self.clock.callLater(self.command_timeout, self._timed_out, cmd)

    def _disarm(self, cmd: _Command) -> None:
        if cmd.deadline is not None and cmd.deadline.active():
            cmd.deadline.cancel()
        cmd.deadline = None

    def _timed_out(self, cmd: _Command) -> None:
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

    # -- commands ---------------------------------------------------------

    def capability(self) -> defer.Deferred:
        """``CAPABILITY``; fires with the new capability dict."""
        cmd = _Command(b"CAPABILITY", [b"CAPABILITY"])
        cmd.on_ok = lambda cmd, code: self.capabilities or {}
        return self._submit(cmd)

    def noop(self) -> defer.Deferred:
        """``NOOP``; fires with the last EXISTS count seen during it (or None)."""
        cmd = _Command(b"NOOP", [b"NOOP"])
        cmd.on_ok = lambda cmd, code: cmd.exists
        return self._submit(cmd)

    def logout(self) -> defer.Deferred:
        """``LOGOUT``, then close. The server's BYE does not call
        :attr:`on_bye`."""
        self._logging_out = True
        cmd = _Command(b"LOGOUT", [b"LOGOUT"], kind="logout")

        def close(cmd, code):
            self.transport.loseConnection()

        cmd.on_ok = close
        return self._submit(cmd)

    def _is_tls(self) -> bool:
        return self._tls_started or ISSLTransport.providedBy(self.transport)

    def start_tls(self, context_factory) -> defer.Deferred:
        """``STARTTLS`` with ``context_factory`` (a verifying
        ``IOpenSSLClientConnectionCreator``), then ``CAPABILITY`` over TLS.

        Fails with :class:`TLSRequired` (nothing sent, connection closed) when
        the server does not offer STARTTLS; bytes received after the tagged OK
        and before the handshake (an injection attempt) drop the connection.
        """
        if self._is_tls():
            return defer.fail(IMAPError("the connection already uses TLS"))
        d = defer.succeed(self.capabilities) if self.capabilities else self.capability()

        def upgrade(caps: Caps) -> defer.Deferred:
            if b"STARTTLS" not in caps:
                error = TLSRequired("server does not offer STARTTLS")
            elif ITLSTransport(self.transport, None) is None:
                error = TLSRequired("transport cannot start TLS")
            else:
                cmd = _Command(b"STARTTLS", [b"STARTTLS"], kind="starttls")
                cmd.on_ok = lambda cmd, code: self._begin_tls(context_factory)
                return self._submit(cmd)
            self._drop(error, abort=False)
            raise error

        d.addCallback(upgrade)
        d.addCallback(lambda _: self.capability())
        d.addCallback(lambda _: None)
        return d

    def _begin_tls(self, context_factory) -> None:
        if self._buffer or self._texts is not None:
            raise ProtocolViolation("data received after STARTTLS before the TLS handshake")
        # Whatever was said in cleartext may have been forged.
        self.capabilities = None
        transport: Any = self.transport
        transport.startTLS(context_factory)
        self._tls_started = True

    def authenticate_with(
        self,
        credentials,
        oauth_mechanism: Optional[str] = None,
        host: Optional[str] = None,
        port: Optional[int] = None,
    ) -> defer.Deferred:
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
            cmd = _Command(b"LOGIN", chunks, kind="auth")
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

    def _logged_in(self, cmd: _Command, code: Optional[str]) -> bool:
        self.state = "auth"
        return code == "CAPABILITY"

    def _sasl_command(
        self,
        mechanism: str,
        username: str,
        token: str,
        host: Optional[str] = None,
        port: Optional[int] = None,
    ) -> Optional[_Command]:
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
            cmd = _Command(b"AUTHENTICATE", [b"AUTHENTICATE " + name + b" " + initial], "auth")
            initial_sent = True
        else:
            cmd = _Command(b"AUTHENTICATE", [b"AUTHENTICATE " + name], "auth")
            initial_sent = False

        def on_continuation(cmd: _Command, text: bytes) -> None:
            if not initial_sent and cmd.continuations == 1:
                self._write(initial + b"\r\n")
            elif cmd.continuations <= (1 if initial_sent else 2):
                self._write(error_answer + b"\r\n")
            else:
                self._write(b"*\r\n")  # cancel; the server answers BAD/NO

        cmd.on_continuation = on_continuation
        return cmd

    def send_id(self, fields: Sequence[tuple[str, str]]) -> defer.Deferred:
        """``ID`` (RFC 2971) with ``fields`` when the server offers ``ID``
        (nothing is sent otherwise); fires with the server's ID dict, or
        ``None`` (not offered, ``NIL``, or refused: ``NO``/``BAD`` does not
        drop the connection). See :mod:`imapsvc.imap.extensions`."""
        if b"ID" not in (self.capabilities or {}):
            return defer.succeed(None)
        cmd = _Command(b"ID", [extensions.id_command(fields)], kind="advisory")

        def done(cmd: _Command, code: Optional[str]) -> Optional[dict[str, str]]:
            for keyword, tokens in cmd.untagged:
                if keyword == "ID":
                    return extensions.parse_id(tokens)
            return None

        cmd.on_ok = done
        return self._submit(cmd)

    def enable_utf8(self) -> defer.Deferred:
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
        cmd = _Command(b"ENABLE", [b"ENABLE UTF8=ACCEPT"], kind="advisory")

        def done(cmd: _Command, code: Optional[str]) -> bool:
            for keyword, tokens in cmd.untagged:
                if keyword == "ENABLED" and any(
                    isinstance(t, (str, bytes)) and _text(t).upper() == "UTF8=ACCEPT"
                    for t in tokens
                ):
                    self.utf8_accept = True
            return self.utf8_accept

        cmd.on_ok = done
        d = self._submit(cmd)
        d.addCallback(lambda result: bool(result))
        return d

    def list_folders(self) -> defer.Deferred:
        """``LIST "" "*"`` -> ``[(flags, delimiter, name)]``, names as the
        server spells them (modified UTF-7)."""
        cmd = _Command(b"LIST", [b'LIST "" "*"'])

        def done(cmd, code):
            out = []
            for keyword, tokens in cmd.untagged:
                if keyword != "LIST" or len(tokens) < 3:
                    continue
                flags, delimiter, name = tokens[0], tokens[1], tokens[2]
                out.append(
                    (
                        tuple(str(flag) for flag in (flags or ()) if isinstance(flag, str)),
                        None if delimiter is None else _text(delimiter),
                        # UTF8=ACCEPT: back to the modified UTF-7 spelling.
                        encode_mutf7(_text(name)) if self.utf8_accept else _text(name),
                    )
                )
            return out

        cmd.on_ok = done
        return self._submit(cmd)

    def examine_folder(self, name: str) -> defer.Deferred:
        """``EXAMINE name`` (read-only) -> ``{"uidvalidity", "uidnext",
        "exists", "read_only"}``; ``uidnext`` is ``None`` when the server
        gives none."""
        return self._open_folder(b"EXAMINE", name)

    # -- write-back (issue 13 item 3; only after the batch is committed) -----

    def select_folder(self, name: str) -> defer.Deferred:
        """``SELECT name`` (read-write, for write-back) -> the same dict as
        :meth:`examine_folder`; ``read_only`` is true unless the server
        answered ``[READ-WRITE]``."""
        return self._open_folder(b"SELECT", name)

    def _open_folder(self, verb: bytes, name: str) -> defer.Deferred:
        """EXAMINE or SELECT ``name``: the answer's UIDVALIDITY, UIDNEXT and
        EXISTS, and whether the server granted write access."""
        cmd = _Command(verb, self._arguments(verb, [self._wire_name(name)]))
        what = verb.decode("ascii")

        def done(cmd, code):
            found: dict[str, Optional[int]] = {"uidvalidity": None, "uidnext": None}
            for _kind, resp_code, args, _text in cmd.codes:
                key = (resp_code or "").lower()
                if key in found:
                    try:
                        found[key] = int(args.split()[0])
                    except (ValueError, IndexError):
                        raise ProtocolViolation(f"bad {resp_code} in {what} answer") from None
            if found["uidvalidity"] is None:
                raise ProtocolViolation(f"{what} answer without UIDVALIDITY")
            self.state = "selected"
            return {
                "uidvalidity": found["uidvalidity"],
                "uidnext": found["uidnext"],
                "exists": cmd.exists or 0,
                "read_only": code != "READ-WRITE",
            }

        cmd.on_ok = done
        return self._submit(cmd)

    def uid_store_flags(self, uids: Sequence[int], flags: Sequence[str]) -> defer.Deferred:
        """``UID STORE uids +FLAGS.SILENT (flags)``; fires with ``None``. A
        ``NO`` fails the Deferred with CommandFailed and keeps the session."""
        for flag in flags:
            if not flag or any(c in flag for c in ' ()"{\r\n') or not flag.isascii():
                return defer.fail(ValueError(f"unusable flag {flag!r}"))
        line = (
            b"UID STORE " + responses.uid_set(uids) + b" +FLAGS.SILENT ("
            + " ".join(flags).encode("ascii") + b")"
        )
        return self._submit(_Command(b"UID STORE", [line], "soft"))

    def uid_move(self, uids: Sequence[int], folder: str) -> defer.Deferred:
        """``UID MOVE uids folder`` (RFC 6851); fires with ``None``."""
        prefix = b"UID MOVE " + responses.uid_set(uids)
        chunks = self._arguments(prefix, [self._wire_name(folder)])
        return self._submit(_Command(b"UID MOVE", chunks, "soft"))

    def uid_copy(self, uids: Sequence[int], folder: str) -> defer.Deferred:
        """``UID COPY uids folder``; fires with ``None``."""
        prefix = b"UID COPY " + responses.uid_set(uids)
        chunks = self._arguments(prefix, [self._wire_name(folder)])
        return self._submit(_Command(b"UID COPY", chunks, "soft"))

    def uid_expunge(self, uids: Sequence[int]) -> defer.Deferred:
        """``UID EXPUNGE uids`` (RFC 4315, UIDPLUS): removes only these
        UIDs' ``\\Deleted`` messages; fires with ``None``."""
        line = b"UID EXPUNGE " + responses.uid_set(uids)
        return self._submit(_Command(b"UID EXPUNGE", [line], "soft"))

    def _wire_name(self, name: str) -> bytes:
        """A mailbox name (modified UTF-7) as this session sends it: in
        UTF-8 once UTF8=ACCEPT is enabled (RFC 6855 section 3)."""
        if self.utf8_accept:
            try:
                name = decode_mutf7(name)
            except ValueError:
                pass
        return name.encode("utf-8")

    def uid_search_from(self, first_uid: int) -> defer.Deferred:
        """``UID SEARCH UID first:*`` -> sorted UIDs ``>= first_uid`` (the
        range always matches the highest UID, even below ``first_uid``), as
        a :class:`~imapsvc.imap.responses.UidArray` (8 bytes per UID; it
        compares, slices and iterates like a list of ints)."""
        first_uid = max(1, int(first_uid))
        cmd = _Command(b"UID SEARCH", [b"UID SEARCH UID %d:*" % first_uid])

        def done(cmd, code):
            # Numbers stay in an array('Q') (8 bytes each): a SEARCH of a
            # million UIDs must not become a million Python ints and a set.
            found = [numbers for keyword, numbers in cmd.untagged if keyword == "SEARCH"]
            if len(found) == 1:
                return responses.sorted_unique_from(found[0], first_uid)
            joined = responses.UidArray()
            for numbers in found:
                joined.extend(numbers)
            return responses.sorted_unique_from(joined, first_uid)

        cmd.on_ok = done
        return self._submit(cmd)

    def uid_search_since(self, since: str) -> defer.Deferred:
        """``UID SEARCH SINCE <date>`` -> sorted UIDs whose INTERNALDATE is on
        or after ``since`` (RFC 3501 ``date``, ``1-Jan-2026``; the server
        disregards time and zone). For a first sync by date and a backfill."""
        text = str(since)
        if not is_imap_date(text):
            # Only a plain atom may reach the command line.
            return defer.fail(ValueError(f"not an RFC 3501 date: {text[:40]!r}"))
        cmd = _Command(b"UID SEARCH", [b"UID SEARCH SINCE " + text.encode("ascii")])

        def done(cmd, code):
            uids: set[int] = set()
            for keyword, numbers in cmd.untagged:
                if keyword == "SEARCH":
                    uids.update(numbers)
            return sorted(uids)

        cmd.on_ok = done
        return self._submit(cmd)

    def _uid_fetch(self, uids, items: bytes) -> defer.Deferred:
        cmd = _Command(
            b"UID FETCH", [b"UID FETCH " + responses.uid_set(uids) + b" " + items], "fetch"
        )
        wanted = {int(uid) for uid in uids}

        def done(cmd, code):
            by_uid: dict[int, dict[str, Any]] = {}
            for pairs in cmd.fetches.values():
                try:
                    uid = int(pairs.get("UID"))  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    continue  # an unsolicited FETCH (flags) without UID
                if uid in wanted:
                    by_uid.setdefault(uid, {}).update(pairs)
            return by_uid

        cmd.on_ok = done
        return self._submit(cmd)

    def fetch_meta(self, uids) -> defer.Deferred:
        """Size, INTERNALDATE, BODYSTRUCTURE and exact header bytes, keyed by
        UID: ``{uid: {"size", "internaldate", "bodystructure", "header"}}``.
        ``bodystructure`` is a nested list of ``str``/``None`` or ``None``."""
        d = self._uid_fetch(
            uids, b"(UID RFC822.SIZE INTERNALDATE BODYSTRUCTURE BODY.PEEK[HEADER])"
        )

        def shape(by_uid):
            out = {}
            for uid, pairs in by_uid.items():
                sections = _sections(pairs)
                size = pairs.get("RFC822.SIZE")
                date = pairs.get("INTERNALDATE")
                structure = pairs.get("BODYSTRUCTURE")
                out[uid] = {
                    "size": _size(size),
                    "internaldate": _text(date) if isinstance(date, (bytes, str)) else None,
                    "bodystructure": responses.to_text_tree(structure)
                    if isinstance(structure, list)
                    else None,
                    "header": sections.get(("HEADER", None), b""),
                }
            return out

        d.addCallback(shape)
        return d

    def fetch_sections(self, requests) -> defer.Deferred:
        """``BODY.PEEK[section]`` (``<0.N>`` when a length is given) for each
        UID -> ``{uid: {section: exact bytes}}``. UIDs that ask for the same
        sections share one command."""
        groups: dict[tuple, list[int]] = {}
        for uid, wanted in requests.items():
            key = tuple((str(section), length) for section, length in wanted)
            if key:
                groups.setdefault(key, []).append(int(uid))
        results: dict[int, dict[str, bytes]] = {}
        d: defer.Deferred = defer.succeed(None)
        for key, uids in groups.items():
            d.addCallback(self._next_group, key, uids, results)
        d.addCallback(lambda _: results)
        return d

    def _next_group(self, _ignored, key, uids, results) -> defer.Deferred:
        return self._fetch_group(key, uids, results)

    def _fetch_group(self, key, uids, results) -> defer.Deferred:
        items = [b"UID"]
        for section, length in key:
            item = b"BODY.PEEK[" + section.encode("ascii") + b"]"
            if length is not None:
                item += b"<0.%d>" % int(length)
            items.append(item)
        d = self._uid_fetch(uids, b"(" + b" ".join(items) + b")")

        def collect(by_uid):
            for uid, pairs in by_uid.items():
                sections = _sections(pairs)
                got = results.setdefault(uid, {})
                for section, length in key:
                    origin = None if length is None else 0
                    value = sections.get((section.upper(), origin))
                    if value is None and origin is not None:
                        # Some servers omit <0> when the part is shorter.
                        value = sections.get((section.upper(), None))
                    if value is not None:
                        got[section] = value

        d.addCallback(collect)
        return d

    def fetch_full(self, uids) -> defer.Deferred:
        """``BODY.PEEK[]`` -> ``{uid: exact message bytes}``."""
        d = self._uid_fetch(uids, b"(UID BODY.PEEK[])")

        def shape(by_uid):
            out = {}
            for uid, pairs in by_uid.items():
                body = _sections(pairs).get(("", None))
                if body is not None:
                    out[uid] = body
            return out

        d.addCallback(shape)
        return d

    def idle(self, on_exists: Callable[[int], Any]) -> defer.Deferred:
        """``IDLE`` (RFC 2177): ``on_exists(n)`` for every ``* n EXISTS``;
        fires when the server ends the command (after :meth:`done`)."""
        cmd = _Command(b"IDLE", [b"IDLE"], kind="idle")
        cmd.on_exists = on_exists
        cmd.on_continuation = self._idle_started

        def finished(cmd, code):
            if self._idle_cmd is cmd:
                self._idle_cmd = None
            self.idling = False
            return None

        cmd.on_ok = finished
        self._idle_cmd = cmd
        self._idle_done_requested = False
        self._idle_done_sent = False
        return self._submit(cmd)

    def _idle_started(self, cmd: _Command, text: bytes) -> None:
        if cmd.continuations > 1:
            return
        self.idling = True
        # While idling the server is silent by design: no command deadline,
        # the inactivity watchdog alone watches the connection.
        self._disarm(cmd)
        if self._idle_done_requested:
            self._send_done(cmd)

    @property
    def idle_ending(self) -> bool:
        """Whether DONE is asked for (or out) for the IDLE still running."""
        return self._idle_cmd is not None and (self._idle_done_requested or self._idle_done_sent)

    def done(self) -> None:
        """End IDLE: sends ``DONE`` once (deferred until the server's ``+``
        when that has not arrived yet)."""
        cmd = self._idle_cmd
        if cmd is None or self._idle_done_sent or self._closed:
            return
        if self.idling:
            self._send_done(cmd)
        else:
            self._idle_done_requested = True

    def _send_done(self, cmd: _Command) -> None:
        self._idle_done_sent = True
        self.idling = False
        self._write(b"DONE\r\n")
        self._arm(cmd)


def _text(value: Any) -> str:
    raw = responses.as_bytes(value)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _number(raw: bytes) -> int:
    """An IMAP number: ASCII digits, at most 20 of them (64-bit mod-sequences
    fit; RFC 3501 numbers are 32-bit).

    :raises ResponseParseError: anything else; ``int()`` alone would accept
        ``²`` or raise a plain ``ValueError`` past 4300 digits.
    """
    if not raw.isdigit() or len(raw) > 20:
        raise ResponseParseError(f"bad number {raw[:20]!r}")
    return int(raw)


def _size(value: Any) -> int:
    """RFC822.SIZE as an int; 0 when it is not a number."""
    if not isinstance(value, str):
        return 0
    try:
        return _number(value.encode("latin-1"))
    except (ResponseParseError, UnicodeEncodeError):
        return 0


def _sections(pairs: dict[str, Any]) -> dict[tuple[str, Optional[int]], bytes]:
    out: dict[tuple[str, Optional[int]], bytes] = {}
    for key, value in pairs.items():
        try:
            section = responses.body_section_key(key)
        except ValueError:
            continue  # e.g. an origin <n> of thousands of digits
        if section is not None:
            out[section] = responses.as_bytes(value) if not isinstance(value, list) else b""
    return out
