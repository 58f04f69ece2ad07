"""Backfill on the verified fakes (issue 13 item 6): a first sync by date
(``IMAP_FIRST_SYNC_SINCE_DAYS`` or the provider's own value) and a pending
``resync --since``, which publishes only what the ledger does not know."""

from __future__ import annotations

from datetime import UTC, date, datetime

import attr
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.folder import FolderService
from tests.unit import test_folder_on_fake as base
from tests.unit.test_folder_on_fake import OPTIONS, World, mail

#: The test's "now": 12 January 2026; 10 days back is 2 January.
NOW = datetime(2026, 1, 12, 9, 0, tzinfo=UTC).timestamp()
OLD = "15-Nov-2025 10:00:00 +0000"
NEW = "05-Jan-2026 10:00:00 +0000"


class BackfillWorld(World):
    def __init__(self, days: int = 10, fetch_chunk: int = 50) -> None:
        super().__init__()
        self.reactor.advance(NOW)
        # Taken again: the one World took at 0 expired on the way to NOW.
        assert self.store.acquire_lease(*self.provider.key, base.OWNER, 600000).result is True  # type: ignore[attr-defined]
        self.options = attr.evolve(OPTIONS, first_sync_since_days=days, fetch_chunk=fetch_chunk)

    def folder(self) -> FolderService:
        svc = super().folder()
        svc.options = self.options
        return svc

    def fill(self) -> None:
        # UIDs 1-3 old, 4-5 new, 6 old (moved in later, keeps its date), 7 new.
        for n, when in enumerate((OLD, OLD, OLD, NEW, NEW, OLD, NEW), start=1):
            self.mailbox.append(mail(n), internaldate=when)

    def published(self) -> list[int]:
        return sorted(row["uid"] for row in self.store.ledger_rows(*self.provider.key)
                      if row["outcome"] == "published")


class BackfillTests(SynchronousTestCase):
    # The fake world's helpers, without its tests.
    setUp = base.FolderOnFakeTests.setUp
    folder = base.FolderOnFakeTests.folder
    _stop = base.FolderOnFakeTests._stop

    def bworld(self, **kwargs: int) -> BackfillWorld:
        world = BackfillWorld(**kwargs)
        self.addCleanup(self._stop, world)
        return world

    def test_first_sync_by_date(self) -> None:
        world = self.bworld()
        world.fill()
        svc = self.folder(world)
        session = world.start(svc)
        self.assertIn("UID SEARCH", session.commands)
        # The window would have taken UIDs 3-7; by date it is 4, 5 and 7.
        self.assertEqual(world.recorded_uids(), [4, 5, 7])
        self.assertEqual(world.cursor().last_uid, "7")
        # New mail after the first sync is taken whatever its date.
        world.mailbox.append(mail(8), internaldate=OLD)
        self.assertEqual(world.recorded_uids(), [4, 5, 7, 8])

    def test_nothing_recent_still_stores_the_cursor(self) -> None:
        world = self.bworld()
        for n in (1, 2):
            world.mailbox.append(mail(n), internaldate=OLD)
        world.start(self.folder(world))
        self.assertEqual(world.recorded_uids(), [])
        # Not '0' (a rescan): UIDNEXT - 1.
        self.assertEqual(world.cursor().last_uid, "2")

    def test_provider_value_wins_over_the_environment(self) -> None:
        world = self.bworld(days=0)
        world.fill()
        tenant, pid = world.provider.key
        self.successResultOf(world.store.set_first_sync_since_days(tenant, pid, 10))
        world.start(self.folder(world))
        self.assertEqual(world.recorded_uids(), [4, 5, 7])

    def test_provider_zero_turns_it_off(self) -> None:
        world = self.bworld(days=10)
        world.fill()
        tenant, pid = world.provider.key
        self.successResultOf(world.store.set_first_sync_since_days(tenant, pid, 0))
        world.start(self.folder(world))
        self.assertEqual(world.recorded_uids(), [3, 4, 5, 6, 7])  # the recent window (5)

    def test_cursor_held_until_the_last_chunk(self) -> None:
        world = self.bworld(fetch_chunk=1)
        world.fill()
        world.mailbox.fail_fetch(7, "SERVERBUG", "cannot fetch 7")
        svc = self.folder(world)
        world.start(svc)
        self.assertEqual(world.recorded_uids(), [4, 5])
        # Not moved past 5: a restart would otherwise resume at 6 and take
        # the old UID 6 the date window left out.
        self.assertIsNone(world.cursor())
        world.mailbox.heal_fetch()
        world.reactor.advance(120)
        world.connect(svc)
        self.assertEqual(world.recorded_uids(), [4, 5, 7])
        self.assertEqual(world.published(), [4, 5, 7])
        self.assertEqual(len(world.store.outbox_rows()), 3)
        self.assertEqual(world.cursor().last_uid, "7")

    def test_resync_since_publishes_only_what_is_new(self) -> None:
        world = self.bworld()
        world.fill()
        svc = self.folder(world)
        world.start(svc)
        self.assertEqual(world.recorded_uids(), [4, 5, 7])
        tenant, pid = world.provider.key
        folders = self.successResultOf(
            world.store.request_backfill(tenant, pid, None, date(2025, 11, 1)))
        self.assertEqual(folders, ["INBOX"])
        svc.wake()
        self.assertEqual(world.published(), [1, 2, 3, 4, 5, 6, 7])
        # Seven events, each once: 4, 5 and 7 were not published again.
        self.assertEqual(len(world.store.outbox_rows()), 7)
        self.assertEqual(world.cursor().last_uid, "7")
        state = self.successResultOf(world.store.read_backfill(tenant, pid, ["INBOX"]))
        self.assertIsNone(state.pending_since)
        # Done: the next sync reads nothing again.
        del world.mailbox.fetched[:]
        svc.wake()
        self.assertEqual(world.mailbox.fetched, [])

    def test_resync_since_keeps_what_arrived_above_the_cursor(self) -> None:
        world = self.bworld()
        world.fill()
        svc = self.folder(world)
        world.start(svc)
        self.successResultOf(svc.stopService())
        # Arrives unwatched, with an old date: the resume takes it anyway.
        world.mailbox.append(mail(8), internaldate=OLD)
        tenant, pid = world.provider.key
        self.successResultOf(world.store.request_backfill(tenant, pid, "INBOX", date(2026, 1, 1)))
        world.start(self.folder(world))
        self.assertEqual(world.recorded_uids(), [4, 5, 7, 8])
        self.assertEqual(world.cursor().last_uid, "8")

