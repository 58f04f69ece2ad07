"""Messages with attachments for the IMAP_ATTACHMENT_MODE tests (unit and
integration): MIME built by hand so every byte is known."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Sequence


def payload(n: int, size: int) -> bytes:
    """``size`` deterministic, incompressible-looking bytes for attachment n."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{n}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64_lines(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))


def qp(data: bytes) -> bytes:
    import quopri

    # Line breaks are CRLF on the wire: encode LF-only text, then widen.
    return quopri.encodestring(data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")


def message_with_attachments(
    files: Sequence[tuple[str, str, bytes]],
    subject: str = "Three files",
    message_id: str = "<att-1@example.com>",
    encodings: Sequence[str] = (),
    body: str = "See attached.",
) -> bytes:
    """multipart/mixed: a text/plain body then one part per ``(name,
    content type, bytes)``, base64 unless ``encodings`` says otherwise."""
    boundary = "=_b_" + hashlib.sha1(message_id.encode()).hexdigest()[:12]
    out = [
        b"From: Alice Example <alice@example.org>",
        b"To: support@example.com",
        f"Subject: {subject}".encode(),
        b"Date: Sat, 10 Jan 2026 12:00:00 +0000",
        f"Message-ID: {message_id}".encode(),
        b"MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"'.encode(),
        b"",
        f"--{boundary}".encode(),
        b"Content-Type: text/plain; charset=utf-8",
        b"",
        body.encode(),
    ]
    for i, (name, ctype, data) in enumerate(files):
        enc = encodings[i] if i < len(encodings) else "base64"
        encoded = (
            b64_lines(data) if enc == "base64" else qp(data) if enc == "quoted-printable" else data
        )
        out += [
            f"--{boundary}".encode(),
            f'Content-Type: {ctype}; name="{name}"'.encode(),
            f"Content-Transfer-Encoding: {enc}".encode(),
            f'Content-Disposition: attachment; filename="{name}"'.encode(),
            b"",
            encoded,
        ]
    out += [f"--{boundary}--".encode(), b""]
    return b"\r\n".join(out)


THREE_FILES = [
    ("report.pdf", "application/pdf", payload(1, 70_001)),
    ("photo.png", "image/png", payload(2, 3)),
    ("notes.txt", "text/plain", b"line one\r\nline two = caf\xc3\xa9\r\n" * 40),
]


def random_bytes(size: int) -> bytes:
    return os.urandom(size)
