"""Attachment content for ``IMAP_ATTACHMENT_MODE`` ``inline`` and ``store``
(CONTRACT section 2). Pure code: no I/O, no Twisted.

- Which attachments get content: exactly those :func:`attachment_metadata`
  lists without an ``ingressSkipReasons`` entry (within the size, total and
  count caps), so the caps mean the same in every mode
  (:func:`content_sections`).
- Where the bytes come from: on the structure path the folder engine fetches
  those sections (``BODY.PEEK[<section>]``) into
  :attr:`FetchedMessage.contents`; on the whole-message path they are cut
  out of ``raw`` without copying (:func:`message_contents`).
- Decoding is incremental (:func:`decoded_chunks`): a part is decoded and
  hashed (or uploaded) one slice at a time, so no second whole copy of a
  large part is needed besides the fetched bytes.
- ``store`` keys are deterministic (:func:`object_key`): a re-run after a
  crash writes the very same keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any, Iterator, Mapping, Optional, Sequence
from urllib.parse import quote

from imapsvc.core.attachments import attachment_metadata
from imapsvc.core.transfer import _B64_DELETE, _B64_URLSAFE, decode_quoted_printable
from imapsvc.model import (
    ATTACHMENT_MODE_INLINE,
    ATTACHMENT_MODE_METADATA,
    ATTACHMENT_MODE_STORE,
    RAW_MIME_SECTION,
    BodyPart,
    FetchedMessage,
    Limits,
)

#: Bytes of encoded input decoded per step (a multiple of 4 and of 76).
CHUNK_BYTES = 1024 * 1024 - (1024 * 1024) % 228


def content_sections(parts: Sequence[BodyPart], limits: Limits) -> list[str]:
    """The sections of the attachments that carry content (inline) or are
    stored (store): listed and not named by any cap's skip reason."""
    attachments, reasons = attachment_metadata(parts, limits)
    skipped = {r.get("attachmentId") for r in reasons}
    return [a["id"] for a in attachments if a["id"] not in skipped]


def wants_content(limits: Limits) -> bool:
    return limits.attachment_mode in (ATTACHMENT_MODE_INLINE, ATTACHMENT_MODE_STORE)


def message_contents(msg: FetchedMessage, limits: Limits) -> dict[str, tuple[str, Any, str]]:
    """``section -> (transfer encoding, encoded bytes, content type)`` of the attachments
    of ``msg`` that carry content, from either fetch path. On the whole
    message path the bytes are ``memoryview`` slices of ``raw`` (no copy)."""
    bodies: Mapping[str, Any]
    if msg.raw is not None:
        from imapsvc.core.mime_parts import part_bodies

        _header, parts, _texts = _split(msg.raw)
        wanted = content_sections(parts, limits)
        bodies = part_bodies(msg.raw, wanted)
    else:
        parts = list(msg.parts or ())
        wanted = content_sections(parts, limits)
        bodies = {s: msg.contents[s] for s in wanted if s in msg.contents}
    by_section = {p.section: p for p in parts}
    return {
        s: (by_section[s].encoding or "7bit", bodies[s], by_section[s].content_type)
        for s in wanted
        if s in bodies
    }


def _split(raw: bytes) -> tuple[bytes, list[BodyPart], Mapping[str, bytes]]:
    from imapsvc.core.mime_parts import split_message

    return split_message(raw)


