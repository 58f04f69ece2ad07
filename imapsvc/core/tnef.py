"""TNEF (``winmail.dat``, ``application/ms-tnef``): the files inside, as attachments.

Outlook and Exchange wrap attachments in a TNEF blob that every client but
Outlook shows as one useless ``winmail.dat``. With ``IMAP_EXPAND_TNEF=true``
(off by default: it changes the attachment list and fetches one more part)
the blob is read with ``tnefparse`` and each file inside replaces it in
``attachments``:

- ``id`` is ``<section of winmail.dat>/tnef/<n>`` (n from 1): it names the
  file inside the part, and cannot be mistaken for an IMAP section.
- ``name``: the long file name (MAPI ``PR_ATTACH_LONG_FILENAME``), else the
  8.3 title; ``contentType``: MAPI ``PR_ATTACH_MIME_TAG``, else guessed from
  the name (Python's built-in table only, so every machine agrees), else
  ``application/octet-stream``; ``size``: the exact byte count.
- The caps apply to these files as to any attachment (size, total, count).
- ``winmail.dat`` stays listed as it is when it is larger than
  ``IMAP_MAX_ATTACHMENT_BYTES`` (not downloaded; the usual
  ``attachment_too_large`` entry says so), holds no file (a rich-text body
  only), or cannot be read (``ingressSkipReasons`` type ``tnef_unreadable``).

Both fetch paths feed the same bytes: the structure path fetches the part by
section (``BODY.PEEK[n]``, only when within the cap, see
:func:`wants_tnef_bytes`), the whole-message path cuts it from the message.

``tnefparse`` copies the rest of the blob for every attribute it reads and
trusts MAPI value counts: :func:`tnef_files` walks the attribute layout
first and refuses a blob (with the messages nested in it, at most
:data:`MAX_DEPTH` deep) whose copying would exceed :data:`MAX_COPY_BYTES` or
that has more than :data:`MAX_OBJECTS` attributes, and MAPI property and
value counts are clamped to what the data can hold, so a hostile blob costs
bounded time and memory.
"""

from __future__ import annotations

import logging
import mimetypes
import struct
import threading
from typing import Any, Iterable, Mapping, Optional, Sequence

import attr
from tnefparse import mapi as _mapi
from tnefparse import tnef as _tnef_module
from tnefparse.tnef import TNEF

from imapsvc.core.charsets import decode_bytes
from imapsvc.core.transfer import decode_transfer
from imapsvc.model import BodyPart, Limits

SIGNATURE = 0x223E9F78
#: Most attributes one blob may have (a real one: ~15 plus ~7 per file).
MAX_OBJECTS = 4096
#: Most bytes tnefparse may copy while reading one blob and the messages
#: nested in it (it slices the remainder once per attribute).
MAX_COPY_BYTES = 1024 * 1024 * 1024
#: Deepest nesting of attached messages read.
MAX_DEPTH = 4

REASON_TNEF_UNREADABLE = "tnef_unreadable"

_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})
_LONG_FILENAME = 0x3707
_MIME_TAG = 0x370E
_CONTENT_ID = 0x3712
_OBJ_HEADER = 9  # level (1) + id (4) + length (4)
_OBJ_MIN = 12  # tnefparse stops when fewer bytes than this are left


class TnefError(ValueError):
    """The blob is not TNEF, or not one we are willing to read."""


@attr.s(frozen=True, auto_attribs=True)
class TnefFile:
    name: str
    content_type: str
    size: int
    content_id: Optional[str] = None


def _bounded(parse_property: Any) -> Any:
    if getattr(parse_property, "_imapsvc_bounded", False):
        return parse_property

    def checked(data: Any, offset: int, *args: Any) -> Any:
        # A value that starts past the end is a lie of its count: stop the
        # loop (tnefparse catches the error and keeps what it read).
        if offset >= len(data):
            raise ValueError("MAPI value past the end of the property block")
        return parse_property(data, offset, *args)

    checked._imapsvc_bounded = True  # type: ignore[attr-defined]
    return checked


