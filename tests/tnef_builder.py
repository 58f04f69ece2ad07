"""Build small TNEF (``winmail.dat``) blobs for tests.

The layout follows [MS-OXTNEF]: a signature, a legacy key, then attributes
``level (1) | id (4: type << 16 | name) | length (4) | data | checksum (2)``.
Each file is an attachment group: ``attAttachRendData`` (opens it),
``attAttachTitle`` (8.3 name), ``attAttachData`` (the bytes) and, when
``long_name`` or ``mime`` is given, ``attAttachment`` with MAPI properties
``PR_ATTACH_LONG_FILENAME`` / ``PR_ATTACH_MIME_TAG``.
"""

from __future__ import annotations

import struct
from typing import Optional, Sequence

SIGNATURE = 0x223E9F78
LVL_MESSAGE = 1
LVL_ATTACHMENT = 2


def attribute(level: int, atp: int, name: int, data: bytes) -> bytes:
    checksum = sum(data) & 0xFFFF
    return (
        struct.pack("<BHHI", level, name, atp, len(data)) + data + struct.pack("<H", checksum)
    )


def _mapi_string(prop_id: int, text: str) -> bytes:
    raw = text.encode("cp1252") + b"\x00"
    pad = b"\x00" * (-len(raw) % 4)
    # type PT_STRING8 (0x001E), id, one value: length, bytes, padding.
    return struct.pack("<HHII", 0x001E, prop_id, 1, len(raw)) + raw + pad


def tnef(
    files: Sequence[tuple[str, bytes]],
    long_names: Optional[Sequence[Optional[str]]] = None,
    mimes: Optional[Sequence[Optional[str]]] = None,
) -> bytes:
    out = [struct.pack("<IH", SIGNATURE, 0x1234)]
    out.append(attribute(LVL_MESSAGE, 0x0008, 0x9006, struct.pack("<I", 0x00010000)))
    out.append(attribute(LVL_MESSAGE, 0x0006, 0x9007, struct.pack("<II", 1252, 0)))
    out.append(attribute(LVL_MESSAGE, 0x0007, 0x8008, b"IPM.Microsoft Mail.Note\x00"))
    for i, (name, data) in enumerate(files):
        out.append(attribute(LVL_ATTACHMENT, 0x0006, 0x9002, b"\x01\x00" + b"\x00" * 12))
        out.append(attribute(LVL_ATTACHMENT, 0x0001, 0x8010, name.encode("cp1252") + b"\x00"))
        out.append(attribute(LVL_ATTACHMENT, 0x0006, 0x800F, data))
        props = []
        long_name = long_names[i] if long_names else None
        mime = mimes[i] if mimes else None
        if long_name:
            props.append(_mapi_string(0x3707, long_name))
        if mime:
            props.append(_mapi_string(0x370E, mime))
        if props:
            blob = struct.pack("<I", len(props)) + b"".join(props)
            out.append(attribute(LVL_ATTACHMENT, 0x0006, 0x9005, blob))
    return b"".join(out)


IMESSAGE_SIG = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"


def with_embedded(inner: bytes, name: str = "EMBED~1.MSG") -> bytes:
    """A TNEF blob with one attachment that is a message: ``inner`` (a TNEF
    blob) as ``PR_ATTACH_DATA_OBJ``."""
    obj = IMESSAGE_SIG + inner
    pad = b"\x00" * (-len(obj) % 4)
    prop = struct.pack("<HHII", 0x000D, 0x3701, 1, len(obj)) + obj + pad
    blob = struct.pack("<I", 1) + prop
    out = [tnef([])]
    out.append(attribute(LVL_ATTACHMENT, 0x0006, 0x9002, b"\x01\x00" + b"\x00" * 12))
    out.append(attribute(LVL_ATTACHMENT, 0x0001, 0x8010, name.encode("cp1252") + b"\x00"))
    out.append(attribute(LVL_ATTACHMENT, 0x0006, 0x9005, blob))
    return b"".join(out)
