"""Address headers to ``{"email", "name"}`` lists that a strict consumer accepts.

The consumer rule (CONTRACT section 2): every address is syntactically
valid; group syntax is flattened and address-less entries are dropped. We
accept the common, unambiguous form of RFC 5321/5322 addresses:

- local part: a dot-atom of ASCII ``atext`` (no quoted strings, no
  SMTPUTF8 local parts; such addresses are dropped), at most 64 characters;
- domain: at least two LDH labels (``[A-Za-z0-9-]``, no leading/trailing
  hyphen, 1-63 characters), an alphabetic or ``xn--`` top-level label, at
  most 253 characters. A Unicode domain is converted to its IDNA (punycode)
  form; address literals (``[1.2.3.4]``) are dropped.
"""

from __future__ import annotations

import re
from email.utils import getaddresses
from typing import Iterable

from imapsvc.core.charsets import decode_header_text
from imapsvc.core.headers import decode_value

_LOCAL_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_TLD_RE = re.compile(r"^(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})$")

#: Raw address header text beyond this is not parsed (a 100 KB To line is
#: spam or an attack; the first addresses are what matters).
MAX_FIELD_CHARS = 32 * 1024
#: At most this many addresses per field reach the event.
MAX_ADDRESSES = 500
#: Display names are cut to this many characters.
MAX_NAME_CHARS = 256


def is_valid_address(addr: object) -> bool:
    """Whether ``addr`` is an address this service may publish (see the
    module docstring for the accepted syntax)."""
    if not isinstance(addr, str) or len(addr) > 254 or not addr.isascii():
        return False
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or len(local) > 64 or len(domain) > 253:
        return False
    if not _LOCAL_RE.match(local):
        return False
    labels = domain.split(".")
    if len(labels) < 2:
        return False
    for label in labels:
        if not _LABEL_RE.match(label):
            return False
    return bool(_TLD_RE.match(labels[-1]))


def normalise_address(addr: str) -> str | None:
    """Clean one address spec; ``None`` if it cannot be made valid.

    Strips whitespace and stray angle brackets, converts a Unicode domain to
    IDNA. Case is preserved.
    """
    addr = "".join(addr.split()).strip("<>")
    if not addr or "@" not in addr:
        return None
    local, _, domain = addr.rpartition("@")
    domain = domain.rstrip(".")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except (UnicodeError, ValueError):
            return None
    candidate = f"{local}@{domain}"
    return candidate if is_valid_address(candidate) else None


#: Characters that make an address list more than "Name <a@b>, c@d":
#: quotes, comments, groups, escapes, literals. With none of them the fast
#: path below gives what :func:`email.utils.getaddresses` gives.
_NOT_SIMPLE = re.compile(r'["():;\\\[\]]')
_NAMED = re.compile(r"^([^<>@]*)<([^<>\s@]+@[^<>\s@]+)>$")
_BARE = re.compile(r"^[^\s<>@]+@[^\s<>@]+$")


def simple_addresses(texts: list[str]) -> list[tuple[str, str]] | None:
    """``getaddresses(texts)`` for the common plain forms, without the
    stdlib's pure-Python RFC 2822 parser (the costliest step of mapping a
    message); ``None`` when any part is not plain (the caller falls back)."""
    pairs: list[tuple[str, str]] = []
    for text in texts:
        if _NOT_SIMPLE.search(text):
            return None
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            named = _NAMED.match(part)
            if named is not None:
                pairs.append((" ".join(named.group(1).split()), named.group(2)))
            elif _BARE.match(part):
                pairs.append(("", part))
            else:
                return None
    return pairs


def parse_addresses(raw_values: Iterable[str]) -> list[dict[str, str]]:
    """Parse raw address header values (``surrogateescape`` text, as from
    :class:`imapsvc.core.headers.Headers`) into valid ``{"email", "name"}``
    entries, in order. Invalid and address-less entries are dropped; groups
    are flattened; names are RFC 2047 decoded (after splitting, so an
    encoded comma cannot split an address). At most :data:`MAX_ADDRESSES`."""
    return parse_addresses_counted(raw_values)[0]


def parse_addresses_counted(raw_values: Iterable[str]) -> tuple[list[dict[str, str]], int]:
    """:func:`parse_addresses`, and how many valid addresses the field held
    before the cut to :data:`MAX_ADDRESSES` (more than ``len(list)`` when it
    was cut)."""
    texts = []
    budget = MAX_FIELD_CHARS
    for raw in raw_values:
        if budget <= 0:
            break
        text = decode_header_text(raw)[:budget]
        budget -= len(text)
        texts.append(text)
    if not texts:
        return [], 0
    simple = simple_addresses(texts)
    if simple is not None:
        pairs = simple
    else:
        try:
            pairs = getaddresses(texts)
        except Exception:
            return [], 0
    out: list[dict[str, str]] = []
    total = 0
    for name, spec in pairs:
        email = normalise_address(spec) if spec else None
        if email is None:
            continue
        total += 1
        if len(out) >= MAX_ADDRESSES:
            continue  # counted only, to say what was cut
        display = decode_value(name).strip().strip("\"'").strip()[:MAX_NAME_CHARS]
        out.append({"email": email, "name": display})
    return out, total


def first_address(raw_values: Iterable[str]) -> dict[str, str] | None:
    """The first valid address among ``raw_values``, or ``None``."""
    found = parse_addresses(raw_values)
    return found[0] if found else None
