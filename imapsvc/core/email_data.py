"""One fetched message to the contract's ``emailData`` (CONTRACT section 2).

Both fetch paths meet here: the structure path hands over the exact header
bytes, the normalised BODYSTRUCTURE and the text parts; the fallback path
hands over the whole message, which :func:`imapsvc.core.mime_parts.split_message`
turns into the same three things first. Everything after that is one code
path, so both agree by construction.

Decisions the contract leaves open, made here:

- ``headers``: keys are lower-cased field names; repeated fields are joined
  with ``", "`` in order; each value is cut to :data:`MAX_HEADER_VALUE_CHARS`
  (and the whole map to :data:`MAX_HEADERS_CHARS`), noted in
  ``ingressNotes`` as ``header_truncated``. ``subject`` is cut the same
  way.
- ``ingressSkipReasons`` holds only what the app's schema accepts there
  (``type`` ``attachment`` or ``raw_mime``; ``reason``
  ``attachment_over_max_bytes``, ``attachment_total_bytes_exceeded``,
  ``attachment_count_exceeded``, ``raw_mime_over_max_bytes``): one entry
  more of another kind would make the app reject the whole event. Everything
  else that was cut or could not be read goes, in the same shape, to
  ``ingressNotes``: ``body_truncated`` (type ``body``), ``header_truncated``
  (``header``), ``parse_error`` (``message``) and ``address_count_exceeded``
  (type ``to``/``cc``, ``size`` the field's address count, ``cap``
  :data:`~imapsvc.core.addresses.MAX_ADDRESSES`), and in
  ``IMAP_ATTACHMENT_MODE`` inline/store ``attachment_content_missing`` (type
  ``attachment``, with ``attachmentId``/``attachmentName``: the server
  returned no bytes for a part within the caps). Every entry also has a
  ``detail`` in words.
- A message above ``max_raw_mime_bytes`` carries a ``raw_mime`` entry
  (``size`` its RFC822.SIZE): on the fallback path its body was not
  downloaded at all, on the structure path only its text parts were.
- ``threadId``: first of ``references``, else ``inReplyTo``, else the
  message's own ``id`` (a thread root names its own thread, which is what its
  replies' ``References`` will start with).
- ``inReplyTo`` is omitted when the message has none; ``references`` is
  ``[]``; ``body.html`` is ``""`` when there is no HTML part.
- A message without a Message-ID gets ``<sha256-prefix@imapsvc.local>`` from
  its header block (line ends normalised), size and INTERNALDATE, and no
  Message-ID dedupe key (only the UID key dedupes it).
- ``automated`` (auto-reply, bounce, bulk) is decided by
  :mod:`imapsvc.core.automated` from the header and the leaves, which both
  paths share.
- Skipped messages (no usable From) carry ``"from": None`` in their
  ``emailData``; they are never published.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Iterable, Mapping, Optional, Sequence

import attr

from imapsvc.core import ledger
from imapsvc.core.addresses import MAX_ADDRESSES, first_address, parse_addresses_counted
from imapsvc.core.automated import detect_automated, not_automated
from imapsvc.core.charsets import clean_text, decode_bytes
from imapsvc.core.dates import iso_z, parse_iso, parse_rfc2822_date
from imapsvc.core.headers import Headers, decode_value, header_block
from imapsvc.core.html_text import html_to_text
from imapsvc.model import BodyPart, FetchedMessage, Limits

#: Cap of one ``headers`` value (and of ``subject``), in characters.
MAX_HEADER_VALUE_CHARS = 8 * 1024
#: Cap of the whole ``headers`` map; later fields are dropped.
MAX_HEADERS_CHARS = 64 * 1024

SKIP_NO_FROM = "no usable From address"
SYNTHETIC_ID_DOMAIN = "imapsvc.local"

REASON_PARSE_ERROR = "parse_error"
REASON_BODY_TRUNCATED = "body_truncated"
REASON_HEADER_TRUNCATED = "header_truncated"
REASON_ADDRESS_COUNT_EXCEEDED = "address_count_exceeded"
REASON_RAW_MIME_OVER_MAX_BYTES = "raw_mime_over_max_bytes"
#: IMAP_ATTACHMENT_MODE inline/store: an attachment within the caps whose
#: bytes did not come back from the server (an ``ingressNotes`` entry).
REASON_ATTACHMENT_CONTENT_MISSING = "attachment_content_missing"
#: ``type`` of the ``ingressNotes`` entries, by reason code.
_NOTE_TYPES = {
    REASON_PARSE_ERROR: "message",
    REASON_BODY_TRUNCATED: "body",
    REASON_HEADER_TRUNCATED: "header",
}


@attr.s(frozen=True, auto_attribs=True)
class MappedMessage:
    """The result of :func:`map_message`.

    :ivar email_data: the contract's ``emailData`` object (JSON-ready).
    :ivar message_id_key: normalised Message-ID for the ledger, or ``None``
        (absent, garbage or synthetic id).
    :ivar dedupe_key: ``imap:<mailbox>:<uidvalidity>:<uid>``, or
        ``gmail:<X-GM-MSGID>`` (see :func:`imapsvc.core.ledger.dedupe_key`).
    :ivar skip_reason: why the message must not be published, or ``None``.
    """

    email_data: dict[str, Any]
    message_id_key: Optional[str]
    dedupe_key: str
    skip_reason: Optional[str] = None


def _reason(
    code: str, detail: str, size: int = 0, cap: int = 0, type_: Optional[str] = None
) -> dict[str, Any]:
    """One ``ingressNotes`` entry (or, for ``raw_mime``, a skip reason)."""
    return {
        "type": type_ or _NOTE_TYPES[code],
        "reason": code,
        "size": int(size),
        "cap": int(cap),
        "detail": detail,
    }


def _address_field(
    headers: Headers, name: str, notes: list[dict[str, Any]]
) -> list[dict[str, str]]:
    found, total = parse_addresses_counted(headers.get_all(name))
    if total > len(found):
        notes.append(
            _reason(
                REASON_ADDRESS_COUNT_EXCEEDED,
                f"{name} has {total} addresses; only the first {len(found)} are listed",
                size=total,
                cap=MAX_ADDRESSES,
                type_=name,
            )
        )
    return found


def _raw_mime_reason(msg: FetchedMessage, limits: Limits) -> list[dict[str, Any]]:
    if msg.size <= limits.max_raw_mime_bytes:
        return []
    header_only = msg.raw is None and not msg.parts and not msg.texts
    what = "its body was not downloaded" if header_only else "only its text parts were read"
    return [
        _reason(
            REASON_RAW_MIME_OVER_MAX_BYTES,
            f"message is {msg.size} bytes, above the {limits.max_raw_mime_bytes} byte"
            f" raw MIME cap; {what}",
            size=msg.size,
            cap=limits.max_raw_mime_bytes,
            type_="raw_mime",
        )
    ]


def synthetic_message_id(header: bytes, size: int, internal_date: Optional[str]) -> str:
    """A stable ``<hex@imapsvc.local>`` id for a message without Message-ID.

    Derived from the header block with line ends normalised (so the exact
    ``BODY[HEADER]`` bytes and a header block cut from the whole message
    agree), the size and the INTERNALDATE.
    """
    block = header_block(header).replace(b"\r\n", b"\n").rstrip(b"\r\n")
    digest = hashlib.sha256()
    digest.update(block)
    digest.update(f"\x00{int(size)}\x00{internal_date or ''}".encode("ascii", "replace"))
    return f"<{digest.hexdigest()[:32]}@{SYNTHETIC_ID_DOMAIN}>"


def _split(raw: bytes, limits: Limits) -> tuple[bytes, Sequence[BodyPart], Mapping[str, bytes]]:
    from imapsvc.core.mime_parts import split_message
    from imapsvc.core.tnef import wants_tnef_bytes

    want = (lambda p: wants_tnef_bytes(p, limits)) if limits.expand_tnef else None
    header, parts, texts = split_message(raw, want)
    return header, parts or (), texts or {}


def _expand_tnef(
    parts: Sequence[BodyPart], texts: Mapping[str, bytes], limits: Limits
) -> tuple[Sequence[BodyPart], list[dict[str, Any]]]:
    if not limits.expand_tnef:
        return parts, []
    from imapsvc.core.tnef import expand_tnef

    return expand_tnef(parts, texts, limits)


def _decode_transfer(encoding: str, data: bytes) -> bytes:
    from imapsvc.core.transfer import decode_transfer

    return decode_transfer(encoding, data)


def _attachments(
    parts: Sequence[BodyPart], limits: Limits
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from imapsvc.core.attachments import attachment_metadata

    attachments, reasons = attachment_metadata(parts, limits)
    return list(attachments), list(reasons)


def _param(part: BodyPart, name: str) -> Optional[str]:
    params = part.params or {}
    value = params.get(name)
    if value is None:
        for key, val in params.items():
            if key.lower() == name:
                return val
    return value


def _text_parts(parts: Sequence[BodyPart]) -> list[BodyPart]:
    return [p for p in parts if p.is_body_text and p.content_type in ("text/plain", "text/html")]


def _bodies(
    parts: Sequence[BodyPart],
    texts: Mapping[str, bytes],
    truncated: Iterable[str],
    limits: Limits,
    reasons: list[dict[str, Any]],
) -> dict[str, str]:
    cap = limits.max_text_part_bytes
    truncated_set = set(truncated)
    plain: list[str] = []
    html: list[str] = []
    for part in _text_parts(parts):
        data = texts.get(part.section)
        cut = part.section in truncated_set
        if data is None:
            if cut:
                reasons.append(_body_truncated(part, cap))
            continue
        if len(data) > cap:
            # Whole-message path: apply the same cap the fetch would have.
            data = data[:cap]
            cut = True
        if cut:
            reasons.append(_body_truncated(part, cap))
        try:
            decoded = _decode_transfer(part.encoding or "7bit", data)
        except Exception:
            decoded = data
        text = clean_text(decode_bytes(decoded, _param(part, "charset")))
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        (html if part.content_type == "text/html" else plain).append(text)
    text = "\n".join(t for t in plain if t)
    html_text = "\n".join(h for h in html if h)
    if not text and html_text:
        text = html_to_text(html_text)
    return {"text": text, "html": html_text}


def _body_truncated(part: BodyPart, cap: int) -> dict[str, Any]:
    return _reason(
        REASON_BODY_TRUNCATED,
        f"{part.content_type} part {part.section} is larger than {cap} bytes;"
        " only its first bytes were read",
        size=max(part.size, 1),
        cap=cap,
    )


def _capped(name: str, value: str, reasons: list[dict[str, Any]], noted: set[str]) -> str:
    if len(value) <= MAX_HEADER_VALUE_CHARS:
        return value
    if name not in noted:
        noted.add(name)
        reasons.append(
            _reason(
                REASON_HEADER_TRUNCATED,
                f"header {name} cut to {MAX_HEADER_VALUE_CHARS} characters",
                size=len(value),
                cap=MAX_HEADER_VALUE_CHARS,
            )
        )
    return value[:MAX_HEADER_VALUE_CHARS]


def _headers_map(
    headers: Headers, reasons: list[dict[str, Any]], noted: set[str]
) -> dict[str, str]:
    out: dict[str, str] = {}
    total = 0
    dropped = 0
    for lower, _name, raw in headers:
        value = decode_value(raw)
        if lower in out:
            value = out[lower] + ", " + value
        value = _capped(lower, value, reasons, noted)
        added = len(value) - len(out.get(lower, ""))
        if total + added > MAX_HEADERS_CHARS:
            dropped += 1
            continue
        total += added
        out[lower] = value
    if dropped:
        reasons.append(
            _reason(
                REASON_HEADER_TRUNCATED,
                f"{dropped} header fields dropped beyond {MAX_HEADERS_CHARS} characters",
                size=total,
                cap=MAX_HEADERS_CHARS,
            )
        )
    return out


def _automated(headers: Headers, parts: Sequence[BodyPart]) -> dict[str, Any]:
    try:
        return detect_automated(headers, parts)
    except Exception:  # noqa: BLE001 - a verdict is optional, the event is not
        return not_automated()


def _received_at(headers: Headers, internal_date: Optional[str], fetched_at: datetime) -> str:
    parsed = parse_rfc2822_date(decode_value(headers.get("date")))
    if parsed is None:
        parsed = parse_iso(internal_date)
    return iso_z(parsed if parsed is not None else fetched_at)


def map_message(
    msg: FetchedMessage,
    tenant: str,
    provider_id: str,
    fetched_at: datetime,
    limits: Limits,
) -> MappedMessage:
    """Map one fetched message to ``emailData``; never raises.

    A message that cannot be parsed at all still yields what could be read,
    plus an ``ingressSkipReasons`` entry of type ``parse_error``.
    """
    dedupe = ledger.dedupe_key(msg.mailbox, msg.uid_validity, msg.uid, msg.gm_msgid)
    try:
        return _map(msg, tenant, provider_id, fetched_at, limits, dedupe)
    except Exception as exc:  # a bug or an input we did not foresee
        return _last_resort(msg, tenant, provider_id, fetched_at, dedupe, exc, limits)


def _imap_block(msg: FetchedMessage) -> dict[str, Any]:
    internal = parse_iso(msg.internal_date)
    return {
        "mailbox": msg.mailbox,
        "uidValidity": str(msg.uid_validity),
        "uid": int(msg.uid),
        "internalDate": iso_z(internal) if internal is not None else None,
        "size": int(msg.size),
    }


def _map(
    msg: FetchedMessage,
    tenant: str,
    provider_id: str,
    fetched_at: datetime,
    limits: Limits,
    dedupe: str,
) -> MappedMessage:
    reasons: list[dict[str, Any]] = []
    header: bytes = msg.header or b""
    parts: Sequence[BodyPart] = msg.parts or ()
    texts: Mapping[str, bytes] = msg.texts or {}
    if msg.raw is not None:
        try:
            header, parts, texts = _split(msg.raw, limits)
        except Exception as exc:
            header, parts, texts = header_block(msg.raw), (), {}
            reasons.append(
                _reason(
                    REASON_PARSE_ERROR,
                    f"MIME structure unreadable ({type(exc).__name__}); headers only",
                    size=len(msg.raw),
                )
            )

    headers = Headers(header)
    noted: set[str] = set()
    header_map = _headers_map(headers, reasons, noted)

    raw_id = headers.get("message-id")
    message_id = ledger.extract_message_id(decode_value(raw_id) if raw_id else None)
    if message_id is None:
        message_id = synthetic_message_id(header, msg.size, msg.internal_date)
        message_id_key = None
    else:
        message_id_key = message_id.lower()

    sender = first_address(headers.get_all("from"))
    subject = _capped("subject", decode_value(headers.get("subject")), reasons, noted)
    references = ledger.extract_message_ids(" ".join(headers.get_all("references")))
    in_reply_to_ids = ledger.extract_message_ids(headers.get("in-reply-to"))
    in_reply_to = in_reply_to_ids[0] if in_reply_to_ids else None
    thread_id = references[0] if references else (in_reply_to or message_id)

    try:
        body = _bodies(parts, texts, msg.truncated, limits, reasons)
    except Exception as exc:
        body = {"text": "", "html": ""}
        reasons.append(_reason(REASON_PARSE_ERROR, f"body unreadable ({type(exc).__name__})"))
    try:
        listed, tnef_reasons = _expand_tnef(parts, texts, limits)
        attachments, attachment_reasons = _attachments(listed, limits)
        attachment_reasons += tnef_reasons
    except Exception as exc:
        attachments, attachment_reasons = [], []
        reasons.append(
            _reason(REASON_PARSE_ERROR, f"attachments unreadable ({type(exc).__name__})")
        )

    # IMAP_ATTACHMENT_MODE inline/store: content or storage references.
    raw_mime = _attachment_content(attachments, attachment_reasons, msg, limits, reasons)

    email_data: dict[str, Any] = {
        "id": message_id,
        "provider": "imap",
        "providerId": provider_id,
        "tenant": tenant,
        "receivedAt": _received_at(headers, msg.internal_date, fetched_at),
        "from": sender,
        "to": _address_field(headers, "to", reasons),
        "cc": _address_field(headers, "cc", reasons),
        "subject": subject,
        "body": body,
        "attachments": attachments,
        "threadId": thread_id,
        "references": references,
    }
    if in_reply_to is not None:
        email_data["inReplyTo"] = in_reply_to
    email_data["headers"] = header_map
    email_data["ingressSkipReasons"] = attachment_reasons + _raw_mime_reason(msg, limits)
    email_data["ingressNotes"] = reasons
    email_data["imap"] = _imap_block(msg)
    email_data["automated"] = _automated(headers, parts)
    if raw_mime is not None:
        email_data["rawMime"] = raw_mime
    return MappedMessage(
        email_data=email_data,
        message_id_key=message_id_key,
        dedupe_key=dedupe,
        skip_reason=None if sender is not None else SKIP_NO_FROM,
    )


def _attachment_content(
    attachments: list[dict[str, Any]],
    attachment_reasons: list[dict[str, Any]],
    msg: FetchedMessage,
    limits: Limits,
    reasons: list[dict[str, Any]],
) -> Optional[dict[str, Any]]:
    if limits.attachment_mode == "metadata":
        return None
    from imapsvc.core.attachment_content import apply

    try:
        skipped = {r.get("attachmentId") for r in attachment_reasons}
        raw_mime, missing = apply(attachments, msg, limits, skipped)
    except Exception as exc:
        reasons.append(
            _reason(REASON_PARSE_ERROR, f"attachment content unreadable ({type(exc).__name__})")
        )
        return None
    for entry in missing:
        note = _reason(
            REASON_ATTACHMENT_CONTENT_MISSING,
            f"the server returned no bytes for part {entry['id']}; listed without content",
            size=entry["size"],
            type_="attachment",
        )
        note["attachmentId"] = entry["id"]
        note["attachmentName"] = entry["name"]
        reasons.append(note)
    return raw_mime


def _last_resort(
    msg: FetchedMessage,
    tenant: str,
    provider_id: str,
    fetched_at: datetime,
    dedupe: str,
    exc: Exception,
    limits: Optional[Limits] = None,
) -> MappedMessage:
    """What is left when mapping failed unexpectedly: ids, dates and a
    ``parse_error``. Published only if a From address can still be read."""
    header = msg.header or (msg.raw or b"")
    sender = None
    subject = ""
    message_id = None
    automated = not_automated()
    try:
        headers = Headers(header)
        automated = _automated(headers, ())
        sender = first_address(headers.get_all("from"))
        subject = decode_value(headers.get("subject"))[:MAX_HEADER_VALUE_CHARS]
        message_id = ledger.extract_message_id(decode_value(headers.get("message-id")))
    except Exception:
        pass
    message_id_key = message_id.lower() if message_id else None
    try:
        fallback_id = synthetic_message_id(header, msg.size, msg.internal_date)
    except Exception:
        fallback_id = f"<{dedupe.encode('utf-8', 'replace').hex()[:32]}@{SYNTHETIC_ID_DOMAIN}>"
    message_id = message_id or fallback_id
    internal = parse_iso(msg.internal_date)
    email_data: dict[str, Any] = {
        "id": message_id,
        "provider": "imap",
        "providerId": provider_id,
        "tenant": tenant,
        "receivedAt": iso_z(internal or fetched_at),
        "from": sender,
        "to": [],
        "cc": [],
        "subject": subject,
        "body": {"text": "", "html": ""},
        "attachments": [],
        "threadId": message_id,
        "references": [],
        "headers": {},
        "ingressSkipReasons": _raw_mime_reason(msg, limits or Limits()),
        "ingressNotes": [
            _reason(REASON_PARSE_ERROR, f"message could not be mapped ({type(exc).__name__})")
        ],
        "imap": _imap_block(msg),
        "automated": automated,
    }
    return MappedMessage(
        email_data=email_data,
        message_id_key=message_id_key,
        dedupe_key=dedupe,
        skip_reason=None if sender is not None else SKIP_NO_FROM,
    )
