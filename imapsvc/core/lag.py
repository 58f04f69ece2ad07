"""Reactor lag statistics (pure): how late a periodic tick ran.

A tick scheduled every ``interval`` seconds that runs ``lag`` seconds late
means the reactor thread was busy (or blocked) that long: no socket was
read, no timer fired, no web request was answered meanwhile. The shell
(:mod:`imapsvc.reactor_lag`) measures; this keeps the numbers for
``/metrics``: a cumulative histogram, the all-time maximum, and the maximum
and 99th percentile of a recent window.
"""

from __future__ import annotations

import bisect
import collections
import math
from typing import Optional

#: Histogram bucket upper bounds, seconds (Prometheus ``le``).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LagStats:
    """Lag samples in seconds.

    :param window: how many recent samples the window max and p99 cover
        (600 at one tick per 100 ms = the last minute).
    """

    def __init__(self, window: int = 600) -> None:
        self.recent: collections.deque[float] = collections.deque(maxlen=max(1, window))
        #: cumulative counts per bucket of :data:`BUCKETS`, then +Inf
        self.bucket_counts = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def record(self, lag: float) -> None:
        lag = max(0.0, float(lag))
        self.recent.append(lag)
        self.count += 1
        self.total += lag
        self.max = max(self.max, lag)
        self.bucket_counts[bisect.bisect_left(BUCKETS, lag)] += 1

    def window_max(self) -> float:
        return max(self.recent, default=0.0)

    def window_quantile(self, q: float) -> float:
        """Nearest-rank quantile of the recent window (0 when empty)."""
        if not self.recent:
            return 0.0
        ordered = sorted(self.recent)
        rank = max(1, math.ceil(q * len(ordered)))
        return ordered[min(rank, len(ordered)) - 1]

    def cumulative_buckets(self) -> list[tuple[str, int]]:
        """``[(le, count <= le), ..., ("+Inf", count)]`` for a histogram."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip(BUCKETS, self.bucket_counts):
            running += n
            out.append((repr(bound), running))
        out.append(("+Inf", self.count))
        return out

    def snapshot(self) -> dict[str, Optional[float]]:
        """For ``/status``: seconds, rounded to the millisecond."""
        return {
            "maxSeconds": round(self.max, 3),
            "windowMaxSeconds": round(self.window_max(), 3),
            "windowP99Seconds": round(self.window_quantile(0.99), 3),
            "samples": self.count,
        }


def tick_lag(expected_at: float, now: float) -> float:
    """How late a tick due at ``expected_at`` ran at ``now`` (never negative)."""
    return max(0.0, now - expected_at)
