"""Delay maths for reconnects and timers. Pure: the random source is passed in.

All functions take milliseconds (as configured) and return seconds (as
``callLater`` wants). ``rand`` is a callable returning a float in ``[0, 1)``
such as :func:`random.random` or ``random.Random(seed).random``.
"""

from __future__ import annotations

from typing import Callable

Rand = Callable[[], float]


def _clamp_pct(pct: float) -> float:
    return min(1.0, max(0.0, float(pct)))


def jitter_down(delay_s: float, pct: float, rand: Rand) -> float:
    """A delay drawn uniformly from ``[delay*(1-pct), delay]``.

    Jitter only shortens, so a configured ceiling (an IDLE restart well
    under 29 minutes, the maximum reconnect delay) is never exceeded.
    """
    pct = _clamp_pct(pct)
    delay_s = max(0.0, float(delay_s))
    return delay_s * (1.0 - pct) + delay_s * pct * rand()


def reconnect_delay(
    attempt: int, base_ms: int, max_ms: int, jitter_pct: float, rand: Rand
) -> float:
    """The delay before reconnect number ``attempt`` (0 for the first retry).

    Exponential: ``min(max_ms, base_ms * 2**attempt)``, then jittered down by
    ``jitter_pct`` (``IMAP_RECONNECT_JITTER_PCT``).
    """
    attempt = max(0, int(attempt))
    base = max(0, int(base_ms))
    ceiling = max(base, int(max_ms))
    # Cap the exponent so huge attempt counts do not build huge integers.
    nominal = min(ceiling, base * (2 ** min(attempt, 62)))
    return jitter_down(nominal / 1000.0, jitter_pct, rand)


def timer_delay(interval_ms: int, jitter_pct: float, rand: Rand) -> float:
    """A periodic timer's next delay (poll sleep, IDLE restart, heartbeat),
    jittered down by ``IMAP_TIMER_JITTER_PCT``."""
    return jitter_down(max(0, int(interval_ms)) / 1000.0, jitter_pct, rand)


def startup_stagger(stagger_ms: int, rand: Rand) -> float:
    """A first-connect delay drawn uniformly from ``[0, stagger_ms]``, so a
    restarted replica does not open every connection at once."""
    return max(0, int(stagger_ms)) / 1000.0 * rand()
