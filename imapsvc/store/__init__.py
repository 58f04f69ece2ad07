"""Durable state behind :class:`imapsvc.interfaces.IStore`.

``postgres.PostgresStore`` is the production store, ``sqlite.SqliteStore``
the embedded one and ``memory.MemoryStore`` the in-memory fake; all pass
``tests.store_contract``. The helpers here are the store-level glue they
share (how the outbox keeps an entry, how a bad provider row is reported);
the ledger's dedupe decisions are pure code in :mod:`imapsvc.core.ledger`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import orjson

from imapsvc.core.event import StreamEntry, encode_fields
from imapsvc.model import ProviderConfig

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
        from imapsvc.log_output import redact

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
