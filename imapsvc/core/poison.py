"""Poison messages: which fetch failures count against one message, and how
a folder isolates the message a failing chunk holds. Pure code.

A chunk whose FETCH fails (server NO/BAD, a protocol limit, a response we
cannot parse, no answer) makes each of its UIDs a suspect; suspects are then
fetched one per command, so the next failure names its message. A message
that fails ``IMAP_POISON_AFTER`` times is recorded as skipped (ledger reason
``poison: ...``), the cursor moves past it and the folder goes on.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from imapsvc.imap.errors import (
    CommandFailed,
    CommandTimeout,
    ConnectionGone,
    ProtocolViolation,
    Throttled,
)

#: Failures that a message can cause. A lost connection, a throttle, the
#: store or the lease are not the message's fault and never count.
_COUNTED = (CommandFailed, ProtocolViolation, CommandTimeout)


def counts_against_message(error: BaseException) -> bool:
    """Whether a fetch failure may be the message's fault."""
    if isinstance(error, (ConnectionGone, Throttled)):
        return False
    return isinstance(error, _COUNTED)


def chunk_isolating(uids: Sequence[int], size: int, suspects: Iterable[int]) -> list[list[int]]:
    """Like :func:`imapsvc.core.plan.chunk_by_count` (order kept), but every
    suspect UID is a chunk of its own."""
    size = max(1, int(size))
    isolate = set(suspects)
    chunks: list[list[int]] = []
    current: list[int] = []
    for uid in uids:
        if uid in isolate:
            if current:
                chunks.append(current)
                current = []
            chunks.append([uid])
            continue
        current.append(uid)
        if len(current) >= size:
            chunks.append(current)
            current = []
    if current:
        chunks.append(current)
    return chunks


def describe(error: Any) -> str:
    """Short, secret-free reason (class and the start of the message); a
    server's refusal as ``[CODE] text``."""
    if isinstance(error, CommandFailed):
        code = f"[{error.code}] " if error.code else ""
        text = f"{code}{error.text}"
    else:
        text = str(error)
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
