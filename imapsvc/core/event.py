"""The stream entry of CONTRACT section 2, built from values (no I/O)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Mapping, Optional

import orjson

from imapsvc.core.dates import iso_z

__all__ = [
    "EVENT_INBOUND_EMAIL_RECEIVED",
    "EVENT_PROVIDER_AUTO_PAUSED",
    "NAMESPACE",
    "build_auto_paused_entry",
    "build_stream_entry",
    "encode_fields",
    "event_ids",
    "iso_z",
]

EVENT_INBOUND_EMAIL_RECEIVED = "INBOUND_EMAIL_RECEIVED"
EVENT_PROVIDER_AUTO_PAUSED = "INBOUND_EMAIL_PROVIDER_AUTO_PAUSED"

#: The fixed namespace of every imapsvc event id (uuid5). Never change it:
#: the ids of already published events derive from it, and consumers
#: deduplicate by them.
NAMESPACE = uuid.UUID("5d0c6a8e-2f1b-4c7e-9a43-6b1f0e8d2c71")


def _name(*parts: str) -> str:
    # NUL cannot occur in tenant/provider ids or our identities, so the join
    # is unambiguous.
    return "\x00".join(parts)


def event_ids(tenant: str, provider_id: str, identity: str) -> tuple[str, str]:
    """Deterministic ``(event_id, execution_id)`` for one message.

    :param identity: what makes the message unique for the provider (the
        pipeline passes the ledger dedupe key).
    :return: uuid5 strings under :data:`NAMESPACE`; the same inputs always
        give the same ids.
    """
    base = _name(tenant, provider_id, identity)
    event_id = uuid.uuid5(NAMESPACE, _name("event", base))
    execution_id = uuid.uuid5(NAMESPACE, _name("execution", base))
    return str(event_id), str(execution_id)


def _dumps(payload: Mapping[str, Any]) -> str:
    """Compact JSON text, non-ASCII kept as it is (smaller; Redis stores bytes
    either way). orjson: the payload is encoded once per message, and the
    stdlib encoder was the largest single cost of mapping a small message."""
    try:
        return orjson.dumps(payload).decode("utf-8")
    except (orjson.JSONEncodeError, TypeError):
        # A lone surrogate (orjson refuses it, and Redis could not take it as
        # UTF-8 anyway) or an integer beyond 64 bits: the stdlib encoder with
        # escapes gives valid ASCII JSON for both.
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode_fields(fields: Mapping[str, str]) -> str:
    """One stream entry's flat fields as a JSON object text, in their order:
    what the outbox stores, computed once where the entry is built (off the
    reactor thread) so the store only passes the text on."""
    return _dumps(fields)


def _fields(
    event_id: str, execution_id: str, event_type: str, tenant: str, now: datetime, payload: str
) -> dict[str, str]:
    return {
        "event_id": event_id,
        "execution_id": execution_id,
        "event_name": event_type,
        "event_type": event_type,
        "tenant": tenant,
        "timestamp": iso_z(now),
        "user_id": "",
        "from_state": "",
        "to_state": "",
        "payload_json": payload,
    }


def build_stream_entry(
    tenant: str,
    provider_id: str,
    email_data: Mapping[str, Any],
    event_id: str,
    execution_id: str,
    now: datetime,
) -> dict[str, str]:
    """The flat string fields of one ``INBOUND_EMAIL_RECEIVED`` entry.

    ``timestamp`` and ``occurredAt`` are both ``now`` (when the event was
    built, i.e. recorded); the message's own time is ``emailData.receivedAt``.
    """
    payload = {
        "tenantId": tenant,
        "tenant": tenant,
        "providerId": provider_id,
        "occurredAt": iso_z(now),
        "emailData": email_data,
    }
    return _fields(
        event_id, execution_id, EVENT_INBOUND_EMAIL_RECEIVED, tenant, now, _dumps(payload)
    )


def build_auto_paused_entry(
    tenant: str,
    provider_id: str,
    reason: str,
    failure_count: int,
    last_error_code: Optional[str],
    now: datetime,
) -> tuple[str, dict[str, str]]:
    """The ``INBOUND_EMAIL_PROVIDER_AUTO_PAUSED`` entry.

    The ids derive from the provider and the pause time (``now`` to the
    millisecond), so re-publishing the same pause keeps its event id.

    :return: ``(event_id, fields)``.
    """
    occurred = iso_z(now)
    event_id, execution_id = event_ids(tenant, provider_id, _name("auto-paused", occurred))
    payload = {
        "tenantId": tenant,
        "providerId": provider_id,
        "reason": reason,
        "failureCount": int(failure_count),
        "lastErrorCode": last_error_code,
        "occurredAt": occurred,
    }
    fields = _fields(
        event_id, execution_id, EVENT_PROVIDER_AUTO_PAUSED, tenant, now, _dumps(payload)
    )
    return event_id, fields
