"""Folder capacity from the open-file limit, the EMFILE check, reactor lag
statistics and the lag meter (fake clock), the metrics they feed."""

import errno
from datetime import UTC

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core import capacity as C
from imapsvc.core.backoff import first_reconnect_delay
from imapsvc.core.lag import LagStats, tick_lag
from imapsvc.metrics import ServiceCollector, make_registry, render
from imapsvc.model import ProviderConfig
from imapsvc.reactor_lag import ReactorLagMeter
from imapsvc.runtime import raise_open_files_limit


def provider(pid, folders):
    return ProviderConfig(
        tenant="t", provider_id=pid, provider_name=pid, mailbox="m@example.com",
        host="imap.example.com", port=993, username="u",
        folder_filters=tuple(f"F{i}" for i in range(folders)),
    )


class CapacityTests(SynchronousTestCase):
    def test_reserve_and_capacity(self):
        self.assertEqual(C.fd_reserve(), 152)
        self.assertEqual(C.fd_reserve(base=10, web=0, db=5, redis=1), 16)
        self.assertEqual(C.folder_capacity(1024, 152), 872)
        self.assertEqual(C.folder_capacity(100, 152), 0)
        self.assertIsNone(C.folder_capacity(None, 152))
        # IMAP_MAX_FOLDERS caps it further, never raises it
        self.assertEqual(C.folder_capacity(1024, 152, max_folders=100), 100)
        self.assertEqual(C.folder_capacity(1024, 152, max_folders=5000), 872)
        self.assertEqual(C.folder_capacity(None, 152, max_folders=7), 7)

    def test_admit_counts_the_connections_given(self):
        # A budgeted Gmail provider of 20 folders holds 3 connections.
        big = provider("g", 20)
        self.assertEqual(C.admit(big, 5, 10)[0], C.OVER)
        self.assertEqual(C.admit(big, 5, 10, need=3), (C.START, None))

    def test_soft_limit_goes_to_hard(self):
        self.assertEqual(C.raised_soft_limit(1024, 524288), 524288)
        self.assertEqual(C.raised_soft_limit(4096, 4096), 4096)
        # unlimited hard: Linux refuses an unlimited soft NOFILE; take 2**20
        self.assertEqual(C.raised_soft_limit(1024, -1, -1), 1 << 20)
        self.assertEqual(C.raised_soft_limit(-1, -1, -1), -1)

    def test_fit_refuses_beyond_capacity_naming_the_limit(self):
        a, b, c = provider("a", 3), provider("b", 5), provider("c", 2)
        fits, over = C.fit_capacity([a, b, c], in_use=4, capacity=10, limit=162)
        # 4 + 3 = 7 fits; 7 + 5 = 12 does not; 7 + 2 = 9 fits
        self.assertEqual([p.provider_id for p in fits], ["a", "c"])
        self.assertEqual([k for k, _ in over], [("t", "b")])
        reason = over[0][1]
        self.assertIn("7 of 10 folders open", reason)
        self.assertIn("needs 5", reason)
        self.assertIn("open-file limit 162", reason)
        self.assertIn("152 descriptors reserved", reason)

    def test_held_by_another_replica_is_no_error(self):
        from datetime import datetime, timedelta

        import attr

        now = datetime(2026, 1, 1, tzinfo=UTC)
        a = attr.evolve(provider("a", 3), lease_owner="other",
                        lease_expires_at=now + timedelta(seconds=60))
        b = attr.evolve(provider("b", 3), lease_owner="other",
                        lease_expires_at=now - timedelta(seconds=1))
        c = attr.evolve(provider("c", 3), lease_owner="me",
                        lease_expires_at=now + timedelta(seconds=60))
        fits, over = C.fit_capacity([a, b, c], 0, 3, owner="me", now=now)
        # a runs on the other replica and takes no room; b's lease ran out
        # (fits), c is ours (no room left: an error)
        self.assertEqual([p.provider_id for p in fits], ["b"])
        self.assertEqual([k[1] for k, _ in over], ["c"])
        # without lease information every refusal is an error
        self.assertEqual(len(C.fit_capacity([a], 0, 2)[1]), 1)

    def test_unlimited_fits_everything(self):
        ps = [provider("a", 3000)]
        self.assertEqual(C.fit_capacity(ps, 10**6, None), (tuple(ps), ()))

    def test_fd_exhaustion(self):
        self.assertTrue(C.is_fd_exhaustion(OSError(errno.EMFILE, "Too many open files")))
        self.assertTrue(C.is_fd_exhaustion(OSError(errno.ENFILE, "x")))
        # what Twisted's tcp.Client builds when socket() fails
        self.assertTrue(
            C.is_fd_exhaustion(error.ConnectBindError(errno.EMFILE, "Too many open files"))
        )
        self.assertFalse(C.is_fd_exhaustion(error.ConnectionRefusedError()))
        self.assertFalse(C.is_fd_exhaustion(OSError(errno.ECONNREFUSED, "refused")))
        self.assertFalse(C.is_fd_exhaustion(RuntimeError("refused")))


