"""Where a folder sync starts: the cursor rules of CONTRACT section 1.

Pure functions over :class:`~imapsvc.model.FolderCursor` values: no I/O, no
clock (``now`` is passed in), no logging. The caller logs
:attr:`StartPlan.reason` and :attr:`StartPlan.detail`.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Optional, Union

import attr

from imapsvc.model import FolderCursor

#: Reasons a :class:`StartPlan` gives for its first UID.
REASON_RESUME = "resume"
REASON_RESCAN = "rescan"
REASON_NO_CURSOR = "no-cursor"
REASON_UIDVALIDITY_CHANGED = "uidvalidity-changed"
REASON_GARBAGE = "garbage-cursor"


@attr.s(frozen=True, auto_attribs=True)
class StartPlan:
    """The outcome of :func:`compute_start`.

    :ivar first_uid: search ``UID SEARCH UID <first_uid>:*``.
    :ivar last_uid: drop every UID ``<=`` this one from the search result
        (``n:*`` always matches the highest UID, even below ``n``).
    :ivar cursor: the effective cursor before this sync (server UIDVALIDITY,
        ``last_uid = first_uid - 1``); :func:`advance` it per batch.
    :ivar keep_last: when not ``None``, keep only this many of the highest
        UIDs found (the server gave no UIDNEXT to compute the window from).
    :ivar reason: one of the ``REASON_*`` constants.
    :ivar detail: a human-readable explanation for the log (no secrets).
    :ivar since: when set, an RFC 3501 date (``1-Jan-2026``): the folder
        also runs ``UID SEARCH SINCE <since>`` and takes every UID it finds,
        below the cursor too (a backfill; the ledger drops what was already
        recorded).
    :ivar search_range: ``False`` for a first sync by date: only the
        ``SINCE`` search runs (no ``UID n:*`` range), and :attr:`cursor`
        already holds ``UIDNEXT - 1``, where the cursor stands after the pass.
    :ivar hold_cursor: do not write the cursor before the last chunk of the
        pass (a crash in between then repeats the search, deduplicated by
        the ledger, instead of resuming above the first chunk and taking
        the older messages in between the window left out).
    """

    first_uid: int
    last_uid: int
    cursor: FolderCursor
    reason: str
    detail: str = ""
    keep_last: Optional[int] = None
    since: Optional[str] = None
    search_range: bool = True
    hold_cursor: bool = False


def parse_uid(value: Optional[str]) -> Optional[int]:
    """A stored UID string as an int, or ``None`` when absent or garbage.

    Accepts only plain decimal digits (surrounding blanks tolerated), which is
    what the store writes; ``"-1"``, ``"1e3"`` and ``"0x10"`` are garbage.
    """
    if value is None:
        return None
    text = str(value).strip()
    if not text or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _window_start(uidnext: Optional[int], window: int) -> tuple[int, Optional[int]]:
    window = max(1, int(window))
    if uidnext is None or uidnext <= 0:
        # No UIDNEXT: search everything and keep the newest ``window`` UIDs.
        return 1, window
    return max(1, uidnext - window), None


def compute_start(
    stored: Optional[FolderCursor],
    uidvalidity: int,
    uidnext: Optional[int],
    window: int,
    first_sync_since: Optional[date] = None,
    backfill_since: Optional[date] = None,
) -> StartPlan:
    """Decide where a sync starts.

    :param stored: the folder's stored cursor, ``None`` when absent.
    :param uidvalidity: the server's UIDVALIDITY from EXAMINE.
    :param uidnext: the server's UIDNEXT from EXAMINE (``None`` if missing).
    :param window: ``IMAP_MAX_EMAILS_PER_SYNC``, the recent window size.
    :param first_sync_since: ``IMAP_FIRST_SYNC_SINCE_DAYS`` (or the
        provider's own value) as a date: where the recent window would be
        used (no cursor, a garbage one, a new UIDVALIDITY), the folder
        starts with the messages whose INTERNALDATE is on or after it
        instead. Ignored without UIDNEXT (the window rule applies then).
    :param backfill_since: a pending ``resync --since``: the messages since
        that date are read again, whatever the cursor (a stored cursor is
        resumed as well, so nothing above it is left out); it wins over
        ``first_sync_since``.
    """
    server_validity = str(int(uidvalidity))
    seen_at = stored.last_seen_at if stored is not None else None
    backfill = imap_date(backfill_since) if backfill_since is not None else None

    def plan(first: int, reason: str, detail: str, keep: Optional[int] = None) -> StartPlan:
        last = first - 1
        cursor = FolderCursor(server_validity, str(last), seen_at)
        if backfill is not None:
            detail += f"; backfill since {backfill}"
        return StartPlan(first, last, cursor, reason, detail, keep, since=backfill)

    def window_plan(reason: str, detail: str) -> StartPlan:
        by_date = backfill_since if backfill_since is not None else first_sync_since
        if by_date is not None and uidnext is not None and uidnext > 0:
            # Only the SINCE search; the cursor lands on UIDNEXT - 1 when the
            # pass is done, so older mail above the first match stays out.
            text = imap_date(by_date)
            cursor = FolderCursor(server_validity, str(uidnext - 1), seen_at)
            return StartPlan(
                1, 0, cursor, reason, f"{detail}; messages since {text}",
                since=text, search_range=False, hold_cursor=True,
            )
        first, keep = _window_start(uidnext, window)
        return plan(first, reason, detail, keep)

    if stored is None or (stored.last_uid is None and stored.uid_validity is None):
        return window_plan(REASON_NO_CURSOR, "no stored cursor")

    last_uid = parse_uid(stored.last_uid)
    if stored.last_uid is not None and last_uid is None:
        return window_plan(REASON_GARBAGE, f"stored last_uid {stored.last_uid!r} is not a UID")

    # '0' is the operator's "rescan everything", whatever UIDVALIDITY says.
    if last_uid == 0:
        return plan(1, REASON_RESCAN, "last_uid is '0'")

    if stored.uid_validity is not None:
        stored_validity = parse_uid(stored.uid_validity)
        if stored_validity is None:
            return window_plan(
                REASON_GARBAGE, f"stored uid_validity {stored.uid_validity!r} is not a number"
            )
        if stored_validity != int(uidvalidity):
            return window_plan(
                REASON_UIDVALIDITY_CHANGED,
                f"uid_validity changed from {stored_validity} to {server_validity}",
            )

    if last_uid is None:
        return window_plan(REASON_NO_CURSOR, "stored cursor has no last_uid")
    return plan(last_uid + 1, REASON_RESUME, f"resume after UID {last_uid}")


def iso_z(now: Union[datetime, float, int]) -> str:
    """``now`` (an aware/naive-UTC datetime or POSIX seconds) as
    ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    if isinstance(now, datetime):
        moment = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    else:
        moment = datetime.fromtimestamp(float(now), tz=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def advance(cursor: FolderCursor, uid: int, now: Union[datetime, float, int]) -> FolderCursor:
    """The cursor after the messages up to ``uid`` were recorded.

    Never moves backwards: a ``uid`` below the current ``last_uid`` keeps the
    current one (``last_seen_at`` still updates).
    """
    current = parse_uid(cursor.last_uid)
    new_last = uid if current is None else max(current, uid)
    return FolderCursor(cursor.uid_validity, str(new_last), iso_z(now))


# -- dates for UID SEARCH SINCE ------------------------------------------------

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ISO_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_IMAP_DATE_RE = re.compile(r"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")


def imap_date(day: date) -> str:
    """``day`` as RFC 3501 ``date`` (``1-Jan-2026``): English month names
    whatever the locale (``strftime("%b")`` is not)."""
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year:04d}"


def is_imap_date(text: str) -> bool:
    """``text`` is an RFC 3501 ``date`` that names a real day (safe to send
    as an atom)."""
    match = _IMAP_DATE_RE.match(text or "")
    if match is None or match.group(2) not in _MONTHS:
        return False
    try:
        parse_since(text)
    except ValueError:
        return False
    return True


def parse_since(text: str) -> date:
    """A ``--since`` value: ``YYYY-MM-DD`` or RFC 3501 ``1-Jan-2026``.

    :raises ValueError: with a message fit for the operator.
    """
    value = (text or "").strip()
    try:
        iso = _ISO_DATE_RE.match(value)
        if iso:
            return date(int(iso.group(1)), int(iso.group(2)), int(iso.group(3)))
        imap = _IMAP_DATE_RE.match(value)
        if imap and imap.group(2).title() in _MONTHS:
            month = _MONTHS.index(imap.group(2).title()) + 1
            return date(int(imap.group(3)), month, int(imap.group(1)))
    except ValueError:
        pass
    raise ValueError(f"not a date: {value[:40]!r} (use YYYY-MM-DD or 1-Jan-2026)")


def since_days_ago(now: Union[datetime, float, int], days: Optional[int]) -> Optional[date]:
    """The first day of a window of ``days`` days ending ``now`` (UTC), or
    ``None`` when ``days`` is ``None`` or not positive (the feature is off)."""
    if days is None or days <= 0:
        return None
    if isinstance(now, datetime):
        moment = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    else:
        moment = datetime.fromtimestamp(float(now), tz=UTC)
    return (moment.astimezone(UTC) - timedelta(days=int(days))).date()


def internaldate_day(text: Optional[str]) -> Optional[date]:
    """The day of an INTERNALDATE (``" 1-Jan-2026 12:00:00 +0000"``), time
    and zone disregarded as ``SEARCH SINCE`` does; ``None`` if unreadable."""
    words = (text or "").split()
    if not words:
        return None
    try:
        return parse_since(words[0])
    except ValueError:
        return None
