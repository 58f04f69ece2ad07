"""CONDSTORE and QRESYNC (RFC 7162) for the fakes: what a server answers to
``EXAMINE name (CONDSTORE)`` and ``EXAMINE name (QRESYNC (v m))`` over a
:class:`~imapsvc.testing.mailbox.FakeFolder` (shared with the tests'
scripted server), and the fake session's ``enable_condstore`` and
``examine_modseq`` (with ``enable_utf8``: the same ENABLE), answered as
:class:`~imapsvc.imap.protocol.FolderIMAPClient` shapes them
(``tests/session_contract_modseq.py`` checks both).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Optional

import attr
from twisted.internet import defer

from imapsvc.imap import condstore as C
from imapsvc.imap.errors import ProtocolViolation
from imapsvc.testing.mailbox import FETCH_GARBLED, FakeFolder

_QRESYNC = re.compile(rb"^\s*\(QRESYNC \(([0-9]+) ([0-9]+)\)\)\s*$")


@attr.s(frozen=True, auto_attribs=True)
class ModseqAnswer:
    """The mod-sequence part of an EXAMINE/SELECT answer.

    :ivar highest_modseq: ``[HIGHESTMODSEQ n]``, or ``None`` for ``[NOMODSEQ]``.
    :ivar vanished: UIDs for ``* VANISHED (EARLIER)`` (QRESYNC only).
    :ivar changed: UIDs whose ``FETCH (UID FLAGS MODSEQ)`` the server
        sends (QRESYNC only): changed or added since the client's modseq.
    """

    highest_modseq: Optional[int]
    vanished: tuple[int, ...] = ()
    changed: tuple[int, ...] = ()


def modseq_answer(folder: FakeFolder, since: Optional[tuple[int, int]] = None) -> ModseqAnswer:
    """What a server answers about ``folder`` opened with CONDSTORE, or
    QRESYNC with ``since`` = ``(uidvalidity, modseq)``. Another UIDVALIDITY
    makes the server ignore the rest (RFC 7162 3.2.5): no VANISHED then."""
    if folder.nomodseq:
        return ModseqAnswer(None)
    if since is None or since[0] != folder.uidvalidity:
        return ModseqAnswer(folder.highest_modseq)
    modseq = since[1]
    return ModseqAnswer(folder.highest_modseq, tuple(folder.vanished_since(modseq)),
                        tuple(folder.changed_since(modseq)))


def qresync_since(parameters: bytes) -> Optional[tuple[int, int]]:
    """``(uidvalidity, modseq)`` of `` (QRESYNC (v m))``; ``None`` for
    `` (CONDSTORE)``."""
    match = _QRESYNC.match(parameters)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def uid_set(uids: Iterable[int]) -> bytes:
    """Sorted UIDs as a compact IMAP set: ``1,3:5,9``."""
    ranges: list[list[int]] = []
    for uid in sorted(set(uids)):
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1][1] = uid
        else:
            ranges.append([uid, uid])
    return b",".join(b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in ranges)


class FakeEnable:
    """Mixed into :class:`~imapsvc.testing.session.FakeIMAPSession`: ENABLE
    (UTF8=ACCEPT, QRESYNC) and EXAMINE/SELECT with mod-sequence parameters.

    :ivar modseq_mode: ``QRESYNC``, ``CONDSTORE`` or ``None`` (set by
        :meth:`enable_condstore`, as the real client's).
    """

    mailbox: Any
    capabilities: Any
    utf8_accept: bool
    modseq_mode: Optional[str] = None

    def _run(self, name: str, answer: Callable[[], Any], soft: bool = False) -> defer.Deferred:
        raise NotImplementedError

    def _open_folder(self, verb: str, name: str, writable: bool,
                     parameters: bytes = b"") -> defer.Deferred:
        raise NotImplementedError

    def enable_utf8(self) -> defer.Deferred:
        """``ENABLE UTF8=ACCEPT`` when ``ENABLE`` and ``UTF8=ACCEPT`` (or
        ``ONLY``) are offered: whether it got enabled."""
        caps = self.capabilities or {}
        utf8 = {bytes(v).upper() for v in (caps.get(b"UTF8") or [])}
        if b"ENABLE" not in caps or not utf8 & {b"ACCEPT", b"ONLY"}:
            return defer.succeed(False)

        def enable() -> bool:
            # A scripted refusal: advisory, as the real client takes it.
            self.utf8_accept = self.mailbox.command_failure("ENABLE") is None
            return self.utf8_accept

        return self._run("ENABLE", enable)

    def enable_condstore(self, qresync: bool = True) -> defer.Deferred:
        """The mode to use after login; ``ENABLE QRESYNC`` only when asked
        for and offered (CONDSTORE needs no command). A scripted refusal
        (``mailbox.fail_command("ENABLE")``) fires ``None`` and keeps the
        session."""
        mode = C.offered_mode(self.capabilities, qresync)
        if mode != C.MODE_QRESYNC:
            self.modseq_mode = mode
            return defer.succeed(mode)

        def enable() -> Optional[str]:
            failure = self.mailbox.command_failure("ENABLE")
            if failure is not None:
                if failure[2] == FETCH_GARBLED:
                    raise ProtocolViolation("bad tagged answer to b'ENABLE'")
                return None
            self.modseq_mode = C.enabled_mode(mode, [("ENABLED", [mode])])
            return self.modseq_mode

        return self._run("ENABLE", enable)

    def examine_modseq(self, name: str, known: Optional[C.KnownState] = None,
                       select: bool = False) -> defer.Deferred:
        """EXAMINE (or SELECT) with the parameters of the enabled mode; with
        a mode the answer gains ``modseq``."""
        verb = "SELECT" if select else "EXAMINE"
        return self._open_folder(verb, name, select,
                                 C.open_parameters(self.modseq_mode, known))


def open_state(folder: FakeFolder, parameters: bytes) -> C.OpenState:
    """The client's reading of the answer to an open with ``parameters``
    (through the client's own parsers)."""
    answer = modseq_answer(folder, qresync_since(parameters))
    if answer.highest_modseq is None:
        codes = [("OK", "NOMODSEQ", "", "Sorry, this mailbox format doesn't support modsequences")]
    else:
        codes = [("OK", "HIGHESTMODSEQ", str(answer.highest_modseq), "Highest")]
    untagged: list[tuple[str, Any]] = []
    if answer.vanished:
        untagged.append(("VANISHED", C.parse_vanished(b"(EARLIER) " + uid_set(answer.vanished))))
    return C.open_state(codes, untagged)
