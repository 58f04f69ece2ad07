"""BODYSTRUCTURE (RFC 3501 section 7.4.2) -> a flat list of :class:`BodyPart`.

The folder engine fetches only the structure, the header and the body text
parts of a message. This module turns the nested list that Twisted's IMAP
parser produces for ``BODYSTRUCTURE`` into normalised leaf parts with their
IMAP section numbers, decides which leaves are the message's body text, and
estimates each part's decoded size so attachments can be described without
downloading them.

The helpers at the bottom (parameter decoding, size estimate, body text
choice) are shared with :mod:`imapsvc.core.mime_parts`, which builds the same
parts from a whole raw message, so both paths give identical results.
"""

from __future__ import annotations

import codecs
import re
from typing import Any, Iterable, Mapping, Optional, Sequence
from urllib.parse import unquote_to_bytes

import attr

from imapsvc.core.encoded_words import decode_encoded_words
from imapsvc.model import BodyPart

#: Deepest multipart nesting we follow; deeper structures are treated as unusable.
MAX_DEPTH = 64

_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")


def parse_bodystructure(struct: Any) -> Optional[list[BodyPart]]:
    """Flatten a parsed ``BODYSTRUCTURE`` into its leaf parts.

    :param struct: the value Twisted's ``IMAP4Client`` gives for the
        ``BODYSTRUCTURE`` key: nested lists of ``str`` (or ``bytes``) atoms,
        ``None`` for ``NIL``.
    :return: the leaves in order with their section numbers (``"1"`` for a
        single-part message), a nested ``message/rfc822`` being one leaf; or
        ``None`` when the structure is unusable. Never raises.
    """
    try:
        if not isinstance(struct, (list, tuple)) or not struct:
            return None
        leaves: list[BodyPart] = []
        if _is_multipart(struct):
            if not _walk_multipart(struct, "", leaves, 0):
                return None
        else:
            leaf = _leaf(struct, "1", in_related=False)
            if leaf is None:
                return None
            leaves.append(leaf)
        if not leaves:
            return None
        return choose_body_text(leaves)
    except Exception:  # noqa: BLE001 - a hostile server must never crash the engine
        return None


def body_text_parts(parts: Iterable[BodyPart]) -> list[BodyPart]:
    """The parts marked :attr:`BodyPart.is_body_text`, in order."""
    return [p for p in parts if p.is_body_text]


# -- the nested-list walk ----------------------------------------------------


def _is_multipart(node: Sequence[Any]) -> bool:
    return bool(node) and isinstance(node[0], (list, tuple))


def _walk_multipart(node: Sequence[Any], prefix: str, out: list[BodyPart], depth: int) -> bool:
    if depth > MAX_DEPTH:
        return False
    children = []
    rest_at = len(node)
    for i, item in enumerate(node):
        if isinstance(item, (list, tuple)):
            children.append(item)
        else:
            rest_at = i
            break
    subtype = (_text(node[rest_at]) or "mixed").lower() if rest_at < len(node) else "mixed"
    related = subtype == "related"
    for index, child in enumerate(children, 1):
        section = f"{prefix}{index}"
        if not child:
            continue
        if _is_multipart(child):
            if not _walk_multipart(child, section + ".", out, depth + 1):
                return False
        else:
            leaf = _leaf(child, section, in_related=related)
            if leaf is None:
                return False
            out.append(leaf)
    return True


