"""Reading the server's bytes: lines and literals, then one dispatch per
complete response (continuation, untagged, tagged).

Twisted's own reader is replaced because it loses data or hangs on what
servers really send: a literal as the last token of a line eats the line
end, an empty line raises, results are keyed by sequence number and bodies
decoded as text. Every size a server controls is capped here (line,
literal, response, a command's answer, tokens, untagged status lines); past
a cap the connection is dropped as a :class:`ProtocolViolation`.
"""

from __future__ import annotations

from typing import Optional

from twisted.logger import Logger
from twisted.python.failure import Failure

from imapsvc.core.auth import is_refusal
from imapsvc.core.search_check import search_text_too_long
from imapsvc.imap import condstore, responses
from imapsvc.imap.compress import INFLATE_PIECE, CompressionError, DeflateStreams
from imapsvc.imap.connection import Caps, Command, IMAPConnection
from imapsvc.imap.errors import (
    AuthenticationFailed,
    AuthenticationUnavailable,
    CommandFailed,
    IMAPError,
    ProtocolViolation,
    Throttled,
)
from imapsvc.imap.lines import LinearLineReader
from imapsvc.imap.responses import ResponseParseError

log = Logger()

#: Untagged OK/NO/BAD lines one command (or one IDLE) may see. Dovecot says
#: "Still here" every 2 minutes while idling, and the IDLE is re-issued every
#: few minutes: a thousand is only reached by a server flooding the session.
MAX_STATUS_LINES = 1000


class ResponseReader(LinearLineReader, IMAPConnection):
    """Splits the server's bytes into responses and hands each to the
    command in flight (:class:`~imapsvc.imap.connection.Command`)."""

    # -- reading ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(self.inactivity_timeout)
        current = self._current
        # The deadline measures silence: a large literal still arriving is
        # progress, not a hang.
        if current is not None and current.deadline is not None and current.deadline.active():
            current.deadline.reset(self.command_timeout)
        if self._deflate is None:
            self._parse(data)
        else:
            self._deflate.feed(data)
        if self._deflate is not None:
            # Also right after COMPRESS's OK: the rest of that read was
            # already compressed (see :meth:`_start_inflating`).
            self._inflate_and_parse()

    def _parse(self, data: bytes) -> None:
        """Plain IMAP bytes into lines and literals."""
        if self.budget is not None:
            # Charged before parsing: what this read brings is in memory now.
            self.budget.charge(self, len(data))
        self._receive(data)

    def _start_inflating(self, streams: DeflateStreams) -> None:
        """From now on the server's bytes are deflated (COMPRESS's tagged OK
        was just read): what the line reader holds beyond that OK line came
        compressed in the same read."""
        rest, self._buffer = self._buffer, b""
        self._deflate = streams
        log.debug("IMAP COMPRESS=DEFLATE active")
        if rest:
            streams.feed(rest)

    def _inflate_and_parse(self) -> None:
        """Inflate what was received piece by piece, each piece charged and
        parsed before the next: memory stays bounded by the reader's caps
        however far the data inflates. Stops while the budget pauses us
        (:meth:`budget_resume` goes on)."""
        streams = self._deflate
        if streams is None or self._inflating:
            return
        self._inflating = True
        try:
            while streams.pending and not self._closed and not self.budget_paused:
                try:
                    piece = streams.inflate(INFLATE_PIECE)
                except CompressionError as exc:
                    self._drop(ProtocolViolation(str(exc)))
                    return
                if not piece:
                    return
                self._parse(piece)
        finally:
            self._inflating = False

    def budget_resume(self) -> None:
        was_paused = self.budget_paused
        IMAPConnection.budget_resume(self)
        if was_paused and not self._closed:
            self._inflate_and_parse()

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
            self.setRawMode()  # type: ignore[no-untyped-call]  # Twisted's, untyped
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

    def _literal_bytes(self, data: bytes, pos: int) -> int:
        if self._closed:
            return len(data) - pos
        take = data[pos : pos + self._literal_left]
        self._literal_chunks.append(take)
        self._literal_left -= len(take)
        if self._literal_left == 0:
            self._literals.append(b"".join(self._literal_chunks))
            self._literal_chunks = []
            # Unlike Twisted we keep the bytes after the literal as they are:
            # a CRLF right there ends the response.
            self.setLineMode()
        return len(take)

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
            number = responses.number(word)
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
            too_long = search_text_too_long(len(rest), self.last_exists)
            if too_long is not None:
                self._drop(ProtocolViolation(too_long))
                return
            if cmd is not None and not literals:
                cmd.untagged.append((keyword, responses.parse_search(rest)))
        elif keyword == "CAPABILITY":
            caps = responses.parse_capabilities(rest.decode("latin-1").split())
            self.capabilities = caps
            if cmd is not None:
                cmd.untagged.append((keyword, caps))
        elif keyword == "VANISHED" and cmd is not None and not literals:
            # RFC 7162 3.2.10: parsed as ranges (bounded); ValueError drops.
            cmd.untagged.append((keyword, condstore.parse_vanished(rest)))
        elif keyword in ("LIST", "FLAGS", "ID", "ENABLED", "STATUS") and cmd is not None:
            tokens = responses.tokenize(texts, literals)
            cmd.untagged.append((keyword, tokens[1:]))

    def _on_fetch(
        self, cmd: Command, seq: int, texts: list[bytes], literals: list[bytes]
    ) -> None:
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

    def serverGreeting(self, caps: Optional[Caps]) -> None:
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
        # debug: the folder names it in its own line ("session ended after BYE")
        log.debug("IMAP server said BYE: {text}", text=text)
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

    def _error_for(self, cmd: Command, kind: str, code: Optional[str], text: str) -> Exception:
        throttled, delay = responses.throttle_delay(code, text)
        if throttled:
            return Throttled(delay, text)
        if cmd.kind == "auth":
            if is_refusal(kind, code):
                return AuthenticationFailed(code, text)
            return AuthenticationUnavailable(code, text, kind)
        return CommandFailed(code, f"{cmd.name.decode('ascii')} {kind}: {text}")

    def done(self) -> None:
        """End IDLE; the IDLE command is in :mod:`imapsvc.imap.protocol`."""
        raise NotImplementedError
