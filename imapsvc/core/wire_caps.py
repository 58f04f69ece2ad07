"""How many IMAP bytes one connection and the whole process may hold.

Pure code. Per-connection caps are derived from the settings instead of
fixed numbers: a literal never needs more than the raw-MIME cap (the largest
thing the engine downloads in one piece) plus slack, and one command's answer
never more than a fetch chunk's bytes plus slack. The process-wide budget for
IMAP bytes in flight is a share of the container's memory limit.
"""

from __future__ import annotations

from typing import Optional

import attr

MIB = 1024 * 1024

#: Room for what surrounds the bytes a cap is about (FETCH keys, sizes,
#: BODYSTRUCTURE, quoting).
SLACK = 1 * MIB
#: Per message of a metadata FETCH: its header, BODYSTRUCTURE and the rest.
#: A chunk whose headers are heavier fails, and its UIDs are then fetched
#: one by one (see imapsvc.core.poison), each with this much room plus a
#: whole message's.
PER_MESSAGE_SLACK = 256 * 1024
#: A server line (not a literal). The one legitimately long line is a
#: ``* SEARCH`` answer: 16 MiB hold about two million 7-digit UIDs.
MAX_LINE_BYTES = 16 * MIB
#: Without a memory limit (no cgroup limit, no setting), the budget.
DEFAULT_BUDGET_BYTES = 256 * MIB
#: Share of the memory limit given to IMAP bytes in flight: a literal costs
#: about 3x its size while it is read and parsed (STACK.md), and the mapping
#: and the rest of the process need the remainder.
BUDGET_SHARE = 0.25
#: Smallest budget derived from a limit: below it one message could not be
#: read at all (the budget lets one reader exceed it, but no more).
MIN_BUDGET_BYTES = 16 * MIB


@attr.s(frozen=True, auto_attribs=True)
class WireCaps:
    """Per-connection caps, in bytes."""

    max_line: int
    max_literal: int
    max_response: int
    max_command: int


def derive_caps(
    max_raw_mime_bytes: int, max_text_part_bytes: int, fetch_chunk: int, fetch_bytes: int
) -> WireCaps:
    """The per-connection caps for these settings.

    - a literal: a whole message (fallback path, at most the raw-MIME cap) or
      a text part (at most the text cap), plus slack;
    - a response: one message's data (a header or a message, or its two text
      parts), plus slack;
    - a command's answer: one body FETCH group (``fetch_bytes``, or a single
      message up to the raw-MIME cap) or a metadata chunk
      (``fetch_chunk`` x per-message slack), plus slack.
    """
    one_message = max(max_raw_mime_bytes, 2 * max_text_part_bytes)
    max_literal = max(max_raw_mime_bytes, max_text_part_bytes) + SLACK
    max_response = one_message + 2 * SLACK
    max_command = max(fetch_bytes, one_message) + fetch_chunk * PER_MESSAGE_SLACK + SLACK
    return WireCaps(MAX_LINE_BYTES, max_literal, max_response, max_command)


def parse_memory_limit(text: Optional[str]) -> Optional[int]:
    """A cgroup memory limit file's content (v2 ``memory.max``: a number or
    ``max``; v1 ``memory.limit_in_bytes``: a number, huge when unlimited)
    -> bytes, or ``None`` when there is no limit."""
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit():
        return None
    value = int(text)
    # cgroup v1 reports "no limit" as a page-rounded 2**63-1.
    if value <= 0 or value >= 1 << 60:
        return None
    return value


def inflight_budget(setting_bytes: int, memory_limit: Optional[int]) -> int:
    """The process-wide budget: the setting when given (> 0), else
    :data:`BUDGET_SHARE` of the memory limit (at least
    :data:`MIN_BUDGET_BYTES`), else :data:`DEFAULT_BUDGET_BYTES`."""
    if setting_bytes > 0:
        return setting_bytes
    if memory_limit:
        return max(MIN_BUDGET_BYTES, int(memory_limit * BUDGET_SHARE))
    return DEFAULT_BUDGET_BYTES
