"""Measure reactor lag: a timer every 100 ms notes how late it ran.

The numbers (:class:`imapsvc.core.lag.LagStats`) are exported in
``/metrics`` as ``imapsvc_reactor_lag_seconds`` (histogram) and the
``..._max_seconds`` / ``..._p99_seconds`` gauges, and in ``/status``.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application import service

from imapsvc.core.lag import LagStats, tick_lag


class ReactorLagMeter(service.Service):
    """Schedules itself with ``clock.callLater(interval)`` and records, at
    each run, how much later than due it ran.

    One ``callLater`` per tick (not a ``LoopingCall``, which skips missed
    intervals and so hides a stall's length behind its own catch-up).
    """

    def __init__(self, clock: Any, interval: float = 0.1, stats: Optional[LagStats] = None):
        self.clock = clock
        self.interval = interval
        self.stats = stats or LagStats()
        self._call: Any = None
        self._due = 0.0

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def stopService(self) -> Any:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return super().stopService()

    def _schedule(self) -> None:
        self._due = self.clock.seconds() + self.interval
        self._call = self.clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        self._call = None
        self.stats.record(tick_lag(self._due, self.clock.seconds()))
        if self.running:
            self._schedule()
