"""Attachment metadata for the event payload, and the size/count caps.

Attachment content is never downloaded nor put in the event: every leaf part
that is not body text is described from its structure alone (CONTRACT
section 2, ``attachments``). The caps of :class:`~imapsvc.model.Limits` are
reported through ``ingressSkipReasons`` with ``type: "attachment"`` and the
app's codes in ``reason`` (its schema accepts only those; ``detail`` says it
in words):

- ``attachment_over_max_bytes``: one entry per attachment whose decoded size
  is above ``max_attachment_bytes``. The attachment is still listed.
- ``attachment_total_bytes_exceeded``: one entry per attachment that does not
  fit in what is left of ``max_total_attachment_bytes`` once the attachments
  before it (in message order, leaving out the individually too large ones)
  are counted. The attachment is still listed.
- ``attachment_count_exceeded``: the attachments after the first
  ``max_attachment_count`` are **not listed** (the cap exists to bound the
  payload); one summary entry says how many there were.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from imapsvc.model import BodyPart, Limits

#: ``type`` of every attachment entry of ``ingressSkipReasons`` (the app's).
SKIP_TYPE_ATTACHMENT = "attachment"
#: The app's ``reason`` codes for the attachment caps.
REASON_OVER_MAX_BYTES = "attachment_over_max_bytes"
REASON_TOTAL_BYTES_EXCEEDED = "attachment_total_bytes_exceeded"
REASON_COUNT_EXCEEDED = "attachment_count_exceeded"

_EXTENSIONS = {
    "application/pdf": "pdf",
    "application/zip": "zip",
    "application/json": "json",
    "application/xml": "xml",
    "application/msword": "doc",
    "application/vnd.ms-excel": "xls",
    "application/vnd.ms-powerpoint": "ppt",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
    "application/pkcs7-signature": "p7s",
    "application/x-pkcs7-signature": "p7s",
    "application/pgp-signature": "asc",
    "application/pgp-encrypted": "pgp",
    "application/ics": "ics",
    "text/calendar": "ics",
    "text/plain": "txt",
    "text/html": "html",
    "text/csv": "csv",
    "text/rfc822-headers": "txt",
    "message/delivery-status": "txt",
    "message/disposition-notification": "txt",
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "image/tiff": "tif",
    "image/svg+xml": "svg",
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
    "video/mp4": "mp4",
}


def attachment_name(part: BodyPart) -> str:
    """The file name to show: the part's own, else one made from its type."""
    if part.filename:
        return part.filename
    if part.content_type in ("message/rfc822", "message/global"):
        return "forwarded-message.eml"
    if part.content_type == "application/ms-tnef":
        return "winmail.dat"
    ext = _EXTENSIONS.get(part.content_type, "bin")
    return f"attachment-{part.section}.{ext}"


def attachment_metadata(
    parts: Iterable[BodyPart], limits: Limits
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Describe every leaf that is not body text and apply the caps.

    :param parts: the normalised leaves of one message.
    :param limits: the size and count caps.
    :return: ``(attachments, ingress_skip_reasons)`` in CONTRACT section 2
        shape. ``id`` is the IMAP section, stable for the message on both
        fetch paths.
    """
    candidates = [p for p in parts if not p.is_body_text]
    listed = candidates[: max(0, limits.max_attachment_count)]
    attachments: list[dict[str, Any]] = []
    reasons: list[dict[str, Any]] = []
    running_total = 0
    for part in listed:
        name = attachment_name(part)
        size = max(1, int(part.decoded_size or part.size or 0))
        attachments.append(
            {
                "id": part.section,
                "name": name,
                "contentType": part.content_type,
                "size": size,
                "contentId": part.content_id or None,
                "isInline": is_inline(part),
            }
        )
        if size > limits.max_attachment_bytes:
            reasons.append(
                _reason(
                    REASON_OVER_MAX_BYTES,
                    f"attachment is {size} bytes, above the {limits.max_attachment_bytes}"
                    " byte cap; listed without content",
                    part.section,
                    name,
                    size,
                    limits.max_attachment_bytes,
                )
            )
            continue
        if running_total + size > limits.max_total_attachment_bytes:
            reasons.append(
                _reason(
                    REASON_TOTAL_BYTES_EXCEEDED,
                    f"attachments before this one already use {running_total} of the"
                    f" {limits.max_total_attachment_bytes} byte total cap; listed without content",
                    part.section,
                    name,
                    size,
                    limits.max_total_attachment_bytes,
                )
            )
            continue
        running_total += size
    if len(candidates) > len(listed):
        dropped = len(candidates) - len(listed)
        reasons.append(
            _reason(
                REASON_COUNT_EXCEEDED,
                f"message has {len(candidates)} attachments; only the first"
                f" {len(listed)} are listed, {dropped} left out",
                None,
                None,
                len(candidates),
                limits.max_attachment_count,
            )
        )
    return attachments, reasons


def is_inline(part: BodyPart) -> bool:
    """Inline when the sender said so, or when it is a Content-ID part of a
    multipart/related (an image the HTML body refers to)."""
    if part.disposition == "inline":
        return True
    return bool(part.content_id) and part.in_related


def _reason(
    code: str,
    words: str,
    attachment_id: Optional[str],
    attachment_name: Optional[str],
    size: int,
    cap: int,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": SKIP_TYPE_ATTACHMENT, "reason": code}
    if attachment_id is not None:
        entry["attachmentId"] = attachment_id
    if attachment_name is not None:
        entry["attachmentName"] = attachment_name
    entry["size"] = size
    entry["cap"] = cap
    entry["detail"] = words
    return entry
