"""Durable state behind :class:`imapsvc.interfaces.IStore`.

``postgres.PostgresStore`` is the production store, ``memory.MemoryStore``
the in-memory fake; both pass ``tests.store_contract``. The small pure
helpers here hold the decisions both make the same way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import orjson

from imapsvc.core.event import StreamEntry, encode_fields
from imapsvc.model import OUTCOME_PUBLISHED, OUTCOME_SKIPPED, MessageRecord, ProviderConfig

#: The columns of ``imap_provider_options`` a store sets one at a time
#: (schema/0007 write_back, schema/0009 oauth_delegate): the only names a
#: store puts into an option statement.
OPTION_COLUMNS = frozenset({"write_back", "oauth_delegate"})

#: Longest ``config_error`` a store puts on an unreadable row.
_ROW_ERROR_MAX = 300


def outbox_parts(fields: Mapping[str, str]) -> tuple[bytes, Optional[bytes]]:
    """How the outbox keeps one entry (schema 0006): every field but
    ``payload_json`` as a UTF-8 JSON object, and ``payload_json`` apart as
    it is (``None`` when absent). A :class:`~imapsvc.core.event.StreamEntry`
    hands over its payload bytes without decoding or escaping them."""
    if isinstance(fields, StreamEntry):
        return encode_fields(fields.head()), fields.wire_payload()
    head = {str(k): str(v) for k, v in fields.items() if k != "payload_json"}
    payload = fields.get("payload_json")
    return encode_fields(head), None if payload is None else str(payload).encode("utf-8")


def outbox_fields(head: Any, payload: Any) -> dict[str, str]:
    """The fields of an outbox row stored by :func:`outbox_parts`, in order."""
    fields: dict[str, str] = orjson.loads(head)
    if payload is not None:
        fields["payload_json"] = payload if isinstance(payload, str) else bytes(
            payload).decode("utf-8")
    return fields


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


def provider_or_invalid(
    convert: Callable[[Any], ProviderConfig], row: Any, head: Optional[Sequence[Any]] = None
) -> ProviderConfig:
    """``convert(row)``, or for a row it cannot convert a placeholder that
    carries the reason in ``config_error``, so one bad row never hides the
    providers after it.

    :param head: ``tenant, id, provider_name, mailbox, host`` of the row;
        by default its first five columns (the SQL stores' column order).
    """
    if head is None:
        head = row
    try:
        return convert(row)
    except Exception as e:
        # Messages name columns and non-secret values (a port, a path); a
        # credential column is never parsed, but redact anyway.
        from imapsvc.logging import redact

        reason = redact(str(e) or e.__class__.__name__)[:_ROW_ERROR_MAX]
        return ProviderConfig(
            tenant=str(head[0]),
            provider_id=str(head[1]),
            provider_name=str(head[2] or ""),
            mailbox=str(head[3] or ""),
            host=str(head[4] or ""),
            port=0,
            config_error=f"unreadable configuration: {reason}",
        )


def backfill_folders(folder: Optional[str], folder_state: Any,
                     folder_filters: Any) -> list[str]:
    """The folders a ``resync --since`` schedules: ``folder`` itself, or
    for every folder, each folder with a cursor (the server's spelling) and
    each configured filter (``INBOX`` when none), so a folder gets it
    whether it already ran or not (it reads both names)."""
    if folder is not None:
        return [folder]
    names = list(folder_state) if isinstance(folder_state, dict) else []
    # The "*" filter is no folder: the folders it found have cursors.
    filters = [f for f in (folder_filters or ())
               if isinstance(f, str) and f.strip() and f.strip() != "*"]
    names += filters or ["INBOX"]
    return list(dict.fromkeys(names))
