"""From fetched messages to the ledger records of one batch (pure).

For each :class:`~imapsvc.model.FetchedMessage`: map it to ``emailData``
(:func:`imapsvc.core.email_data.map_message`), derive the deterministic ids
from the ledger dedupe key (:func:`imapsvc.core.event.event_ids`), build the
encoded stream entry (:func:`imapsvc.core.event.build_encoded_entry`) and a
:class:`~imapsvc.model.MessageRecord`.

No Twisted and no I/O: the same code runs on the reactor thread, in a thread
pool and in the parse pool's worker processes (:mod:`imapsvc.parse_worker`),
whose fork server must stay free of reactor state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Mapping, Optional, Sequence

from imapsvc.core import email_data as _email_data
from imapsvc.core import event as _event
from imapsvc.model import (
    OUTCOME_PUBLISHED,
    OUTCOME_SKIPPED,
    FetchedMessage,
    Limits,
    MessageRecord,
)

#: ``skip_reason`` of a message whose entry could not be built (a bug, or an
#: input the mapper did not foresee). It is recorded as skipped, so one bad
#: message cannot stop its folder forever.
SKIP_BUILD_ERROR = "build_error"

#: Bytes counted per message on top of its content when slicing a batch
#: (attribute values, envelope): keeps many tiny messages from weighing zero.
MESSAGE_OVERHEAD_BYTES = 256

#: ``on_build_error(folder, message)``, called inside the ``except`` block, so
#: ``sys.exc_info()`` holds the error (a caller may log the traceback).
BuildErrorHook = Callable[[str, FetchedMessage], None]


def message_bytes(msg: FetchedMessage) -> int:
    """The bytes one message holds in memory."""
    return (
        len(msg.header or b"")
        + len(msg.raw or b"")
        + sum(len(v) for v in msg.texts.values())
        + sum(len(v) for v in msg.contents.values())  # IMAP_ATTACHMENT_MODE inline
    )


def batch_bytes(messages: Sequence[FetchedMessage]) -> int:
    """The bytes a batch holds in memory (what the mapping has to chew)."""
    return sum(message_bytes(msg) for msg in messages)


def split_balanced(messages: Sequence[FetchedMessage], parts: int) -> list[list[FetchedMessage]]:
    """Contiguous slices of ``messages`` with about equal bytes each (no
    empty slice; order kept when the slices are concatenated)."""
    messages = list(messages)
    parts = max(1, min(parts, len(messages)))
    if parts == 1:
        return [messages] if messages else []
    sizes = [message_bytes(m) + MESSAGE_OVERHEAD_BYTES for m in messages]
    total = sum(sizes)
    out: list[list[FetchedMessage]] = []
    current: list[FetchedMessage] = []
    acc = 0
    for index, (msg, size) in enumerate(zip(messages, sizes)):
        current.append(msg)
        acc += size
        left_slices = parts - len(out) - 1
        left_msgs = len(messages) - index - 1
        if left_slices and (acc >= total * (len(out) + 1) / parts or left_msgs == left_slices):
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def build_records(
    messages: Sequence[FetchedMessage],
    tenant: str,
    provider_id: str,
    folder: str,
    now: datetime,
    limits: Limits,
    map_message: Callable[..., Any] = _email_data.map_message,
    event_ids: Callable[..., tuple[str, str]] = _event.event_ids,
    build_stream_entry: Callable[..., Mapping[str, str]] = _event.build_encoded_entry,
    on_build_error: Optional[BuildErrorHook] = None,
) -> list[MessageRecord]:
    """The ledger records of a batch, in input order.

    :param now: the fetch time (fallback ``receivedAt``) and the event
        ``timestamp``/``occurredAt``.
    :param on_build_error: told of each message whose stream entry could not
        be built; that message is recorded as skipped with reason
        ``build_error: <exception type>`` either way.
    """
    records = []
    for msg in messages:
        mapped = map_message(msg, tenant, provider_id, now, limits)
        event_id, execution_id = event_ids(tenant, provider_id, mapped.dedupe_key)
        reason: Optional[str] = mapped.skip_reason
        fields: Optional[Mapping[str, str]] = None
        if reason is None:
            try:
                fields = build_stream_entry(
                    tenant, provider_id, mapped.email_data, event_id, execution_id, now
                )
            except Exception as exc:
                if on_build_error is not None:
                    on_build_error(folder, msg)
                reason = f"{SKIP_BUILD_ERROR}: {type(exc).__name__}"
                fields = None
        records.append(
            MessageRecord(
                dedupe_key=mapped.dedupe_key,
                folder=folder,
                uid_validity=str(msg.uid_validity),
                uid=int(msg.uid),
                message_id_key=mapped.message_id_key,
                outcome=OUTCOME_SKIPPED if reason is not None else OUTCOME_PUBLISHED,
                event_id=event_id,
                reason=reason,
                fields=fields,
            )
        )
    return records
