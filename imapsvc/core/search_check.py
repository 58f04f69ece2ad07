"""Whether a SEARCH answer can be true for the folder it was asked of.

A folder announced with ``n EXISTS`` holds n messages, so a search names at
most n UIDs (plus what arrived while it ran, which the server announces with
EXISTS before or with its answer). A UID has at most 10 digits (RFC 3501:
32 bits), so the answer's length is bounded before a single number is
converted. A server sending megabytes of UIDs for a folder of three would
otherwise cost every tenant of the process reactor time at each session
(converting 600,000 numbers takes about half a second) and have the sync pass
fetch thousands of empty chunks: the answer is refused as a protocol
violation, which counts towards the folder's quarantine.
"""

from __future__ import annotations

from typing import Optional

#: UIDs a search may name beyond the last EXISTS before it is refused: room
#: for mail arriving while the answer is built, far below a flood.
SEARCH_SLACK = 1000
#: Bytes of one UID in a SEARCH answer at most: 10 digits and a space.
UID_BYTES = 11
#: Room for a ``(MODSEQ n)`` suffix (RFC 7162) and stray blanks.
SUFFIX_BYTES = 256


def search_text_too_long(nbytes: int, exists: Optional[int],
                         slack: int = SEARCH_SLACK) -> Optional[str]:
    """A one-line reason when a SEARCH answer of ``nbytes`` (after the word
    SEARCH) is longer than any answer for a folder whose last EXISTS was
    ``exists``; ``None`` when it is not, or EXISTS is unknown."""
    if exists is None:
        return None
    limit = (exists + slack) * UID_BYTES + SUFFIX_BYTES
    if nbytes <= limit:
        return None
    return (f"a SEARCH answer of {nbytes} bytes for a folder of {exists} messages"
            f" (at most {limit} bytes)")
