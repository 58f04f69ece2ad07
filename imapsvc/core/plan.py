"""Fetch planning: which bytes of which messages to download. Pure code.

The folder engine fetches metadata (size, INTERNALDATE, BODYSTRUCTURE,
header) for a chunk of UIDs, asks :func:`plan_message` what to download for
each message, groups the downloads with :func:`chunk_by_bytes` so one
command's literals stay bounded, and builds the
:class:`~imapsvc.model.FetchedMessage` values with :func:`build_message`.
"""

from __future__ import annotations

import re
from array import array
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import attr

from imapsvc.core.tnef import wants_tnef_bytes
from imapsvc.model import BodyPart, FetchedMessage, Limits

#: Default ``IMAP_FETCH_CHUNK``: UIDs per metadata FETCH. Two chunks are in memory at
#: once (one committed while the next is fetched): 50 keeps the mixed corpus's peak at
#: about 0.42 of the reference pipeline's, where 100 sat at 0.49-0.50, for 5-10% less
#: throughput there and none measurable on small mail (docs/performance.md, session 7).
DEFAULT_FETCH_CHUNK = 50
#: Default byte budget of one body FETCH (sum of expected literal sizes).
DEFAULT_FETCH_BYTES = 8 * 1024 * 1024

KIND_STRUCTURE = "structure"  # header + selected text sections
KIND_FULL = "full"  # BODY.PEEK[] (fallback)
KIND_HEADER_ONLY = "header-only"  # nothing more is downloaded

#: Why a message was not downloaded whole on the fallback path.
REASON_RAW_TOO_LARGE = "raw_mime_too_large"
#: The ``truncated`` entry of a header-only message.
TEXT_NOT_DOWNLOADED = "TEXT"

Parser = Callable[[Any], Optional[list[BodyPart]]]


def chunk_by_count(uids: Sequence[int], size: int = DEFAULT_FETCH_CHUNK) -> list[list[int]]:
    """Split ``uids`` (kept in order) into lists of at most ``size``. An
    ``array`` (the client's compact SEARCH result) is split into arrays, so
    a huge SEARCH answer never becomes one Python ``int`` per UID."""
    size = max(1, int(size))
    if isinstance(uids, array):
        return [uids[i : i + size] for i in range(0, len(uids), size)]  # type: ignore[misc]
    return [list(uids[i : i + size]) for i in range(0, len(uids), size)]


def chunk_by_bytes(
    items: Iterable[tuple[int, int]], max_count: int, max_bytes: int
) -> list[list[int]]:
    """Group ``(uid, expected_bytes)`` pairs (kept in order) so that no group
    has more than ``max_count`` UIDs or, unless it holds a single UID, more
    than ``max_bytes`` expected bytes."""
    max_count = max(1, int(max_count))
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for uid, cost in items:
        cost = max(0, int(cost))
        if current and (len(current) >= max_count or used + cost > max_bytes):
            groups.append(current)
            current, used = [], 0
        current.append(uid)
        used += cost
    if current:
        groups.append(current)
    return groups


@attr.s(frozen=True, auto_attribs=True)
class MessagePlan:
    """What to download for one message.

    :ivar sections: for :data:`KIND_STRUCTURE`, ``(section, partial)`` pairs
        where ``partial`` is ``None`` (whole part) or N (``<0.N>``).
    :ivar truncated: sections fetched only partially because of a cap.
    :ivar expected_bytes: the bytes the body FETCH will bring (for grouping).
    :ivar reason: why this kind was chosen, for the log.
    """

    uid: int
    kind: str
    size: int
    parts: tuple[BodyPart, ...] = ()
    sections: tuple[tuple[str, Optional[int]], ...] = ()
    truncated: tuple[str, ...] = ()
    expected_bytes: int = 0
    reason: str = ""
    #: ``IMAP_ATTACHMENT_MODE`` inline/store: the attachment sections (also
    #: in ``sections``, fetched whole) whose bytes go to ``contents``.
    content_sections: tuple[str, ...] = ()


def default_parser() -> Optional[Parser]:
    """``imapsvc.core.bodystructure.parse_bodystructure`` if that module is
    available, else ``None`` (every message then takes the fallback path)."""
    try:
        from imapsvc.core.bodystructure import parse_bodystructure
    except ImportError:
        return None
    return parse_bodystructure


