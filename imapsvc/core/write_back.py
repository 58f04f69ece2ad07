"""Write-back after the durable commit (issue 13 item 3): pure rules.

What a provider's ``write_back`` option (``imap_provider_options``, else
``IMAP_WRITE_BACK``) asks for, and which IMAP commands carry it out on a
server with given capabilities:

- ``none``: nothing; the folder is opened read-only (EXAMINE);
- ``seen``: ``UID STORE +FLAGS.SILENT (\\Seen)``;
- ``move:<folder>``: ``UID MOVE`` (RFC 6851); without MOVE, ``UID COPY`` +
  ``\\Deleted`` + ``UID EXPUNGE`` only when UIDPLUS is offered (a plain
  EXPUNGE would also remove messages somebody else marked deleted);
- ``delete``: ``\\Deleted`` + ``UID EXPUNGE`` (UIDPLUS only, same reason).

Every step names UIDs, never sequence numbers, and re-running a plan on a
message already flagged, moved or expunged changes nothing (a UID that is
gone matches nothing).
"""

from __future__ import annotations

from typing import Iterable, Optional

import attr

NONE = "none"
SEEN = "seen"
DELETE = "delete"
MOVE = "move"
MOVE_PREFIX = "move:"

#: Steps of a plan (see :func:`plan_steps`).
STEP_SEEN = "seen"  # UID STORE +FLAGS.SILENT (\Seen)
STEP_MOVE = "move"  # UID MOVE <uids> <folder>
STEP_COPY = "copy"  # UID COPY <uids> <folder>
STEP_DELETED = "deleted"  # UID STORE +FLAGS.SILENT (\Deleted)
STEP_EXPUNGE = "expunge"  # UID EXPUNGE <uids> (UIDPLUS)

#: After a restart, recorded messages still in the folder this many UIDs
#: below the cursor get their move/delete again (see folder.py).
SWEEP_WINDOW = 1000
#: UIDs remembered per folder for a retry (failed write-backs); beyond, the
#: oldest are forgotten (logged): a bound, not a queue.
MAX_PENDING = 10000
#: Folder names are bounded like any other option value.
MAX_FOLDER_CHARS = 1000


class WriteBackUnsupported(Exception):
    """The server lacks what the mode needs (MOVE or UIDPLUS)."""


@attr.s(frozen=True, auto_attribs=True)
class WriteBack:
    """A parsed mode: ``kind`` is one of ``none``, ``seen``, ``move``,
    ``delete``; ``folder`` is the target of ``move`` (as configured)."""

    kind: str = NONE
    folder: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.kind != NONE

    @property
    def expunges(self) -> bool:
        """Messages leave the folder (move, delete)."""
        return self.kind in (MOVE, DELETE)

    def __str__(self) -> str:
        return f"{MOVE_PREFIX}{self.folder}" if self.kind == MOVE else self.kind


def parse_mode(text: Optional[str]) -> WriteBack:
    """``none`` | ``seen`` | ``delete`` | ``move:<folder>``; ``None`` or
    blank is ``none``. :raises ValueError: naming what is accepted."""
    value = (text or "").strip()
    lowered = value.lower()
    if lowered in ("", NONE):
        return WriteBack()
    if lowered in (SEEN, DELETE):
        return WriteBack(lowered)
    if lowered.startswith(MOVE_PREFIX):
        folder = value[len(MOVE_PREFIX):].strip()
        if not folder:
            raise ValueError("move: needs a folder, e.g. move:Processed")
        if len(folder) > MAX_FOLDER_CHARS or any(ord(c) < 32 or c == "\x7f" for c in folder):
            raise ValueError("move: folder name has control characters or is too long")
        return WriteBack(MOVE, folder)
    raise ValueError(
        f"write-back mode must be none, seen, delete or move:<folder>, not {value[:60]!r}"
    )


def resolve(provider_mode: Optional[str], default_mode: str) -> WriteBack:
    """The provider's own option when set, else the environment default."""
    return parse_mode(provider_mode if provider_mode is not None else default_mode)


def plan_steps(mode: WriteBack, capabilities: Iterable[str]) -> list[str]:
    """The commands that carry ``mode`` out, given the server's capability
    names (upper case). :raises WriteBackUnsupported: when the server
    cannot do it safely."""
    caps = {c.upper() for c in capabilities}
    if mode.kind == NONE:
        return []
    if mode.kind == SEEN:
        return [STEP_SEEN]
    if mode.kind == MOVE:
        if "MOVE" in caps:
            return [STEP_MOVE]
        if "UIDPLUS" in caps:
            return [STEP_COPY, STEP_DELETED, STEP_EXPUNGE]
        raise WriteBackUnsupported(
            "write-back move needs MOVE (RFC 6851) or UIDPLUS (RFC 4315); the server offers neither"
        )
    if mode.kind == DELETE:
        if "UIDPLUS" in caps:
            return [STEP_DELETED, STEP_EXPUNGE]
        raise WriteBackUnsupported(
            "write-back delete needs UIDPLUS (RFC 4315) for UID EXPUNGE; the server lacks it"
        )
    raise ValueError(f"unknown write-back kind {mode.kind!r}")


def same_folder(a: str, b: str) -> bool:
    """Whether two folder names are one folder (INBOX is case-insensitive)."""
    if a.upper() == "INBOX" or b.upper() == "INBOX":
        return a.upper() == b.upper()
    return a == b


def sweep_range(last_uid: Optional[str], window: int = SWEEP_WINDOW) -> Optional[tuple[int, int]]:
    """The UIDs ``(first, last)`` at or below the cursor that a restart
    sweep looks at; ``None`` when the cursor has nothing below it."""
    try:
        last = int(last_uid or 0)
    except ValueError:
        return None
    if last < 1:
        return None
    return (max(1, last - window + 1), last)
