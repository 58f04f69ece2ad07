"""What the parse pool's worker processes run (:mod:`imapsvc.parse_pool`).

The fork server preloads this module, and every function a worker is sent
is defined here or in :mod:`imapsvc.core.records`. Neither imports Twisted:
a worker holds no reactor, connection or secret, and starts in milliseconds
(tests.unit.test_parse_pool checks the imports in a fresh interpreter).
"""

from __future__ import annotations

import os

from imapsvc.core.records import build_records

__all__ = ["build_records", "exit_with", "worker_pid"]


def worker_pid() -> int:
    """The warm-up call: a worker that answers has started."""
    return os.getpid()


def exit_with(service_pid: int) -> None:
    """Worker initializer: exit as soon as the service process is gone, even
    when it was killed (its workers are children of the fork server, so the
    kernel's parent-death signal does not reach them). A daemon thread
    blocks on a pidfd; nothing polls."""
    import select
    import threading

    try:
        fd = os.pidfd_open(service_pid)
    except (AttributeError, OSError):
        if not _alive(service_pid):
            os._exit(0)
        return

    def watch() -> None:
        select.select([fd], [], [])
        os._exit(0)

    threading.Thread(target=watch, name="parse-pool-watchdog", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