def _leaf(node: Sequence[Any], section: str, in_related: bool) -> Optional[BodyPart]:
    if len(node) < 7:
        # Some servers omit trailing fields; type and subtype are the minimum.
        if len(node) < 2:
            return None
    fields = list(node) + [None] * max(0, 12 - len(node))
    content_type = normalise_type(_text(fields[0]), _text(fields[1]))
    params = decode_params(_pairs(fields[2]))
    content_id = _text(fields[3])
    encoding = (_text(fields[5]) or "7bit").strip().lower()
    size = _int(fields[6]) or 0
    lines: Optional[int] = None
    ext_at = 7
    is_message = content_type in ("message/rfc822", "message/global")
    if is_message and len(node) >= 10 and all(isinstance(node[i], (list, tuple)) for i in (7, 8)):
        lines = _int(fields[9])
        ext_at = 10
    elif content_type.startswith("text/"):
        lines = _int(fields[7])
        ext_at = 8
    # body-ext-1part: md5, disposition, language, location
    disposition_node = fields[ext_at + 1] if ext_at + 1 < len(fields) else None
    disposition, disposition_params = _disposition(disposition_node)
    return make_part(
        section=section,
        content_type=content_type,
        params=params,
        encoding=encoding,
        size=size,
        lines=lines,
        content_id=content_id,
        disposition=disposition,
        disposition_params=disposition_params,
        in_related=in_related,
    )


def _disposition(node: Any) -> tuple[Optional[str], dict[str, str]]:
    if isinstance(node, (list, tuple)) and node:
        kind = _text(node[0])
        params = decode_params(_pairs(node[1] if len(node) > 1 else None))
        return (kind.strip().lower() if kind else None), params
    if isinstance(node, (str, bytes)):
        # A few servers send a bare atom instead of a list.
        return _text(node).strip().lower() or None, {}  # type: ignore[union-attr]
    return None, {}


def _pairs(node: Any) -> list[tuple[str, str]]:
    if not isinstance(node, (list, tuple)):
        return []
    out = []
    for i in range(0, len(node) - 1, 2):
        key, value = _text(node[i]), _text(node[i + 1])
        if key:
            out.append((key, value or ""))
    return out


def _text(value: Any) -> Optional[str]:
    """An atom or string as ``str``; 8-bit UTF-8 that Twisted decoded as
    charmap is put back together."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    elif not isinstance(value, str):
        if isinstance(value, (int, float)):
            return str(value)
        return None
    return fix_8bit(value)


def fix_8bit(value: str) -> str:
    """Re-read a latin-1/charmap decoded string as UTF-8 when that is what it is."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _int(value: Any) -> Optional[int]:
    if isinstance(value, int):
        return value if value >= 0 else None
    text = _text(value)
    if text is None:
        return None
    text = text.strip().strip('"')
    if text.isdigit():
        return int(text)
    return None


# -- shared with mime_parts --------------------------------------------------


def normalise_type(maintype: Optional[str], subtype: Optional[str]) -> str:
    """``"type/subtype"`` lower-cased; anything unusable becomes
    ``application/octet-stream`` (servers disagree on how to report it)."""
    main = (maintype or "").strip().strip('"').lower()
    sub = (subtype or "").strip().strip('"').lower()
    if not main and not sub:
        return "text/plain"
    if not _TOKEN.match(main) or not sub or not _TOKEN.match(sub):
        return "application/octet-stream"
    return f"{main}/{sub}"


def make_part(
    *,
    section: str,
    content_type: str,
    params: Mapping[str, str],
    encoding: str,
    size: int,
    lines: Optional[int],
    content_id: Optional[str],
    disposition: Optional[str],
    disposition_params: Mapping[str, str],
    in_related: bool,
) -> BodyPart:
    """Build a :class:`BodyPart` the same way for both paths."""
    filename = disposition_params.get("filename") or params.get("name") or None
    if filename is not None:
        filename = filename.strip() or None
    if content_id is not None:
        content_id = content_id.strip().strip("<>").strip() or None
    if disposition is not None and disposition not in ("inline", "attachment"):
        # Unknown dispositions are to be treated as "attachment" (RFC 2183).
        disposition = "attachment"
    return BodyPart(
        section=section,
        content_type=content_type,
        params=dict(params),
        encoding=encoding or "7bit",
        size=size,
        decoded_size=estimate_decoded_size(encoding, size, lines, disposition_params),
        content_id=content_id,
        disposition=disposition,
        filename=filename,
        lines=lines,
        in_related=in_related,
    )


