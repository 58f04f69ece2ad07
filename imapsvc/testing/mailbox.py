"""An IMAP server's state for the fakes: folders with a UIDVALIDITY and a
HIGHESTMODSEQ (RFC 7162), messages kept as exact bytes under their UID
(with flags, which only the opt-in write-back changes: fetching only
peeks), and scripted failures (a
refused login with a code, NO to a FETCH that names a UID, NO to a
write-back command, a dropped connection). Shared by every session
connected to it: :class:`~imapsvc.testing.session.FakeIMAPSession` and the
tests' scripted IMAP server (``tests/imap_server.py``).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import attr

from imapsvc.imap.responses import parse_capabilities
from imapsvc.testing.mime import bodystructure_of, split_header

Caps = dict[bytes, Optional[list[bytes]]]
#: A refused login: ``(code, text, status)``, status ``"NO"`` or ``"BAD"``.
Refusal = tuple[Optional[str], str, str]

#: How a scripted FETCH failure shows (:meth:`FakeMailbox.fail_fetch`).
FETCH_NO, FETCH_GARBLED, FETCH_DROP = "no", "garbled", "drop"

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


@attr.s(auto_attribs=True)
class FakeMessage:
    """One message: exact bytes, INTERNALDATE, and its BODYSTRUCTURE (text
    tree; computed from the bytes unless given, e.g. a broken one)."""

    raw: bytes
    internaldate: str = DEFAULT_INTERNALDATE
    bodystructure: Any = None
    flags: set[str] = attr.Factory(set)
    #: Gmail's X-GM-MSGID (decimal): the same in every folder (label) that
    #: shows this message; sent only when the server offers X-GM-EXT-1.
    gm_msgid: Optional[str] = None
    #: The mod-sequence of its last change (RFC 7162), set by the folder.
    modseq: int = 0

    def __attrs_post_init__(self) -> None:
        if self.bodystructure is None:
            self.bodystructure = bodystructure_of(self.raw)

    @property
    def header(self) -> bytes:
        return split_header(self.raw)[0]


@attr.s(auto_attribs=True)
class FakeFolder:
    """One folder. Every change (a message added, flags changed, messages
    expunged) takes the next mod-sequence: :attr:`highest_modseq` moves as
    on a CONDSTORE server, and :attr:`expunged` keeps the mod-sequence each
    UID vanished at (what ``VANISHED (EARLIER)`` reports)."""

    name: str
    uidvalidity: int
    delimiter: Optional[str] = "/"
    flags: tuple[str, ...] = ("\\HasNoChildren",)
    messages: dict[int, FakeMessage] = attr.Factory(dict)
    uidnext: int = 1
    highest_modseq: int = 1
    #: The folder keeps no mod-sequences: its EXAMINE answers ``[NOMODSEQ]``.
    nomodseq: bool = False
    expunged: dict[int, int] = attr.Factory(dict)

    def next_modseq(self) -> int:
        self.highest_modseq += 1
        return self.highest_modseq

    def vanished_since(self, modseq: int) -> list[int]:
        """UIDs expunged after mod-sequence ``modseq``, sorted."""
        return sorted(uid for uid, when in self.expunged.items() if when > modseq)

    def changed_since(self, modseq: int) -> list[int]:
        """UIDs of the messages changed (or added) after ``modseq``, sorted."""
        return sorted(uid for uid, m in self.messages.items() if m.modseq > modseq)


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
        self._auth_refusals: list[Refusal] = []
        self.auth_refusal: Optional[Refusal] = None
        self._fetch_failures: dict[tuple[str, int], tuple[Optional[str], str, str]] = {}
        #: What the server answers to ``ID`` (RFC 2971), and the client's
        #: ``ID`` fields it was sent, one dict per ``ID``.
        self.server_id: dict[str, str] = {"name": "FakeMailbox"}
        self.client_ids: list[dict[str, str]] = []
        #: Sessions that switched to COMPRESS=DEFLATE (RFC 4978).
        self.compressions = 0
        self._write_failures: dict[str, tuple[Optional[str], str, Optional[int], str]] = {}
        #: ``(kind, folder, uid)`` of every message part a fake session
        #: handed out: kind ``meta``, ``sections`` or ``full``.
        self.fetched: list[tuple[str, str, int]] = []
        #: Live sessions (fake or scripted-server side): told about new mail
        #: with ``exists_changed(folder, count)`` and ``server_drop()``.
        self.sessions: list[Any] = []
        #: Folders named by every STATUS command, in order.
        self.status_calls: list[str] = []

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
        gm_msgid: Optional[str] = None,
        announce: bool = True,
    ) -> int:
        """Deliver a message; sessions that selected ``folder`` hear
        ``* n EXISTS`` (at once while idling, else with their next command)
        unless ``announce`` is false (a burst: :meth:`announce` it once).
        :return: its UID."""
        box = self.folders[folder]
        uid = box.uidnext
        box.uidnext += 1
        box.messages[uid] = FakeMessage(raw, internaldate, bodystructure, gm_msgid=gm_msgid,
                                        modseq=box.next_modseq())
        if announce:
            self.announce(folder)
        return uid

    def announce(self, folder: str = "INBOX") -> None:
        """Tell the sessions that selected ``folder`` its message count."""
        count = len(self.folders[folder].messages)
        for session in list(self.sessions):
            session.exists_changed(folder, count)

    def recreate(self, folder: str = "INBOX") -> FakeFolder:
        """The folder deleted and created again: a new UIDVALIDITY, UIDs from 1."""
        old = self.folders[folder]
        return self.add_folder(folder, delimiter=old.delimiter)

    def set_nomodseq(self, nomodseq: bool = True, folder: str = "INBOX") -> None:
        """From now on ``folder`` answers ``[NOMODSEQ]`` (or, set back,
        ``[HIGHESTMODSEQ n]`` again)."""
        self.folders[folder].nomodseq = nomodseq

    def uids(self, folder: str = "INBOX") -> list[int]:
        return sorted(self.folders[folder].messages)

    def flags(self, uid: int, folder: str = "INBOX") -> set[str]:
        return set(self.folders[folder].messages[uid].flags)

    # -- write-back (shared by the fake session and the scripted server)

    def store_flags(self, folder: str, uids: Iterable[int], flags: Iterable[str]) -> None:
        """``+FLAGS``: UIDs that are gone are ignored, as on a server; a
        message whose flags change takes a new mod-sequence."""
        box = self.folders[folder]
        wanted = set(flags)
        for uid in uids:
            m = box.messages.get(uid)
            if m is not None and not wanted <= m.flags:
                m.flags.update(wanted)
                m.modseq = box.next_modseq()

    def copy(self, folder: str, uids: Iterable[int], target: str) -> list[int]:
        """Copy (new UIDs in ``target``, flags kept but ``\\Recent``);
        :raises KeyError: no such target (the server's ``[TRYCREATE]``)."""
        dest = self.folders[target]
        box = self.folders[folder]
        out = []
        for uid in sorted(set(uids)):
            m = box.messages.get(uid)
            if m is None:
                continue
            new = dest.uidnext
            dest.uidnext += 1
            dest.messages[new] = FakeMessage(m.raw, m.internaldate, m.bodystructure, set(m.flags),
                                             gm_msgid=m.gm_msgid, modseq=dest.next_modseq())
            out.append(new)
        if out:
            for session in list(self.sessions):
                session.exists_changed(target, len(dest.messages))
        return out

    def expunge(self, folder: str, uids: Iterable[int], only_deleted: bool = True) -> list[int]:
        """Remove messages (at one new mod-sequence); :return: their
        sequence numbers as ``* n EXPUNGE`` reports them, one after the
        other (each shifts the rest)."""
        box = self.folders[folder]
        gone, removed = [], []
        for uid in sorted(set(uids), reverse=True):
            m = box.messages.get(uid)
            if m is None or (only_deleted and "\\Deleted" not in m.flags):
                continue
            gone.append(sorted(box.messages).index(uid) + 1)
            del box.messages[uid]
            removed.append(uid)
        if removed:
            modseq = box.next_modseq()
            box.expunged.update((uid, modseq) for uid in removed)
        return gone

    def move(self, folder: str, uids: Iterable[int], target: str) -> list[int]:
        """RFC 6851 MOVE: copy, then expunge the originals."""
        uids = list(uids)
        self.copy(folder, uids, target)
        return self.expunge(folder, uids, only_deleted=False)

    def fail_write(self, command: str, code: Optional[str] = "SERVERBUG",
                   text: str = "Internal error", times: Optional[int] = 1,
                   how: str = FETCH_NO) -> None:
        """Answer ``NO [code] text`` to the next ``times`` write-back
        commands named ``command`` (``"UID MOVE"``, ``"UID STORE"``, ...;
        ``times=None``: every one). ``EXAMINE``, ``SELECT`` and ``LIST``
        honour it too (:meth:`fail_command`), and ``how="garbled"`` (an
        answer no client can read) instead of the NO."""
        self._write_failures[command.upper()] = (code, text, times, how)

    #: ``NO [code] text`` to the next ``times`` commands named ``command``
    #: (``"EXAMINE"``, ``"LIST"``, ``"UID STORE"``, ...).
    fail_command = fail_write

    def write_failure(self, command: str) -> Optional[tuple[Optional[str], str]]:
        failure = self.command_failure(command)
        return None if failure is None else failure[:2]

    def command_failure(self, command: str) -> Optional[tuple[Optional[str], str, str]]:
        """``(code, text, how)`` of the scripted failure of ``command`` now
        due, if any (counted as used)."""
        entry = self._write_failures.get(command.upper())
        if entry is None:
            return None
        code, text, times, how = entry
        if times is not None:
            if times <= 1:
                del self._write_failures[command.upper()]
            else:
                self._write_failures[command.upper()] = (code, text, times - 1, how)
        return (code, text, how)

    # -- scripted failures

    def refuse_logins(
        self, code: Optional[str] = "AUTHENTICATIONFAILED", text: str = "Authentication failed.",
        times: Optional[int] = 1, status: str = "NO",
    ) -> None:
        """Refuse the next ``times`` logins (``None``: every login, until
        :meth:`accept_logins`) with ``status [code] text`` (``status``
        ``"NO"`` or ``"BAD"``)."""
        if times is None:
            self.auth_refusal = (code, text, status)
        else:
            self._auth_refusals += [(code, text, status)] * times

    def accept_logins(self) -> None:
        """Forget every scripted login refusal (the accounts still apply)."""
        self._auth_refusals, self.auth_refusal = [], None

    def auth_answer(self, username: str, secret: str) -> Optional[Refusal]:
        """``None`` to accept a login, else the ``(code, text, status)`` of
        its refusal."""
        if self._auth_refusals:
            return self._auth_refusals.pop(0)
        if self.auth_refusal is not None:
            return self.auth_refusal
        if self.accounts is not None and self.accounts.get(username) != secret:
            return ("AUTHENTICATIONFAILED", "Authentication failed.", "NO")
        return None

    def fail_fetch(
        self, uid: int, code: Optional[str] = "SERVERBUG", text: str = "Internal error",
        folder: str = "INBOX", how: str = FETCH_NO,
    ) -> None:
        """Fail every UID FETCH naming ``uid``: ``how`` is ``"no"`` (answer
        ``NO [code] text``), ``"garbled"`` (a tagged answer no client can
        read: a protocol violation) or ``"drop"`` (close the connection)."""
        self._fetch_failures[(folder, uid)] = (code, text, how)

    def heal_fetch(self, uid: Optional[int] = None, folder: str = "INBOX") -> None:
        """Forget the scripted FETCH failure of ``uid`` (``None``: of all)."""
        if uid is None:
            self._fetch_failures.clear()
        else:
            self._fetch_failures.pop((folder, uid), None)

    def fetch_failure(
        self, folder: str, uids: Iterable[int]
    ) -> Optional[tuple[Optional[str], str, str]]:
        """``(code, text, how)`` of the first failing UID of ``uids``."""
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