class FakeResource:
    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft, hard, refuse=False):
        self.limits = (soft, hard)
        self.refuse = refuse
        self.calls = []

    def getrlimit(self, which):
        return self.limits

    def setrlimit(self, which, limits):
        self.calls.append(limits)
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


class RaiseLimitTests(SynchronousTestCase):
    def test_raises_soft_to_hard(self):
        r = FakeResource(1024, 65536)
        self.assertEqual(raise_open_files_limit(r), 65536)
        self.assertEqual(r.calls, [(65536, 65536)])

    def test_refused_keeps_soft(self):
        r = FakeResource(1024, 65536, refuse=True)
        self.assertEqual(raise_open_files_limit(r), 1024)

    def test_unlimited_is_none(self):
        self.assertIsNone(raise_open_files_limit(FakeResource(-1, -1)))


class LagTests(SynchronousTestCase):
    def test_stats(self):
        s = LagStats(window=4)
        for lag in (0.001, 0.002, 0.3, 0.004, 0.005):
            s.record(lag)
        self.assertEqual(s.max, 0.3)
        self.assertEqual(s.window_max(), 0.3)
        self.assertEqual(s.count, 5)
        # window of 4: 0.002 0.3 0.004 0.005; p99 nearest rank = the largest
        self.assertEqual(s.window_quantile(0.99), 0.3)
        self.assertEqual(s.window_quantile(0.5), 0.004)
        buckets = dict(s.cumulative_buckets())
        self.assertEqual(buckets["0.005"], 4)
        self.assertEqual(buckets["0.25"], 4)
        self.assertEqual(buckets["0.5"], 5)
        self.assertEqual(buckets["+Inf"], 5)
        self.assertEqual(tick_lag(10.0, 9.0), 0.0)

    def test_meter_measures_a_stall(self):
        clock = Clock()
        meter = ReactorLagMeter(clock, interval=0.1)
        meter.startService()
        for _ in range(10):
            clock.advance(0.1)
        self.assertEqual(meter.stats.count, 10)
        self.assertAlmostEqual(meter.stats.max, 0.0, places=6)
        # the reactor is blocked 1.5 s: the tick due at +0.1 runs at +1.5
        clock.advance(1.5)
        self.assertAlmostEqual(meter.stats.max, 1.4, places=6)
        clock.advance(0.1)
        self.assertAlmostEqual(meter.stats.window_max(), 1.4, places=6)
        self.assertEqual(meter.stats.count, 12)
        meter.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_metrics_export(self):
        stats = LagStats()
        stats.record(0.02)
        stats.record(0.3)
        status = {"providers": [], "capacity": {"openFilesLimit": 1024, "folderCapacity": 872,
                                                "foldersOpen": 12}}
        text = render(make_registry(ServiceCollector(lambda: status, lag_stats=stats))).decode()
        self.assertIn("imapsvc_open_files_limit 1024.0", text)
        self.assertIn("imapsvc_folder_capacity 872.0", text)
        self.assertIn("imapsvc_folders_open 12.0", text)
        self.assertIn('imapsvc_reactor_lag_seconds_bucket{le="0.25"} 1.0', text)
        self.assertIn('imapsvc_reactor_lag_seconds_bucket{le="+Inf"} 2.0', text)
        self.assertIn("imapsvc_reactor_lag_max_seconds 0.3", text)
        self.assertIn("imapsvc_reactor_lag_p99_seconds 0.3", text)


class FirstReconnectTests(SynchronousTestCase):
    def test_spread_over_window(self):
        draws = iter([0.0, 0.0])
        self.assertEqual(first_reconnect_delay(2000, 0.5, 10000, lambda: next(draws)), 1.0)
        draws = iter([0.999, 0.999])
        self.assertAlmostEqual(
            first_reconnect_delay(2000, 0.5, 10000, lambda: next(draws)), 0.999 + 1 + 9.99
        )
