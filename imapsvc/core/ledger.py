"""Keys of the message ledger and the dedupe decisions every store makes the
same way within one batch."""

from __future__ import annotations

import re
from typing import Optional, Sequence

from imapsvc.core.gmail import gmail_dedupe_key
from imapsvc.model import OUTCOME_PUBLISHED, OUTCOME_SKIPPED, MessageRecord

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


def check_records(records: Sequence[MessageRecord]) -> None:
    """Refuse a batch the store cannot record faithfully (before any write).

    :raises ValueError: an outcome other than published/skipped, or a
        published record without stream fields.
    """
    for record in records:
        if record.outcome not in (OUTCOME_PUBLISHED, OUTCOME_SKIPPED):
            raise ValueError(f"record outcome must be published or skipped: {record.outcome!r}")
        if record.outcome == OUTCOME_PUBLISHED and record.fields is None:
            raise ValueError(f"published record without fields: {record.dedupe_key}")


def first_occurrences(records: Sequence[MessageRecord]) -> list[bool]:
    """For each record, whether it is the first of the batch with its dedupe
    key and (when set) Message-ID key. Later ones are duplicates within the
    batch, whatever the ledger says."""
    seen_keys: set[str] = set()
    seen_ids: set[str] = set()
    first = []
    for record in records:
        dup = record.dedupe_key in seen_keys or (
            record.message_id_key is not None and record.message_id_key in seen_ids
        )
        first.append(not dup)
        if not dup:
            seen_keys.add(record.dedupe_key)
            if record.message_id_key is not None:
                seen_ids.add(record.message_id_key)
    return first


def last_message_id(records: Sequence[MessageRecord], new: Sequence[bool]) -> Optional[str]:
    """The Message-ID key of the last newly recorded message, if any."""
    for record, is_new in zip(reversed(records), reversed(new)):
        if is_new and record.message_id_key is not None:
            return record.message_id_key
    return None