def _clamped(decode_mapi: Any) -> Any:
    if getattr(decode_mapi, "_imapsvc_bounded", False):
        return decode_mapi

    def clamped(data: Any, codepage: Any = "cp1252", starting_offset: Any = None) -> Any:
        # The property count is read from the blob and looped over even when
        # the data ran out (logging each one): no more properties than 4-byte
        # property headers fit in what is left.
        offset = starting_offset or 0
        if len(data) >= offset + 4:
            (count,) = struct.unpack_from("<I", data, offset)
            room = (len(data) - offset - 4) // 4
            if count > room:
                data = bytes(data[:offset]) + struct.pack("<I", room) + bytes(data[offset + 4 :])
        return decode_mapi(data, codepage, starting_offset)

    clamped._imapsvc_bounded = True  # type: ignore[attr-defined]
    return clamped


# tnefparse trusts counts read from the blob: MAPI property and value counts
# drive loops that do not check the data is there (2**32 iterations for a
# hostile count). Both functions are looked up as module globals at call
# time, so they are bounded here, once, for every caller.
_mapi.parse_property = _bounded(_mapi.parse_property)
_tnef_module.decode_mapi = _clamped(_tnef_module.decode_mapi)
# Damaged blobs are reported as ``tnef_unreadable``; the parser's own per-
# property warnings would only flood the log (or stderr, with no handler).
logging.getLogger("tnefparse").setLevel(logging.CRITICAL)

_TYPES = mimetypes.MimeTypes(filenames=())


def is_tnef(part: BodyPart) -> bool:
    """A TNEF part: by type, or by its customary name under a generic type."""
    if part.content_type in _TNEF_TYPES:
        return True
    return (part.filename or "").strip().lower() == "winmail.dat"


def wants_tnef_bytes(part: BodyPart, limits: Limits) -> bool:
    """Whether this part's bytes are fetched (structure path) or cut
    (whole-message path) to list the files inside: TNEF expansion is on and
    the part is within the single-attachment cap."""
    return (
        bool(getattr(limits, "expand_tnef", False))
        and is_tnef(part)
        and 0 < part.decoded_size <= limits.max_attachment_bytes
        and part.size <= limits.max_raw_mime_bytes
    )


def _layout_cost(data: bytes) -> int:
    """Walk the attribute layout as tnefparse will: the bytes it will copy
    (it slices the remainder once per attribute); refuses what is not TNEF
    or has too many attributes."""
    if len(data) < 6 or struct.unpack_from("<I", data, 0)[0] != SIGNATURE:
        raise TnefError("no TNEF signature")
    offset = 6
    objects = 0
    copied = 0
    size = len(data)
    while offset + _OBJ_MIN < size:
        objects += 1
        copied += size - offset
        if objects > MAX_OBJECTS:
            raise TnefError(f"more than {MAX_OBJECTS} TNEF attributes")
        (length,) = struct.unpack_from("<I", data, offset + 5)
        offset += min(size - offset, length + _OBJ_HEADER + 2)
    return copied


_budget = threading.local()


class _CheckedTNEF(TNEF):  # type: ignore[misc]
    """tnefparse's reader behind our checks; it also reads attachments that
    are messages themselves (nested TNEF) through this name, so the checks,
    the depth limit and one copy budget cover the whole tree."""

    def __init__(self, data: bytes, do_checksum: bool = False) -> None:
        depth = getattr(_budget, "depth", 0)
        if depth >= MAX_DEPTH:
            raise TnefError(f"TNEF messages nested deeper than {MAX_DEPTH}")
        _budget.copied = getattr(_budget, "copied", 0) + _layout_cost(data)
        if _budget.copied > MAX_COPY_BYTES:
            raise TnefError("TNEF attribute layout too costly to read")
        _budget.depth = depth + 1
        try:
            super().__init__(data, do_checksum=False)
        finally:
            _budget.depth = depth


# Embedded messages are parsed with ``TNEF(...)`` looked up at call time.
_tnef_module.TNEF = _CheckedTNEF