def estimate_decoded_size(
    encoding: str, size: int, lines: Optional[int], disposition_params: Mapping[str, str]
) -> int:
    """The decoded size of a part from what BODYSTRUCTURE tells us.

    The ``size=`` disposition parameter wins when present. For base64 the
    line breaks are taken off (from ``lines`` when known, else assuming the
    usual 76-character lines) and three quarters kept. Other encodings
    report the encoded size, close enough for caps.
    """
    declared = disposition_params.get("size", "").strip()
    if declared.isdigit() and int(declared) > 0:
        return int(declared)
    if size <= 0:
        return 0
    if encoding == "base64":
        if lines is None:
            # 76 characters and a CRLF per line; the last line's break
            # usually belongs to the next boundary.
            lines = size // 78
        payload = max(0, size - 2 * lines)
        # Padding ("=", at most two) is left in: an overestimate of <= 2 bytes.
        return max(1, (payload * 3) // 4)
    return size


def choose_body_text(parts: Sequence[BodyPart]) -> list[BodyPart]:
    """Mark the first text/plain and the first text/html that are not
    attachments (no ``attachment`` disposition, no filename) as body text."""
    chosen: dict[str, str] = {}
    for part in parts:
        if part.content_type not in ("text/plain", "text/html"):
            continue
        if part.content_type in chosen:
            continue
        if part.disposition == "attachment" or part.filename:
            continue
        chosen[part.content_type] = part.section
    wanted = set(chosen.values())
    # Only parts whose flag changes are copied (attr.evolve is slow, and this
    # runs on the reactor thread for every message of a chunk).
    return [
        p if p.is_body_text == (p.section in wanted) else attr.evolve(
            p, is_body_text=p.section in wanted)
        for p in parts
    ]


# -- parameter values: RFC 2231 and RFC 2047 ---------------------------------

_CONTINUATION = re.compile(r"^(.+?)\*(\d+)?(\*)?$")


def decode_params(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Parameter list -> dict with lower-cased names; RFC 2231 continuations
    and charsets merged and decoded, RFC 2047 encoded-words decoded."""
    plain: dict[str, str] = {}
    extended: dict[str, list[tuple[int, bool, str]]] = {}
    for raw_key, value in pairs:
        key = raw_key.strip().lower()
        if not key:
            continue
        match = _CONTINUATION.match(key) if "*" in key else None
        if match:
            base, index, star = match.group(1), match.group(2), match.group(3)
            encoded = bool(star) or index is None
            extended.setdefault(base, []).append((int(index or 0), encoded, value))
        elif key not in plain:
            plain[key] = value
    out = {k: decode_words(v) for k, v in plain.items()}
    for base, segments in extended.items():
        joined = _join_rfc2231(segments)
        if joined is not None:
            # The extended form is the more faithful one when both exist.
            out[base] = joined
    return out


def _join_rfc2231(segments: list[tuple[int, bool, str]]) -> Optional[str]:
    segments.sort(key=lambda s: s[0])
    charset = "utf-8"
    chunks: list[bytes] = []
    for position, (_, encoded, value) in enumerate(segments):
        if encoded:
            if position == 0 and value.count("'") >= 2:
                charset, _lang, value = value.split("'", 2)
                charset = charset or "utf-8"
            chunks.append(unquote_to_bytes(value))
        else:
            chunks.append(value.encode("utf-8", "surrogateescape"))
    data = b"".join(chunks)
    text = _decode_charset(data, charset)
    return decode_words(text) if "=?" in text else text


def _decode_charset(data: bytes, charset: str) -> str:
    name = charset.strip().lower() or "utf-8"
    try:
        codecs.lookup(name)
    except LookupError:
        name = "utf-8"
    try:
        return data.decode(name)
    except UnicodeDecodeError:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode(name, "replace")


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded-words inside a parameter value (mailers do
    it although the RFC forbids it); adjacent words of one charset are
    joined as bytes first (:mod:`imapsvc.core.encoded_words`)."""
    if "=?" not in value:
        return value
    return decode_encoded_words(value, _decode_charset)
