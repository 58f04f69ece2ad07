"""Tests for :mod:`imapsvc.core.backoff`."""

import random

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core import backoff as B


def const(v):
    return lambda: v


class ReconnectDelayTests(SynchronousTestCase):
    def test_exponential_then_capped(self):
        got = [B.reconnect_delay(a, 2000, 60000, 0.0, const(0.5)) for a in range(8)]
        self.assertEqual(got, [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0])

    def test_jitter_bounds(self):
        self.assertEqual(B.reconnect_delay(0, 2000, 60000, 0.5, const(0.0)), 1.0)
        self.assertAlmostEqual(B.reconnect_delay(0, 2000, 60000, 0.5, const(0.999999)), 2.0, 4)
        self.assertEqual(B.reconnect_delay(10, 2000, 60000, 0.5, const(0.0)), 30.0)

    def test_huge_attempts(self):
        self.assertEqual(B.reconnect_delay(10**9, 2000, 60000, 0, const(0)), 60.0)

    def test_max_below_base_uses_base(self):
        self.assertEqual(B.reconnect_delay(3, 2000, 1000, 0, const(0)), 2.0)

    @given(
        st.integers(0, 100),
        st.integers(0, 10**6),
        st.integers(0, 10**7),
        st.floats(0, 1),
        st.floats(0, 1, exclude_max=True),
    )
    def test_within_bounds(self, attempt, base, mx, pct, r):
        d = B.reconnect_delay(attempt, base, mx, pct, const(r))
        nominal = min(max(base, mx), base * 2 ** min(attempt, 62)) / 1000.0
        self.assertLessEqual(d, nominal + 1e-9)
        self.assertGreaterEqual(d, nominal * (1 - pct) - 1e-9)

    def test_real_random_spreads(self):
        rng = random.Random(4)
        got = {round(B.reconnect_delay(2, 2000, 60000, 0.5, rng.random), 3) for _ in range(50)}
        self.assertGreater(len(got), 40)
        self.assertTrue(all(4.0 <= d <= 8.0 for d in got))


class TimerTests(SynchronousTestCase):
    def test_timer_jitters_both_ways_around_the_interval(self):
        # delay * (1 + pct * uniform(-1, 1)), as the app does.
        self.assertEqual(B.timer_delay(30000, 0.1, const(0.0)), 27.0)
        self.assertAlmostEqual(B.timer_delay(30000, 0.1, const(0.5)), 30.0)
        self.assertAlmostEqual(B.timer_delay(30000, 0.1, const(0.75)), 31.5)
        self.assertLess(B.timer_delay(30000, 0.1, const(0.9999)), 33.0)
        self.assertGreater(B.timer_delay(30000, 0.1, const(0.9999)), 32.99)

    def test_ceiling_caps_the_draw(self):
        self.assertEqual(B.timer_delay(1500000, 0.5, const(0.9), ceiling_s=1739.0), 1739.0)
        self.assertEqual(B.timer_delay(1500000, 0.5, const(0.0), ceiling_s=1739.0), 750.0)

    def test_pct_clamped(self):
        self.assertEqual(B.timer_delay(1000, 5, const(0)), 0.0)
        self.assertEqual(B.timer_delay(1000, -1, const(0)), 1.0)

    def test_seeded_distribution_spreads_both_ways_within_bounds(self):
        rng = random.Random(10)
        draws = [B.timer_delay(60000, 0.1, rng.random) for _ in range(2000)]
        self.assertTrue(all(54.0 <= d <= 66.0 for d in draws))
        below = sum(1 for d in draws if d < 60.0)
        above = sum(1 for d in draws if d > 60.0)
        # Both sides occur, about evenly, and reach near both ends.
        self.assertGreater(below, 850)
        self.assertGreater(above, 850)
        self.assertLess(min(draws), 54.1)
        self.assertGreater(max(draws), 65.9)
        self.assertLess(abs(sum(draws) / len(draws) - 60.0), 0.3)

    def test_stagger(self):
        self.assertEqual(B.startup_stagger(2000, const(0)), 0.0)
        self.assertEqual(B.startup_stagger(2000, const(0.5)), 1.0)
        self.assertEqual(B.startup_stagger(0, const(0.5)), 0.0)

    @given(st.integers(0, 10**7), st.floats(0, 1), st.floats(0, 1, exclude_max=True))
    def test_timer_bounds(self, ms, pct, r):
        d = B.timer_delay(ms, pct, const(r))
        self.assertTrue(ms / 1000 * (1 - pct) - 1e-9 <= d <= ms / 1000 * (1 + pct) + 1e-9)
