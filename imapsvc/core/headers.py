"""The header block of a message: split, unfold, decode.

We split the header block ourselves instead of using
``email.parser.BytesHeaderParser``: the feed parser stops reading headers at
the first line that is not a header (``MissingHeaderBodySeparatorDefect``)
and treats everything after it as body, which loses ``Subject``/``To`` of
messages with one junk line; it is also several times slower for what we
need (names and raw values). Values keep their raw bytes (as
``surrogateescape`` text, the same convention as ``compat32``) until a caller
decodes them with :func:`decode_value`.
"""

from __future__ import annotations

import re
from typing import Iterator, Optional

from imapsvc.core.charsets import clean_text, decode_bytes, decode_header_text
from imapsvc.core.encoded_words import decode_encoded_words

#: RFC 5322 field names: printable ASCII except colon and space.
_NAME_RE = re.compile(r"^[!-9;-~]+$")

_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")
_BLANK_LINE_RE = re.compile(rb"\n\r?\n")


def header_block(data: bytes) -> bytes:
    """Cut ``data`` (a header block or a whole message) before the first
    empty line."""
    if data.startswith((b"\r\n", b"\n")):
        return b""
    match = _BLANK_LINE_RE.search(data)
    return data if match is None else data[: match.start()]


class Headers:
    """The fields of one header block, in order, with raw values.

    :ivar fields: list of ``(lower-cased name, original name, raw value)``;
        raw values are unfolded, stripped, and hold 8-bit bytes as
        ``surrogateescape`` characters.
    """

    __slots__ = ("fields", "junk_lines")

    def __init__(self, data: bytes) -> None:
        self.fields: list[tuple[str, str, str]] = []
        self.junk_lines = 0
        block = header_block(data)
        if not block:
            return
        text = block.decode("ascii", "surrogateescape")
        lines = text.split("\n")
        # mbox "From " envelope line, which some stores leave in place.
        if lines and lines[0].startswith("From "):
            lines = lines[1:]
        current: Optional[list[str]] = None
        for line in lines:
            if line.endswith("\r"):
                line = line[:-1]
            if line[:1] in (" ", "\t"):
                if current is not None:
                    current.append(line)
                else:
                    self.junk_lines += 1
                continue
            if current is not None:
                self._add(current)
                current = None
            if ":" not in line:
                if line.strip():
                    self.junk_lines += 1
                continue
            current = [line]
        if current is not None:
            self._add(current)

    def _add(self, lines: list[str]) -> None:
        first = lines[0]
        name, _, value = first.partition(":")
        name = name.rstrip(" \t")
        if not _NAME_RE.match(name):
            self.junk_lines += 1
            return
        if len(lines) > 1:
            # Unfold: the line break goes, the leading whitespace stays.
            value = value + "".join(lines[1:])
        self.fields.append((name.lower(), name, value.strip(" \t")))

    def get(self, name: str) -> Optional[str]:
        """The raw value of the first field called ``name`` (lower-case)."""
        for lower, _, value in self.fields:
            if lower == name:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Raw values of every field called ``name`` (lower-case), in order."""
        return [value for lower, _, value in self.fields if lower == name]

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        return iter(self.fields)


def decode_rfc2047(text: str) -> str:
    """Decode RFC 2047 encoded words in ``text`` (already real text).

    Adjacent encoded words of one charset are joined as bytes before
    decoding (a character split across two words survives), whitespace
    between adjacent encoded words is dropped, as the RFC says; a malformed
    encoded word is left as it is. See :mod:`imapsvc.core.encoded_words`.
    """
    return decode_encoded_words(text, decode_bytes)


def decode_value(raw: Optional[str]) -> str:
    """A raw header value as display text: 8-bit bytes decoded (UTF-8, then
    windows-1252), RFC 2047 words decoded, control characters other than tab
    turned into spaces, NULs dropped."""
    if not raw:
        return ""
    text = decode_rfc2047(decode_header_text(raw))
    # isprintable() is False for a tab, and unfolded values (DKIM-Signature,
    # Received) are full of tabs: only walk the characters when something
    # other than a tab is not printable.
    if not text.isprintable() and not text.replace("\t", " ").isprintable():
        text = "".join(c if c.isprintable() or c == "\t" else " " for c in text)
    return clean_text(text)
