"""Durable state behind :class:`imapsvc.interfaces.IStore`.

``postgres.PostgresStore`` is the production store, ``memory.MemoryStore``
the in-memory fake; both pass ``tests.store_contract``. The small pure
helpers here hold the decisions both make the same way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable, Optional, Sequence

from imapsvc.core.event import encode_fields
from imapsvc.model import OUTCOME_PUBLISHED, OUTCOME_SKIPPED, MessageRecord


def entry_bytes(record: MessageRecord) -> bytes:
    """The outbox entry of a published record as UTF-8 JSON: its ``entry`` as
    the pipeline encoded it (never encoded again), else its ``fields``
    encoded here."""
    if record.entry is not None:
        return record.entry
    return encode_fields({str(k): str(v) for k, v in (record.fields or {}).items()})


def entry_text(record: MessageRecord) -> str:
    """:func:`entry_bytes` as text."""
    return entry_bytes(record).decode("utf-8")


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


def sorted_capabilities(capabilities: Iterable[object]) -> list[str]:
    """``server_capabilities`` as stored: distinct strings, sorted."""
    out = set()
    for cap in capabilities:
        out.add(cap.decode("ascii", "replace") if isinstance(cap, bytes) else str(cap))
    return sorted(out)


def parse_seen_at(value: Optional[str]) -> Optional[datetime]:
    """The ``last_seen_at`` mirror column from a cursor string; ``None`` when
    absent or not an ISO timestamp (the jsonb copy keeps the string)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
