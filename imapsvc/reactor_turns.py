"""At most a fixed number of ready sockets handled per reactor turn.

Twisted's epoll reactor asks ``epoll_wait`` for as many events as it has
descriptors and handles all of them before it runs a timer again. When an IMAP
server restarts, a thousand of its sessions end within a few milliseconds: one
turn then tears down a thousand TLS connections and their folders' state, a
stall of a quarter second at 2,000 folders during which no mail moves and no
deadline fires (docs/performance.md). epoll is level-triggered here, so a
socket not handled in this turn is reported again in the next: asking for at
most ``limit`` events per turn loses nothing and lets timers and other
sockets in between.

The bounded poll is the reactor's own ``doPoll`` with a smaller ``maxevents``;
it uses the reactor's private ``_poller``, ``_selectables`` and
``_doReadOrWrite`` (Twisted 26.10; checked by a test against the real
reactor), and is installed only on an epoll reactor that has them.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger
from twisted.python import log as legacy_log

log = Logger(namespace="imapsvc.reactor_turns")

_PRIVATE = ("_poller", "_selectables", "_doReadOrWrite")


def bound_events_per_turn(reactor: Any, limit: int) -> bool:
    """Make ``reactor`` handle at most ``limit`` ready descriptors a turn.

    :returns: whether it was installed (an epoll reactor with the expected
        internals); :func:`unbound` undoes it.
    """
    if limit <= 0 or not all(hasattr(reactor, name) for name in _PRIVATE):
        return False
    from twisted.internet.epollreactor import EPollReactor

    if not isinstance(reactor, EPollReactor):
        return False

    def bounded_poll(timeout: Optional[float]) -> None:
        if timeout is None:
            timeout = -1
        try:
            ready = reactor._poller.poll(timeout, limit)
        except InterruptedError:
            return
        handle = reactor._doReadOrWrite
        selectables = reactor._selectables
        for fd, event in ready:
            selectable = selectables.get(fd)
            # Removed by an earlier event of this turn: nothing to do.
            if selectable is not None:
                legacy_log.callWithLogger(selectable, handle, selectable, fd, event)

    reactor.doIteration = bounded_poll  # type: ignore[method-assign]  # per instance, on purpose
    return True


def unbound(reactor: Any) -> None:
    """Back to the reactor's own poll."""
    if "doIteration" in getattr(reactor, "__dict__", {}):
        del reactor.doIteration
