"""Keys of the message ledger (dedupe)."""

from __future__ import annotations

import re
from typing import Optional

from imapsvc.core.gmail import gmail_dedupe_key

_MSGID_RE = re.compile(r"<([^<>\s]+)>")
_BARE_RE = re.compile(r"^[\x21-\x7e]+@[\x21-\x7e]+$")

#: Longer Message-IDs are treated as garbage (RFC 5322 lines are at most
#: 998 characters; a longer id will not be matched by anyone anyway).
MAX_MESSAGE_ID_CHARS = 998


def dedupe_key(
    mailbox: str, uid_validity: str | int, uid: int, gm_msgid: Optional[str] = None
) -> str:
    """``imap:<mailbox>:<uidvalidity>:<uid>``: one message in one folder
    incarnation. A Gmail message with its ``X-GM-MSGID`` is
    ``gmail:<msgid>`` instead: one message of the account, in whichever
    folders (labels) it shows (:mod:`imapsvc.core.gmail`)."""
    if gm_msgid:
        return gmail_dedupe_key(gm_msgid)
    return f"imap:{mailbox}:{uid_validity}:{uid}"


def extract_message_id(raw: Optional[str]) -> Optional[str]:
    """The first ``<...>`` id of a header value, whitespace removed, case
    kept (as in the header); a bare ``local@domain`` gets brackets.
    ``None`` for empty or garbage values."""
    if not raw:
        return None
    compact = "".join(raw.split())
    if not compact or len(compact) > MAX_MESSAGE_ID_CHARS or not compact.isascii():
        return None
    match = _MSGID_RE.search(compact)
    if match is not None:
        return f"<{match.group(1)}>"
    bare = compact.strip("<>")
    if _BARE_RE.match(bare) and "<" not in bare and ">" not in bare:
        return f"<{bare}>"
    return None


def extract_message_ids(raw: Optional[str]) -> list[str]:
    """Every ``<...>`` id of a ``References``-style value, in order, without
    duplicates."""
    if not raw or not raw.isascii():
        return []
    seen: dict[str, None] = {}
    for match in _MSGID_RE.finditer(raw):
        value = f"<{match.group(1)}>"
        if len(value) <= MAX_MESSAGE_ID_CHARS:
            seen.setdefault(value, None)
    return list(seen)


def normalise_message_id(raw: Optional[str]) -> Optional[str]:
    """The ledger's Message-ID key: the id of :func:`extract_message_id`,
    lower-cased, angle brackets kept; ``None`` for empty or garbage."""
    value = extract_message_id(raw)
    return None if value is None else value.lower()
