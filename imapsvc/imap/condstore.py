"""CONDSTORE and QRESYNC (RFC 7162): a reconnect that finds nothing new
costs one EXAMINE instead of EXAMINE + UID SEARCH.

Used only when the server offers them (``IMAP_MODSEQ``):

- ``condstore`` (the default): every folder is opened with ``EXAMINE name
  (CONDSTORE)``, which enables CONDSTORE without a command of its own;
- ``qresync``: ``ENABLE QRESYNC`` once after login, then ``EXAMINE name
  (QRESYNC (uidvalidity modseq))`` when a HIGHESTMODSEQ of the same
  UIDVALIDITY is known (else ``(CONDSTORE)``). The answer then also carries
  ``VANISHED (EARLIER)`` and FETCH responses for what changed since
  ``modseq``; imapsvc publishes new mail only, so those are parsed
  (bounded) and counted, nothing more. The ENABLE costs one round trip per
  connection.

Either way the answer carries ``[HIGHESTMODSEQ n]`` (or ``[NOMODSEQ]``: the
folder keeps no mod-sequences).

The shortcut (:func:`nothing_new`) is an optimisation, never a decision: the
message ledger still decides what is new, and the shortcut is refused
whenever a doubt exists (UIDVALIDITY changed, NOMODSEQ, a mod-sequence out
of range, UIDNEXT beyond the cursor or absent).

Pure functions; the commands are in :mod:`imapsvc.imap.condstore_commands`.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional, Sequence

import attr

#: RFC 7162 section 7: mod-sequence-value = 1*DIGIT, 1 <= n <= 2^63 - 1
#: (it fits Postgres ``bigint``).
MAX_MODSEQ = 2**63 - 1
#: UIDs are 32-bit (RFC 3501 nz-number).
MAX_UID = 2**32 - 1
#: A VANISHED response with more ranges than this is not parsed further:
#: its count is a lower bound (nothing depends on it).
MAX_VANISHED_RANGES = 10_000

MODE_QRESYNC = "QRESYNC"
MODE_CONDSTORE = "CONDSTORE"

_DIGITS = re.compile(r"^[0-9]{1,20}$")
_SET_ITEM = re.compile(rb"^([0-9]{1,10})(?::([0-9]{1,10}))?$")


def parse_modseq(text: Any) -> Optional[int]:
    """A mod-sequence value, or ``None`` when it is not one (not digits,
    zero, or beyond 2^63 - 1: a hostile 64-bit overflow is not trusted)."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    text = str(text).strip()
    if not _DIGITS.match(text):
        return None
    value = int(text)
    return value if 1 <= value <= MAX_MODSEQ else None


def offered_mode(caps: Any, qresync: bool = True) -> Optional[str]:
    """Which mode to use after login: QRESYNC (asked for, offered with
    ENABLE), else CONDSTORE when offered (QRESYNC implies it), else
    ``None``. ``caps`` is the client's capability dict (bytes keys) or an
    iterable of names."""
    names = {(k.decode("latin-1") if isinstance(k, bytes) else str(k)).upper()
             for k in (caps or ())}
    if qresync and "ENABLE" in names and "QRESYNC" in names:
        return MODE_QRESYNC
    if "CONDSTORE" in names or "QRESYNC" in names:
        return MODE_CONDSTORE
    return None


def enable_line(mode: str) -> bytes:
    """``ENABLE QRESYNC`` (RFC 7162 section 3.2.3: it implies CONDSTORE) or
    ``ENABLE CONDSTORE``."""
    if mode not in (MODE_QRESYNC, MODE_CONDSTORE):
        raise ValueError(f"unknown mode {mode!r}")
    return b"ENABLE " + mode.encode("ascii")


def enabled_mode(requested: str, untagged: Iterable[tuple[str, Any]]) -> Optional[str]:
    """The mode the server confirmed in ``* ENABLED``: QRESYNC, or CONDSTORE
    (implied by QRESYNC, or asked for alone). CONDSTORE needs no ENABLE
    (selecting with ``(CONDSTORE)`` enables it), so a server that offers it
    but confirms nothing still gets CONDSTORE."""
    words: set[str] = set()
    for keyword, tokens in untagged:
        if keyword == "ENABLED":
            words.update(_word(t) for t in tokens if isinstance(t, (str, bytes)))
    if requested == MODE_QRESYNC and MODE_QRESYNC in words:
        return MODE_QRESYNC
    if requested == MODE_CONDSTORE or MODE_CONDSTORE in words:
        return MODE_CONDSTORE
    return None


def _word(token: Any) -> str:
    return (token.decode("latin-1") if isinstance(token, bytes) else str(token)).upper()


def open_parameters(mode: Optional[str], known: Optional[KnownState],
                    uid_validity: Optional[str] = None) -> bytes:
    """What follows the mailbox name in EXAMINE/SELECT: `` (QRESYNC
    (uidvalidity modseq))`` when QRESYNC is enabled and a HIGHESTMODSEQ of
    the UIDVALIDITY we hold is known, `` (CONDSTORE)`` for either mode
    otherwise, ``b""`` without one."""
    if mode is None:
        return b""
    if (mode == MODE_QRESYNC and known is not None and known.modseq is not None
            and _valid_uidvalidity(known.uid_validity)
            and (uid_validity is None or str(uid_validity) == known.uid_validity)):
        return b" (QRESYNC (%d %d))" % (int(known.uid_validity), known.modseq)
    return b" (CONDSTORE)"


