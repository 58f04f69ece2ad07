"""The stream entry of CONTRACT section 2, built from values (no I/O)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Any, Iterator, Mapping, Optional

import orjson

from imapsvc.core.dates import iso_z

__all__ = [
    "EVENT_INBOUND_EMAIL_RECEIVED",
    "EVENT_PROVIDER_AUTO_PAUSED",
    "NAMESPACE",
    "StreamEntry",
    "build_auto_paused_entry",
    "build_encoded_entry",
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


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(NAMESPACE, name))`` without building UUID objects
    (two per message; ``UUID.__init__`` was most of their cost)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NAMESPACE_BYTES = NAMESPACE.bytes


def event_ids(tenant: str, provider_id: str, identity: str) -> tuple[str, str]:
    """Deterministic ``(event_id, execution_id)`` for one message.

    :param identity: what makes the message unique for the provider (the
        pipeline passes the ledger dedupe key).
    :return: uuid5 strings under :data:`NAMESPACE`; the same inputs always
        give the same ids.
    """
    base = _name(tenant, provider_id, identity)
    return _uuid5(_name("event", base)), _uuid5(_name("execution", base))


#: The last ``now`` formatted: a whole batch shares one, and each entry
#: needs it twice (``timestamp``, ``occurredAt``).
_last_now: tuple[Optional[datetime], str] = (None, "")


def _now_text(now: datetime) -> str:
    global _last_now
    cached = _last_now  # one read and one write of a tuple: thread-safe
    if cached[0] is now:
        return cached[1]
    text = iso_z(now)
    _last_now = (now, text)
    return text


def _dump_bytes(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, non-ASCII kept as it is (smaller; Redis stores
    bytes either way). orjson: the payload is encoded once per message, and
    the stdlib encoder was the largest single cost of mapping a message."""
    try:
        return orjson.dumps(payload)
    except (orjson.JSONEncodeError, TypeError):
        # A lone surrogate (orjson refuses it, and Redis could not take it as
        # UTF-8 anyway) or an integer beyond 64 bits: the stdlib encoder with
        # escapes gives valid ASCII JSON for both.
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return text.encode("ascii")


def _dumps(payload: Mapping[str, Any]) -> str:
    return _dump_bytes(payload).decode("utf-8")


def encode_fields(fields: Mapping[str, str]) -> bytes:
    """One stream entry's flat fields as a UTF-8 JSON object, in their order
    (a :class:`StreamEntry` without decoding its payload)."""
    if isinstance(fields, StreamEntry):
        return fields.to_json()
    return _dump_bytes(fields)


class StreamEntry(Mapping[str, str]):
    """The flat fields of one stream entry (a read-only ``Mapping[str, str]``)
    that keeps ``payload_json`` as the UTF-8 bytes the encoder produced.

    Decoding a large payload to ``str`` costs far more than encoding it
    (about 0.75 ms for 500 KB of accented text), and only the bytes are
    needed on the way out: the outbox row (:meth:`to_json`) and the XADD
    (:meth:`wire_payload`). The ``str`` is decoded only when someone reads
    ``entry["payload_json"]`` (tests, the JSON Lines sink).
    """

    __slots__ = ("_head", "_payload", "_text")

    def __init__(self, head: Mapping[str, str], payload: bytes) -> None:
        #: every field but ``payload_json``, in order (it comes last)
        self._head = dict(head)
        self._payload = bytes(payload)
        self._text: Optional[str] = None

    def __getitem__(self, key: str) -> str:
        if key == "payload_json":
            if self._text is None:
                self._text = self._payload.decode("utf-8")
            return self._text
        return self._head[key]

    def __iter__(self) -> Iterator[str]:
        yield from self._head
        yield "payload_json"

    def __len__(self) -> int:
        return len(self._head) + 1

    def __contains__(self, key: object) -> bool:
        return key == "payload_json" or key in self._head

    def __repr__(self) -> str:
        return f"StreamEntry({self._head!r}, <{len(self._payload)} payload bytes>)"

    def __reduce__(self) -> Any:
        return (StreamEntry, (self._head, self._payload))

    def head(self) -> Mapping[str, str]:
        """The fields before ``payload_json``."""
        return self._head

    def wire_payload(self) -> bytes:
        """``payload_json`` as UTF-8 bytes, never decoded."""
        return self._payload

    def to_json(self) -> bytes:
        """The whole entry as a UTF-8 JSON object (as :func:`encode_fields`
        would give for the same fields), without decoding the payload: a
        compact JSON text holds no raw control character, so escaping
        backslashes and quotes makes it a JSON string."""
        quoted = self._payload.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        head = _dump_bytes(self._head)
        sep = b"," if len(head) > 2 else b""
        return head[:-1] + sep + b'"payload_json":"' + quoted + b'"}'


def _fields(
    event_id: str, execution_id: str, event_type: str, tenant: str, now: datetime, payload: str
) -> dict[str, str]:
    return {
        "event_id": event_id,
        "execution_id": execution_id,
        "event_name": event_type,
        "event_type": event_type,
        "tenant": tenant,
        "timestamp": _now_text(now),
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
    entry = build_encoded_entry(tenant, provider_id, email_data, event_id, execution_id, now)
    return dict(entry)


def build_encoded_entry(
    tenant: str,
    provider_id: str,
    email_data: Mapping[str, Any],
    event_id: str,
    execution_id: str,
    now: datetime,
) -> StreamEntry:
    """:func:`build_stream_entry` as a :class:`StreamEntry`: the same fields,
    the payload kept as bytes (what the pipeline records)."""
    payload = {
        "tenantId": tenant,
        "tenant": tenant,
        "providerId": provider_id,
        "occurredAt": _now_text(now),
        "emailData": email_data,
    }
    head = _fields(event_id, execution_id, EVENT_INBOUND_EMAIL_RECEIVED, tenant, now, "")
    del head["payload_json"]
    return StreamEntry(head, _dump_bytes(payload))


def build_auto_paused_entry(
    tenant: str,
    provider_id: str,
    reason: str,
    failure_count: int,
    last_error_code: Optional[str],
    now: datetime,
    provider_name: Optional[str] = None,
    mailbox: Optional[str] = None,
) -> tuple[str, dict[str, str]]:
    """The ``INBOUND_EMAIL_PROVIDER_AUTO_PAUSED`` entry.

    The ids derive from the provider and the pause time (``now`` to the
    millisecond), so re-publishing the same pause keeps its event id. Besides
    the contract's fields the payload carries what the app's own pause event
    carries (``authFailureCode``, ``pausedAt``, ``providerName``,
    ``mailbox``, ``providerType``, ``actorType``).

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
        "authFailureCode": last_error_code,
        "pausedAt": occurred,
        "providerName": provider_name,
        "mailbox": mailbox,
        "providerType": "imap",
        "actorType": "system",
    }
    fields = _fields(
        event_id, execution_id, EVENT_PROVIDER_AUTO_PAUSED, tenant, now, _dumps(payload)
    )
    return event_id, fields
