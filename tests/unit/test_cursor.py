"""Tests for :mod:`imapsvc.core.cursor` (CONTRACT section 1 cursor rules)."""

from datetime import UTC, datetime, timezone

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core import cursor as C
from imapsvc.model import FolderCursor

NOW = datetime(2026, 1, 10, 12, 0, 0, 123456, tzinfo=UTC)


class ComputeStartTests(SynchronousTestCase):
    def test_resume_after_last_uid(self):
        plan = C.compute_start(FolderCursor("7", "4242", None), 7, 5000, 5)
        self.assertEqual(
            (plan.first_uid, plan.last_uid, plan.reason), (4243, 4242, C.REASON_RESUME)
        )
        self.assertEqual(plan.cursor, FolderCursor("7", "4242", None))
        self.assertIsNone(plan.keep_last)

    def test_zero_rescans_from_one(self):
        plan = C.compute_start(FolderCursor("7", "0", None), 7, 5000, 5)
        self.assertEqual((plan.first_uid, plan.last_uid, plan.reason), (1, 0, C.REASON_RESCAN))

    def test_zero_rescans_even_with_other_uidvalidity(self):
        plan = C.compute_start(FolderCursor("6", "0", None), 7, 5000, 5)
        self.assertEqual(plan.first_uid, 1)
        self.assertEqual(plan.cursor.uid_validity, "7")

    def test_absent_starts_in_recent_window(self):
        plan = C.compute_start(None, 7, 100, 5)
        self.assertEqual((plan.first_uid, plan.last_uid, plan.reason), (95, 94, C.REASON_NO_CURSOR))
        self.assertEqual(plan.cursor, FolderCursor("7", "94", None))

    def test_window_never_below_one(self):
        self.assertEqual(C.compute_start(None, 7, 3, 5).first_uid, 1)
        self.assertEqual(C.compute_start(None, 7, 1, 5).first_uid, 1)

    def test_empty_cursor_is_absent(self):
        plan = C.compute_start(FolderCursor(), 7, 100, 5)
        self.assertEqual(plan.first_uid, 95)

    def test_uidvalidity_change_resets_to_window(self):
        plan = C.compute_start(FolderCursor("6", "4242", "x"), 7, 100, 5)
        self.assertEqual(plan.reason, C.REASON_UIDVALIDITY_CHANGED)
        self.assertEqual(plan.first_uid, 95)
        self.assertEqual(plan.cursor.uid_validity, "7")
        self.assertIn("6", plan.detail)

    def test_garbage_last_uid_is_absent(self):
        for bad in ["abc", "-1", "1e3", "0x10", "", " ", "١٢"]:
            plan = C.compute_start(FolderCursor("7", bad, None), 7, 100, 5)
            self.assertEqual((plan.first_uid, plan.reason), (95, C.REASON_GARBAGE), bad)
            self.assertIn(repr(bad), plan.detail)

    def test_garbage_uidvalidity_is_absent(self):
        plan = C.compute_start(FolderCursor("nope", "50", None), 7, 100, 5)
        self.assertEqual((plan.first_uid, plan.reason), (95, C.REASON_GARBAGE))

    def test_uid_without_uidvalidity_resumes(self):
        plan = C.compute_start(FolderCursor(None, "50", None), 7, 100, 5)
        self.assertEqual((plan.first_uid, plan.reason), (51, C.REASON_RESUME))

    def test_validity_without_uid_is_window(self):
        plan = C.compute_start(FolderCursor("7", None, None), 7, 100, 5)
        self.assertEqual((plan.first_uid, plan.reason), (95, C.REASON_NO_CURSOR))

    def test_no_uidnext_keeps_last_window(self):
        plan = C.compute_start(None, 7, None, 5)
        self.assertEqual((plan.first_uid, plan.keep_last), (1, 5))

    def test_blank_padded_uid(self):
        self.assertEqual(C.compute_start(FolderCursor("7", " 12 ", None), 7, 100, 5).first_uid, 13)

    @given(
        st.one_of(st.none(), st.text(max_size=6), st.integers(0, 10**9).map(str)),
        st.one_of(st.none(), st.text(max_size=6), st.integers(0, 10**6).map(str)),
        st.integers(1, 2**32 - 1),
        st.one_of(st.none(), st.integers(0, 2**32)),
        st.integers(1, 500),
    )
    def test_never_crashes_and_is_consistent(self, validity, last, server_v, uidnext, window):
        plan = C.compute_start(FolderCursor(validity, last, None), server_v, uidnext, window)
        self.assertGreaterEqual(plan.first_uid, 1)
        self.assertEqual(plan.last_uid, plan.first_uid - 1)
        self.assertEqual(plan.cursor.uid_validity, str(server_v))
        self.assertEqual(plan.cursor.last_uid, str(plan.last_uid))
        n = C.parse_uid(last)
        if n is not None and n > 0 and (validity is None or C.parse_uid(validity) == server_v):
            self.assertEqual(plan.first_uid, n + 1)
        if n == 0:
            self.assertEqual(plan.first_uid, 1)


