"""What one folder shows on ``/status`` and ``/metrics``."""

from __future__ import annotations

import collections
from typing import Optional

from imapsvc.folder.base import FolderBase
from imapsvc.model import FolderCursor


class FolderStatusView(FolderBase):
    """The read side of :class:`imapsvc.folder.FolderService`: its snapshot,
    and what the sync pass keeps, read through the service."""

    server_name: Optional[str]
    idle_wakeups: int
    idle_keepalives: int
    reconnects: collections.Counter[str]
    quarantines: int

    def snapshot(self) -> dict:
        """This folder for ``/status`` (no secrets)."""
        return {
            "folder": self.folder_filter,
            "serverName": self.server_name,
            "state": self.state,
            "last_error": self.last_error,
            "cursor": self.cursor.to_json() if self.cursor else None,
            "syncs": self.sync_count,
            "handedOff": self.handed_off,
            "bytesFetched": self.bytes_fetched,
            "idleWakeups": self.idle_wakeups,
            "idleKeepalives": self.idle_keepalives,
            "reconnects": dict(self.reconnects),
            "writeBack": self.sync.write_back.status(
                self.provider.write_back, self.options.write_back
            ),
            "uidNext": self.uid_next,
            "poisonSkipped": self.poison_skipped,
            "modseq": {"mode": self.sync.modseq.mode,
                       "searchesSkipped": self.sync.modseq.skipped},
            "quarantinedUntil": self.quarantined_until if self.quarantined() else None,
            "quarantines": self.quarantines,
            "lag": self.lag(),
            "history": [t.to_json() for t in self.history],
        }

    def lag(self) -> Optional[int]:
        """Messages the server has beyond the cursor: UIDNEXT - 1 - last_uid."""
        if self.uid_next is None or self.cursor is None or self.cursor.last_uid is None:
            return None
        try:
            return max(0, self.uid_next - 1 - int(self.cursor.last_uid))
        except ValueError:
            return None

    @property
    def cursor(self) -> Optional[FolderCursor]:
        return self.sync.cursor

    @property
    def uid_next(self) -> Optional[int]:
        return self.sync.uid_next

    @property
    def sync_count(self) -> int:
        return self.sync.sync_count

    @property
    def handed_off(self) -> int:
        return self.sync.handed_off

    @property
    def bytes_fetched(self) -> int:
        return self.sync.bytes_fetched

    @property
    def poison_skipped(self) -> int:
        return self.sync.poison_skipped

    @property
    def trust_structure(self) -> bool:
        return self.sync.trust_structure

    @property
    def write_backs_applied(self) -> int:
        return self.sync.write_back.applied

    @property
    def write_backs_failed(self) -> int:
        return self.sync.write_back.failed

    @property
    def write_back_error(self) -> Optional[str]:
        return self.sync.write_back.error

    @property
    def _suspects(self) -> dict[str, set[int]]:
        return self.sync.suspects
