"""One watched folder of one provider.

- :mod:`~imapsvc.folder.service`: :class:`FolderService`, the lifecycle
  (connect, log in, find the folder, loop sync -> wait; the factory's events);
- :mod:`~imapsvc.folder.sync`: one sync pass, the message path
  (session -> pipeline -> store), with the poison path and backfill;
- :mod:`~imapsvc.folder.write_back`: flag, move or delete what was committed;
- :mod:`~imapsvc.folder.idle`: the waits between passes (IDLE, poll);
- :mod:`~imapsvc.folder.recovery`: token refresh, refusals, quarantine;
- :mod:`~imapsvc.folder.base`: the shell of the pure state machine
  (:mod:`imapsvc.core.folder_machine`);
- :mod:`~imapsvc.folder.options`: :class:`FolderOptions`.
"""

from imapsvc.folder.idle import IDLE_KEEPALIVE, KEEPALIVE_SHARE
from imapsvc.folder.options import FolderNotFound, FolderOptions
from imapsvc.folder.recovery import NO_REFRESH_CODES, TOKEN_RETRY_S
from imapsvc.folder.service import HISTORY_SIZE, FolderService

__all__ = [
    "HISTORY_SIZE",
    "IDLE_KEEPALIVE",
    "KEEPALIVE_SHARE",
    "NO_REFRESH_CODES",
    "TOKEN_RETRY_S",
    "FolderNotFound",
    "FolderOptions",
    "FolderService",
]
