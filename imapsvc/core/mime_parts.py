"""A whole raw message -> (header bytes, leaf parts, body text bytes).

This is the fallback path of the folder engine: when a server's
BODYSTRUCTURE is unusable the whole message is fetched and split here into
the very shape the structure path produces, so one mapping serves both.

It is a small boundary scanner over bytes, not a full ``email`` object
tree: it only reads the handful of MIME headers that decide the structure
(Content-Type, Content-Transfer-Encoding, Content-ID, Content-Disposition),
never copies attachment bodies, and numbers sections the way IMAP (and
Dovecot's BODYSTRUCTURE) does. Sizes are reported in CRLF terms, as an IMAP
server counts them, whatever line ends the input uses.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from imapsvc.core.bodystructure import (
    MAX_DEPTH,
    choose_body_text,
    decode_params,
    fix_8bit,
    make_part,
    normalise_type,
)
from imapsvc.model import BodyPart

_HEADER_END = re.compile(rb"\n\r?\n")
_FIELD_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
_WANTED = {
    b"content-type",
    b"content-transfer-encoding",
    b"content-id",
    b"content-disposition",
}
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")


def split_message(
    raw: bytes, want: Optional[Callable[[BodyPart], bool]] = None
) -> tuple[bytes, list[BodyPart], dict[str, bytes]]:
    """Split a raw message the way the structure path sees it.

    :param raw: the whole message as ``BODY[]`` returns it.
    :param want: parts other than body text whose bytes ``texts`` should
        hold too (what the structure path would fetch by section).
    :return: ``(header, parts, texts)``: the exact header bytes including the
        blank line; the leaf parts with IMAP section numbers and the same
        fields :func:`~imapsvc.core.bodystructure.parse_bodystructure` gives
        for that message; and for every ``is_body_text`` part its encoded
        body bytes (what ``BODY[section]`` returns). Never raises.
    """
    try:
        return _split(raw, want)
    except Exception:  # noqa: BLE001 - a hostile message must never crash ingestion
        return _as_one_text_part(raw)


def _as_one_text_part(raw: bytes) -> tuple[bytes, list[BodyPart], dict[str, bytes]]:
    try:
        header, body_start = _header_span(raw, 0, len(raw))
    except Exception:  # noqa: BLE001
        header, body_start = b"", 0
    body = raw[body_start:]
    part = make_part(
        section="1",
        content_type="text/plain",
        params={"charset": "us-ascii"},
        encoding="7bit",
        size=_crlf_size(raw, body_start, len(raw)),
        lines=raw.count(b"\n", body_start),
        content_id=None,
        disposition=None,
        disposition_params={},
        in_related=False,
    )
    parts = choose_body_text([part])
    return header, parts, {"1": body}


def _split(
    raw: bytes, want: Optional[Callable[[BodyPart], bool]] = None
) -> tuple[bytes, list[BodyPart], dict[str, bytes]]:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raw = b""
    raw = bytes(raw)
    if b"\n" not in raw and b"\r" in raw:
        # Old Mac line ends only: give the scanner lines it can see.
        raw = raw.replace(b"\r", b"\r\n")
    header, body_start = _header_span(raw, 0, len(raw))
    spans: dict[str, tuple[int, int]] = {}
    parts: list[BodyPart] = []
    _entity(raw, 0, len(raw), "", parts, spans, 0, False, "text/plain", top=True)
    if not parts:
        return _as_one_text_part(raw)
    parts = choose_body_text(parts)
    texts = {}
    for part in parts:
        if part.is_body_text or (want is not None and want(part)):
            start, end = spans[part.section]
            texts[part.section] = raw[start:end]
    return header, parts, texts


def part_bodies(raw: bytes, sections: list[str]) -> dict[str, memoryview]:
    """The encoded body bytes of the leaf parts named in ``sections``
    (numbered as :func:`split_message` numbers them), as ``memoryview``
    slices of ``raw``: attachment content for ``IMAP_ATTACHMENT_MODE``
    inline/store without copying the message. Never raises."""
    if not sections:
        return {}
    try:
        buf = bytes(raw)
        if b"\n" not in buf and b"\r" in buf:
            buf = buf.replace(b"\r", b"\r\n")
        spans: dict[str, tuple[int, int]] = {}
        _entity(buf, 0, len(buf), "", [], spans, 0, False, "text/plain", top=True)
        if not spans:
            _header, body_start = _header_span(buf, 0, len(buf))
            spans = {"1": (body_start, len(buf))}
        view = memoryview(buf)
        return {s: view[spans[s][0] : spans[s][1]] for s in sections if s in spans}
    except Exception:  # noqa: BLE001 - a hostile message must never crash ingestion
        return {}


def _header_span(buf: bytes, start: int, end: int) -> tuple[bytes, int]:
    """The header of the entity at ``start`` and where its body begins."""
    if buf.startswith(b"\r\n", start) and start + 2 <= end:
        return buf[start : start + 2], start + 2
    if buf.startswith(b"\n", start) and start + 1 <= end:
        return buf[start : start + 1], start + 1
    match = _HEADER_END.search(buf, start, end)
    if match:
        return buf[start : match.end()], match.end()
    if start < end and not _FIELD_LINE.match(buf, start, end):
        # No blank line and no header field at the top: it is all body.
        return b"", start
    return buf[start:end], end


def _fields(header: bytes) -> dict[bytes, bytes]:
    """The structural MIME fields of a header block, unfolded (first wins)."""
    out: dict[bytes, bytes] = {}
    current: Optional[bytes] = None
    chunks: list[bytes] = []
    for line in header.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                chunks.append(line)
            continue
        if current is not None and current not in out:
            out[current] = b" ".join(c.strip() for c in chunks)
        current = None
        colon = line.find(b":")
        if colon <= 0:
            continue
        name = line[:colon].strip().lower()
        if name in _WANTED:
            current = name
            chunks = [line[colon + 1 :]]
    if current is not None and current not in out:
        out[current] = b" ".join(c.strip() for c in chunks)
    return out


def _entity(
    buf: bytes,
    start: int,
    end: int,
    section: str,
    out: list[BodyPart],
    spans: dict[str, tuple[int, int]],
    depth: int,
    in_related: bool,
    default_type: str,
    top: bool = False,
) -> None:
    header, body_start = _header_span(buf, start, end)
    fields = _fields(header)
    ctype_value = fields.get(b"content-type")
    params: dict[str, str]
    if ctype_value is None:
        content_type, params = default_type, {}
    else:
        content_type, params = _parse_content_type(_text(ctype_value))
    own_section = section or "1"
    if content_type.startswith("multipart/") and depth < MAX_DEPTH:
        boundary = params.get("boundary", "")
        children = _children(buf, body_start, end, boundary) if boundary else []
        if children:
            subtype = content_type.split("/", 1)[1]
            child_default = "message/rfc822" if subtype == "digest" else "text/plain"
            prefix = f"{section}." if section else ""
            for index, (child_start, child_end) in enumerate(children, 1):
                _entity(
                    buf,
                    child_start,
                    child_end,
                    f"{prefix}{index}",
                    out,
                    spans,
                    depth + 1,
                    subtype == "related",
                    child_default,
                )
            return
        # A multipart without a single delimiter line: keep its body as text.
        content_type, params = "text/plain", {}
    if content_type.startswith("text/") and "charset" not in params:
        params = dict(params, charset="us-ascii")
    disposition, disposition_params = _parse_disposition(fields.get(b"content-disposition"))
    encoding = _text(fields.get(b"content-transfer-encoding", b"7bit"))
    encoding = _COMMENT.sub("", encoding).strip().strip('"').lower() or "7bit"
    content_id = fields.get(b"content-id")
    has_lines = content_type.startswith("text/") or content_type == "message/rfc822"
    out.append(
        make_part(
            section=own_section,
            content_type=content_type,
            params=params,
            encoding=encoding,
            size=_crlf_size(buf, body_start, end),
            lines=buf.count(b"\n", body_start, end) if has_lines else None,
            content_id=_text(content_id) if content_id is not None else None,
            disposition=disposition,
            disposition_params=disposition_params,
            in_related=in_related,
        )
    )
    spans[own_section] = (body_start, end)


def _children(buf: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int]]:
    """Spans of the body parts between ``--boundary`` lines in ``[start, end)``.

    Tolerates a missing closing delimiter (the last part runs to the end)
    and ignores the preamble and the epilogue. The line break before a
    delimiter belongs to the delimiter, as RFC 2046 says.
    """
    delim = b"--" + boundary.encode("utf-8", "surrogateescape")
    spans: list[tuple[int, int]] = []
    part_start: Optional[int] = None
    pos = start
    first = True
    while True:
        found = _next_delimiter(buf, delim, pos, end, at_start=first)
        first = False
        if found is None:
            if part_start is not None:
                spans.append((part_start, end))
            return spans
        line_start, next_line, is_close = found
        if part_start is not None:
            part_end = line_start
            if part_end > part_start and buf[part_end - 1 : part_end] == b"\n":
                part_end -= 1
                if part_end > part_start and buf[part_end - 1 : part_end] == b"\r":
                    part_end -= 1
            spans.append((part_start, max(part_start, part_end)))
        if is_close:
            return spans
        part_start = next_line
        # Search from the line break that ended the delimiter line, so an
        # empty part directly followed by another delimiter is seen.
        pos = max(start, next_line - 1)


def _next_delimiter(
    buf: bytes, delim: bytes, pos: int, end: int, at_start: bool
) -> Optional[tuple[int, int, bool]]:
    """Find the next delimiter line: ``(line start, start of the next line, is close)``."""
    needle = b"\n" + delim
    while pos < end:
        if at_start and buf.startswith(delim, pos) and pos + len(delim) <= end:
            line_start = pos
            at_start = False
        else:
            at_start = False
            hit = buf.find(needle, pos, end)
            if hit < 0:
                return None
            line_start = hit + 1
        after = line_start + len(delim)
        eol = buf.find(b"\n", after, end)
        next_line = end if eol < 0 else eol + 1
        rest = buf[after : next_line if eol < 0 else eol]
        if rest.startswith(b"--"):
            return line_start, next_line, True
        if not rest.strip(b" \t\r"):
            return line_start, next_line, False
        # "--boundaryX...": another (longer) boundary or text; keep looking.
        pos = line_start
    return None


def _crlf_size(buf: bytes, start: int, end: int) -> int:
    """Octets from ``start`` to ``end`` with every bare LF counted as CRLF."""
    if end <= start:
        return 0
    newlines = buf.count(b"\n", start, end)
    crlf = buf.count(b"\r\n", start, end)
    return end - start + newlines - crlf


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return fix_8bit(value.decode("latin-1"))


_PARAM_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[^;"]+|;', re.S)


def _split_params(value: str) -> list[str]:
    """Split on ``;`` outside quoted strings."""
    if '"' not in value:
        return value.split(";")
    items: list[str] = []
    current: list[str] = []
    for token in _PARAM_TOKEN.findall(value):
        if token == ";":
            items.append("".join(current))
            current = []
        else:
            current.append(token)
    items.append("".join(current))
    return items


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"':
        inner = value[1:-1] if value.endswith('"') else value[1:]
        return re.sub(r"\\(.)", r"\1", inner)
    return value


def _param_pairs(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            continue
        key = _COMMENT.sub("", key).strip()
        if key:
            pairs.append((key, _unquote(value)))
    return pairs


def _parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    items = _split_params(value)
    head = _COMMENT.sub("", items[0]).strip()
    maintype, _, subtype = head.partition("/")
    params = decode_params(_param_pairs(items[1:]))
    content_type = normalise_type(maintype, subtype)
    if not head:
        content_type = "text/plain"
    return content_type, params


def _parse_disposition(value: Optional[bytes]) -> tuple[Optional[str], dict[str, str]]:
    if value is None:
        return None, {}
    items = _split_params(_text(value))
    kind = _COMMENT.sub("", items[0]).strip().strip('"').lower() or None
    return kind, decode_params(_param_pairs(items[1:]))
