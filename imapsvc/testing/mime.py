"""What an IMAP server answers for ``BODY[section]`` and ``BODYSTRUCTURE``,
computed from a message's exact bytes (:func:`split_header`,
:func:`section_bytes`, :func:`bodystructure_of`), so tests need not write
structures by hand. A server's view, for the fakes; the service's own MIME
code is :mod:`imapsvc.core.mime_parts`.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
from typing import Any, Optional


def split_header(entity: bytes) -> tuple[bytes, bytes]:
    """``(header, body)`` of a message or MIME part; the header keeps its
    blank line (as ``BODY[HEADER]`` does). No blank line: all header."""
    if entity.startswith(b"\r\n"):
        return b"\r\n", entity[2:]
    if entity.startswith(b"\n"):
        return b"\n", entity[1:]
    ends = [(entity.find(sep), len(sep)) for sep in (b"\r\n\r\n", b"\n\n")]
    found = [(at, n) for at, n in ends if at >= 0]
    if not found:
        return entity, b""
    at, n = min(found)
    return entity[: at + n], entity[at + n :]


def _headers(header: bytes) -> Any:
    return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header)


def _content_type(header: bytes, default: str = "text/plain") -> tuple[str, str, list[str]]:
    """``(type, subtype, [name, value, ...])`` from a Content-Type header."""
    msg = _headers(header)
    if msg.get("content-type") is None:
        full = default
        params: list[str] = ["charset", "us-ascii"] if default == "text/plain" else []
        main, _, sub = full.partition("/")
        return main, sub, params
    main, _, sub = msg.get_content_type().partition("/")
    params = []
    for name, value in (msg.get_params() or [])[1:]:
        if isinstance(value, tuple):
            value = email.utils.collapse_rfc2231_value(value)
        params += [name, str(value)]
    return main, sub, params


def _parts(body: bytes, boundary: str) -> list[bytes]:
    """The body parts of a multipart body, exact bytes (the CRLF before each
    delimiter belongs to the delimiter, RFC 2046 5.1.1)."""
    delim = b"--" + boundary.encode("latin-1")
    starts = []
    at = body.find(delim)
    while at >= 0:
        if at == 0 or body[at - 1 : at] == b"\n":
            starts.append(at)
        at = body.find(delim, at + len(delim))
    out = []
    for index, start in enumerate(starts):
        after = start + len(delim)
        if body[after : after + 2] == b"--":
            break
        eol = body.find(b"\n", after)
        if eol < 0:
            break
        end = starts[index + 1] if index + 1 < len(starts) else len(body)
        if body[end - 2 : end] == b"\r\n":
            end -= 2
        elif body[end - 1 : end] == b"\n":
            end -= 1
        out.append(body[eol + 1 : end])
    return out


def _boundary(header: bytes) -> Optional[str]:
    value = _headers(header).get_param("boundary")
    if isinstance(value, tuple):
        value = email.utils.collapse_rfc2231_value(value)
    return None if value is None else str(value)


def section_bytes(raw: bytes, section: str) -> Optional[bytes]:
    """``BODY[section]`` of a message: ``""``, ``HEADER``, ``TEXT``, part
    numbers (``1``, ``2.1``) and ``N.MIME``; ``None`` when there is no such
    part."""
    header, body = split_header(raw)
    section = section.upper()
    if section == "":
        return raw
    if section == "HEADER":
        return header
    if section == "TEXT":
        return body
    default = "text/plain"
    for index, step in enumerate(section.split(".")):
        last = index == len(section.split(".")) - 1
        if step in ("MIME", "HEADER", "TEXT"):
            if not last:
                return None
            if step == "MIME" or step == "HEADER":
                return header
            return body
        if not step.isdigit():
            return None
        number = int(step)
        main, sub, _params = _content_type(header, default)
        if main == "multipart":
            boundary = _boundary(header)
            children = _parts(body, boundary) if boundary else []
            if not 1 <= number <= len(children):
                return None
            default = "message/rfc822" if sub == "digest" else "text/plain"
            header, body = split_header(children[number - 1])
        elif number != 1:
            return None
        elif main == "message" and sub == "rfc822":
            # The part is a message: its own header and body come next.
            if last:
                return body
            header, body = split_header(body)
            default = "text/plain"
            continue
        if last:
            return body
    return body


def _lines(data: bytes) -> str:
    return str(data.count(b"\n"))


def bodystructure_of(raw: bytes) -> list:
    """The ``BODYSTRUCTURE`` of a message as :class:`FolderIMAPClient`
    returns it: nested lists of ``str`` (numbers as digit strings) and
    ``None`` for NIL, with the extension data a server like Dovecot sends."""
    header, body = split_header(raw)
    return _structure(header, body, "text/plain")


def _structure(header: bytes, body: bytes, default: str) -> list:
    main, sub, params = _content_type(header, default)
    fields = _headers(header)
    disposition: Optional[list] = None
    if fields.get("content-disposition") is not None:
        kind = str(fields.get("content-disposition")).split(";")[0].strip().lower()
        dparams: list[str] = []
        for name, value in (fields.get_params(header="content-disposition") or [])[1:]:
            if isinstance(value, tuple):
                value = email.utils.collapse_rfc2231_value(value)
            dparams += [name, str(value)]
        disposition = [kind, dparams or None]
    if main == "multipart":
        boundary = _boundary(header)
        child_default = "message/rfc822" if sub == "digest" else "text/plain"
        children = [
            _structure(*split_header(part), child_default)
            for part in (_parts(body, boundary) if boundary else [])
        ]
        return [*children, sub, params or None, disposition, None, None]
    cid = fields.get("content-id")
    description = fields.get("content-description")
    encoding = str(fields.get("content-transfer-encoding") or "7bit").strip().lower()
    node: list = [
        main,
        sub,
        params or None,
        None if cid is None else str(cid).strip(),
        None if description is None else str(description).strip(),
        encoding,
        str(len(body)),
    ]
    if main == "message" and sub == "rfc822":
        inner_header, inner_body = split_header(body)
        envelope: list = [None] * 10
        node += [envelope, _structure(inner_header, inner_body, "text/plain"), _lines(body)]
    elif main == "text":
        node.append(_lines(body))
    return node + [None, disposition, None, None]