def decoded_chunks(encoding: Optional[str], data: Any, step: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Decode ``data`` (bytes or memoryview) slice by slice. The chunks join
    to exactly what :func:`imapsvc.core.transfer.decode_transfer` returns
    for the whole input; never raises."""
    name = (encoding or "").strip().strip('"').lower()
    view = memoryview(data) if not isinstance(data, memoryview) else data
    if name == "base64":
        yield from _base64_chunks(view, step)
    elif name in ("quoted-printable", "quotedprintable", "qp"):
        yield from _qp_chunks(view, step)
    else:
        for start in range(0, len(view), step):
            yield bytes(view[start : start + step])


def _base64_chunks(view: memoryview, step: int) -> Iterator[bytes]:
    carry = b""
    for start in range(0, len(view), step):
        piece = bytes(view[start : start + step])
        pad = piece.find(b"=")
        done = pad >= 0
        if done:
            piece = piece[:pad]  # "=" ends the data (decode_base64 does the same)
        clean = carry + piece.translate(_B64_URLSAFE).translate(None, _B64_DELETE)
        usable = len(clean) - len(clean) % 4
        carry = clean[usable:]
        if usable:
            yield _a2b(clean[:usable])
        if done:
            break
    if carry:
        if len(carry) % 4 == 1:
            carry = carry[:-1]
        if carry:
            yield _a2b(carry + b"=" * (-len(carry) % 4))


def _a2b(data: bytes) -> bytes:
    try:
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        return b""


def _qp_chunks(view: memoryview, step: int) -> Iterator[bytes]:
    start = 0
    end_all = len(view)
    while start < end_all:
        end = min(end_all, start + step)
        piece = bytes(view[start:end])
        if end < end_all:
            # Cut after a line end, so no escape or soft break is split;
            # a line longer than a step is taken whole.
            cut = piece.rfind(b"\n")
            while cut < 0 and end < end_all:
                end = min(end_all, end + step)
                piece = bytes(view[start:end])
                cut = piece.rfind(b"\n")
            if cut >= 0 and end < end_all:
                piece = piece[: cut + 1]
                end = start + cut + 1
        yield decode_quoted_printable(piece)
        start = end


def digest_and_size(encoding: Optional[str], data: Any) -> tuple[str, int]:
    """``(sha256 hex, decoded size)`` of a part, computed slice by slice."""
    h = hashlib.sha256()
    size = 0
    for chunk in decoded_chunks(encoding, data):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _segment(value: str) -> str:
    """One key segment: URL-quoted so a folder like ``a/b`` or ``..`` can
    neither add a level nor climb out of the prefix."""
    text = quote(str(value), safe="")
    if text in ("", ".", ".."):
        text = text.replace(".", "%2E") or "%00"
    return text


def object_key(
    prefix: str,
    tenant: str,
    provider_id: str,
    folder: str,
    uid_validity: str,
    uid: int,
    section: str,
) -> str:
    """``<prefix>/<tenant>/<provider>/<folder>/<uidvalidity>/<uid>/<section>``:
    the same message part always gets the same key."""
    head = prefix.strip("/")
    segments = [tenant, provider_id, folder, str(uid_validity), str(int(uid))]
    tail = "raw.eml" if section == RAW_MIME_SECTION else section
    key = "/".join(_segment(s) for s in segments + [tail])
    return f"{head}/{key}" if head else key


def add_inline_content(
    attachments: list[dict[str, Any]], contents: Mapping[str, tuple[str, Any, str]]
) -> None:
    """``inline``: put ``content`` (base64 of the decoded bytes) on each
    attachment that has bytes. The base64 text is built from decoded slices
    whose length is a multiple of 3, so no whole decoded copy is kept."""
    for entry in attachments:
        got = contents.get(entry["id"])
        if got is None:
            continue
        encoding, data, _type = got
        out = bytearray()  # one growing buffer: no list of pieces plus a joined copy
        rest = b""
        for chunk in decoded_chunks(encoding, data):
            chunk = rest + chunk
            usable = len(chunk) - len(chunk) % 3
            out += base64.b64encode(chunk[:usable])
            rest = chunk[usable:]
        if rest:
            out += base64.b64encode(rest)
        entry["content"] = out.decode("ascii")
        del out


def add_stored(attachments: list[dict[str, Any]], stored: Mapping[str, Mapping[str, Any]]) -> None:
    """``store``: put ``storageKey`` and ``sha256`` on each stored attachment."""
    for entry in attachments:
        got = stored.get(entry["id"])
        if got is None:
            continue
        entry["storageKey"] = got["storageKey"]
        entry["sha256"] = got["sha256"]


def apply(
    attachments: list[dict[str, Any]],
    msg: FetchedMessage,
    limits: Limits,
    skipped: Optional[set[Any]] = None,
) -> tuple[Optional[dict[str, Any]], list[dict[str, Any]]]:
    """The mapping's hook: add content (``inline``) or storage references
    (``store``) to ``attachments`` in place.

    :param skipped: the ``attachmentId`` of every cap's skip reason (those
        are listed without content on purpose).
    :return: ``(rawMime, missing)``: the ``{storageKey, sha256, size}`` of
        the whole message when it was stored, and the attachments within the
        caps that still got no content (the server returned no bytes for
        the section), for an ``ingressNotes`` entry each.
    """
    mode = limits.attachment_mode
    if mode == ATTACHMENT_MODE_METADATA or not attachments and not msg.stored:
        return None, []
    raw_mime = None
    if mode == ATTACHMENT_MODE_INLINE:
        add_inline_content(attachments, message_contents(msg, limits))
        field = "content"
    else:
        add_stored(attachments, msg.stored)
        raw = msg.stored.get(RAW_MIME_SECTION)
        raw_mime = dict(raw) if raw is not None else None
        field = "storageKey"
    skipped = skipped or set()
    missing = [a for a in attachments if a["id"] not in skipped and field not in a]
    return raw_mime, missing