def _valid_uidvalidity(text: Optional[str]) -> bool:
    return bool(text) and str(text).isdigit() and 0 < int(str(text)) <= MAX_UID


@attr.s(frozen=True, auto_attribs=True)
class OpenState:
    """What an EXAMINE/SELECT answer says about mod-sequences.

    :ivar highest_modseq: ``[HIGHESTMODSEQ n]``; ``None`` when absent,
        NOMODSEQ, or not a valid mod-sequence.
    :ivar nomodseq: the server said ``[NOMODSEQ]``.
    :ivar vanished: UIDs reported by ``VANISHED (EARLIER)`` (a lower bound
        when the response was cut at :data:`MAX_VANISHED_RANGES`).
    :ivar invalid: a HIGHESTMODSEQ that was not a mod-sequence (kept for
        the log: the shortcut is off for this pass).
    """

    highest_modseq: Optional[int] = None
    nomodseq: bool = False
    vanished: int = 0
    invalid: Optional[str] = None


def open_state(codes: Sequence[tuple[str, Optional[str], str, str]],
               untagged: Sequence[tuple[str, Any]] = ()) -> OpenState:
    """Read the response codes (``(kind, code, args, text)``, as the client
    collects them) and untagged VANISHED data of an EXAMINE/SELECT."""
    highest: Optional[int] = None
    nomodseq = False
    invalid: Optional[str] = None
    for kind, code, args, _text in codes:
        if kind != "OK":
            continue
        if code == "NOMODSEQ":
            nomodseq = True
        elif code == "HIGHESTMODSEQ":
            value = parse_modseq(args.split()[0] if args.split() else "")
            if value is None:
                invalid = args[:40]
            else:
                highest = value
    vanished = sum(count for keyword, (earlier, count) in _vanished(untagged) if earlier)
    if nomodseq or invalid is not None:
        highest = None
    return OpenState(highest, nomodseq, vanished, invalid)


def _vanished(untagged: Sequence[tuple[str, Any]]) -> Iterable[tuple[str, tuple[bool, int]]]:
    for keyword, data in untagged:
        if keyword == "VANISHED" and isinstance(data, Vanished):
            yield keyword, (data.earlier, data.count)


@attr.s(frozen=True, auto_attribs=True)
class Vanished:
    """One ``* VANISHED [(EARLIER)] uid-set`` response.

    :ivar ranges: ``(first, last)`` UID ranges, as sent (not expanded: a
        hostile ``1:4294967295`` costs one pair).
    :ivar count: how many UIDs the ranges name.
    :ivar truncated: more than :data:`MAX_VANISHED_RANGES` ranges were sent.
    """

    earlier: bool
    ranges: tuple[tuple[int, int], ...]
    count: int
    truncated: bool = False


def parse_vanished(rest: bytes) -> Vanished:
    """The data after ``VANISHED``: ``(EARLIER) 41,43:116,118`` or
    ``405,407``. :raises ValueError: not a UID set (the client drops a
    session that sends one)."""
    text = rest.strip()
    earlier = False
    if text[:1] == b"(":
        inner, sep, text = text[1:].partition(b")")
        if not sep or inner.strip().upper() != b"EARLIER":
            raise ValueError("VANISHED with an unknown tag")
        earlier = True
        text = text.strip()
    if not text or b" " in text:
        raise ValueError("VANISHED without one UID set")
    ranges: list[tuple[int, int]] = []
    count = 0
    truncated = False
    # maxsplit: a line of a million commas is never a million-item list.
    for item in text.split(b",", MAX_VANISHED_RANGES):
        if len(ranges) >= MAX_VANISHED_RANGES:
            truncated = True
            break
        match = _SET_ITEM.match(item)
        if match is None:
            raise ValueError("VANISHED with a bad UID set")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        first, last = min(first, last), max(first, last)
        if first < 1 or last > MAX_UID:
            raise ValueError("VANISHED UID out of range")
        ranges.append((first, last))
        count += last - first + 1
    return Vanished(earlier, tuple(ranges), count, truncated)


@attr.s(frozen=True, auto_attribs=True)
class KnownState:
    """The HIGHESTMODSEQ stored for a folder, with the UIDVALIDITY it
    belongs to (a mod-sequence means nothing across UIDVALIDITYs)."""

    uid_validity: str
    modseq: Optional[int]


def nothing_new(known: Optional[KnownState], state: OpenState, uid_validity: Any,
                uid_next: Optional[int], last_uid: int) -> bool:
    """Whether this pass may skip its UID SEARCH: the stored HIGHESTMODSEQ
    is for this UIDVALIDITY and equals the server's, and UIDNEXT is known
    and not beyond the cursor. Any doubt (no HIGHESTMODSEQ, NOMODSEQ, an
    invalid value, another UIDVALIDITY, no UIDNEXT) answers ``False``."""
    if known is None or known.modseq is None or state.highest_modseq is None:
        return False
    if state.nomodseq or state.invalid is not None:
        return False
    if str(uid_validity) != known.uid_validity:
        return False
    if uid_next is None or int(uid_next) > int(last_uid) + 1:
        return False
    return state.highest_modseq == known.modseq
