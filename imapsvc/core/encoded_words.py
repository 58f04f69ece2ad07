"""RFC 2047 encoded words, decoded the way mail clients show them.

Robots (banks, ticketing systems, some mailers) cut a long subject or name
into encoded words at a fixed byte count, not at a character boundary, so
one multi-byte character can start in one word and end in the next::

    =?UTF-8?B?w6Rw?= =?UTF-8?B?w6Q=?=        ("äp" + "ä" ... cut inside "ä")

Decoding each word on its own turns both halves into replacement
characters. Thunderbird, Outlook and Apple Mail join the *bytes* of adjacent
encoded words of one charset first and decode once; so do we. Words are
adjacent when only linear white space separates them (that white space is
dropped, RFC 2047 section 6.2); B and Q words may be mixed in one run. A
malformed word is left as it is and ends the run.
"""

from __future__ import annotations

import binascii
import re
from typing import Callable, Optional

_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_Q_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")
_LWSP = " \t\r\n"


def word_bytes(encoding: str, payload: str) -> Optional[bytes]:
    """The octets of one encoded word's payload; ``None`` when malformed.

    B: padding may be missing or excessive (common in real mail). Q: ``_``
    is a space, ``=XX`` a byte, anything else itself.
    """
    raw = payload.encode("ascii", "surrogateescape")
    try:
        if encoding in "bB":
            stripped = raw.rstrip(b"=")
            return binascii.a2b_base64(stripped + b"=" * (-len(stripped) % 4))
        raw = raw.replace(b"_", b" ")
        return _Q_HEX.sub(lambda m: bytes((int(m.group(1), 16),)), raw)
    except (ValueError, TypeError):
        return None


def _charset_key(label: str) -> str:
    # RFC 2231 language suffix: charset*lang.
    return label.split("*", 1)[0].strip().lower()


def decode_encoded_words(text: str, decode: Callable[[bytes, str], str]) -> str:
    """Decode every encoded word in ``text``, joining adjacent words of one
    charset as bytes before ``decode(data, charset)`` turns them into text.

    :param decode: bytes + declared charset label -> text; never raises.
    """
    if "=?" not in text:
        return text
    out: list[str] = []
    pos = 0
    run: list[bytes] = []
    run_charset = ""
    run_label = ""

    def flush() -> None:
        if run:
            out.append(decode(b"".join(run), run_label))
            run.clear()

    for match in _WORD.finditer(text):
        between = text[pos : match.start()]
        data = word_bytes(match.group(2), match.group(3))
        adjacent = bool(run) and not between.strip(_LWSP)
        if data is None:
            flush()
            if not adjacent:
                out.append(between)
            out.append(match.group(0))
            pos = match.end()
            continue
        label = match.group(1).split("*", 1)[0]
        key = _charset_key(label)
        if adjacent and key == run_charset:
            run.append(data)
        else:
            flush()
            if not adjacent:
                out.append(between)
            run.append(data)
            run_charset, run_label = key, label
        pos = match.end()
    flush()
    out.append(text[pos:])
    return "".join(out)