def host_has_broken_bodystructure(host: str, broken_hosts: Iterable[str]) -> bool:
    """Whether ``host`` is listed (exactly, or as a subdomain of an entry;
    case-insensitive)."""
    host = host.strip().rstrip(".").lower()
    for entry in broken_hosts:
        entry = entry.strip().rstrip(".").lower()
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def plan_message(
    uid: int,
    meta: Mapping[str, Any],
    limits: Limits,
    trust_structure: bool = True,
    parser: Optional[Parser] = None,
) -> MessagePlan:
    """Decide how to download one message from its metadata.

    :param meta: ``fetch_meta`` values: ``size``, ``bodystructure`` (may be
        ``None``), ...
    :param trust_structure: ``False`` for servers known to send wrong
        BODYSTRUCTUREs: always the fallback path.
    :param parser: BODYSTRUCTURE -> :class:`BodyPart` list or ``None``
        (unusable). ``None`` means no parser is available.
    """
    size = _as_int(meta.get("size"))
    parts: Optional[list[BodyPart]] = None
    why = ""
    if not trust_structure:
        why = "host has broken BODYSTRUCTURE"
    elif parser is None:
        why = "no BODYSTRUCTURE parser"
    elif meta.get("bodystructure") is None:
        why = "no usable BODYSTRUCTURE"
    else:
        try:
            parts = parser(meta["bodystructure"])
        except Exception:  # a parser bug must not stop the folder: fall back
            parts = None
        if parts is None:
            why = "BODYSTRUCTURE unusable"

    if parts is not None and _wants_raw(limits) and size <= limits.max_raw_mime_bytes:
        # IMAP_STORE_RAW_MIME: the whole message is stored, so fetch it whole
        # (the attachments are then cut out of it, as on the fallback path).
        return MessagePlan(uid, KIND_FULL, size, expected_bytes=size, reason="store raw MIME")
    if parts is None:
        if size > limits.max_raw_mime_bytes:
            return MessagePlan(uid, KIND_HEADER_ONLY, size, reason=f"{why}; {REASON_RAW_TOO_LARGE}")
        return MessagePlan(uid, KIND_FULL, size, expected_bytes=size, reason=why)

    sections: list[tuple[str, Optional[int]]] = []
    truncated: list[str] = []
    expected = 0
    cap = max(0, limits.max_text_part_bytes)
    for part in parts:
        if not part.is_body_text:
            if wants_tnef_bytes(part, limits):
                # The files inside winmail.dat are listed from its bytes.
                sections.append((part.section, None))
                expected += max(0, part.size)
            continue
        if part.size > cap:
            sections.append((part.section, cap))
            truncated.append(part.section)
            expected += cap
        else:
            sections.append((part.section, None))
            expected += max(0, part.size)
    content: list[str] = []
    if limits.attachment_mode in ("inline", "store"):
        from imapsvc.core.attachment_content import content_sections

        by_section = {p.section: p for p in parts}
        for section in content_sections(parts, limits):
            content.append(section)
            sections.append((section, None))
            expected += max(0, by_section[section].size)
    return MessagePlan(
        uid,
        KIND_STRUCTURE,
        size,
        parts=tuple(parts),
        sections=tuple(sections),
        truncated=tuple(truncated),
        expected_bytes=expected,
        reason="structure",
        content_sections=tuple(content),
    )


def _wants_raw(limits: Limits) -> bool:
    return limits.attachment_mode == "store" and limits.store_raw_mime


def _as_int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


_MONTHS = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_INTERNALDATE = re.compile(
    r"^\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})\s*$"
)


def internaldate_to_iso(value: Optional[str]) -> Optional[str]:
    """An IMAP INTERNALDATE (``"17-Jul-1996 02:44:25 -0700"``) as ISO 8601
    UTC with milliseconds and ``Z``; ``None`` when absent or unparseable."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    m = _INTERNALDATE.match(str(value))
    if not m:
        return None
    day, mon, year, hh, mm, ss, sign, oh, om = m.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        return None
    try:
        offset = timedelta(hours=int(oh), minutes=int(om))
        if sign == "-":
            offset = -offset
        moment = datetime(
            int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=timezone(offset)
        )
    except ValueError:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def build_message(
    plan: MessagePlan,
    meta: Mapping[str, Any],
    mailbox: str,
    uid_validity: str,
    sections: Optional[Mapping[str, bytes]] = None,
    raw: Optional[bytes] = None,
) -> FetchedMessage:
    """The :class:`FetchedMessage` for one planned message and what was
    downloaded for it."""
    header = meta.get("header") or b""
    if isinstance(header, str):
        header = header.encode("charmap")
    common: dict[str, Any] = dict(
        mailbox=mailbox,
        uid_validity=uid_validity,
        uid=plan.uid,
        size=plan.size,
        internal_date=internaldate_to_iso(meta.get("internaldate")),
        header=header,
        gm_msgid=meta.get("gm_msgid"),
    )
    if plan.kind == KIND_FULL:
        return FetchedMessage(raw=raw if raw is not None else b"", **common)
    if plan.kind == KIND_HEADER_ONLY:
        # Convention with the pipeline: no raw, no parts and ``truncated ==
        # ("TEXT",)`` means the body was not downloaded (raw-MIME cap).
        return FetchedMessage(truncated=(TEXT_NOT_DOWNLOADED,), **common)
    got = sections or {}
    content = set(plan.content_sections)
    texts = {s: got[s] for s, _ in plan.sections if s in got and s not in content}
    contents = {s: got[s] for s in plan.content_sections if s in got}
    return FetchedMessage(
        parts=plan.parts, texts=texts, truncated=plan.truncated, contents=contents, **common
    )
