"""Write-back after the durable commit (issue 13 item 3), driven through the
verified fakes (fake session, memory store, real pipeline; see
``test_folder_on_fake.py``): none, seen, move (MOVE, or COPY + UID EXPUNGE
with UIDPLUS), delete; refusals, retries and the restart sweep."""

from __future__ import annotations

from typing import Any

import attr
from twisted.trial.unittest import SynchronousTestCase

from imapsvc import folder_state as S
from imapsvc.folder import FolderService
from imapsvc.testing import FakeMailbox
from tests.unit.test_folder_on_fake import OPTIONS, PASSWORD, USER, World, mail

WITH_MOVE = ("IMAP4rev1", "IDLE", "LITERAL+", "AUTH=PLAIN", "MOVE", "UIDPLUS")
UIDPLUS_ONLY = ("IMAP4rev1", "IDLE", "LITERAL+", "AUTH=PLAIN", "UIDPLUS")
NEITHER = ("IMAP4rev1", "IDLE", "LITERAL+", "AUTH=PLAIN")


class WriteBackWorld(World):
    def __init__(self, capabilities: tuple = WITH_MOVE, mode: Any = None,
                 default: str = "none") -> None:
        super().__init__()
        self.mailbox = FakeMailbox(
            capabilities=capabilities, accounts={USER: PASSWORD}, folders=("INBOX", "Processed")
        )
        self.options = attr.evolve(OPTIONS, write_back=default)
        if mode is not None:
            self.set_mode(mode)

    def set_mode(self, mode: Any) -> None:
        tenant, pid = self.provider.key
        self.store.set_write_back(tenant, pid, mode)
        self.provider = self.store.get_provider(tenant, pid).result  # type: ignore[attr-defined]

    def folder(self) -> FolderService:
        svc = super().folder()
        svc.options = self.options
        return svc

    def outbox_uids(self) -> list[int]:
        return sorted(r["uid"] for r in self.store.ledger_rows(*self.provider.key))