def _mapi_value(attachment: Any, prop: int) -> Optional[str]:
    for item in getattr(attachment, "mapi_attrs", ()):
        if item.name == prop:
            try:
                value = item.data
            except Exception:  # noqa: BLE001 - a bad property is just absent
                return None
            if isinstance(value, bytes):
                value = decode_bytes(value.rstrip(b"\x00"), "cp1252")
            if isinstance(value, str):
                value = value.strip("\x00").strip()
                return value or None
    return None


def _name(attachment: Any, codepage: Optional[str]) -> str:
    long_name = _mapi_value(attachment, _LONG_FILENAME)
    if long_name:
        return long_name
    raw = getattr(attachment, "_name", b"")
    if isinstance(raw, bytes):
        return decode_bytes(raw.split(b"\x00", 1)[0], codepage or "cp1252").strip()
    return str(raw).strip("\x00").strip()


def _content_type(mime_tag: Optional[str], name: str) -> str:
    if mime_tag and "/" in mime_tag and len(mime_tag) <= 127 and " " not in mime_tag:
        return mime_tag.lower()
    guessed, _ = _TYPES.guess_type(name, strict=False) if name else (None, None)
    return guessed or "application/octet-stream"


def tnef_files(data: bytes) -> list[TnefFile]:
    """The files inside one decoded TNEF blob, in order.

    :raises TnefError: not TNEF, too costly, or unreadable.
    """
    _budget.copied = 0
    _budget.depth = 0
    try:
        parsed = _CheckedTNEF(bytes(data))
    except TnefError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is "unreadable"
        raise TnefError(f"TNEF unreadable ({type(exc).__name__})") from None
    files = []
    for attachment in parsed.attachments:
        payload = getattr(attachment, "data", b"") or b""
        name = _name(attachment, getattr(parsed, "codepage", None))
        if not name and not payload:
            continue
        files.append(
            TnefFile(
                name=name,
                content_type=_content_type(_mapi_value(attachment, _MIME_TAG), name),
                size=len(payload),
                content_id=_mapi_value(attachment, _CONTENT_ID),
            )
        )
    return files


def _unreadable(part: BodyPart, why: str) -> dict[str, Any]:
    return {
        "type": REASON_TNEF_UNREADABLE,
        "reason": f"{part.filename or 'winmail.dat'}: {why}; listed as it is",
        "attachmentId": part.section,
        "attachmentName": part.filename or "winmail.dat",
        "size": max(1, int(part.decoded_size or part.size or 0)),
        "cap": 0,
    }


def expand_tnef(
    parts: Sequence[BodyPart], blobs: Mapping[str, bytes], limits: Limits
) -> tuple[list[BodyPart], list[dict[str, Any]]]:
    """Replace every readable TNEF part with the files inside it.

    :param blobs: section -> the part's bytes as fetched (still
        transfer-encoded); parts without bytes stay as they are.
    :return: the new leaves and ``ingressSkipReasons`` entries.
    """
    out: list[BodyPart] = []
    reasons: list[dict[str, Any]] = []
    for part in parts:
        blob = blobs.get(part.section)
        if blob is None or part.is_body_text or not wants_tnef_bytes(part, limits):
            out.append(part)
            continue
        try:
            files = tnef_files(decode_transfer(part.encoding or "7bit", blob))
        except TnefError as exc:
            reasons.append(_unreadable(part, str(exc)))
            out.append(part)
            continue
        if not files:
            out.append(part)
            continue
        out.extend(_as_parts(part, files))
    return out, reasons


def _as_parts(container: BodyPart, files: Iterable[TnefFile]) -> list[BodyPart]:
    return [
        BodyPart(
            section=f"{container.section}/tnef/{n}",
            content_type=f.content_type,
            params={},
            encoding="binary",
            size=f.size,
            decoded_size=f.size,
            content_id=f.content_id,
            disposition="attachment",
            filename=f.name or f"attachment-{n}",
            in_related=False,
        )
        for n, f in enumerate(files, 1)
    ]
