"""Delay maths for reconnects and timers. Pure: the random source is passed in.

All functions take milliseconds (as configured) and return seconds (as
``callLater`` wants). ``rand`` is a callable returning a float in ``[0, 1)``
such as :func:`random.random` or ``random.Random(seed).random``.
"""

from __future__ import annotations

from typing import Callable, Optional

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


def jitter_around(delay_s: float, pct: float, rand: Rand) -> float:
    """A delay drawn uniformly from ``[delay*(1-pct), delay*(1+pct)]``, as the
    app does (``delay * (1 + pct * uniform(-1, 1))``): periodic timers of
    many replicas and connections drift apart both ways around the nominal
    interval instead of all running early."""
    pct = _clamp_pct(pct)
    delay_s = max(0.0, float(delay_s))
    return delay_s * (1.0 + pct * (2.0 * rand() - 1.0))


def timer_delay(
    interval_ms: int, jitter_pct: float, rand: Rand, ceiling_s: Optional[float] = None
) -> float:
    """A periodic timer's next delay (provider refresh, lease heartbeat, poll
    sleep, IDLE restart, IDLE keep-alive), jittered by
    ``IMAP_TIMER_JITTER_PCT`` around ``interval_ms``.

    :param ceiling_s: a bound the jittered delay must stay below whatever the
        settings say (the 29 minute IDLE limit, the inactivity watchdog);
        settings validation keeps it out of reach, this keeps it a guarantee.
    """
    delay = jitter_around(max(0, int(interval_ms)) / 1000.0, jitter_pct, rand)
    if ceiling_s is not None:
        delay = min(delay, max(0.0, ceiling_s))
    return delay


def startup_stagger(stagger_ms: int, rand: Rand) -> float:
    """A first-connect delay drawn uniformly from ``[0, stagger_ms]``, so a
    restarted replica does not open every connection at once."""
    return max(0, int(stagger_ms)) / 1000.0 * rand()


def first_reconnect_delay(
    base_ms: int, jitter_pct: float, window_ms: int, rand: Rand
) -> float:
    """The first retry after an established connection was lost: the usual
    first back-off plus a draw from ``[0, window_ms]`` (the start-up stagger
    window). A server restart drops every session at the same moment;
    without the spread they would all reconnect within the same second."""
    return reconnect_delay(0, base_ms, base_ms, jitter_pct, rand) + startup_stagger(
        window_ms, rand
    )
