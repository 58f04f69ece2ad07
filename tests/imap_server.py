"""A small, well-behaved IMAP server over a :class:`imapsvc.testing.FakeMailbox`,
speaking real IMAP bytes: LOGIN, AUTHENTICATE (XOAUTH2/OAUTHBEARER, with or
without SASL-IR), CAPABILITY, NOOP, LIST, EXAMINE, SELECT, UNSELECT, STATUS, UID SEARCH,
UID FETCH (literals for header, sections and whole messages; X-GM-MSGID when asked),
UID STORE, UID MOVE, UID COPY, UID EXPUNGE (write-back), IDLE/DONE, ID, ENABLE,
COMPRESS DEFLATE, LOGOUT;
literals in commands, synchronising or LITERAL+; CONDSTORE and QRESYNC (RFC
7162: ``ENABLE QRESYNC``, ``EXAMINE name (CONDSTORE)`` and ``(QRESYNC (v
m))`` answered with HIGHESTMODSEQ or NOMODSEQ, VANISHED (EARLIER) and the
changed messages' flags) when the mailbox offers them. It honours the mailbox's
scripted failures the way a real server shows them (``NO [code]`` to a login
or a FETCH, a dropped connection), so the real client can be checked
against the fake session (``tests/session_contract.py``).

Run it in memory with ``twisted.test.iosim`` (no sockets).
"""

from __future__ import annotations

import base64
import re
import zlib
from typing import Any, Optional

from twisted.protocols.basic import LineReceiver

from imapsvc.core.cursor import internaldate_day, parse_since
from imapsvc.imap import responses
from imapsvc.testing import FakeFolder, FakeMailbox, section_bytes
from imapsvc.testing.condstore import modseq_answer, uid_set
from imapsvc.testing.mailbox import FETCH_DROP, FETCH_GARBLED
from imapsvc.testing.session import list_pattern

_LITERAL = re.compile(rb"\{(\d+)(\+?)\}$")
_SECTION = re.compile(r"BODY(?:\.PEEK)?\[([^\]]*)\](?:<(\d+)\.(\d+)>)?", re.I)


def _quote(text: str) -> bytes:
    data = text.encode("utf-8")
    if any(b > 126 or b < 32 for b in data):
        return b"{%d}\r\n" % len(data) + data
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def render(tree: Any) -> bytes:
    """A text tree (lists, ``str``, ``None``) as IMAP bytes: digit strings
    as numbers, other strings quoted (or a literal), ``None`` as NIL."""
    if tree is None:
        return b"NIL"
    if isinstance(tree, list):
        return b"(" + b" ".join(render(item) for item in tree) + b")"
    text = str(tree)
    if text.isdigit():
        return text.encode("ascii")
    return _quote(text)


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


