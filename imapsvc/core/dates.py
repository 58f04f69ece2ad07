"""Dates in the one shape the contract knows: ISO 8601 UTC, milliseconds, ``Z``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_tz
from typing import Optional

#: Dates outside this range are treated as unparseable (a year 0001 or 9999
#: in a Date header is junk, and would not survive a round trip through most
#: consumers' date libraries).
_MIN_YEAR = 1970
_MAX_YEAR = 2200

_ISO_RE = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?\s*$",
    re.IGNORECASE,
)


def iso_z(dt: datetime) -> str:
    """Format ``dt`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC.

    A naive datetime is taken to be UTC already.
    """
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC)
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}.{dt.microsecond // 1000:03d}Z"
    )


def _sane(dt: datetime) -> Optional[datetime]:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        dt = dt.astimezone(UTC)
    except (OverflowError, ValueError):
        return None
    if not (_MIN_YEAR <= dt.year <= _MAX_YEAR):
        return None
    return dt


def parse_rfc2822_date(value: Optional[str]) -> Optional[datetime]:
    """Parse a ``Date:`` header value; ``None`` when it is absent or junk.

    A date without a zone (or with ``-0000``) is taken as UTC.
    """
    if not value:
        return None
    try:
        parts = parsedate_tz(value)
    except Exception:
        return None
    if parts is None:
        return None
    try:
        year, month, day, hour, minute, second = parts[:6]
        if year < 100:
            # Two-digit years (RFC 2822 section 4.3 obsolete syntax).
            year += 2000 if year < 50 else 1900
        offset = parts[9] or 0
        naive = datetime(year, month, day, hour, minute, min(int(second), 59))
        dt = naive.replace(tzinfo=UTC)

        dt = dt - timedelta(seconds=offset)
    except (TypeError, ValueError, OverflowError):
        return None
    return _sane(dt)


def parse_iso(value: Optional[str]) -> Optional[datetime]:
    """Parse an ISO-8601 timestamp such as ``2026-01-10T12:00:00.000Z``.

    ``None`` when absent or unparseable. No zone means UTC.
    """
    if not value:
        return None
    match = _ISO_RE.match(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, frac, zone = match.groups()
    try:
        micro = int((frac or "0")[:6].ljust(6, "0"))
        dt = datetime(
            int(year), int(month), int(day), int(hour), int(minute), min(int(second), 59), micro
        )
    except ValueError:
        return None
    if zone and zone.upper() != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")

        dt = dt - sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return _sane(dt.replace(tzinfo=UTC))


def is_iso_z(value: object) -> bool:
    """Whether ``value`` is a string in exactly the contract's ISO shape."""
    return (
        isinstance(value, str) and bool(_ISO_Z_STRICT.match(value)) and parse_iso(value) is not None
    )


_ISO_Z_STRICT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
