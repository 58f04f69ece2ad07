"""IMAP extensions the client uses when the server offers them. Pure code.

``ID`` (RFC 2971): some servers (NetEase's, for one) refuse to open a
mailbox for clients that do not say who they are, and every server's logs
are easier to read with a name. We send ``ID ("name" "imapsvc" "version"
"<version>")`` once per connection, **after authentication** and before the
first mailbox command, when the (post-login) capabilities list ``ID``:

- that is where Thunderbird sends it and where NetEase requires it (between
  LOGIN and SELECT), and Dovecot accepts it in any state;
- on a STARTTLS connection it keeps even the client's name off the
  cleartext part of the conversation.

Only the name and version are sent (no host, OS or user data: RFC 2971
section 7 warns against disclosing more). The server's answer is logged; a
``NO``/``BAD`` answer is not an error (the command is advisory).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

from imapsvc.imap.responses import needs_literal, quote

#: RFC 2971 section 3.3: field names up to 30 octets, values up to 1024,
#: at most 30 pairs.
MAX_ID_NAME = 30
MAX_ID_VALUE = 1024
MAX_ID_PAIRS = 30


@functools.lru_cache(maxsize=1)
def package_version() -> str:
    """The installed version of imapsvc, ``"0"`` when it is not installed.

    Read once per process: ``importlib.metadata`` scans ``sys.path`` on every
    call (about 0.4 ms, once per login: 3% of a reconnect storm's CPU)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("imapsvc")
    except (ImportError, PackageNotFoundError, ValueError):
        return "0"


def client_id_fields() -> tuple[tuple[str, str], ...]:
    """What this client says about itself in ``ID``."""
    return (("name", "imapsvc"), ("version", package_version()))


def id_command(fields: Sequence[tuple[str, str]]) -> bytes:
    """The ``ID`` command line (without tag) for ``fields``; fields that do
    not fit RFC 2971's limits or a quoted string are left out."""
    items: list[bytes] = []
    for name, value in list(fields)[:MAX_ID_PAIRS]:
        raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
        if not raw_name or len(raw_name) > MAX_ID_NAME or len(raw_value) > MAX_ID_VALUE:
            continue
        if needs_literal(raw_name) or needs_literal(raw_value):
            continue
        items.append(quote(raw_name) + b" " + quote(raw_value))
    if not items:
        return b"ID NIL"
    return b"ID (" + b" ".join(items) + b")"


def parse_id(tokens: Sequence[Any]) -> Optional[dict[str, str]]:
    """The server's ``* ID`` data (tokens after ``ID``) as a dict, or
    ``None`` for ``NIL`` or anything malformed. Values are cut to the RFC's
    limits; ``NIL`` values become ``""``."""
    if not tokens or not isinstance(tokens[0], list):
        return None
    items = tokens[0]
    out: dict[str, str] = {}
    for i in range(0, min(len(items), 2 * MAX_ID_PAIRS) - 1, 2):
        name, value = items[i], items[i + 1]
        if not isinstance(name, (str, bytes)):
            continue
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if value is not None and not isinstance(value, str):
            continue
        out[name[:MAX_ID_NAME]] = (value or "")[:MAX_ID_VALUE]
    return out
