"""Checks a stream entry against CONTRACT section 2.

``validate_stream_entry(fields)`` returns a list of human-readable
violations (empty when the entry conforms). Integration tests of other
components use it on what really reached Redis.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Mapping

from imapsvc.core.addresses import is_valid_address
from imapsvc.core.dates import is_iso_z

RECEIVED = "INBOUND_EMAIL_RECEIVED"
AUTO_PAUSED = "INBOUND_EMAIL_PROVIDER_AUTO_PAUSED"

FIELDS = (
    "event_id",
    "execution_id",
    "event_name",
    "event_type",
    "tenant",
    "timestamp",
    "user_id",
    "from_state",
    "to_state",
    "payload_json",
)


def _is_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def _is_msgid(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) > 2
        and value.startswith("<")
        and value.endswith(">")
        and not any(c.isspace() for c in value)
        and "<" not in value[1:-1]
        and ">" not in value[1:-1]
    )


def _check_address(where: str, value: Any, errors: list[str]) -> None:
    if not isinstance(value, dict):
        errors.append(f"{where}: not an object")
        return
    if set(value) != {"email", "name"}:
        errors.append(f"{where}: keys {sorted(value)} != ['email', 'name']")
    if not is_valid_address(value.get("email")):
        errors.append(f"{where}.email: invalid address {value.get('email')!r}")
    if not isinstance(value.get("name"), str):
        errors.append(f"{where}.name: not a string")


#: What the app's event schema (``emailIngressSkipReasonSchema``) accepts in
#: ``ingressSkipReasons``: anything else makes it reject the whole payload.
APP_SKIP_TYPES = frozenset({"attachment", "raw_mime"})
APP_SKIP_REASONS = frozenset({
    "attachment_over_max_bytes",
    "attachment_count_exceeded",
    "attachment_total_bytes_exceeded",
    "raw_mime_over_max_bytes",
})


def _check_skip_entries(data: dict, field: str, errors: list[str], app_schema: bool) -> None:
    entries = data.get(field)
    if not isinstance(entries, list):
        errors.append(f"emailData.{field}: not a list")
        return
    for i, entry in enumerate(entries):
        where = f"emailData.{field}[{i}]"
        if not isinstance(entry, dict):
            errors.append(f"{where}: not an object")
            continue
        for key in ("type", "reason"):
            if not isinstance(entry.get(key), str) or not entry.get(key):
                errors.append(f"{where}.{key}: not a non-empty string")
        for key in ("size", "cap"):
            value = entry.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                errors.append(f"{where}.{key}: not an integer >= 0")
        for key in ("attachmentId", "attachmentName"):
            if key in entry and not isinstance(entry[key], str):
                errors.append(f"{where}.{key}: not a string")
        if app_schema:
            if entry.get("type") not in APP_SKIP_TYPES:
                errors.append(f"{where}.type: {entry.get('type')!r} is not one of the app's")
            if entry.get("reason") not in APP_SKIP_REASONS:
                errors.append(f"{where}.reason: {entry.get('reason')!r} is not one of the app's")
            cap = entry.get("cap")
            if not isinstance(cap, int) or cap <= 0:
                errors.append(f"{where}.cap: not a positive integer")


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def _check_stored(where: str, obj: dict, errors: list[str]) -> None:
    key = obj.get("storageKey")
    if not isinstance(key, str) or not key or key.startswith("/") or ".." in key.split("/"):
        errors.append(f"{where}.storageKey: not a relative object key: {key!r}")
    if not isinstance(obj.get("sha256"), str) or not _SHA256.match(obj["sha256"]):
        errors.append(f"{where}.sha256: not 64 lower-case hex digits")


def _check_attachment_content(where: str, att: dict, errors: list[str]) -> None:
    """IMAP_ATTACHMENT_MODE: ``content`` (inline, base64) or ``storageKey``
    with ``sha256`` (store), never both, never one of the pair alone."""
    has_content = "content" in att
    stored = "storageKey" in att or "sha256" in att
    if has_content and stored:
        errors.append(f"{where}: both content and storageKey")
    if has_content:
        content = att["content"]
        if not isinstance(content, str) or len(content) % 4 or not _B64.match(content):
            errors.append(f"{where}.content: not padded base64")
    if stored:
        _check_stored(where, att, errors)


def _check_email_data(data: Any, tenant: str, provider_id: Any, errors: list[str]) -> None:
    if not isinstance(data, dict):
        errors.append("emailData: not an object")
        return
    for key in ("id", "from", "subject", "body"):
        if key not in data or data[key] is None:
            errors.append(f"emailData.{key}: missing")
    if not _is_msgid(data.get("id")):
        errors.append(f"emailData.id: not a <...> id: {data.get('id')!r}")
    if data.get("provider") != "imap":
        errors.append("emailData.provider: not 'imap'")
    if data.get("providerId") != provider_id:
        errors.append("emailData.providerId: differs from payload providerId")
    if data.get("tenant") != tenant:
        errors.append("emailData.tenant: differs from the entry's tenant")
    if not is_iso_z(data.get("receivedAt")):
        errors.append(f"emailData.receivedAt: not ISO Z: {data.get('receivedAt')!r}")
    if data.get("from") is not None:
        _check_address("emailData.from", data["from"], errors)
    for key in ("to", "cc"):
        value = data.get(key)
        if not isinstance(value, list):
            errors.append(f"emailData.{key}: not a list")
            continue
        for i, item in enumerate(value):
            _check_address(f"emailData.{key}[{i}]", item, errors)
    if "subject" in data and not isinstance(data["subject"], str):
        errors.append("emailData.subject: not a string")
    body = data.get("body")
    if body is not None:
        if not isinstance(body, dict):
            errors.append("emailData.body: not an object")
        else:
            for key in ("text", "html"):
                if not isinstance(body.get(key), str):
                    errors.append(f"emailData.body.{key}: not a string")
    attachments = data.get("attachments")
    if not isinstance(attachments, list):
        errors.append("emailData.attachments: not a list")
    else:
        for i, att in enumerate(attachments):
            where = f"emailData.attachments[{i}]"
            if not isinstance(att, dict):
                errors.append(f"{where}: not an object")
                continue
            missing = {"id", "name", "contentType", "size", "contentId", "isInline"} - set(att)
            if missing:
                errors.append(f"{where}: missing {sorted(missing)}")
            size = att.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                errors.append(f"{where}.size: not an integer > 0: {size!r}")
            for key in ("id", "name", "contentType"):
                if not isinstance(att.get(key), str) or not att.get(key):
                    errors.append(f"{where}.{key}: not a non-empty string")
            if att.get("contentId") is not None and not isinstance(att.get("contentId"), str):
                errors.append(f"{where}.contentId: not a string or null")
            if not isinstance(att.get("isInline"), bool):
                errors.append(f"{where}.isInline: not a boolean")
            _check_attachment_content(where, att, errors)
    raw_mime = data.get("rawMime")
    if raw_mime is not None:
        if not isinstance(raw_mime, dict):
            errors.append("emailData.rawMime: not an object")
        else:
            _check_stored("emailData.rawMime", raw_mime, errors)
            if not isinstance(raw_mime.get("size"), int) or raw_mime["size"] <= 0:
                errors.append("emailData.rawMime.size: not an integer > 0")
    references = data.get("references")
    if not isinstance(references, list) or not all(_is_msgid(r) for r in references):
        errors.append(f"emailData.references: not a list of <...> ids: {references!r}")
        references = []
    in_reply_to = data.get("inReplyTo")
    if in_reply_to is not None and not _is_msgid(in_reply_to):
        errors.append(f"emailData.inReplyTo: not a <...> id: {in_reply_to!r}")
    expected_thread = references[0] if references else (in_reply_to or data.get("id"))
    if data.get("threadId") != expected_thread:
        errors.append(
            f"emailData.threadId: {data.get('threadId')!r} is not the first reference,"
            f" else inReplyTo, else id ({expected_thread!r})"
        )
    headers = data.get("headers")
    if not isinstance(headers, dict):
        errors.append("emailData.headers: not an object")
    else:
        for name, value in headers.items():
            if not isinstance(value, str):
                errors.append(f"emailData.headers[{name!r}]: not a string")
    _check_skip_entries(data, "ingressSkipReasons", errors, app_schema=True)
    if "ingressNotes" in data:
        _check_skip_entries(data, "ingressNotes", errors, app_schema=False)
    _check_automated(data.get("automated"), errors)
    imap = data.get("imap")
    if not isinstance(imap, dict):
        errors.append("emailData.imap: not an object")
    else:
        missing = {"mailbox", "uidValidity", "uid", "internalDate", "size"} - set(imap)
        if missing:
            errors.append(f"emailData.imap: missing {sorted(missing)}")
        if not isinstance(imap.get("mailbox"), str):
            errors.append("emailData.imap.mailbox: not a string")
        if not isinstance(imap.get("uidValidity"), str) or not imap["uidValidity"].isdigit():
            errors.append("emailData.imap.uidValidity: not a decimal string")
        if not isinstance(imap.get("uid"), int) or imap["uid"] <= 0:
            errors.append("emailData.imap.uid: not an integer > 0")
        if imap.get("internalDate") is not None and not is_iso_z(imap["internalDate"]):
            errors.append("emailData.imap.internalDate: not ISO Z or null")
        if not isinstance(imap.get("size"), int) or imap["size"] < 0:
            errors.append("emailData.imap.size: not an integer >= 0")


def _check_automated(value: Any, errors: list[str]) -> None:
    if not isinstance(value, dict):
        errors.append("emailData.automated: not an object")
        return
    keys = {"autoReply", "bounce", "bulk", "signals"}
    if set(value) != keys:
        errors.append(f"emailData.automated: keys {sorted(value)} != {sorted(keys)}")
    for key in ("autoReply", "bounce", "bulk"):
        if not isinstance(value.get(key), bool):
            errors.append(f"emailData.automated.{key}: not a boolean")
    signals = value.get("signals")
    if not isinstance(signals, list) or not all(
        isinstance(s, str) and ": " in s for s in signals
    ):
        errors.append(f"emailData.automated.signals: not a list of 'header: value': {signals!r}")
        return
    flagged = any(value.get(k) is True for k in ("autoReply", "bounce", "bulk"))
    if flagged != bool(signals):
        errors.append("emailData.automated: a flag without a signal, or a signal without a flag")


def validate_stream_entry(fields: Mapping[Any, Any]) -> list[str]:
    """Violations of CONTRACT section 2 by one stream entry (flat fields;
    ``bytes`` keys/values, as read from Redis, are accepted)."""
    errors: list[str] = []
    flat: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                errors.append(f"{key}: not UTF-8")
                continue
        flat[key] = value
    missing = [f for f in FIELDS if f not in flat]
    if missing:
        errors.append(f"missing fields {missing}")
    extra = sorted(set(flat) - set(FIELDS))
    if extra:
        errors.append(f"unexpected fields {extra}")
    for key, value in flat.items():
        if not isinstance(value, str):
            errors.append(f"{key}: not a string")
    for key in ("event_id", "execution_id"):
        if not _is_uuid(flat.get(key)):
            errors.append(f"{key}: not a uuid")
    event_type = flat.get("event_type")
    if event_type not in (RECEIVED, AUTO_PAUSED):
        errors.append(f"event_type: unexpected {event_type!r}")
    if flat.get("event_name") != event_type:
        errors.append("event_name: differs from event_type")
    if not _is_uuid(flat.get("tenant")) and not (
        isinstance(flat.get("tenant"), str) and flat["tenant"]
    ):
        errors.append("tenant: empty")
    if not is_iso_z(flat.get("timestamp")):
        errors.append(f"timestamp: not ISO Z with milliseconds: {flat.get('timestamp')!r}")
    for key in ("user_id", "from_state", "to_state"):
        if flat.get(key) != "":
            errors.append(f"{key}: not ''")
    try:
        payload = json.loads(flat.get("payload_json") or "")
    except (TypeError, ValueError):
        errors.append("payload_json: not JSON")
        return errors
    if not isinstance(payload, dict):
        errors.append("payload_json: not an object")
        return errors
    tenant = flat.get("tenant")
    if payload.get("tenantId") != tenant:
        errors.append("payload.tenantId: differs from tenant")
    if not isinstance(payload.get("providerId"), str) or not payload.get("providerId"):
        errors.append("payload.providerId: missing")
    if not is_iso_z(payload.get("occurredAt")):
        errors.append(f"payload.occurredAt: not ISO Z: {payload.get('occurredAt')!r}")
    if event_type == RECEIVED:
        if payload.get("tenant") != tenant:
            errors.append("payload.tenant: differs from tenant")
        if payload.get("emailData", {}) is None or "emailData" not in payload:
            errors.append("payload.emailData: missing")
        else:
            _check_email_data(payload["emailData"], tenant, payload.get("providerId"), errors)
            if payload["emailData"].get("from") is None:
                errors.append("emailData.from: a message without From must not be published")
    elif event_type == AUTO_PAUSED:
        if not isinstance(payload.get("reason"), str):
            errors.append("payload.reason: not a string")
        count = payload.get("failureCount")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            errors.append("payload.failureCount: not an integer >= 0")
        if "lastErrorCode" not in payload:
            errors.append("payload.lastErrorCode: missing")
        # What the app's own pause event carries (issue 10).
        if payload.get("authFailureCode") != payload.get("lastErrorCode"):
            errors.append("payload.authFailureCode: differs from lastErrorCode")
        if not is_iso_z(payload.get("pausedAt")):
            errors.append(f"payload.pausedAt: not ISO Z: {payload.get('pausedAt')!r}")
        for key in ("providerName", "mailbox"):
            if key not in payload or not isinstance(payload[key], (str, type(None))):
                errors.append(f"payload.{key}: missing")
        if payload.get("providerType") != "imap":
            errors.append("payload.providerType: not 'imap'")
        if payload.get("actorType") != "system":
            errors.append("payload.actorType: not 'system'")
    return errors
