"""The fake IMAP session: an :class:`~imapsvc.interfaces.IIMAPSession` over a
:class:`~imapsvc.testing.mailbox.FakeMailbox`, with results shaped exactly like
:class:`~imapsvc.imap.protocol.FolderIMAPClient`'s (``tests/session_contract.py``
checks both).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Optional

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsvc.core.auth import OAUTH_MECHANISMS, choose_oauth_mechanism
from imapsvc.core.cursor import internaldate_day, is_imap_date, parse_since
from imapsvc.core.gmail import offers_gmail
from imapsvc.imap.compress import COMPRESS_AUTO, offers_deflate, peer_host_of, worth_compressing
from imapsvc.imap.errors import (
    CleartextRefused,
    CommandFailed,
    ConnectionGone,
    IMAPError,
    MechanismUnsupported,
    ProtocolViolation,
    TLSRequired,
)
from imapsvc.interfaces import IIMAPSession
from imapsvc.testing.condstore import FakeEnable, open_state
from imapsvc.testing.mailbox import (
    FETCH_DROP,
    FETCH_GARBLED,
    Caps,
    FakeFolder,
    FakeMailbox,
    FakeMessage,
)
from imapsvc.testing.mime import section_bytes
from imapsvc.testing.status import FakeStatus
from imapsvc.testing.wire import FakeSessionTransport, ServerCloses, refusal_error
from imapsvc.testing.write_back import FakeWriteBack

# IDLE as seen on the wire: sent, "+" received (idling), DONE sent.
_IDLE_SENT, _IDLING, _DONE_SENT = "sent", "idling", "done sent"


class _Command:
    def __init__(self, name: str, answer: Optional[Callable[[], Any]]) -> None:
        self.name = name
        self.answer = answer  # None: IDLE
        self.defer: defer.Deferred = defer.Deferred()
        self.on_exists: Optional[Callable[[int], Any]] = None
        #: A refusal (CommandFailed) fails only this command (write-back).
        self.soft = False


@implementer(IIMAPSession)
class FakeIMAPSession(FakeWriteBack, FakeStatus, FakeEnable, Protocol):
    """An :class:`~imapsvc.interfaces.IIMAPSession` over a :class:`FakeMailbox`.

    Commands run one at a time in submission order; one sent while IDLE is
    outstanding waits for its end, as on the wire. By default the server
    answers at once (a command's Deferred has fired when the call returns).
    With ``at_once=False`` every server turn (greeting, answers, IDLE's
    ``+``, EXISTS, a drop) waits for :meth:`flush`, like bytes waiting to be
    pumped: that lets a test act between a command and its answer.

    Connect it with ``makeConnection(transport)``, or :meth:`connect` (a
    :class:`FakeSessionTransport`); the greeting fires :attr:`greeted`. The
    connection counts as TLS unless ``tls=False``.

    :ivar commands: the commands sent, in order (``"LOGIN"``, ``"EXAMINE"``,
        ``"UID FETCH"``, ``"IDLE"``, ``"DONE"``, ...).
    :ivar opened: ``(verb, name, parameters)`` of every EXAMINE/SELECT,
        ``parameters`` as on the wire (``"(QRESYNC (7 12))"``, ``""``).
    """

    def __init__(self, mailbox: FakeMailbox, tls: bool = True, at_once: bool = True) -> None:
        self.mailbox = mailbox
        self.tls = tls
        self.at_once = at_once
        self.greeted: defer.Deferred = defer.Deferred()
        self.capabilities: Optional[Caps] = None
        self.last_exists: Optional[int] = None
        self.on_bye: Optional[Callable[[str], Any]] = None
        self.bye_text: Optional[str] = None
        self.idling = False
        self.auth_mechanism: Optional[str] = None
        self.utf8_accept = False
        #: COMPRESS=DEFLATE in force (recorded only: the fake moves no bytes).
        self.compressing = False
        self._logged_in = False
        self.commands: list[str] = []
        #: What searches and fetches asked for, one entry per command:
        #: ``("search", first_uid)``, ``("meta", uids)``, ``("full", uids)``,
        #: ``("sections", {uid: ((section, length), ...)})``.
        self.requests: list[tuple[str, Any]] = []
        self.selected: Optional[str] = None
        self.opened: list[tuple[str, str, str]] = []
        #: SELECTed (write-back) rather than EXAMINEd.
        self.read_write = False
        self._closed = False
        self._server_closing = False
        self._logging_out = False
        self._greeting_due = False
        self._drop_due: Optional[tuple[Optional[str]]] = None
        self._pending_exists: Optional[int] = None
        #: The command sent and not yet answered (IDLE until DONE's answer).
        self._current: Optional[_Command] = None
        self._waiting: list[_Command] = []
        self._idle_state: Optional[str] = None
        self._done_requested = False

    def connect(self, on_lost: Optional[Callable[[Failure], Any]] = None,
                clock: Any = None) -> FakeIMAPSession:
        """Connect over a :class:`FakeSessionTransport` (see there for ``clock``)."""
        self.makeConnection(FakeSessionTransport(on_lost, clock))
        return self

    # -- connection -------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        if isinstance(self.transport, FakeSessionTransport):
            self.transport.protocol = self
        self.mailbox.sessions.append(self)
        self._greeting_due = True
        self._step()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if self in self.mailbox.sessions:
            self.mailbox.sessions.remove(self)
        was_closed, self._closed = self._closed, True
        self.idling = False
        if reason is None:
            reason = Failure(ConnectionGone("connection lost"))
        pending = self._take_pending()
        if not was_closed:
            for cmd in pending:
                if cmd.name == "LOGOUT":
                    cmd.defer.callback(None)  # the server closing is LOGOUT's answer
                else:
                    cmd.defer.errback(reason)
        if not self.greeted.called:
            self.greeted.errback(reason)

    def _take_pending(self) -> list[_Command]:
        pending = ([self._current] if self._current is not None else []) + self._waiting
        self._current, self._idle_state, self._waiting = None, None, []
        return pending

    def _drop(self, error: Exception, failing: Optional[_Command] = None) -> None:
        """As the real client: fail ``failing`` (the command answered) with
        ``error`` and the others outstanding with ConnectionGone, then
        close; the engine hears of the error before the connection's end."""
        if self._closed:
            return
        self._closed = True
        self.idling = False
        pending = self._take_pending()
        if failing is not None:
            failing.defer.errback(Failure(error))
        for cmd in pending:
            cmd.defer.errback(Failure(ConnectionGone(f"connection dropped: {error}")))
        if self.transport is not None:
            self.transport.loseConnection()

    # -- what the mailbox tells its sessions ----------------------------------------

    def server_drop(self, bye: Optional[str] = None) -> None:
        """The server closes the connection (after ``* BYE bye``)."""
        if not self._closed:
            self._drop_due = (bye,)
            self._step()

    def exists_changed(self, folder: str, count: int) -> None:
        if self._closed or folder != self.selected:
            return
        # Sent while idling, else with the next command's answer.
        self._pending_exists = count
        self._step()

    # -- the server's turns -------------------------------------------------------

    def flush(self) -> None:
        """Let the server take every turn it can (``at_once=False``)."""
        self._advance()

    def _step(self) -> None:
        if self.at_once:
            self._advance()

    def step(self) -> bool:
        """Let the server take one turn (``at_once=False``); ``False`` when
        it had nothing to do."""
        return self._turn()

    def _advance(self) -> None:
        while self._turn():
            pass

    def _turn(self) -> bool:
        if self._closed or self._server_closing:
            return False
        if self._greeting_due:
            self._greeting_due = False
            self.capabilities = self.mailbox.capabilities()
            self.greeted.callback(self.capabilities)
        elif self._drop_due is not None:
            (bye,), self._drop_due = self._drop_due, None
            if bye is not None:
                self.bye_text = bye
                if not self._logging_out and self.on_bye is not None:
                    self.on_bye(bye)
            if self.transport is not None:
                self.transport.loseConnection()
        elif self._current is None:
            return False
        elif self._current.answer is None:
            return self._idle_turn(self._current)
        else:
            self._answer(self._current)
        return True

    def _send_next(self) -> None:
        """Put the next command on the wire when none is outstanding."""
        if self._current is not None or not self._waiting or self._closed:
            return
        cmd = self._current = self._waiting.pop(0)
        self.commands.append(cmd.name)
        if cmd.answer is None:
            self._idle_state = _IDLE_SENT  # DONE, if requested, follows the "+"

    def _idle_turn(self, cmd: _Command) -> bool:
        """One server turn while IDLE is outstanding; ``False``: nothing to do."""
        if self._idle_state == _IDLE_SENT:
            self._idle_state = _IDLING  # the server's "+"
            self.idling = True
            if self._done_requested:
                self._send_done()
            return True
        if self._idle_state == _IDLING and self._pending_exists is not None:
            count, self._pending_exists = self._pending_exists, None
            self.last_exists = count
            if cmd.on_exists is not None:
                cmd.on_exists(count)
            return True
        if self._idle_state == _DONE_SENT:
            self._current, self._idle_state = None, None
            self._send_next()
            cmd.defer.callback(None)
            return True
        return False

    def _answer(self, cmd: _Command) -> None:
        assert cmd.answer is not None
        try:
            result = cmd.answer()
        except ServerCloses:
            self._server_closing = True  # no more turns: the close fails the command
            if self.transport is not None:
                self.transport.loseConnection()
            return
        except CommandFailed as error:
            self._current = None
            if not cmd.soft:
                self._drop(error, failing=cmd)
                return
            self._send_next()
            cmd.defer.errback(error)
            return
        except IMAPError as error:
            self._current = None
            self._drop(error, failing=cmd)
            return
        if self._pending_exists is not None:
            self.last_exists, self._pending_exists = self._pending_exists, None
        if self._closed:
            return  # LOGOUT: connectionLost answered it
        self._current = None
        self._send_next()
        cmd.defer.callback(result)

    def _run(self, name: str, answer: Callable[[], Any], soft: bool = False) -> defer.Deferred:
        if self._closed:
            return defer.fail(ConnectionGone("connection is closed"))
        cmd = _Command(name, answer)
        cmd.soft = soft
        self._waiting.append(cmd)
        self._send_next()
        self._step()
        return cmd.defer

    def _folder(self) -> FakeFolder:
        if self.selected is None or self.selected not in self.mailbox.folders:
            raise CommandFailed(None, "UID FETCH BAD: No mailbox selected")
        return self.mailbox.folders[self.selected]

    # -- IIMAPSession -------------------------------------------------------------

    def start_tls(self, context_factory: Any) -> defer.Deferred:
        if self.tls:
            return defer.fail(IMAPError("the connection already uses TLS"))
        caps = self.capabilities or {}
        if b"STARTTLS" not in caps:
            error = TLSRequired("server does not offer STARTTLS")
            self._drop(error)
            return defer.fail(error)

        def upgrade() -> Caps:
            self.tls = True
            self.capabilities = self.mailbox.capabilities()
            return self.capabilities

        return self._run("STARTTLS", upgrade)

    def authenticate_with(
        self,
        credentials: Any,
        oauth_mechanism: Optional[str] = None,
        host: Optional[str] = None,
        port: Optional[int] = None,
    ) -> defer.Deferred:
        mechanism = credentials.mechanism.lower()
        offered = [m.decode("ascii") for m in (self.capabilities or {}).get(b"AUTH") or []]
        if mechanism in OAUTH_MECHANISMS and oauth_mechanism is not None:
            mechanism = choose_oauth_mechanism(oauth_mechanism, offered)
        if not self.tls:
            return defer.fail(
                CleartextRefused(f"refusing {mechanism} login over a connection without TLS")
            )
        if mechanism in OAUTH_MECHANISMS:
            if mechanism.upper() not in offered:
                return defer.fail(
                    MechanismUnsupported(f"server does not offer AUTH={mechanism.upper()}")
                )
            name = "AUTHENTICATE"
        elif mechanism == "password":
            name = "LOGIN"
        else:
            return defer.fail(ValueError(f"unknown login mechanism {mechanism!r}"))
        self.auth_mechanism = mechanism

        def login() -> Caps:
            self.mailbox.logins.append((mechanism, credentials.username, host, port))
            refusal = self.mailbox.auth_answer(credentials.username, credentials.secret)
            if refusal is not None:
                code, text, status = refusal
                raise refusal_error(name, status, code, text, auth=True)
            self.capabilities = self.mailbox.capabilities()
            self._logged_in = True
            return self.capabilities

        return self._run(name, login)

    def _scripted_failure(self, command: str) -> None:
        failure = self.mailbox.command_failure(command)
        if failure is not None:
            code, text, how = failure
            if how == FETCH_GARBLED:
                raise ProtocolViolation(f"bad tagged answer to {command.encode()!r}")
            raise refusal_error(command, "NO", code, text)

    def list_folders(self, pattern: str = "*") -> defer.Deferred:
        matches = list_pattern(pattern)

        def listing() -> list:
            self._scripted_failure("LIST")
            return [(tuple(f.flags), f.delimiter, f.name) for f in self.mailbox.folders.values()
                    if matches(f.name, f.delimiter)]

        return self._run("LIST", listing)

    def send_id(self, fields: Iterable[tuple[str, str]]) -> defer.Deferred:
        """``ID`` (RFC 2971) when offered (else nothing is sent): the
        server's ID dict."""
        if b"ID" not in (self.capabilities or {}):
            return defer.succeed(None)
        sent = dict(fields)

        def ident() -> dict[str, str]:
            self.mailbox.client_ids.append(sent)
            return dict(self.mailbox.server_id)

        return self._run("ID", ident)

    def maybe_compress(self, mode: str = COMPRESS_AUTO) -> defer.Deferred:
        """``COMPRESS DEFLATE`` when ``mode``, the server's offer and the
        peer's address allow it, as the real client decides; a scripted
        refusal (``mailbox.fail_command("COMPRESS")``) fires ``False``."""
        if self.compressing:
            return defer.succeed(True)
        if not offers_deflate(self.capabilities) or not self._logged_in:
            return defer.succeed(False)
        if not worth_compressing(mode, peer_host_of(self.transport)):
            return defer.succeed(False)

        def compress() -> bool:
            if self.mailbox.command_failure("COMPRESS") is None:
                self.compressing = True
                self.mailbox.compressions += 1
            return self.compressing

        return self._run("COMPRESS", compress)

    def examine_folder(self, name: str) -> defer.Deferred:
        return self._open_folder("EXAMINE", name, writable=False)

    def select_folder(self, name: str) -> defer.Deferred:
        return self._open_folder("SELECT", name, writable=True)

    def _open_folder(self, verb: str, name: str, writable: bool,
                     parameters: bytes = b"") -> defer.Deferred:
        """EXAMINE or SELECT (with mod-sequence ``parameters``): the answer
        the real client shapes (see ``FolderIMAPClient._open_folder``)."""

        def open_() -> dict:
            self.opened.append((verb, name, parameters.decode("ascii").strip()))
            self._scripted_failure(verb)
            folder = self.mailbox.folders.get(name)
            if folder is None:
                self.selected = None
                raise CommandFailed("NONEXISTENT", f"{verb} NO: Mailbox doesn't exist: {name}")
            self.selected = name
            self.read_write = writable
            self._pending_exists = None
            self.last_exists = len(folder.messages)
            answer = {
                "uidvalidity": folder.uidvalidity,
                "uidnext": folder.uidnext,
                "exists": len(folder.messages),
                "read_only": not writable,
            }
            if parameters:
                answer["modseq"] = open_state(folder, parameters)
            return answer

        return self._run(verb, open_)

    def uid_search_from(self, first_uid: int) -> defer.Deferred:
        self.requests.append(("search", int(first_uid)))
        first = max(1, int(first_uid))
        return self._run(
            "UID SEARCH", lambda: sorted(u for u in self._folder().messages if u >= first)
        )

    def uid_search_since(self, since: str) -> defer.Deferred:
        if not is_imap_date(since):
            return defer.fail(ValueError(f"not an RFC 3501 date: {since[:40]!r}"))
        day = parse_since(since)

        def search() -> list[int]:
            folder = self._folder()
            # SINCE compares the day only; an unreadable date counts as found.
            days = {u: internaldate_day(m.internaldate) or day for u, m in folder.messages.items()}
            return sorted(u for u, d in days.items() if d >= day)

        return self._run("UID SEARCH", search)

    def _fetch(
        self, kind: str, uids: Iterable[int], shape: Callable[[int, FakeMessage], Any]
    ) -> dict:
        folder = self._folder()
        wanted = [int(u) for u in uids]
        failure = self.mailbox.fetch_failure(folder.name, wanted)
        if failure is not None:
            code, text, how = failure
            if how == FETCH_DROP:
                raise ServerCloses()
            if how == FETCH_GARBLED:
                raise ProtocolViolation("bad tagged answer to b'UID FETCH'")
            raise refusal_error("UID FETCH", "NO", code, text)
        out = {u: shape(u, folder.messages[u]) for u in wanted if u in folder.messages}
        self.mailbox.fetched += [(kind, folder.name, u) for u in out]
        return out

    def fetch_meta(self, uids: Iterable[int]) -> defer.Deferred:
        gmail = offers_gmail(self.mailbox.capability_words)

        def meta(uid: int, m: FakeMessage) -> dict:
            out = {
                "size": len(m.raw),
                "internaldate": m.internaldate,
                "bodystructure": m.bodystructure,
                "header": m.header,
            }
            if gmail:  # as the real client: asked for only when offered
                out["gm_msgid"] = m.gm_msgid
            return out

        uids = list(uids)
        self.requests.append(("meta", tuple(int(u) for u in uids)))
        return self._run("UID FETCH", lambda: self._fetch("meta", uids, meta))

    def fetch_sections(self, requests: dict) -> defer.Deferred:
        # Grouped as the real client does: one command per set of sections.
        groups: dict[tuple, list[int]] = {}
        for uid, wanted in requests.items():
            key = tuple((str(section), length) for section, length in wanted)
            if key:
                groups.setdefault(key, []).append(int(uid))
        results: dict[int, dict[str, bytes]] = {}

        def group(key: tuple, uids: list[int]) -> None:
            def pick(uid: int, m: FakeMessage) -> dict:
                got = {}
                for section, length in key:
                    data = section_bytes(m.raw, section)
                    if data is not None:
                        got[section] = data if length is None else data[: int(length)]
                return got

            for uid, got in self._fetch("sections", uids, pick).items():
                results.setdefault(uid, {}).update(got)

        def next_group(_ignored: Any, key: tuple, uids: list[int]) -> defer.Deferred:
            self.requests.append(("sections", {uid: key for uid in uids}))
            return self._run("UID FETCH", lambda: group(key, uids))

        d: defer.Deferred = defer.succeed(None)
        for key, uids in groups.items():
            d.addCallback(next_group, key, uids)
        d.addCallback(lambda _: results)
        return d

    def fetch_full(self, uids: Iterable[int]) -> defer.Deferred:
        uids = list(uids)
        self.requests.append(("full", tuple(int(u) for u in uids)))
        return self._run("UID FETCH", lambda: self._fetch("full", uids, lambda _u, m: m.raw))

    def idle(self, on_exists: Callable[[int], Any]) -> defer.Deferred:
        if self._closed:
            return defer.fail(ConnectionGone("connection is closed"))
        cmd = _Command("IDLE", None)
        cmd.on_exists = on_exists
        self._done_requested = False
        self._waiting.append(cmd)
        self._send_next()
        self._step()
        return cmd.defer

    @property
    def idle_ending(self) -> bool:
        """Whether DONE is asked for (or out) for the IDLE still running."""
        return self._done_requested and self._running_idle() is not None

    def _running_idle(self) -> Optional[_Command]:
        return next((c for c in [self._current, *self._waiting] if c and c.answer is None), None)

    def done(self) -> None:
        idle = self._running_idle()
        if idle is None or self._closed or self._done_requested:
            return
        self._done_requested = True
        if self._idle_state == _IDLING:
            self._send_done()
            self._step()
        # Else DONE goes out right after the server's "+".

    def _send_done(self) -> None:
        self._idle_state = _DONE_SENT
        self.idling = False
        self.commands.append("DONE")

    def logout(self) -> defer.Deferred:
        def bye() -> None:
            self._logging_out = True
            if self.transport is not None:
                self.transport.loseConnection()

        self._logging_out = True
        return self._run("LOGOUT", bye)


def list_pattern(pattern: str) -> Callable[[str, Optional[str]], bool]:
    """``(name, delimiter) -> bool``: what ``LIST "" pattern`` lists (RFC
    3501 6.3.8): ``*`` matches anything, ``%`` anything but the hierarchy
    delimiter, ``INBOX`` in any case."""

    def matches(name: str, delimiter: Optional[str]) -> bool:
        if name.upper() == "INBOX" and pattern.upper() == "INBOX":
            return True
        level = f"[^{re.escape(delimiter)}]*" if delimiter else ".*"
        regex = "".join(
            ".*" if c == "*" else level if c == "%" else re.escape(c) for c in pattern
        )
        return re.fullmatch(regex, name) is not None

    return matches
