"""Chaos with exact counts (issue 11), the short plan: two replicas on private
Postgres, Redis (AOF) and Dovecot; replicas SIGKILLed, Dovecot sessions killed,
Redis and Postgres restarted (once as a crash) while mail flows in. Every
message must end as exactly one event_id, none marked ``\\Seen``.
``python -m bench.chaos`` runs the full plan."""

from __future__ import annotations

import json
import os
import shutil

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.rig import chaos
from tests.rig.dovecot import DOVECOT, skip_or_fail


def _entry(event_id: str, message_id: str, ms: int) -> tuple[str, dict[str, str]]:
    payload = {"emailData": {"id": message_id}}
    return (f"{ms}-0", {"event_type": chaos.RECEIVED, "event_id": event_id,
                        "payload_json": json.dumps(payload)})


class CountingTests(unittest.TestCase):
    """The counting is what the chaos test stands on: it must see each failure."""

    def test_exact(self) -> None:
        figures = chaos.count_events(
            [_entry("e1", "<a>", 2000), _entry("e2", "<b>", 2500)], {"<a>": 1.0, "<b>": 2.0})
        self.assertEqual((figures["missing"], figures["duplicates"], figures["republished"]),
                         (0, 0, 0))
        self.assertEqual(figures["distinct_event_ids"], 2)
        self.assertEqual(figures["latency_max_s"], 1.0)
        self.assertEqual(figures["last_event_after_last_append_s"], 0.5)

    def test_missing_duplicate_and_republished_are_told_apart(self) -> None:
        entries = [_entry("e1", "<a>", 1000), _entry("e1", "<a>", 1100),  # re-published
                   _entry("e2", "<b>", 1200), _entry("e3", "<b>", 1300),  # two ids, one mail
                   _entry("e4", "<z>", 1400)]  # not ours
        figures = chaos.count_events(entries, {"<a>": 0.5, "<b>": 0.5, "<c>": 0.5})
        self.assertEqual(figures["missing"], 1)
        self.assertEqual(figures["missing_examples"], ["<c>"])
        self.assertEqual(figures["republished"], 1)
        self.assertEqual(figures["duplicates"], 1)
        self.assertEqual(figures["unexpected"], 1)

    def test_schedule_spreads_every_action_over_the_window(self) -> None:
        import random

        actions = chaos.schedule(chaos.FULL, random.Random(7))
        kinds = [kind for _, kind in actions]
        self.assertEqual(kinds.count("kill"), 20)
        self.assertEqual(kinds.count("dovecot"), 3)
        self.assertEqual(kinds.count("redis"), 3)
        self.assertEqual([k for k in kinds if k.startswith("postgres")],
                         ["postgres:fast", "postgres:immediate"])
        times = [at for at, _ in actions]
        self.assertEqual(times, sorted(times))
        self.assertTrue(0 < times[0] and times[-1] < chaos.FULL.append_seconds)


class ChaosTests(unittest.TestCase):
    timeout = 420

    def setUp(self) -> None:
        if not os.path.exists(DOVECOT):
            skip_or_fail(f"{DOVECOT} is not installed")
        if os.geteuid() != 0:
            skip_or_fail("the private Postgres and Dovecot need root")
        if not (shutil.which("redis-server") and shutil.which("runuser")):
            skip_or_fail("redis-server and runuser are needed")

    @defer.inlineCallbacks
    def test_short_plan_exact_counts(self):
        lines: list[str] = []
        run = chaos.ChaosRun(reactor, chaos.SHORT, log=lines.append)
        figures = yield run.run()
        report = json.dumps(figures, sort_keys=True)
        # The figures are the point of the run: keep them next to trial's log.
        with open("chaos-short.json", "w", encoding="utf-8") as f:
            f.write(report + "\n")
        self.assertTrue(figures["settled"], report)
        self.assertEqual(figures["appended"], chaos.SHORT.messages, report)
        self.assertEqual(figures["missing"], 0, report)
        self.assertEqual(figures["duplicates"], 0, report)
        # A replica killed between XADD and marking the row: the next owner
        # publishes the row again and the stream's dedupe window takes it once.
        self.assertEqual(figures["republished"], 0, report)
        self.assertEqual(figures["distinct_event_ids"], chaos.SHORT.messages, report)
        self.assertEqual(figures["unexpected"], 0, report)
        self.assertEqual(figures["seen"], 0, report)
        self.assertEqual(figures["unpublished"], 0, report)
        # Every planned failure really happened.
        self.assertEqual(figures["actions"], {
            "kill": chaos.SHORT.replica_kills, "dovecot": chaos.SHORT.dovecot_cuts,
            "redis": chaos.SHORT.redis_restarts, "postgres": chaos.SHORT.postgres_restarts,
        }, report)