class AdvanceTests(SynchronousTestCase):
    def test_advance_sets_uid_and_time(self):
        cur = C.advance(FolderCursor("7", "10", None), 15, NOW)
        self.assertEqual(cur, FolderCursor("7", "15", "2026-01-10T12:00:00.123Z"))

    def test_advance_never_goes_back(self):
        self.assertEqual(C.advance(FolderCursor("7", "10", None), 3, NOW).last_uid, "10")

    def test_advance_from_garbage(self):
        self.assertEqual(C.advance(FolderCursor("7", "x", None), 3, NOW).last_uid, "3")

    def test_iso_z_from_seconds(self):
        self.assertEqual(C.iso_z(0), "1970-01-01T00:00:00.000Z")
        self.assertEqual(C.iso_z(1.5), "1970-01-01T00:00:01.500Z")

    def test_iso_z_converts_timezones_and_naive(self):
        from datetime import timedelta

        aware = datetime(2026, 1, 10, 14, 0, tzinfo=timezone(timedelta(hours=2)))
        self.assertEqual(C.iso_z(aware), "2026-01-10T12:00:00.000Z")
        self.assertEqual(C.iso_z(datetime(2026, 1, 10, 12, 0)), "2026-01-10T12:00:00.000Z")

    @given(st.integers(0, 10**6), st.integers(0, 10**6))
    def test_advance_is_max(self, a, b):
        cur = C.advance(FolderCursor("1", str(a), None), b, NOW)
        self.assertEqual(cur.last_uid, str(max(a, b)))
        self.assertTrue(cur.last_seen_at.endswith("Z"))


class SinceTests(SynchronousTestCase):
    """First sync by date (IMAP_FIRST_SYNC_SINCE_DAYS) and resync --since."""

    def test_first_sync_by_date_replaces_the_window(self):
        plan = C.compute_start(None, 7, 100, 5, first_sync_since=datetime(2026, 1, 1).date())
        self.assertEqual(plan.since, "1-Jan-2026")
        self.assertFalse(plan.search_range)
        self.assertTrue(plan.hold_cursor)
        self.assertEqual(plan.last_uid, 0)
        # After the pass the cursor stands on UIDNEXT - 1, never on '0' (rescan).
        self.assertEqual(plan.cursor, FolderCursor("7", "99", None))
        self.assertIsNone(plan.keep_last)

    def test_first_sync_by_date_on_uidvalidity_change(self):
        plan = C.compute_start(
            FolderCursor("6", "50", None), 7, 100, 5, first_sync_since=datetime(2026, 2, 3).date()
        )
        self.assertEqual((plan.reason, plan.since), (C.REASON_UIDVALIDITY_CHANGED, "3-Feb-2026"))
        self.assertEqual(plan.cursor.last_uid, "99")

    def test_first_sync_by_date_needs_uidnext(self):
        plan = C.compute_start(None, 7, None, 5, first_sync_since=datetime(2026, 1, 1).date())
        self.assertIsNone(plan.since)
        self.assertEqual(plan.keep_last, 5)

    def test_first_sync_date_ignored_with_a_cursor(self):
        plan = C.compute_start(
            FolderCursor("7", "42", None), 7, 100, 5, first_sync_since=datetime(2026, 1, 1).date()
        )
        self.assertEqual((plan.first_uid, plan.reason, plan.since), (43, C.REASON_RESUME, None))
        self.assertTrue(plan.search_range)
        self.assertFalse(plan.hold_cursor)

    def test_backfill_resumes_and_searches_since(self):
        plan = C.compute_start(
            FolderCursor("7", "42", None), 7, 100, 5, backfill_since=datetime(2025, 12, 24).date()
        )
        self.assertEqual((plan.first_uid, plan.last_uid), (43, 42))
        self.assertEqual(plan.since, "24-Dec-2025")
        self.assertTrue(plan.search_range)  # nothing above the cursor is left out
        self.assertFalse(plan.hold_cursor)
        self.assertEqual(plan.cursor, FolderCursor("7", "42", None))

    def test_backfill_without_cursor_wins_over_first_sync_days(self):
        plan = C.compute_start(
            None, 7, 100, 5,
            first_sync_since=datetime(2026, 1, 1).date(),
            backfill_since=datetime(2025, 6, 1).date(),
        )
        self.assertEqual(plan.since, "1-Jun-2025")
        self.assertFalse(plan.search_range)

    def test_imap_date_is_english_and_unpadded(self):
        self.assertEqual(C.imap_date(datetime(2026, 3, 9).date()), "9-Mar-2026")
        self.assertEqual(C.imap_date(datetime(2026, 12, 31).date()), "31-Dec-2026")

    def test_parse_since(self):
        self.assertEqual(C.parse_since("2026-01-05"), datetime(2026, 1, 5).date())
        self.assertEqual(C.parse_since("5-jan-2026"), datetime(2026, 1, 5).date())
        for bad in ("", "2026-13-01", "yesterday", "1-Foo-2026", "2026-02-30", "1 Jan 2026"):
            self.assertRaises(ValueError, C.parse_since, bad)

    def test_since_days_ago(self):
        self.assertEqual(C.since_days_ago(NOW, 10), datetime(2025, 12, 31).date())
        self.assertIsNone(C.since_days_ago(NOW, 0))
        self.assertIsNone(C.since_days_ago(NOW, None))
        self.assertEqual(C.since_days_ago(NOW.timestamp(), 1), datetime(2026, 1, 9).date())

    @given(st.dates(min_value=datetime(1970, 1, 1).date(), max_value=datetime(2200, 1, 1).date()))
    def test_imap_date_round_trips(self, day):
        self.assertEqual(C.parse_since(C.imap_date(day)), day)
