"""Content-Transfer-Encoding decoding that never raises.

Mail in the wild carries base64 with junk, missing padding and stray
characters, and quoted-printable with broken escapes. A body we cannot decode
perfectly is still worth more than an exception, so every decoder here is
tolerant and falls back to returning the input.
"""

from __future__ import annotations

import binascii
import re

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Every byte that is not part of the base64 alphabet is deleted before
# decoding (whitespace, line ends, junk, and "=" which we re-add ourselves).
_B64_DELETE = bytes(b for b in range(256) if b not in _B64_ALPHABET)
# URL-safe variants show up from some generators; map them onto the standard alphabet.
_B64_URLSAFE = bytes.maketrans(b"-_", b"+/")

_QP_BAD_ESCAPE = re.compile(rb"=(?![0-9A-Fa-f]{2}|\r?\n|\r)")


def decode_base64(data: bytes) -> bytes:
    """Decode base64 leniently: junk is skipped, padding is repaired.

    Decoding stops at the first padding character only when real data
    precedes it, so concatenated base64 blobs (a known mailer bug) lose
    their tail rather than producing garbage.
    """
    try:
        pad = data.find(b"=")
        if pad >= 0:
            # "=" marks the end of the data; everything after it is junk
            # unless it is more padding.
            data = data[:pad]
        clean = data.translate(_B64_URLSAFE).translate(None, _B64_DELETE)
        extra = len(clean) % 4
        if extra == 1:
            # One dangling character carries no full byte: drop it.
            clean = clean[:-1]
        elif extra:
            clean += b"=" * (4 - extra)
        return binascii.a2b_base64(clean)
    except (binascii.Error, ValueError, TypeError):
        return b""


def decode_quoted_printable(data: bytes) -> bytes:
    """Decode quoted-printable; malformed ``=`` escapes are kept literally."""
    try:
        # binascii drops a "=" followed by garbage; escape it first so it
        # survives as the literal character the sender most likely meant.
        data = _QP_BAD_ESCAPE.sub(b"=3D", data)
        # a2b_qp only understands LF line ends for soft breaks reliably.
        data = data.replace(b"=\r\n", b"").replace(b"=\n", b"").replace(b"=\r", b"")
        return binascii.a2b_qp(data)
    except (binascii.Error, ValueError, TypeError):
        return data


def decode_transfer(encoding: str | bytes | None, data: bytes) -> bytes:
    """Decode ``data`` according to a Content-Transfer-Encoding name.

    :param encoding: the encoding name, any case, ``None`` for absent.
    :param data: the encoded body bytes.
    :return: the decoded bytes; ``7bit``, ``8bit``, ``binary`` and unknown
        encodings return ``data`` unchanged. Never raises.
    """
    if isinstance(encoding, bytes):
        encoding = encoding.decode("latin-1", "replace")
    name = (encoding or "").strip().strip('"').lower()
    if name == "base64":
        return decode_base64(data)
    if name in ("quoted-printable", "quotedprintable", "qp"):
        return decode_quoted_printable(data)
    return data
