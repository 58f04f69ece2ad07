"""The collector policy (imapsvc/gc_policy.py): survivors of a full pass are
frozen, the frozen set is walked again on a schedule, and nothing of it is
left behind when the service stops."""

from __future__ import annotations

import gc
from typing import Any

from prometheus_client import generate_latest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.gc_policy import CollectorPolicy
from imapsvc.metrics import ServiceCollector, make_registry


class FakeCollector:
    """The part of the ``gc`` module the policy uses; a collection calls
    the callbacks as CPython does."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self.calls: list[str] = []
        self.frozen = 0
        #: What a freeze freezes.
        self.live = 100

    def collect(self, generation: int = 2) -> int:
        self.calls.append(f"collect({generation})")
        self.run_callbacks(generation)
        return 0

    def run_callbacks(self, generation: int) -> None:
        for callback in list(self.callbacks):
            callback("start", {"generation": generation})
        for callback in list(self.callbacks):
            callback("stop", {"generation": generation, "collected": 0, "uncollectable": 0})

    def freeze(self) -> None:
        self.calls.append("freeze")
        self.frozen = self.live

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")
        self.frozen = 0

    def get_freeze_count(self) -> int:
        return self.frozen


class ThreadCallClock(Clock):
    """``callFromThread`` runs at the next turn, as the reactor's does."""

    def callFromThread(self, f: Any, *args: Any) -> None:  # noqa: N802
        self.callLater(0, f, *args)


class CollectorPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = ThreadCallClock()
        self.gc = FakeCollector()
        self.policy = CollectorPolicy(self.clock, 900.0, collector=self.gc)

    def start(self) -> None:
        self.policy.startService()
        self.addCleanup(lambda: self.policy.running and self.policy.stopService())

    def test_start_collects_then_freezes_after_the_pass(self):
        self.start()
        self.assertEqual(self.gc.calls, ["unfreeze", "collect(2)"])
        # Not inside the collector: at the next reactor turn.
        self.clock.advance(0)
        self.assertEqual(self.gc.calls, ["unfreeze", "collect(2)", "freeze"])
        self.assertEqual(self.policy.frozen(), 100)

    def test_every_full_pass_of_the_collector_freezes_its_survivors(self):
        self.start()
        self.clock.advance(0)
        del self.gc.calls[:]
        self.gc.run_callbacks(2)
        self.clock.advance(0)
        self.assertEqual(self.gc.calls, ["freeze"])
        self.assertEqual(self.policy.freezes, 2)

    def test_young_passes_freeze_nothing(self):
        self.start()
        self.clock.advance(0)
        del self.gc.calls[:]
        self.gc.run_callbacks(0)
        self.gc.run_callbacks(1)
        self.clock.advance(0)
        self.assertEqual(self.gc.calls, [])

    def test_passes_before_the_freeze_ran_freeze_once(self):
        self.start()
        self.gc.run_callbacks(2)
        self.gc.run_callbacks(2)
        self.clock.advance(0)
        self.assertEqual(self.gc.calls.count("freeze"), 1)

    def test_a_frozen_set_that_grew_is_walked_again_at_the_next_check(self):
        self.start()
        self.clock.advance(0)
        del self.gc.calls[:]
        # Sessions lost in cycles while frozen: the set grew by 20%.
        self.gc.live = 120
        self.gc.run_callbacks(2)
        self.clock.advance(899)
        self.assertEqual(self.gc.calls, ["freeze"])
        self.clock.advance(1)
        self.assertEqual(self.gc.calls, ["freeze", "unfreeze", "collect(2)", "freeze"])
        self.assertEqual(self.policy.full_passes, 2)

    def test_a_steady_frozen_set_is_left_alone(self):
        self.start()
        self.clock.advance(0)
        del self.gc.calls[:]
        self.gc.live = 110  # within a tenth
        self.gc.run_callbacks(2)
        self.clock.advance(900 * 4)
        self.assertEqual(self.gc.calls, ["freeze"])
        self.assertEqual(self.policy.full_passes, 1)

    def test_the_baseline_is_what_the_last_full_pass_left(self):
        self.start()
        self.clock.advance(0)
        self.gc.live = 200
        self.clock.advance(1)
        self.gc.run_callbacks(2)
        self.clock.advance(899)
        self.assertEqual(self.policy.full_passes, 2)
        # 200 is the new baseline: 210 later is no growth worth a pass.
        self.gc.live = 210
        self.gc.run_callbacks(2)
        self.clock.advance(900)
        self.assertEqual(self.policy.full_passes, 2)

    def test_stop_thaws_and_lets_go_of_the_collector(self):
        self.start()
        self.clock.advance(0)
        self.policy.stopService()
        self.assertEqual(self.gc.calls[-1], "unfreeze")
        self.assertEqual(self.gc.callbacks, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_freeze_due_after_stop_is_not_made(self):
        self.start()
        self.policy.stopService()
        self.clock.advance(0)
        self.assertNotIn("freeze", self.gc.calls)

    def test_metrics(self):
        self.start()
        self.clock.advance(0)
        registry = make_registry(ServiceCollector(lambda: {}, gc_policy=self.policy))
        text = generate_latest(registry).decode()
        self.assertIn("imapsvc_gc_frozen_objects 100.0", text)
        self.assertIn("imapsvc_gc_full_passes_total 1.0", text)


class RealCollectorTests(SynchronousTestCase):
    def test_objects_are_frozen_while_running_and_thawed_after(self):
        clock = ThreadCallClock()
        policy = CollectorPolicy(clock, 900.0)
        self.assertEqual(gc.get_freeze_count(), 0)
        policy.startService()
        try:
            clock.advance(0)
            self.assertGreater(gc.get_freeze_count(), 1000)
            self.assertIn(policy._collected, gc.callbacks)
        finally:
            policy.stopService()
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertNotIn(policy._collected, gc.callbacks)