class ScriptedIMAPServer(LineReceiver):
    """One server-side session over ``mailbox``."""

    delimiter = b"\r\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, mailbox: FakeMailbox) -> None:
        self.mailbox = mailbox
        self.selected: Optional[str] = None
        self.read_write = False
        self.received: list[bytes] = []
        self._texts: list[bytes] = []
        self._literals: list[bytes] = []
        self._literal_left = 0
        self._chunks: list[bytes] = []
        self._idling: Optional[bytes] = None
        self._authenticating: Optional[tuple[bytes, str]] = None
        self._pending_exists: Optional[int] = None
        #: RFC 7162: enabled by ENABLE, or CONDSTORE by an EXAMINE parameter.
        self.condstore_on = False
        self.qresync_on = False
        #: Raw deflate both ways once COMPRESS DEFLATE was answered OK.
        self._deflater: Any = None
        self._inflater: Any = None

    # -- connection

    def connectionMade(self) -> None:  # noqa: N802
        self.mailbox.sessions.append(self)
        self._send(b"* OK [CAPABILITY " + self._caps() + b"] scripted server ready")

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if self in self.mailbox.sessions:
            self.mailbox.sessions.remove(self)

    def server_drop(self, bye: Optional[str] = None) -> None:
        if bye is not None:
            self._send(b"* BYE " + bye.encode("utf-8"))
        self.transport.loseConnection()

    def exists_changed(self, folder: str, count: int) -> None:
        if folder != self.selected:
            return
        if self._idling is not None:
            self._send(b"* %d EXISTS" % count)
        else:
            self._pending_exists = count

    def _caps(self) -> bytes:
        return " ".join(self.mailbox.capability_words).encode("ascii")

    def _send(self, line: bytes) -> None:
        data = line + b"\r\n"
        if self._deflater is not None:
            data = self._deflater.compress(data) + self._deflater.flush(zlib.Z_SYNC_FLUSH)
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._inflater is not None:
            data = self._inflater.decompress(data)
        super().dataReceived(data)

    def _tagged(self, tag: bytes, line: bytes) -> None:
        if self._pending_exists is not None:
            self._send(b"* %d EXISTS" % self._pending_exists)
            self._pending_exists = None
        self._send(tag + b" " + line)

    # -- reading commands (with literals)

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        self.received.append(line)
        if self._authenticating is not None:
            tag, mechanism = self._authenticating
            self._authenticating = None
            self._finish_sasl(tag, mechanism, line)
            return
        if self._idling is not None:
            if line.strip().upper() == b"DONE":
                tag, self._idling = self._idling, None
                self._tagged(tag, b"OK Idle completed.")
            return
        self._texts.append(line)
        match = _LITERAL.search(line)
        if match is not None:
            self._literal_left = int(match.group(1))
            self._chunks = []
            if not match.group(2):
                self._send(b"+ OK")
            self.setRawMode()
            return
        texts, literals = self._texts, self._literals
        self._texts, self._literals = [], []
        self._command(texts, literals)

    def rawDataReceived(self, data: bytes) -> None:  # noqa: N802
        take, rest = data[: self._literal_left], data[self._literal_left :]
        self._chunks.append(take)
        self._literal_left -= len(take)
        if self._literal_left == 0:
            self._literals.append(b"".join(self._chunks))
            self.received.append(self._literals[-1])
            self.setLineMode(rest)

    def _command(self, texts: list[bytes], literals: list[bytes]) -> None:
        tokens = responses.tokenize(texts, literals)
        if len(tokens) < 2:
            self._send(b"* BAD Error in IMAP command")
            return
        tag = responses.as_bytes(tokens[0])
        name = responses.as_bytes(tokens[1]).upper()
        args = tokens[2:]
        if name == b"UID" and args:
            name = b"UID_" + responses.as_bytes(args[0]).upper()
            args = args[1:]
        handler = getattr(self, "do_" + name.decode("ascii", "replace"), None)
        if handler is None:
            self._tagged(tag, b"BAD Unknown command")
            return
        handler(tag, args)

    # -- commands

    def do_CAPABILITY(self, tag: bytes, args: list) -> None:  # noqa: N802
        self._send(b"* CAPABILITY " + self._caps())
        self._tagged(tag, b"OK Capability completed.")

    def do_NOOP(self, tag: bytes, args: list) -> None:  # noqa: N802
        self._tagged(tag, b"OK NOOP completed.")

    def do_LOGOUT(self, tag: bytes, args: list) -> None:  # noqa: N802
        self._send(b"* BYE Logging out")
        self._tagged(tag, b"OK Logout completed.")
        self.transport.loseConnection()

    def _login_answer(self, tag: bytes, mechanism: str, username: str, secret: str) -> None:
        self.mailbox.logins.append((mechanism, username, None, None))
        refusal = self.mailbox.auth_answer(username, secret)
        if refusal is None:
            self._tagged(tag, b"OK [CAPABILITY " + self._caps() + b"] Logged in")
            return
        code, text, status = refusal
        bracket = b"[" + code.encode("ascii") + b"] " if code else b""
        self._tagged(tag, status.encode("ascii") + b" " + bracket + text.encode("utf-8"))

    def _refused(self, tag: bytes, command: str) -> bool:
        """Answer a scripted ``NO`` to ``command`` (:meth:`FakeMailbox.fail_command`)."""
        failure = self.mailbox.command_failure(command)
        if failure is None:
            return False
        code, text, how = failure
        if how == FETCH_GARBLED:
            self._send(tag + b" WHAT?")  # no OK, NO or BAD: unreadable
            return True
        bracket = b"[" + code.encode("ascii") + b"] " if code else b""
        self._tagged(tag, b"NO " + bracket + text.encode("utf-8"))
        return True

    def do_ID(self, tag: bytes, args: list) -> None:  # noqa: N802
        if "ID" not in self.mailbox.capability_words:
            self._tagged(tag, b"BAD Unknown command")
            return
        pairs = args[0] if args and isinstance(args[0], list) else []
        words = [responses.as_bytes(p).decode("utf-8") for p in pairs]
        self.mailbox.client_ids.append(dict(zip(words[::2], words[1::2])))
        answer = [x for kv in self.mailbox.server_id.items() for x in kv]
        self._send(b"* ID " + render(answer))
        self._tagged(tag, b"OK ID completed.")

    def do_ENABLE(self, tag: bytes, args: list) -> None:  # noqa: N802
        words = {responses.as_bytes(a).decode("ascii").upper() for a in args}
        offered = {w.upper() for w in self.mailbox.capability_words}
        if "ENABLE" not in offered:
            self._tagged(tag, b"BAD Unknown command")
            return
        if self._refused(tag, "ENABLE"):
            return
        enabled = []
        if "UTF8=ACCEPT" in words and offered & {"UTF8=ACCEPT", "UTF8=ONLY"}:
            enabled.append(b"UTF8=ACCEPT")
        for extension in ("CONDSTORE", "QRESYNC"):
            if extension in words and extension in offered:
                enabled.append(extension.encode("ascii"))
                self.condstore_on = True  # QRESYNC implies it (RFC 7162 3.2.3)
                self.qresync_on = self.qresync_on or extension == "QRESYNC"
        if enabled:
            self._send(b"* ENABLED " + b" ".join(enabled))
        self._tagged(tag, b"OK Enabled.")

    def do_COMPRESS(self, tag: bytes, args: list) -> None:  # noqa: N802
        offered = {w.upper() for w in self.mailbox.capability_words}
        if "COMPRESS=DEFLATE" not in offered:
            self._tagged(tag, b"BAD Unknown command")
            return
        if self._refused(tag, "COMPRESS"):
            return
        self._tagged(tag, b"OK DEFLATE active")
        self.mailbox.compressions += 1
        self._deflater = zlib.compressobj(wbits=-15)
        self._inflater = zlib.decompressobj(wbits=-15)

    def do_LOGIN(self, tag: bytes, args: list) -> None:  # noqa: N802
        if len(args) != 2:
            self._tagged(tag, b"BAD LOGIN needs two arguments")
            return
        user, secret = (responses.as_bytes(a).decode("utf-8") for a in args)
        self._login_answer(tag, "password", user, secret)

    def do_AUTHENTICATE(self, tag: bytes, args: list) -> None:  # noqa: N802
        mechanism = responses.as_bytes(args[0]).decode("ascii").lower() if args else ""
        if mechanism not in ("xoauth2", "oauthbearer"):
            self._tagged(tag, b"NO Unsupported authentication mechanism")
            return
        if len(args) > 1:
            self._finish_sasl(tag, mechanism, responses.as_bytes(args[1]))
        else:
            self._authenticating = (tag, mechanism)
            self._send(b"+ ")

    def _finish_sasl(self, tag: bytes, mechanism: str, initial: bytes) -> None:
        try:
            message = base64.b64decode(initial, validate=True).decode("utf-8")
        except ValueError:
            self._tagged(tag, b"BAD Invalid base64 data")
            return
        user = secret = ""
        for field in message.split("\x01"):
            for prefix in ("user=", "n,a="):
                if field.startswith(prefix):
                    user = field[len(prefix) :].rstrip(",")
            if field.startswith("auth=Bearer "):
                secret = field[len("auth=Bearer ") :]
        self._login_answer(tag, mechanism, user, secret)

    def do_LIST(self, tag: bytes, args: list) -> None:  # noqa: N802
        if self._refused(tag, "LIST"):
            return
        pattern = responses.as_bytes(args[1]).decode("utf-8") if len(args) > 1 else "*"
        matches = list_pattern(pattern)
        for folder in self.mailbox.folders.values():
            if not matches(folder.name, folder.delimiter):
                continue
            flags = " ".join(folder.flags).encode("ascii")
            delimiter = b"NIL" if folder.delimiter is None else _quote(folder.delimiter)
            self._send(b"* LIST (" + flags + b") " + delimiter + b" " + _quote(folder.name))
        self._tagged(tag, b"OK List completed.")

    def do_EXAMINE(self, tag: bytes, args: list, select: bool = False) -> None:  # noqa: N802
        name = responses.as_bytes(args[0]).decode("utf-8") if args else ""
        if self._refused(tag, "SELECT" if select else "EXAMINE"):
            return
        try:
            since = self._modseq_parameters(args[1:])
        except ValueError as error:
            self._tagged(tag, b"BAD " + str(error).encode("ascii"))
            return
        folder = self.mailbox.folders.get(name)
        self.read_write = select
        if folder is None:
            self.selected = None
            self._tagged(tag, b"NO [NONEXISTENT] Mailbox doesn't exist: " + name.encode())
            return
        self.selected = name
        self._pending_exists = None
        self._send(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)")
        self._send(b"* %d EXISTS" % len(folder.messages))
        self._send(b"* 0 RECENT")
        self._send(b"* OK [UIDVALIDITY %d] UIDs valid" % folder.uidvalidity)
        self._send(b"* OK [UIDNEXT %d] Predicted next UID" % folder.uidnext)
        if self.condstore_on:
            self._send_modseq(folder, since)
        if select:
            self._tagged(tag, b"OK [READ-WRITE] Select completed.")
        else:
            self._tagged(tag, b"OK [READ-ONLY] Examine completed.")

    def _modseq_parameters(self, params: list) -> Optional[tuple[int, int]]:
        """``(CONDSTORE)`` or ``(QRESYNC (uidvalidity modseq))`` after the
        name: turns CONDSTORE on; the QRESYNC pair, if any.
        :raises ValueError: what the server answers BAD to."""
        if not params:
            return None
        offered = {w.upper() for w in self.mailbox.capability_words}
        words = params[0] if isinstance(params[0], list) else []
        head = responses.as_bytes(words[0]).upper() if words else b""
        if head == b"CONDSTORE" and len(words) == 1 and offered & {"CONDSTORE", "QRESYNC"}:
            self.condstore_on = True
            return None
        if head == b"QRESYNC" and len(words) == 2 and isinstance(words[1], list):
            if not self.qresync_on:
                raise ValueError("QRESYNC not enabled")
            pair = [responses.as_bytes(t) for t in words[1][:2]]
            if len(pair) == 2 and all(p.isdigit() for p in pair):
                return int(pair[0]), int(pair[1])
        raise ValueError("Unknown select parameter")

    def _send_modseq(self, folder: FakeFolder, since: Optional[tuple[int, int]]) -> None:
        answer = modseq_answer(folder, since)
        if answer.highest_modseq is None:
            self._send(b"* OK [NOMODSEQ] Sorry, this mailbox format doesn't support"
                       b" modsequences")
            return
        self._send(b"* OK [HIGHESTMODSEQ %d] Highest" % answer.highest_modseq)
        if answer.vanished:
            self._send(b"* VANISHED (EARLIER) " + uid_set(answer.vanished))
        order = sorted(folder.messages)
        for uid in answer.changed:
            message = folder.messages[uid]
            flags = " ".join(sorted(message.flags)).encode("ascii")
            self._send(b"* %d FETCH (UID %d FLAGS (%s) MODSEQ (%d))"
                       % (order.index(uid) + 1, uid, flags, message.modseq))

    def do_UNSELECT(self, tag: bytes, args: list) -> None:  # noqa: N802
        if "UNSELECT" not in self.mailbox.capability_words:
            self._tagged(tag, b"BAD Unknown command")
            return
        if self.selected is None:
            self._tagged(tag, b"BAD No mailbox selected")
            return
        self.selected = None
        self._tagged(tag, b"OK Returned to authenticated state.")

    def do_STATUS(self, tag: bytes, args: list) -> None:  # noqa: N802
        name = responses.as_bytes(args[0]).decode("utf-8") if args else ""
        folder = self.mailbox.folders.get(name)
        if folder is None or len(args) < 2 or not isinstance(args[1], list):
            self._tagged(tag, b"NO [NONEXISTENT] Mailbox doesn't exist: " + name.encode())
            return
        self.mailbox.status_calls.append(name)
        values = {
            "MESSAGES": len(folder.messages),
            "RECENT": 0,
            "UIDNEXT": folder.uidnext,
            "UIDVALIDITY": folder.uidvalidity,
            "UNSEEN": sum(1 for m in folder.messages.values() if "\\Seen" not in m.flags),
        }
        out = []
        for item in args[1]:
            key = responses.as_bytes(item).decode("ascii").upper()
            if key in values:
                out.append(b"%s %d" % (key.encode("ascii"), values[key]))
        self._send(b"* STATUS " + _quote(name) + b" (" + b" ".join(out) + b")")
        self._tagged(tag, b"OK Status completed.")

    def do_SELECT(self, tag: bytes, args: list) -> None:  # noqa: N802
        self.do_EXAMINE(tag, args, select=True)

    def _writable(self, tag: bytes, command: str) -> Optional[FakeFolder]:
        folder = self._folder()
        if folder is None:
            self._tagged(tag, b"BAD No mailbox selected")
            return None
        if not self.read_write:
            self._tagged(tag, b"NO Mailbox is read-only.")
            return None
        failure = self.mailbox.write_failure(command)
        if failure is not None:
            code, text = failure
            bracket = b"[" + code.encode("ascii") + b"] " if code else b""
            self._tagged(tag, b"NO " + bracket + text.encode("utf-8"))
            return None
        return folder

    def do_UID_STORE(self, tag: bytes, args: list) -> None:  # noqa: N802
        if self._folder() is not None and not self.read_write:
            # As Dovecot: OK, and an EXAMINEd folder's flags stay as they are.
            self._tagged(tag, b"OK Store completed.")
            return
        folder = self._writable(tag, "UID STORE")
        if folder is None:
            return
        uids = self._uid_set(responses.as_bytes(args[0]).decode("ascii"), folder)
        flags = [responses.as_bytes(f).decode("ascii") for f in args[2]]
        self.mailbox.store_flags(folder.name, uids, flags)
        self._tagged(tag, b"OK Store completed.")

    def _copy_or_move(self, tag: bytes, args: list, command: str, move: bool) -> None:
        folder = self._writable(tag, command)
        if folder is None:
            return
        uids = self._uid_set(responses.as_bytes(args[0]).decode("ascii"), folder)
        target = responses.as_bytes(args[1]).decode("utf-8")
        if target not in self.mailbox.folders:
            self._tagged(tag, b"NO [TRYCREATE] Mailbox doesn't exist: " + target.encode())
            return
        if move:
            for seq in self.mailbox.move(folder.name, uids, target):
                self._send(b"* %d EXPUNGE" % seq)
        else:
            self.mailbox.copy(folder.name, uids, target)
        self._tagged(tag, b"OK " + command.split()[1].encode() + b" completed.")

    def do_UID_COPY(self, tag: bytes, args: list) -> None:  # noqa: N802
        self._copy_or_move(tag, args, "UID COPY", move=False)

    def do_UID_MOVE(self, tag: bytes, args: list) -> None:  # noqa: N802
        if "MOVE" not in self.mailbox.capability_words:
            self._tagged(tag, b"BAD Unknown command")
            return
        self._copy_or_move(tag, args, "UID MOVE", move=True)

    def do_UID_EXPUNGE(self, tag: bytes, args: list) -> None:  # noqa: N802
        if "UIDPLUS" not in self.mailbox.capability_words:
            self._tagged(tag, b"BAD Unknown command")
            return
        folder = self._writable(tag, "UID EXPUNGE")
        if folder is None:
            return
        uids = self._uid_set(responses.as_bytes(args[0]).decode("ascii"), folder)
        for seq in self.mailbox.expunge(folder.name, uids):
            self._send(b"* %d EXPUNGE" % seq)
        self._tagged(tag, b"OK Expunge completed.")

    def _folder(self) -> Optional[FakeFolder]:
        return self.mailbox.folders.get(self.selected) if self.selected else None

    def _uid_set(self, text: str, folder: FakeFolder) -> list[int]:
        highest = max(folder.messages, default=0)
        out: list[int] = []
        for part in text.split(","):
            lo, _, hi = part.partition(":")
            first = highest if lo == "*" else int(lo)
            last = first if not hi else (highest if hi == "*" else int(hi))
            first, last = min(first, last), max(first, last)
            out += [u for u in sorted(folder.messages) if first <= u <= last]
        return sorted(set(out))

    def do_UID_SEARCH(self, tag: bytes, args: list) -> None:  # noqa: N802
        folder = self._folder()
        if folder is None:
            self._tagged(tag, b"BAD No mailbox selected")
            return
        words = [responses.as_bytes(a).decode("ascii") for a in args if not isinstance(a, list)]
        if words[:1] == ["SINCE"] and len(words) > 1:
            day = parse_since(words[1])
            uids = [u for u, m in sorted(folder.messages.items())
                    if (internaldate_day(m.internaldate) or day) >= day]
        elif words[:1] == ["UID"]:
            uids = self._uid_set(words[1], folder)
        else:
            uids = sorted(folder.messages)
        self._send(b"* SEARCH" + b"".join(b" %d" % u for u in uids))
        self._tagged(tag, b"OK Search completed.")

    def do_UID_FETCH(self, tag: bytes, args: list) -> None:  # noqa: N802
        folder = self._folder()
        if folder is None or len(args) < 2:
            self._tagged(tag, b"BAD No mailbox selected")
            return
        uids = self._uid_set(responses.as_bytes(args[0]).decode("ascii"), folder)
        failure = self.mailbox.fetch_failure(folder.name, uids)
        if failure is not None:
            code, text, how = failure
            if how == FETCH_DROP:
                self.transport.loseConnection()
                return
            if how == FETCH_GARBLED:
                self._send(tag + b" WHAT?")  # no OK, NO or BAD: unreadable
                return
            bracket = b"[" + code.encode("ascii") + b"] " if code else b""
            self._tagged(tag, b"NO " + bracket + text.encode("utf-8"))
            return
        # The item list, as the client wrote it (its last line(s)).
        items = b" ".join(line for line in self.received[-1:]).decode("latin-1").upper()
        order = sorted(folder.messages)
        for uid in uids:
            message = folder.messages[uid]
            out = [b"UID %d" % uid]
            if "RFC822.SIZE" in items:
                out.append(b"RFC822.SIZE %d" % len(message.raw))
            if "INTERNALDATE" in items:
                out.append(b'INTERNALDATE "' + message.internaldate.encode("ascii") + b'"')
            if "BODYSTRUCTURE" in items:
                out.append(b"BODYSTRUCTURE " + render(message.bodystructure))
            if "X-GM-MSGID" in items and message.gm_msgid is not None:
                out.append(b"X-GM-MSGID " + message.gm_msgid.encode("ascii"))
            for match in _SECTION.finditer(items):
                section, origin, length = match.group(1), match.group(2), match.group(3)
                data = section_bytes(message.raw, section)
                if data is None:
                    data = b""
                key = b"BODY[" + section.encode("ascii") + b"]"
                if length is not None:
                    start = int(origin)
                    data = data[start : start + int(length)]
                    key += b"<%d>" % start
                out.append(key + b" " + _literal(data))
            self._send(b"* %d FETCH (" % (order.index(uid) + 1) + b" ".join(out) + b")")
        self._tagged(tag, b"OK Fetch completed.")

    def do_IDLE(self, tag: bytes, args: list) -> None:  # noqa: N802
        self._idling = tag
        self._send(b"+ idling")
        if self._pending_exists is not None:
            self._send(b"* %d EXISTS" % self._pending_exists)
            self._pending_exists = None

