"""One process-wide budget for IMAP bytes in flight, with backpressure.

Each connection charges the bytes it reads until its command has been
answered (or, for IDLE and unsolicited data, until the response is handled).
When the total exceeds the budget, a connection that charges more is paused
(``transport.pauseProducing()``): the kernel's receive window then slows the
server down. Nothing fails. Connections are resumed, oldest first, as others
release their bytes.

No deadlock: a connection is never paused while it is the only one still
reading with bytes held, and when every holder is paused the oldest is
resumed whatever the total. So one reader always makes progress and may go
over the budget by at most its own per-command cap.
"""

from __future__ import annotations

from typing import Any, Protocol


class BudgetHolder(Protocol):
    """What the budget calls on a connection (``FolderIMAPClient``)."""

    def budget_pause(self) -> None: ...

    def budget_resume(self) -> None: ...


class ByteBudget:
    """:param capacity: bytes that may be in flight across all connections.

    :ivar used: bytes charged now. :ivar peak: highest ``used`` seen.
    :ivar pauses: how many times a connection was paused (a metric).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self.used = 0
        self.peak = 0
        self.pauses = 0
        self._held: dict[Any, int] = {}
        # Insertion-ordered: the oldest paused holder is resumed first.
        self._paused: dict[Any, None] = {}
        # Holders with bytes held that are not paused.
        self._runners = 0

    @property
    def paused(self) -> int:
        """Connections paused now."""
        return len(self._paused)

    def held(self, holder: Any) -> int:
        return self._held.get(holder, 0)

    def charge(self, holder: BudgetHolder, n: int) -> None:
        """``holder`` read ``n`` more bytes; pause it when over budget."""
        if n <= 0:
            return
        before = self._held.get(holder, 0)
        self._held[holder] = before + n
        if before == 0 and holder not in self._paused:
            self._runners += 1
        self.used += n
        if self.used > self.peak:
            self.peak = self.used
        if self.used > self.capacity and holder not in self._paused and self._runners > 1:
            self._runners -= 1
            self._paused[holder] = None
            self.pauses += 1
            holder.budget_pause()

    def release(self, holder: BudgetHolder) -> None:
        """``holder`` no longer holds what it charged (its command was
        answered); resumes it if it was paused, and others as room allows."""
        was_paused = holder in self._paused
        self._drop(holder)
        if was_paused:
            holder.budget_resume()
        self._wake()

    def forget(self, holder: Any) -> None:
        """``holder``'s connection is gone: release without resuming it."""
        self._drop(holder)
        self._wake()

    def _drop(self, holder: Any) -> None:
        n = self._held.pop(holder, 0)
        self.used -= n
        if holder in self._paused:
            del self._paused[holder]
        elif n > 0:
            self._runners -= 1

    def _wake(self) -> None:
        while self._paused and (self.used <= self.capacity or self._runners == 0):
            holder = next(iter(self._paused))
            del self._paused[holder]
            if self._held.get(holder, 0) > 0:
                self._runners += 1
            holder.budget_resume()
