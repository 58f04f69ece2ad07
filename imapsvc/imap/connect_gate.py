"""A process-wide limit on IMAP sessions being set up at the same time.

Setting a session up (TCP connect, TLS handshake, greeting, login, ``ID``,
``LIST``, ``EXAMINE``, the cursor read, the first ``UID SEARCH``) is where a
folder spends its reactor time; once it idles it costs next to nothing. When
a server restart drops every session, hundreds of set-ups overlap and the
reactor handles hundreds of handshakes and answers in one turn (a stall of
up to 0.7 s at 2,000 folders; ``docs/performance.md``, "Scale").
:class:`ConnectGate` lets at most ``limit`` set-ups run at once: a folder
takes a :class:`GateSlot` before it connects and gives it back when its
session is ready (idling or polling) or has ended; the others wait their
turn in order. The stagger window still spreads the attempts; the gate only
bounds how many overlap.
"""

from __future__ import annotations

import collections
from typing import Any, Optional

from twisted.internet import defer

#: Default ``IMAP_CONNECT_CONCURRENCY`` (sessions in set-up at once).
DEFAULT_CONNECT_CONCURRENCY = 32
#: A slot is given back after this long even if its session neither became
#: ready nor ended (a server that stalls the login): one such server must not
#: hold slots the others wait for.
DEFAULT_HOLD_S = 30.0


class GateSlot:
    """One set-up in progress. :meth:`release` is idempotent."""

    def __init__(self, gate: Optional[ConnectGate], timer: Any = None) -> None:
        self._gate = gate
        self._timer = timer

    @property
    def held(self) -> bool:
        return self._gate is not None

    def release(self) -> None:
        gate, self._gate = self._gate, None
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if gate is not None:
            gate._released()


class ConnectGate:
    """At most ``limit`` slots out at once, handed out first come, first
    served. ``limit <= 0``: no limit (every :meth:`acquire` succeeds at once).

    :param clock: ``callLater`` for the hold timeout.
    :param hold_s: a slot still out after this long is given back.
    """

    def __init__(self, limit: int, clock: Any, hold_s: float = DEFAULT_HOLD_S) -> None:
        self.limit = limit
        self.clock = clock
        self.hold_s = hold_s
        self.active = 0
        self._waiting: collections.deque[defer.Deferred[GateSlot]] = collections.deque()
        self._granting = False
        #: counters for /status: slots handed out, of them after a wait,
        #: given back by the hold timeout, most out at once
        self.granted = 0
        self.waited = 0
        self.expired = 0
        self.peak = 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def acquire(self) -> defer.Deferred[GateSlot]:
        """A Deferred firing with a :class:`GateSlot`; cancelling it leaves
        the queue."""
        if self.limit <= 0:
            return defer.succeed(GateSlot(None))
        if self.active < self.limit and not self._waiting:
            return defer.succeed(self._grant())
        d: defer.Deferred[GateSlot] = defer.Deferred(self._waiting.remove)
        self._waiting.append(d)
        self.waited += 1
        return d

    def _grant(self) -> GateSlot:
        self.active += 1
        self.granted += 1
        self.peak = max(self.peak, self.active)
        slot = GateSlot(self)
        slot._timer = self.clock.callLater(self.hold_s, self._expire, slot)
        return slot

    def _expire(self, slot: GateSlot) -> None:
        slot._timer = None
        if slot.held:
            self.expired += 1
            slot.release()

    def _released(self) -> None:
        self.active -= 1
        if self._granting:
            return  # the loop below hands the freed slot on
        self._granting = True
        try:
            # A waiter may give its slot back at once (it stopped meanwhile):
            # loop rather than recurse.
            while self._waiting and self.active < self.limit:
                self._waiting.popleft().callback(self._grant())
        finally:
            self._granting = False

    def snapshot(self) -> dict[str, int]:
        return {
            "limit": self.limit,
            "active": self.active,
            "waiting": self.waiting,
            "granted": self.granted,
            "waited": self.waited,
            "expired": self.expired,
            "peak": self.peak,
        }