class WriteBackTests(SynchronousTestCase):
    def setUp(self) -> None:
        self._services: list[FolderService] = []

    def _stop(self, world: World) -> None:
        for svc in self._services:
            if svc.running:
                stopped = svc.stopService()
                for session in world.sessions:
                    session.flush()
                self.successResultOf(stopped)
            self.assertEqual(svc.invalid_transitions, 0, [t.new for t in svc.history])
        self.assertEqual(world.reactor.getDelayedCalls(), [])

    def folder(self, world: World) -> FolderService:
        svc = world.folder()
        self._services.append(svc)
        return svc

    def wb_world(self, **kw: Any) -> WriteBackWorld:
        world = WriteBackWorld(**kw)
        self.addCleanup(self._stop, world)
        return world

    def started(self, world: WriteBackWorld, messages: int = 3) -> tuple:
        for n in range(1, messages + 1):
            world.mailbox.append(mail(n))
        svc = self.folder(world)
        session = world.start(svc)
        return svc, session

    def test_none_is_the_default_and_changes_nothing(self) -> None:
        world = self.wb_world()
        svc, session = self.started(world)
        self.assertEqual(world.recorded_uids(), [1, 2, 3])
        self.assertIn("EXAMINE", session.commands)
        self.assertNotIn("SELECT", session.commands)
        self.assertEqual([c for c in session.commands if c.startswith("UID ") and
                          c not in ("UID SEARCH", "UID FETCH")], [])
        self.assertEqual([world.mailbox.flags(u) for u in (1, 2, 3)], [set()] * 3)
        self.assertEqual(svc.snapshot()["writeBack"]["mode"], "none")

    def test_seen_flags_what_was_recorded(self) -> None:
        world = self.wb_world(mode="seen")
        svc, session = self.started(world)
        self.assertEqual(world.recorded_uids(), [1, 2, 3])
        self.assertIn("SELECT", session.commands)
        self.assertNotIn("EXAMINE", session.commands)
        self.assertEqual([world.mailbox.flags(u) for u in (1, 2, 3)], [{"\\Seen"}] * 3)
        # The STORE came after the batch was recorded.
        store_at = session.commands.index("UID STORE")
        self.assertGreater(store_at, max(i for i, c in enumerate(session.commands)
                                         if c == "UID FETCH"))
        world.mailbox.append(mail(4))
        self.assertEqual(world.mailbox.flags(4), {"\\Seen"})
        snap = svc.snapshot()["writeBack"]
        self.assertEqual((snap["mode"], snap["applied"], snap["failed"]), ("seen", 4, 0))
        self.assertEqual(svc.state, S.IDLING)

    def test_environment_default_and_provider_override(self) -> None:
        world = self.wb_world(default="seen")
        self.started(world, 1)
        self.assertEqual(world.mailbox.flags(1), {"\\Seen"})
        other = self.wb_world(mode="none", default="seen")
        svc, session = self.started(other, 1)
        self.assertEqual(other.mailbox.flags(1), set())
        self.assertIn("EXAMINE", session.commands)

    def test_move_puts_processed_mail_in_the_target_and_a_restart_publishes_nothing_twice(
        self,
    ) -> None:
        world = self.wb_world(mode="move:Processed")
        svc, session = self.started(world)
        self.assertEqual(world.mailbox.uids("INBOX"), [])
        self.assertEqual(len(world.mailbox.uids("Processed")), 3)
        self.assertEqual(len(world.store.outbox_rows()), 3)
        self.assertEqual(world.cursor().last_uid, "3")
        self.assertEqual(svc.state, S.IDLING)
        world.mailbox.append(mail(4))
        self.assertEqual(world.mailbox.uids("INBOX"), [])
        self.assertEqual(len(world.mailbox.uids("Processed")), 4)
        self.assertEqual(world.cursor().last_uid, "4")
        self.successResultOf(svc.stopService())

        # A new worker: the cursor is past everything; nothing is fetched again.
        world.mailbox.append(mail(5))
        del world.mailbox.fetched[:]
        second = self.folder(world)
        world.start(second)
        self.assertEqual(world.recorded_uids(), [1, 2, 3, 4, 5])
        self.assertEqual(len(world.store.outbox_rows()), 5)
        self.assertEqual(sorted({u for _k, _f, u in world.mailbox.fetched}), [5])
        self.assertEqual(world.mailbox.uids("INBOX"), [])
        self.assertEqual(len(world.mailbox.uids("Processed")), 5)

    def test_move_falls_back_to_copy_and_uid_expunge_with_uidplus(self) -> None:
        world = self.wb_world(capabilities=UIDPLUS_ONLY, mode="move:Processed")
        # Somebody else's \Deleted message must survive our UID EXPUNGE.
        world.mailbox.append(mail(9))
        world.mailbox.store_flags("INBOX", [1], ["\\Deleted"])
        world.options = attr.evolve(world.options, max_emails_per_sync=1)
        svc = self.folder(world)
        session = world.start(svc)  # the recent window: nothing before UIDNEXT-1
        self.assertEqual(world.recorded_uids(), [1])
        world.mailbox.append(mail(2))
        world.mailbox.append(mail(3))
        self.assertEqual(world.recorded_uids(), [1, 2, 3])
        self.assertNotIn("UID MOVE", session.commands)
        self.assertIn("UID COPY", session.commands)
        self.assertIn("UID EXPUNGE", session.commands)
        self.assertEqual(world.mailbox.uids("INBOX"), [])
        self.assertEqual(len(world.mailbox.uids("Processed")), 3)

    def test_uid_expunge_spares_other_deleted_messages(self) -> None:
        world = self.wb_world(capabilities=UIDPLUS_ONLY, mode="delete")
        world.mailbox.append(mail(1))
        world.options = attr.evolve(world.options, max_emails_per_sync=1)
        svc = self.folder(world)
        world.start(svc)  # starts at UIDNEXT-1 = 1: records UID 1 and deletes it
        self.assertEqual(world.mailbox.uids("INBOX"), [])
        world.set_mode("none")
        svc.update_provider(world.provider)
        world.mailbox.append(mail(2))
        world.mailbox.store_flags("INBOX", [2], ["\\Deleted"])  # a person's, not ours
        world.set_mode("delete")
        svc.update_provider(world.provider)
        world.mailbox.append(mail(3))
        self.assertEqual(world.recorded_uids(), [1, 2, 3])
        # UID 2 was recorded with write-back off; UID 3 is deleted, UID 2 kept.
        self.assertEqual(world.mailbox.uids("INBOX"), [2])

    def test_delete(self) -> None:
        world = self.wb_world(capabilities=UIDPLUS_ONLY, mode="delete")
        svc, session = self.started(world)
        self.assertEqual(world.recorded_uids(), [1, 2, 3])
        self.assertEqual(world.mailbox.uids("INBOX"), [])
        self.assertEqual(world.mailbox.uids("Processed"), [])
        self.assertEqual(svc.snapshot()["writeBack"]["applied"], 3)

    def test_unsupported_mode_is_reported_and_the_events_stand(self) -> None:
        for mode in ("delete", "move:Processed"):
            world = self.wb_world(capabilities=NEITHER, mode=mode)
            svc, session = self.started(world)
            self.assertEqual(world.recorded_uids(), [1, 2, 3])
            self.assertEqual(len(world.store.outbox_rows()), 3)
            self.assertEqual(world.mailbox.uids("INBOX"), [1, 2, 3])
            snap = svc.snapshot()["writeBack"]
            self.assertEqual(snap["failed"], 3)
            self.assertEqual(snap["pending"], 0)  # a server that cannot: no retry
            self.assertIn("UIDPLUS", snap["lastError"])
            self.assertEqual(svc.state, S.IDLING)
            self.assertFalse([c for c in session.commands if c in ("UID EXPUNGE", "UID MOVE")])

    def test_a_refused_move_is_retried_at_the_next_sync_without_a_second_event(self) -> None:
        world = self.wb_world(mode="move:Processed")
        world.mailbox.fail_write("UID MOVE", "SERVERBUG", "try again later")
        svc, session = self.started(world)
        self.assertEqual(world.recorded_uids(), [1, 2, 3])
        self.assertEqual(world.mailbox.uids("INBOX"), [1, 2, 3])
        snap = svc.snapshot()["writeBack"]
        self.assertEqual((snap["failed"], snap["pending"]), (3, 3))
        self.assertIn("SERVERBUG", snap["lastError"])
        # The session carried on: no reconnect.
        self.assertEqual(svc.state, S.IDLING)
        self.assertEqual(dict(svc.reconnects), {})
        self.assertEqual(world.cursor().last_uid, "3")

        world.mailbox.append(mail(4))
        self.assertEqual(world.mailbox.uids("INBOX"), [])
        self.assertEqual(len(world.mailbox.uids("Processed")), 4)
        self.assertEqual(len(world.store.outbox_rows()), 4)
        snap = svc.snapshot()["writeBack"]
        self.assertEqual((snap["applied"], snap["pending"]), (4, 0))

    def test_a_missing_target_folder_keeps_the_session(self) -> None:
        world = self.wb_world(mode="move:Archive")
        svc, session = self.started(world)
        self.assertEqual(world.recorded_uids(), [1, 2, 3])
        self.assertEqual(svc.state, S.IDLING)
        self.assertIn("TRYCREATE", svc.snapshot()["writeBack"]["lastError"])
        world.mailbox.add_folder("Archive")
        svc.wake()
        self.assertEqual(world.mailbox.uids("INBOX"), [])
        self.assertEqual(len(world.mailbox.uids("Archive")), 3)

    def test_move_to_the_watched_folder_is_refused(self) -> None:
        world = self.wb_world(mode="move:inbox")
        svc, session = self.started(world)
        self.assertEqual(world.mailbox.uids("INBOX"), [1, 2, 3])
        self.assertNotIn("UID MOVE", session.commands)
        self.assertIn("watched folder", svc.snapshot()["writeBack"]["lastError"])

    def test_restart_sweep_moves_recorded_mail_left_behind_and_nothing_else(self) -> None:
        # Mail recorded by a worker without write-back (or one that died
        # between the commit and the MOVE) is still in INBOX; older mail,
        # before the first window, was never recorded and stays.
        world = self.wb_world()
        for n in range(1, 9):
            world.mailbox.append(mail(n))
        first = self.folder(world)
        world.start(first)
        recorded = world.recorded_uids()
        self.assertEqual(recorded, [4, 5, 6, 7, 8])  # IMAP_MAX_EMAILS_PER_SYNC=5
        self.successResultOf(first.stopService())

        world.set_mode("move:Processed")
        second = self.folder(world)
        session = world.start(second)
        self.assertEqual(world.mailbox.uids("INBOX"), [1, 2, 3])
        self.assertEqual(len(world.mailbox.uids("Processed")), 5)
        self.assertEqual(len(world.store.outbox_rows()), 5)
        self.assertEqual(second.snapshot()["writeBack"]["applied"], 5)
        # Once per start: a later sync does not search again.
        searches = session.commands.count("UID SEARCH")
        second.wake()
        self.assertEqual(session.commands.count("UID SEARCH"), searches + 1)

    def test_a_bad_stored_mode_means_none_and_is_reported(self) -> None:
        world = self.wb_world(mode="archive")  # past the CLI's validation
        svc, session = self.started(world)
        self.assertIn("EXAMINE", session.commands)
        self.assertEqual(world.mailbox.flags(1), set())
        self.assertIn("write-back option ignored", svc.snapshot()["writeBack"]["lastError"])
        self.assertEqual(svc.snapshot()["writeBack"]["mode"], "invalid")

    def test_nothing_is_written_back_when_the_batch_is_not_committed(self) -> None:
        world = self.wb_world(mode="seen")
        svc = self.folder(world)
        world.start(svc)
        self.assertEqual(svc.state, S.IDLING)
        world.store.expire_lease(*world.provider.key)  # record_batch now refuses
        world.mailbox.append(mail(1))
        self.assertEqual(world.recorded_uids(), [])
        self.assertEqual(svc.state, S.STOPPED)  # lease lost
        self.assertEqual(world.mailbox.flags(1), set())
        self.assertEqual(svc.snapshot()["writeBack"]["applied"], 0)

    def test_counts_reach_metrics_and_cluster_status(self) -> None:
        from imapsvc.cluster_status import folder_counters
        from imapsvc.metrics import ServiceCollector, make_registry, render

        world = self.wb_world(mode="seen")
        world.mailbox.fail_write("UID STORE", "SERVERBUG", "later")
        svc, _session = self.started(world, 2)
        world.mailbox.append(mail(3))  # retries 1-2, then 3
        snap = svc.snapshot()
        self.assertEqual(snap["writeBack"]["applied"], 3)
        self.assertEqual(snap["writeBack"]["failed"], 2)
        status = {"providers": [{"tenant": "t", "providerId": "p", "folders": {"INBOX": snap}}]}
        text = render(make_registry(ServiceCollector(lambda: status))).decode()
        self.assertIn(
            'imapsvc_write_backs_applied_total{folder="INBOX",provider="p",tenant="t"} 3.0', text
        )
        self.assertIn(
            'imapsvc_write_backs_failed_total{folder="INBOX",provider="p",tenant="t"} 2.0', text
        )
        text = render(make_registry(ServiceCollector(lambda: status, detailed=False))).decode()
        self.assertIn("imapsvc_write_backs_applied_total 3.0", text)
        counters = folder_counters(snap)
        self.assertEqual((counters["writeBackApplied"], counters["writeBackFailed"]), (3, 2))

    def test_a_sync_that_expunged_looks_once_more(self) -> None:
        # After EXPUNGEs an EXISTS count equal to the one at SELECT can hide
        # new mail; one more sync (cheap: SELECT, UID SEARCH) settles it.
        world = self.wb_world(mode="move:Processed")
        svc, session = self.started(world)
        self.assertEqual(svc.sync_count, 2)
        self.assertEqual(session.commands.count("UID MOVE"), 1)
        seen = self.wb_world(mode="seen")
        svc, session = self.started(seen)
        self.assertEqual(svc.sync_count, 1)
