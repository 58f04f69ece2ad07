"""Bytes to text without ever raising.

Mail declares charsets that Python does not know (``x-unknown``), spells
known ones oddly (``utf8``, ``ISO_8859-1:1987``), or lies (``us-ascii`` on
UTF-8 bytes). :func:`decode_bytes` walks a fallback chain and always returns
a ``str``:

1. the declared charset (after alias mapping), strictly;
2. UTF-8, strictly;
3. the declared charset with replacement characters, when Python knows it;
4. windows-1252, strictly;
5. latin-1 (every byte sequence decodes).
"""

from __future__ import annotations

import codecs
from functools import lru_cache
from typing import Optional

#: Labels seen in real mail mapped to a Python codec name; ``None`` means
#: "no information, use the fallback chain".
_ALIASES: dict[str, Optional[str]] = {
    "utf8": "utf-8",
    "utf-8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
    "x-unknown": None,
    "unknown": None,
    "unknown-8bit": None,
    "x-user-defined": None,
    "default": None,
    "charset": None,
    # Bytes labelled ASCII are, in practice, UTF-8 more often than not; UTF-8
    # decodes every real ASCII text identically.
    "us-ascii": "utf-8",
    "ascii": "utf-8",
    "ansi_x3.4-1968": "utf-8",
    "iso646-us": "utf-8",
    # WHATWG: latin-1 labels mean windows-1252 (smart quotes in 0x80-0x9f).
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
    "iso_8859-1": "cp1252",
    "iso_8859-1:1987": "cp1252",
    "windows-1252": "cp1252",
    "x-cp1252": "cp1252",
    "iso-8859-8-i": "iso8859-8",
    "iso-8859-6-i": "iso8859-6",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "euc-kr": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cn-gb": "gb18030",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "iso-2022-jp": "iso2022_jp_ext",
    "windows-874": "cp874",
    "tis-620": "cp874",
    "x-mac-roman": "mac_roman",
    "macintosh": "mac_roman",
    "utf-7": "utf-7",
    "unicode-1-1-utf-7": "utf-7",
}

#: Codecs Python would accept that are not charsets (they reinterpret escapes
#: or are platform-specific).
_REFUSED = frozenset(
    {
        "idna",
        "punycode",
        "unicode_escape",
        "raw_unicode_escape",
        "undefined",
        "mbcs",
        "oem",
        "charmap",
    }
)

_FALLBACK_1252 = "cp1252"


@lru_cache(maxsize=512)
def lookup_charset(label: Optional[str]) -> Optional[str]:
    """Map a declared charset label to a usable Python codec name.

    :return: ``None`` when the label is absent, unknown or not a text
        charset (the caller then uses the fallback chain).
    """
    if not label:
        return None
    name = label.strip().strip("\"'").lower()
    if not name or len(name) > 64:
        return None
    if name in _ALIASES:
        return _ALIASES[name]
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name.replace("-", "_") in _REFUSED:
        return None
    if info.name in ("ascii", "latin-1", "iso8859-1"):
        return _ALIASES["ascii"] if info.name == "ascii" else _FALLBACK_1252
    return info.name


def decode_bytes(data: bytes, charset: Optional[str] = None) -> str:
    """Decode ``data`` declared as ``charset``; never raises.

    See the module docstring for the fallback chain.
    """
    if not data:
        return ""
    codec = lookup_charset(charset)
    if codec is not None:
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError, ValueError):
            pass
    if codec != "utf-8":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec is not None:
        try:
            return data.decode(codec, "replace")
        except (LookupError, ValueError):
            pass
    try:
        return data.decode(_FALLBACK_1252)
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode_header_text(value: str) -> str:
    """Turn a header value read with ``surrogateescape`` (what ``compat32``
    does with raw 8-bit bytes) into proper text.

    Raw 8-bit header bytes are tried as UTF-8 first, then windows-1252,
    then latin-1.
    """
    if value.isascii():
        return value
    try:
        data = value.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        # Already real text (not from surrogateescape): keep it, minus any
        # lone surrogates, which cannot be encoded as UTF-8 later.
        return value.encode("utf-8", "replace").decode("utf-8")
    return decode_bytes(data, None)


def clean_text(value: str) -> str:
    """Drop NULs and lone surrogates so the text is safe for JSON/UTF-8."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value
