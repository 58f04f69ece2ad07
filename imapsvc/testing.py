"""In-memory fakes for tests, verified by the same contract tests as the real
parts.

:class:`FakeMailbox` is an IMAP server's state: folders with a UIDVALIDITY
and messages kept as exact bytes under their UID (flags never change: the
service only ever peeks), plus scripted failures (a refused login with a
code, NO to a FETCH that names a UID, a dropped connection).
:class:`FakeIMAPSession` is an :class:`~imapsvc.interfaces.IIMAPSession`
over such a mailbox that answers at once, with results shaped exactly like
:class:`~imapsvc.imap.protocol.FolderIMAPClient`'s; ``tests/session_contract.py``
runs the same assertions against both (the real client talking real IMAP
bytes to a scripted server that serves the same :class:`FakeMailbox`).

The MIME helpers (:func:`split_header`, :func:`section_bytes`,
:func:`bodystructure_of`) answer ``BODY[section]`` and ``BODYSTRUCTURE`` for a
message the way an IMAP server does, so tests need not write structures by
hand.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
from typing import Any, Callable, Iterable, Optional

import attr
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsvc.core.auth import OAUTH_MECHANISMS, choose_oauth_mechanism, is_refusal
from imapsvc.imap.errors import (
    AuthenticationFailed,
    AuthenticationUnavailable,
    CleartextRefused,
    CommandFailed,
    ConnectionGone,
    IMAPError,
    MechanismUnsupported,
    TLSRequired,
)
from imapsvc.imap.responses import parse_capabilities
from imapsvc.interfaces import IIMAPSession

Caps = dict[bytes, Optional[list[bytes]]]

#: What the fake server offers unless told otherwise.
DEFAULT_CAPABILITIES = (
    "IMAP4rev1",
    "IDLE",
    "LITERAL+",
    "SASL-IR",
    "AUTH=PLAIN",
    "AUTH=XOAUTH2",
    "AUTH=OAUTHBEARER",
)
DEFAULT_INTERNALDATE = "10-Jan-2026 12:00:00 +0000"


# -- MIME helpers: what a server answers for BODY[section] and BODYSTRUCTURE --


def split_header(entity: bytes) -> tuple[bytes, bytes]:
    """``(header, body)`` of a message or MIME part; the header keeps its
    blank line (as ``BODY[HEADER]`` does). No blank line: all header."""
    if entity.startswith(b"\r\n"):
        return b"\r\n", entity[2:]
    if entity.startswith(b"\n"):
        return b"\n", entity[1:]
    ends = [(entity.find(sep), len(sep)) for sep in (b"\r\n\r\n", b"\n\n")]
    found = [(at, n) for at, n in ends if at >= 0]
    if not found:
        return entity, b""
    at, n = min(found)
    return entity[: at + n], entity[at + n :]


def _headers(header: bytes) -> Any:
    return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header)


def _content_type(header: bytes, default: str = "text/plain") -> tuple[str, str, list[str]]:
    """``(type, subtype, [name, value, ...])`` from a Content-Type header."""
    msg = _headers(header)
    if msg.get("content-type") is None:
        full = default
        params: list[str] = ["charset", "us-ascii"] if default == "text/plain" else []
        main, _, sub = full.partition("/")
        return main, sub, params
    main, _, sub = msg.get_content_type().partition("/")
    params = []
    for name, value in (msg.get_params() or [])[1:]:
        if isinstance(value, tuple):
            value = email.utils.collapse_rfc2231_value(value)
        params += [name, str(value)]
    return main, sub, params


def _parts(body: bytes, boundary: str) -> list[bytes]:
    """The body parts of a multipart body, exact bytes (the CRLF before each
    delimiter belongs to the delimiter, RFC 2046 5.1.1)."""
    delim = b"--" + boundary.encode("latin-1")
    starts = []
    at = body.find(delim)
    while at >= 0:
        if at == 0 or body[at - 1 : at] == b"\n":
            starts.append(at)
        at = body.find(delim, at + len(delim))
    out = []
    for index, start in enumerate(starts):
        after = start + len(delim)
        if body[after : after + 2] == b"--":
            break
        eol = body.find(b"\n", after)
        if eol < 0:
            break
        end = starts[index + 1] if index + 1 < len(starts) else len(body)
        if body[end - 2 : end] == b"\r\n":
            end -= 2
        elif body[end - 1 : end] == b"\n":
            end -= 1
        out.append(body[eol + 1 : end])
    return out


def _boundary(header: bytes) -> Optional[str]:
    value = _headers(header).get_param("boundary")
    if isinstance(value, tuple):
        value = email.utils.collapse_rfc2231_value(value)
    return None if value is None else str(value)


def section_bytes(raw: bytes, section: str) -> Optional[bytes]:
    """``BODY[section]`` of a message: ``""``, ``HEADER``, ``TEXT``, part
    numbers (``1``, ``2.1``) and ``N.MIME``; ``None`` when there is no such
    part."""
    header, body = split_header(raw)
    section = section.upper()
    if section == "":
        return raw
    if section == "HEADER":
        return header
    if section == "TEXT":
        return body
    default = "text/plain"
    for index, step in enumerate(section.split(".")):
        last = index == len(section.split(".")) - 1
        if step in ("MIME", "HEADER", "TEXT"):
            if not last:
                return None
            if step == "MIME" or step == "HEADER":
                return header
            return body
        if not step.isdigit():
            return None
        number = int(step)
        main, sub, _params = _content_type(header, default)
        if main == "multipart":
            boundary = _boundary(header)
            children = _parts(body, boundary) if boundary else []
            if not 1 <= number <= len(children):
                return None
            default = "message/rfc822" if sub == "digest" else "text/plain"
            header, body = split_header(children[number - 1])
        elif number != 1:
            return None
        elif main == "message" and sub == "rfc822":
            # The part is a message: its own header and body come next.
            if last:
                return body
            header, body = split_header(body)
            default = "text/plain"
            continue
        if last:
            return body
    return body


def _lines(data: bytes) -> str:
    return str(data.count(b"\n"))


def bodystructure_of(raw: bytes) -> list:
    """The ``BODYSTRUCTURE`` of a message as :class:`FolderIMAPClient`
    returns it: nested lists of ``str`` (numbers as digit strings) and
    ``None`` for NIL, with the extension data a server like Dovecot sends."""
    header, body = split_header(raw)
    return _structure(header, body, "text/plain")


def _structure(header: bytes, body: bytes, default: str) -> list:
    main, sub, params = _content_type(header, default)
    fields = _headers(header)
    disposition: Optional[list] = None
    if fields.get("content-disposition") is not None:
        kind = str(fields.get("content-disposition")).split(";")[0].strip().lower()
        dparams: list[str] = []
        for name, value in (fields.get_params(header="content-disposition") or [])[1:]:
            if isinstance(value, tuple):
                value = email.utils.collapse_rfc2231_value(value)
            dparams += [name, str(value)]
        disposition = [kind, dparams or None]
    if main == "multipart":
        boundary = _boundary(header)
        child_default = "message/rfc822" if sub == "digest" else "text/plain"
        children = [
            _structure(*split_header(part), child_default)
            for part in (_parts(body, boundary) if boundary else [])
        ]
        return [*children, sub, params or None, disposition, None, None]
    cid = fields.get("content-id")
    description = fields.get("content-description")
    encoding = str(fields.get("content-transfer-encoding") or "7bit").strip().lower()
    node: list = [
        main,
        sub,
        params or None,
        None if cid is None else str(cid).strip(),
        None if description is None else str(description).strip(),
        encoding,
        str(len(body)),
    ]
    if main == "message" and sub == "rfc822":
        inner_header, inner_body = split_header(body)
        envelope: list = [None] * 10
        node += [envelope, _structure(inner_header, inner_body, "text/plain"), _lines(body)]
    elif main == "text":
        node.append(_lines(body))
    return node + [None, disposition, None, None]


# -- the mailbox ------------------------------------------------------------------


@attr.s(auto_attribs=True)
class FakeMessage:
    """One message: exact bytes, INTERNALDATE, and its BODYSTRUCTURE (text
    tree; computed from the bytes unless given, e.g. a broken one)."""

    raw: bytes
    internaldate: str = DEFAULT_INTERNALDATE
    bodystructure: Any = None

    def __attrs_post_init__(self) -> None:
        if self.bodystructure is None:
            self.bodystructure = bodystructure_of(self.raw)

    @property
    def header(self) -> bytes:
        return split_header(self.raw)[0]


@attr.s(auto_attribs=True)
class FakeFolder:
    name: str
    uidvalidity: int
    delimiter: Optional[str] = "/"
    flags: tuple[str, ...] = ("\\HasNoChildren",)
    messages: dict[int, FakeMessage] = attr.Factory(dict)
    uidnext: int = 1


class FakeMailbox:
    """An IMAP server's state, shared by every session connected to it.

    :param accounts: ``{username: secret}`` (password or bearer token);
        ``None`` accepts any login.
    :ivar logins: ``(mechanism, username, host, port)`` of every login
        attempt (no secrets).
    """

    def __init__(
        self,
        capabilities: Iterable[str] = DEFAULT_CAPABILITIES,
        accounts: Optional[dict[str, str]] = None,
        folders: Iterable[str] = ("INBOX",),
        uidvalidity: int = 1700000000,
    ) -> None:
        self.capability_words = list(capabilities)
        self.accounts = accounts
        self.folders: dict[str, FakeFolder] = {}
        self._next_validity = uidvalidity
        for name in folders:
            self.add_folder(name)
        self.logins: list[tuple[str, str, Optional[str], Optional[int]]] = []
        self._auth_refusals: list[tuple[Optional[str], str]] = []
        self.auth_refusal: Optional[tuple[Optional[str], str]] = None
        self._fetch_failures: dict[tuple[str, int], tuple[Optional[str], str]] = {}
        #: ``(kind, folder, uid)`` of every message part a fake session
        #: handed out: kind ``meta``, ``sections`` or ``full``.
        self.fetched: list[tuple[str, str, int]] = []
        #: Live sessions (fake or scripted-server side): told about new mail
        #: with ``exists_changed(folder, count)`` and ``server_drop()``.
        self.sessions: list[Any] = []

    # -- content

    def capabilities(self) -> Caps:
        return parse_capabilities(self.capability_words)

    def add_folder(
        self, name: str, uidvalidity: Optional[int] = None, delimiter: Optional[str] = "/"
    ) -> FakeFolder:
        if uidvalidity is None:
            uidvalidity = self._next_validity
            self._next_validity += 1
        folder = FakeFolder(name, uidvalidity, delimiter)
        self.folders[name] = folder
        return folder

    def append(
        self,
        raw: bytes,
        folder: str = "INBOX",
        internaldate: str = DEFAULT_INTERNALDATE,
        bodystructure: Any = None,
    ) -> int:
        """Deliver a message; sessions that selected ``folder`` hear
        ``* n EXISTS`` (at once while idling, else with their next command).
        :return: its UID."""
        box = self.folders[folder]
        uid = box.uidnext
        box.uidnext += 1
        box.messages[uid] = FakeMessage(raw, internaldate, bodystructure)
        for session in list(self.sessions):
            session.exists_changed(folder, len(box.messages))
        return uid

    def recreate(self, folder: str = "INBOX") -> FakeFolder:
        """The folder deleted and created again: a new UIDVALIDITY, UIDs from 1."""
        old = self.folders[folder]
        return self.add_folder(folder, delimiter=old.delimiter)

    def uids(self, folder: str = "INBOX") -> list[int]:
        return sorted(self.folders[folder].messages)

    # -- scripted failures

    def refuse_logins(
        self, code: Optional[str] = "AUTHENTICATIONFAILED", text: str = "Authentication failed.",
        times: Optional[int] = 1,
    ) -> None:
        """Refuse the next ``times`` logins (``None``: every login) with
        ``NO [code] text``."""
        if times is None:
            self.auth_refusal = (code, text)
        else:
            self._auth_refusals += [(code, text)] * times

    def auth_answer(self, username: str, secret: str) -> Optional[tuple[Optional[str], str]]:
        """``None`` to accept a login, else the ``(code, text)`` of its NO."""
        if self._auth_refusals:
            return self._auth_refusals.pop(0)
        if self.auth_refusal is not None:
            return self.auth_refusal
        if self.accounts is not None and self.accounts.get(username) != secret:
            return ("AUTHENTICATIONFAILED", "Authentication failed.")
        return None

    def fail_fetch(
        self, uid: int, code: Optional[str] = "SERVERBUG", text: str = "Internal error",
        folder: str = "INBOX",
    ) -> None:
        """Answer ``NO [code] text`` to every UID FETCH naming ``uid``."""
        self._fetch_failures[(folder, uid)] = (code, text)

    def fetch_failure(
        self, folder: str, uids: Iterable[int]
    ) -> Optional[tuple[Optional[str], str]]:
        for uid in uids:
            failure = self._fetch_failures.get((folder, int(uid)))
            if failure is not None:
                return failure
        return None

    def drop_connections(self, bye: Optional[str] = None) -> None:
        """The server closes every connection, saying ``* BYE bye`` first
        when given."""
        for session in list(self.sessions):
            session.server_drop(bye)


# -- the session -------------------------------------------------------------------


class FakeSessionTransport(StringTransport):
    """A transport whose close reaches the protocol at once (and then
    ``on_lost(reason)``, e.g. a factory's ``clientConnectionLost``)."""

    def __init__(self, on_lost: Optional[Callable[[Failure], Any]] = None) -> None:
        super().__init__()
        self.protocol: Any = None
        self.on_lost = on_lost
        self.closed = False

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        if self.closed:
            return
        self.closed = True
        self.disconnecting = True
        reason = Failure(ConnectionDone("Connection done"))
        if self.protocol is not None:
            self.protocol.connectionLost(reason)
        if self.on_lost is not None:
            self.on_lost(reason)

    abortConnection = loseConnection  # noqa: N815


@implementer(IIMAPSession)
class FakeIMAPSession(Protocol):
    """An :class:`~imapsvc.interfaces.IIMAPSession` over a
    :class:`FakeMailbox`: every command answers at once (a command sent while
    IDLE is outstanding waits for its end, as on the wire).

    Connect it with ``makeConnection(transport)`` (:class:`FakeSessionTransport`
    by default through :meth:`connect`); the greeting then fires
    :attr:`greeted`. The connection counts as TLS unless ``tls=False``.

    :ivar commands: the names of the commands sent, in order (``"LOGIN"``,
        ``"EXAMINE"``, ``"UID FETCH"``, ``"IDLE"``, ``"DONE"``, ...).
    """

    def __init__(self, mailbox: FakeMailbox, tls: bool = True) -> None:
        self.mailbox = mailbox
        self.tls = tls
        self.greeted: defer.Deferred = defer.Deferred()
        self.capabilities: Optional[Caps] = None
        self.last_exists: Optional[int] = None
        self.on_bye: Optional[Callable[[str], Any]] = None
        self.bye_text: Optional[str] = None
        self.idling = False
        self.auth_mechanism: Optional[str] = None
        self.commands: list[str] = []
        self.selected: Optional[str] = None
        self._closed = False
        self._logging_out = False
        self._pending_exists: Optional[int] = None
        self._idle: Optional[defer.Deferred] = None
        self._on_exists: Optional[Callable[[int], Any]] = None
        self._done_sent = False
        self._queued: list[tuple[str, Callable[[], Any], defer.Deferred]] = []

    def connect(self, on_lost: Optional[Callable[[Failure], Any]] = None) -> FakeIMAPSession:
        self.makeConnection(FakeSessionTransport(on_lost))
        return self

    # -- connection -------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        if isinstance(self.transport, FakeSessionTransport):
            self.transport.protocol = self
        self.mailbox.sessions.append(self)
        self.capabilities = self.mailbox.capabilities()
        self.greeted.callback(self.capabilities)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if self in self.mailbox.sessions:
            self.mailbox.sessions.remove(self)
        was_closed, self._closed = self._closed, True
        self.idling = False
        if reason is None:
            reason = Failure(ConnectionGone("connection lost"))
        pending = self._take_pending()
        if not was_closed:
            for d in pending:
                d.errback(reason)
        if not self.greeted.called:
            self.greeted.errback(reason)

    def _take_pending(self) -> list[defer.Deferred]:
        pending = [d for _n, _f, d in self._queued]
        if self._idle is not None:
            pending.insert(0, self._idle)
        self._idle, self._queued = None, []
        return pending

    def _drop(self, error: Exception) -> None:
        """As the real client: fail what is outstanding, close."""
        if self._closed:
            return
        self._closed = True
        self.idling = False
        for d in self._take_pending():
            d.errback(Failure(ConnectionGone(f"connection dropped: {error}")))
        if self.transport is not None:
            self.transport.loseConnection()

    def server_drop(self, bye: Optional[str] = None) -> None:
        """The server closed the connection (after ``* BYE bye``)."""
        if bye is not None and not self._closed:
            self.bye_text = bye
            if not self._logging_out and self.on_bye is not None:
                self.on_bye(bye)
        if self.transport is not None:
            self.transport.loseConnection()

    def exists_changed(self, folder: str, count: int) -> None:
        if self._closed or folder != self.selected:
            return
        if self._idle is not None and self.idling:
            self.last_exists = count
            if self._on_exists is not None:
                self._on_exists(count)
        else:
            # A server reports it with the next command's answer.
            self._pending_exists = count

    # -- command machinery ------------------------------------------------------

    def _run(self, name: str, answer: Callable[[], Any]) -> defer.Deferred:
        if self._closed:
            return defer.fail(ConnectionGone("connection is closed"))
        if self._idle is not None:
            d: defer.Deferred = defer.Deferred()
            self._queued.append((name, answer, d))
            return d
        return self._answer(name, answer)

    def _answer(self, name: str, answer: Callable[[], Any]) -> defer.Deferred:
        self.commands.append(name)
        try:
            result = answer()
        except IMAPError as error:
            self._drop(error)
            return defer.fail(error)
        if self._pending_exists is not None:
            self.last_exists, self._pending_exists = self._pending_exists, None
        return defer.succeed(result)

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
                code, text = refusal
                if is_refusal("NO", code):
                    raise AuthenticationFailed(code, text)
                raise AuthenticationUnavailable(code, text, "NO")
            self.capabilities = self.mailbox.capabilities()
            return self.capabilities

        return self._run(name, login)

    def list_folders(self) -> defer.Deferred:
        return self._run(
            "LIST",
            lambda: [
                (tuple(f.flags), f.delimiter, f.name) for f in self.mailbox.folders.values()
            ],
        )

    def examine_folder(self, name: str) -> defer.Deferred:
        def examine() -> dict:
            folder = self.mailbox.folders.get(name)
            if folder is None:
                self.selected = None
                raise CommandFailed("NONEXISTENT", f"EXAMINE NO: Mailbox doesn't exist: {name}")
            self.selected = name
            self._pending_exists = None
            self.last_exists = len(folder.messages)
            return {
                "uidvalidity": folder.uidvalidity,
                "uidnext": folder.uidnext,
                "exists": len(folder.messages),
                "read_only": True,
            }

        return self._run("EXAMINE", examine)

    def uid_search_from(self, first_uid: int) -> defer.Deferred:
        first = max(1, int(first_uid))
        return self._run(
            "UID SEARCH", lambda: sorted(u for u in self._folder().messages if u >= first)
        )

    def _fetch(
        self, kind: str, uids: Iterable[int], shape: Callable[[int, FakeMessage], Any]
    ) -> dict:
        folder = self._folder()
        wanted = [int(u) for u in uids]
        failure = self.mailbox.fetch_failure(folder.name, wanted)
        if failure is not None:
            code, text = failure
            raise CommandFailed(code, f"UID FETCH NO: {text}")
        out = {u: shape(u, folder.messages[u]) for u in wanted if u in folder.messages}
        self.mailbox.fetched += [(kind, folder.name, u) for u in out]
        return out

    def fetch_meta(self, uids: Iterable[int]) -> defer.Deferred:
        def meta(uid: int, m: FakeMessage) -> dict:
            return {
                "size": len(m.raw),
                "internaldate": m.internaldate,
                "bodystructure": m.bodystructure,
                "header": m.header,
            }

        uids = list(uids)
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
            return self._run("UID FETCH", lambda: group(key, uids))

        d: defer.Deferred = defer.succeed(None)
        for key, uids in groups.items():
            d.addCallback(next_group, key, uids)
        d.addCallback(lambda _: results)
        return d

    def fetch_full(self, uids: Iterable[int]) -> defer.Deferred:
        uids = list(uids)
        return self._run("UID FETCH", lambda: self._fetch("full", uids, lambda _u, m: m.raw))

    def idle(self, on_exists: Callable[[int], Any]) -> defer.Deferred:
        if self._closed:
            return defer.fail(ConnectionGone("connection is closed"))
        self.commands.append("IDLE")
        self._idle = defer.Deferred()
        self._on_exists = on_exists
        self._done_sent = False
        self.idling = True
        d = self._idle
        if self._pending_exists is not None:
            # Announced before IDLE started: a server sends it right away.
            count, self._pending_exists = self._pending_exists, None
            self.exists_changed(self.selected or "", count)
        return d

    def done(self) -> None:
        if self._idle is None or self._done_sent or self._closed:
            return
        self._done_sent = True
        self.idling = False
        self.commands.append("DONE")
        d, self._idle, self._on_exists = self._idle, None, None
        d.callback(None)
        queued, self._queued = self._queued, []
        for name, answer, waiting in queued:
            self._answer(name, answer).chainDeferred(waiting)

    def logout(self) -> defer.Deferred:
        def bye() -> None:
            self._logging_out = True
            if self.transport is not None:
                self.transport.loseConnection()

        return self._run("LOGOUT", bye)
