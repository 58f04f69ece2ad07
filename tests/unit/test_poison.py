"""Poison messages and provider quarantine (issue 11, item 2), on the folder
engine with verified fakes (tests/folder_helpers.py: the fake IMAP session,
the memory store, the real pipeline) and a fake clock."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imapsvc import folder_state as S
from imapsvc.core import poison
from imapsvc.imap.errors import CommandFailed, ConnectionGone, ProtocolViolation
from imapsvc.model import FolderCursor
from imapsvc.store.memory import MemoryStore
from imapsvc.testing.mailbox import FETCH_DROP, FETCH_GARBLED, FETCH_NO
from tests.folder_helpers import OPTIONS, FolderRig


class PoisonRig(FolderRig):
    """A folder whose server fails every FETCH naming a UID of ``poison``
    (``how``: NO, a garbled answer, or a dropped connection)."""

    def __init__(self, **kw):
        super().__init__(lazy_close=True, **kw)
        self.how = FETCH_NO
        self._poison: set[int] = set()

    @property
    def poison(self):
        return self._poison

    @poison.setter
    def poison(self, uids):
        self.mailbox.heal_fetch()
        self._poison = set(uids)
        for uid in self._poison:
            self.mailbox.fail_fetch(uid, "SERVERBUG", "message is corrupted", how=self.how)

    def start(self):
        session = super().start()
        self.reactor.advance(0)
        return session

    def list_poison(self):
        return self.store.list_poison().result


def reconnect(r):
    """Let the back-off run out (at most 100 s) and accept the new connection."""
    for _ in range(100):
        r.reactor.advance(1)
        if r.attempt_pending:
            session = r.accept()
            r.reactor.advance(0)
            return session
    raise AssertionError("no reconnect within 100 s")


class PoisonTests(SynchronousTestCase):
    def rig(self, **kw):
        rig = PoisonRig(**kw)
        self.addCleanup(self._stop, rig)
        return rig

    def _stop(self, rig):
        rig.stop()

    def reconnect(self, r):
        return reconnect(r)

    def test_no_on_fetch_of_one_uid_is_skipped_after_k_failures(self):
        r = self.rig()
        r.set_cursor(FolderCursor("7", "0", None))
        r.add(6)
        r.poison = {3}
        r.start()
        # The chunk 1..6 failed: its UIDs become suspects, nothing counted yet.
        self.assertEqual(r.uids, [])
        self.assertEqual(r.list_poison(), [])
        # Next session: one UID per command; 1 and 2 go through, 3 fails.
        self.reconnect(r)
        self.assertEqual(r.uids, [1, 2])
        self.assertEqual(r.cursor().last_uid, "2")
        for attempt in (2, 3):
            [entry] = r.list_poison()
            self.assertEqual((entry.uid, entry.failures, entry.skipped_at),
                             (3, attempt - 1, None))
            self.reconnect(r)
        # Third failure: skipped in the ledger with its reason, cursor past it.
        [entry] = r.list_poison()
        self.assertEqual((entry.uid, entry.failures), (3, 3))
        self.assertIsNotNone(entry.skipped_at)
        ledger = r.store.ledger_rows(*r.provider.key)
        [row] = [x for x in ledger if x["uid"] == 3]
        self.assertEqual(row["outcome"], "skipped")
        self.assertTrue(row["reason"].startswith("poison: CommandFailed"), row["reason"])
        self.assertEqual(r.cursor().last_uid, "3")
        self.assertEqual(r.svc.poison_skipped, 1)
        # The folder goes on with the next UIDs.
        self.reconnect(r)
        self.assertEqual(r.uids, [1, 2, 4, 5, 6])
        self.assertEqual(r.svc.state, S.IDLING)
        r.add(1)
        self.assertEqual(r.uids, [1, 2, 4, 5, 6, 7])

    def test_suspect_fetched_after_all_is_forgotten(self):
        r = self.rig()
        r.set_cursor(FolderCursor("7", "0", None))
        r.add(4)
        r.poison = {3}
        r.start()  # chunk 1..4 fails: suspects
        self.reconnect(r)  # 1, 2 recorded; 3 fails once (counted)
        [entry] = r.list_poison()
        self.assertEqual((entry.uid, entry.failures), (3, 1))
        r.poison = set()  # the server can read it now
        self.reconnect(r)
        self.assertEqual(r.uids, [1, 2, 3, 4])
        self.assertEqual(r.list_poison(), [])
        # No suspects left: new mail is fetched in one chunk again.
        r.add(2)
        metas = [q for q in r.session.requests if q[0] == "meta"]
        self.assertEqual(metas[-1], ("meta", (5, 6)))

    def test_options_from_settings(self):
        from imapsvc.config import Settings
        from imapsvc.folder import FolderOptions

        options = FolderOptions.from_settings(
            Settings(poison_after=7, quarantine_after=2, quarantine_ms=1000,
                     max_raw_mime_bytes=5 << 20, max_attachment_bytes=1 << 20))
        self.assertEqual((options.poison_after, options.quarantine_after,
                          options.quarantine_ms), (7, 2, 1000))
        self.assertEqual(options.wire_caps.max_literal, 6 << 20)

    def test_failure_count_survives_a_new_folder_service(self):
        # The count is in the store: a restart (or another replica) goes on
        # counting instead of starting from zero.
        r = self.rig()
        r.store.note_message_failure(*r.provider.key, "INBOX", "7", 1, "CommandFailed")
        r.store.note_message_failure(*r.provider.key, "INBOX", "7", 1, "CommandFailed")
        r.set_cursor(FolderCursor("7", "0", None))
        r.add(1)
        r.poison = {1}
        r.start()  # a first failure only makes UID 1 a suspect
        self.assertEqual(r.list_poison()[0].failures, 2)
        self.reconnect(r)  # fetched alone (nothing else to probe): third failure, skipped
        [entry] = r.list_poison()
        self.assertEqual(entry.failures, 3)
        self.assertIsNotNone(entry.skipped_at)
        self.assertEqual(r.cursor().last_uid, "1")

    def test_lost_connection_does_not_count(self):
        r = self.rig()
        r.set_cursor(FolderCursor("7", "0", None))
        r.add(1)
        r.how = FETCH_DROP  # the network, not the message
        r.poison = {1}
        r.start()
        self.assertEqual(r.svc.state, S.BACKOFF)
        reconnect(r)
        self.assertEqual(r.list_poison(), [])

    def test_quarantine_after_repeated_protocol_violations(self):
        r = self.rig()
        r.set_cursor(FolderCursor("7", "0", None))
        r.add(1)
        # Every session dies with a protocol violation outside any message
        # (an unreadable answer to LIST): three sessions in a row.
        r.mailbox.fail_command("LIST", times=3, how=FETCH_GARBLED)
        r.start()
        self.reconnect(r)
        self.assertIsNone(r.svc.quarantined_until)
        self.reconnect(r)
        until = r.svc.quarantined_until
        self.assertEqual(until, r.reactor.seconds() + OPTIONS.quarantine_ms / 1000.0)
        self.assertIn("quarantined until", r.svc.last_error)
        self.assertEqual(r.svc.snapshot()["quarantinedUntil"], until)
        # Nothing for hours (minus the jitter), then one more try.
        before = r.factory.connect_calls
        r.reactor.advance(OPTIONS.quarantine_ms / 1000.0 * 0.49)
        self.assertEqual(r.factory.connect_calls, before)
        self.assertTrue(r.svc.quarantined())
        r.reactor.advance(OPTIONS.quarantine_ms / 1000.0 * 0.6)
        self.assertFalse(r.svc.quarantined())
        self.assertIsNone(r.svc.snapshot()["quarantinedUntil"])
        self.assertEqual(r.factory.connect_calls, before + 1)
        r.accept()
        self.assertEqual(r.uids, [1])
        self.assertIsNone(r.svc.quarantined_until)
        self.assertEqual(r.svc.violations, 0)


class OutageTests(SynchronousTestCase):
    def test_server_refusing_every_fetch_gets_nothing_skipped(self):
        # An outage, not poison: every FETCH is refused, the probe included,
        # so no message is ever counted, let alone skipped.
        r = PoisonRig()
        self.addCleanup(r.stop)
        r.set_cursor(FolderCursor("7", "2", None))
        r.add(5)
        r.poison = set(range(1, 6))
        r.start()
        for _ in range(10):
            reconnect(r)
        self.assertEqual(r.list_poison(), [])
        self.assertEqual(r.svc.poison_skipped, 0)
        self.assertEqual(r.cursor().last_uid, "2")
        # The probe is the last recorded message (UID 2), then the suspect.
        fetched = [q[1] for s in r.sessions for q in s.requests if q[0] == "meta"]
        self.assertEqual(fetched[:3], [(3, 4, 5), (2,), (2,)])
        # The outage ends: everything arrives.
        r.poison = set()
        reconnect(r)
        self.assertEqual(r.uids, [3, 4, 5])

    def test_poison_counted_once_other_messages_are_delivered(self):
        r = PoisonRig()
        self.addCleanup(r.stop)
        r.set_cursor(FolderCursor("7", "2", None))
        r.add(5)
        r.poison = {3}
        r.start()
        reconnect(r)  # probe UID 2 works: UID 3's failure counts
        [entry] = r.list_poison()
        self.assertEqual((entry.uid, entry.failures), (3, 1))


class IsolationTests(SynchronousTestCase):
    def test_suspects_are_chunks_of_their_own(self):
        self.assertEqual(poison.chunk_isolating([1, 2, 3, 4, 5, 6], 2, {3}),
                         [[1, 2], [3], [4, 5], [6]])
        self.assertEqual(poison.chunk_isolating([1, 2], 5, set()), [[1, 2]])

    def test_which_failures_count(self):
        self.assertTrue(poison.counts_against_message(CommandFailed(None, "NO")))
        self.assertTrue(poison.counts_against_message(ProtocolViolation("too big")))
        self.assertFalse(poison.counts_against_message(ConnectionGone("lost")))
        self.assertFalse(poison.counts_against_message(ValueError("store")))


class QuarantineReportingTests(SynchronousTestCase):
    """The quarantine reaches error_message, /status and /metrics."""

    def test_provider_error_message_status_and_metrics(self):
        import random

        from twisted.internet.task import Clock

        from imapsvc.imap.budget import ByteBudget
        from imapsvc.metrics import ServiceCollector, make_registry, render
        from imapsvc.supervisor import Supervisor
        from tests.unit.test_supervisor import T1, FakeFolder

        clock = Clock()
        store = MemoryStore(clock)
        store.add_provider(tenant=T1, provider_id="p1")
        folders = {}

        def make_folder(provider, folder, hooks):
            folders[folder] = f = FakeFolder([], provider, folder, hooks)
            return f

        sup = Supervisor(store, clock, "w1", make_folder, rng=random.Random(1))
        sup.imap_budget = ByteBudget(1000)
        sup.startService()
        self.addCleanup(sup.stopService)
        clock.advance(0)
        text = "quarantined until 2026-01-01T06:00:00Z after 3 protocol violations: x"
        folders["INBOX"].hooks.quarantined(clock.seconds() + 6 * 3600, text)
        row = store.provider_row(T1, "p1")
        self.assertEqual((row["status"], row["error_message"]), ("error", text))
        status = sup.status()
        self.assertEqual(status["quarantines"], 1)
        self.assertEqual(status["imapBudget"]["capacity"], 1000)
        # What a quarantined FolderService's snapshot carries.
        status["providers"][0]["folders"]["INBOX"]["quarantinedUntil"] = 123.0
        status["providers"][0]["folders"]["INBOX"]["poisonSkipped"] = 2
        metrics = render(make_registry(ServiceCollector(lambda: status))).decode()
        self.assertIn("imapsvc_quarantines_total 1.0", metrics)
        self.assertIn('imapsvc_folder_quarantined{folder="INBOX"', metrics)
        self.assertRegex(metrics, r'imapsvc_poison_skipped_total\{[^}]*\} 2\.0')
        self.assertIn("imapsvc_imap_budget_capacity 1000.0", metrics)
        self.assertIn("imapsvc_imap_budget_pauses_total 0.0", metrics)


class MemoryLimitTests(SynchronousTestCase):
    def test_budget_from_cgroup_file_and_settings(self):
        import os
        import tempfile

        from imapsvc.config import Settings
        from imapsvc.runtime import build_budget, read_memory_limit

        directory = tempfile.mkdtemp()
        v2 = os.path.join(directory, "memory.max")
        with open(v2, "w") as f:
            f.write("1073741824\n")
        self.assertEqual(read_memory_limit((os.path.join(directory, "nope"), v2)), 1 << 30)
        with open(v2, "w") as f:
            f.write("max\n")
        self.assertIsNone(read_memory_limit((v2,)))
        budget = build_budget(Settings(memory_limit_bytes=512 << 20))
        self.assertEqual(budget.capacity, 128 << 20)
        budget = build_budget(Settings(memory_limit_bytes=512 << 20,
                                       inflight_budget_bytes=10 << 20))
        self.assertEqual(budget.capacity, 10 << 20)


class ViolatingServerTests(SynchronousTestCase):
    def test_one_bad_message_is_skipped_without_quarantine(self):
        r = PoisonRig()
        self.addCleanup(r.stop)
        r.set_cursor(FolderCursor("7", "0", None))
        r.add(3)
        r.how = FETCH_GARBLED
        r.poison = {2}
        r.start()
        for _ in range(4):
            reconnect(r)
        self.assertEqual(r.uids, [1, 3])
        self.assertEqual(r.svc.poison_skipped, 1)
        self.assertIsNone(r.svc.quarantined_until)

    def test_server_violating_on_every_message_is_quarantined(self):
        r = PoisonRig()
        self.addCleanup(r.stop)
        r.set_cursor(FolderCursor("7", "0", None))
        r.add(6)
        r.how = FETCH_GARBLED
        r.poison = set(range(1, 7))
        r.start()
        while not r.svc.quarantined():
            reconnect(r)
        # Three messages skipped (one count each), then the server is left alone.
        self.assertEqual(r.svc.poison_skipped, OPTIONS.quarantine_after)
        self.assertEqual(r.uids, [])
        self.assertIn("quarantined until", r.svc.last_error)
