"""Where a folder sync starts: the cursor rules of CONTRACT section 1.

Pure functions over :class:`~imapsvc.model.FolderCursor` values: no I/O, no
clock (``now`` is passed in), no logging. The caller logs
:attr:`StartPlan.reason` and :attr:`StartPlan.detail`.
"""

from __future__ import annotations

from datetime import UTC, datetime
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
    """

    first_uid: int
    last_uid: int
    cursor: FolderCursor
    reason: str
    detail: str = ""
    keep_last: Optional[int] = None


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
) -> StartPlan:
    """Decide where a sync starts.

    :param stored: the folder's stored cursor, ``None`` when absent.
    :param uidvalidity: the server's UIDVALIDITY from EXAMINE.
    :param uidnext: the server's UIDNEXT from EXAMINE (``None`` if missing).
    :param window: ``IMAP_MAX_EMAILS_PER_SYNC``, the recent window size.
    """
    server_validity = str(int(uidvalidity))
    seen_at = stored.last_seen_at if stored is not None else None

    def plan(first: int, reason: str, detail: str, keep: Optional[int] = None) -> StartPlan:
        last = first - 1
        cursor = FolderCursor(server_validity, str(last), seen_at)
        return StartPlan(first, last, cursor, reason, detail, keep)

    def window_plan(reason: str, detail: str) -> StartPlan:
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
