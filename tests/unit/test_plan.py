"""Tests for :mod:`imapsvc.core.plan`."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core import plan as P
from imapsvc.model import BodyPart, Limits

LIMITS = Limits(max_raw_mime_bytes=1000, max_text_part_bytes=100)


def part(section, ctype="text/plain", size=10, body=True):
    return BodyPart(section, ctype, {}, "7bit", size, size, is_body_text=body)


def parser_returning(parts):
    return lambda struct: parts


META = {
    "size": 500,
    "internaldate": "17-Jul-1996 02:44:25 -0700",
    "bodystructure": ["x"],
    "header": b"Subject: hi\r\n\r\n",
}


class ChunkTests(SynchronousTestCase):
    def test_by_count(self):
        self.assertEqual(P.chunk_by_count([1, 2, 3, 4, 5], 2), [[1, 2], [3, 4], [5]])
        self.assertEqual(P.chunk_by_count([], 2), [])

    def test_by_bytes(self):
        items = [(1, 40), (2, 40), (3, 40), (4, 500), (5, 1)]
        self.assertEqual(P.chunk_by_bytes(items, 10, 100), [[1, 2], [3], [4], [5]])

    def test_by_bytes_count_cap(self):
        self.assertEqual(P.chunk_by_bytes([(i, 0) for i in range(5)], 2, 10), [[0, 1], [2, 3], [4]])

    @given(st.lists(st.integers(0, 300), max_size=60), st.integers(1, 10), st.integers(1, 500))
    def test_by_bytes_properties(self, costs, n, budget):
        items = list(enumerate(costs))
        groups = P.chunk_by_bytes(items, n, budget)
        self.assertEqual([u for g in groups for u in g], [u for u, _ in items])
        for g in groups:
            self.assertLessEqual(len(g), n)
            if len(g) > 1:
                self.assertLessEqual(sum(costs[u] for u in g), budget)


class PlanTests(SynchronousTestCase):
    def test_structure_path_fetches_only_text_parts(self):
        parts = [part("1"), part("2", "text/html", 50), part("3", "application/pdf", 900, False)]
        p = P.plan_message(7, META, LIMITS, parser=parser_returning(parts))
        self.assertEqual(p.kind, P.KIND_STRUCTURE)
        self.assertEqual(p.sections, (("1", None), ("2", None)))
        self.assertEqual(p.expected_bytes, 60)
        self.assertEqual(p.truncated, ())

    def test_big_text_part_is_partial(self):
        p = P.plan_message(7, META, LIMITS, parser=parser_returning([part("1", size=101)]))
        self.assertEqual(p.sections, (("1", 100),))
        self.assertEqual(p.truncated, ("1",))
        self.assertEqual(p.expected_bytes, 100)

    def test_part_exactly_at_cap_is_whole(self):
        p = P.plan_message(7, META, LIMITS, parser=parser_returning([part("1", size=100)]))
        self.assertEqual(p.sections, (("1", None),))

    def test_structure_path_even_above_raw_cap(self):
        meta = dict(META, size=5000)
        parts = [part("1"), part("2", "application/zip", 4900, False)]
        p = P.plan_message(7, meta, LIMITS, parser=parser_returning(parts))
        self.assertEqual(p.kind, P.KIND_STRUCTURE)
        self.assertEqual(p.expected_bytes, 10)

    def test_unusable_structure_falls_back(self):
        p = P.plan_message(7, META, LIMITS, parser=parser_returning(None))
        self.assertEqual((p.kind, p.expected_bytes), (P.KIND_FULL, 500))

    def test_parser_crash_falls_back(self):
        def boom(_):
            raise RuntimeError("bug")

        self.assertEqual(P.plan_message(7, META, LIMITS, parser=boom).kind, P.KIND_FULL)

    def test_missing_structure_or_parser_falls_back(self):
        self.assertEqual(
            P.plan_message(
                7, dict(META, bodystructure=None), LIMITS, parser=parser_returning([part("1")])
            ).kind,
            P.KIND_FULL,
        )
        self.assertEqual(P.plan_message(7, META, LIMITS, parser=None).kind, P.KIND_FULL)

    def test_broken_host_falls_back(self):
        p = P.plan_message(
            7, META, LIMITS, trust_structure=False, parser=parser_returning([part("1")])
        )
        self.assertEqual(p.kind, P.KIND_FULL)

    def test_fallback_above_raw_cap_downloads_nothing(self):
        p = P.plan_message(7, dict(META, size=1001), LIMITS, parser=parser_returning(None))
        self.assertEqual((p.kind, p.expected_bytes), (P.KIND_HEADER_ONLY, 0))
        self.assertIn(P.REASON_RAW_TOO_LARGE, p.reason)

    def test_fallback_at_raw_cap_downloads(self):
        p = P.plan_message(7, dict(META, size=1000), LIMITS, parser=None)
        self.assertEqual(p.kind, P.KIND_FULL)

    @given(
        st.integers(0, 5000), st.lists(st.tuples(st.integers(0, 400), st.booleans()), max_size=8)
    )
    def test_never_plans_more_than_caps(self, size, spec):
        parts = [part(str(i + 1), size=s, body=b) for i, (s, b) in enumerate(spec)]
        p = P.plan_message(1, dict(META, size=size), LIMITS, parser=parser_returning(parts))
        for _, partial in p.sections:
            self.assertTrue(partial is None or partial == LIMITS.max_text_part_bytes)
        self.assertLessEqual(p.expected_bytes, LIMITS.max_text_part_bytes * len(parts))
        self.assertEqual(
            {s for s, _ in p.sections}, {pt.section for pt in parts if pt.is_body_text}
        )


class HostTests(SynchronousTestCase):
    def test_match(self):
        hosts = ["Imap.Example.com", "broken.org."]
        self.assertTrue(P.host_has_broken_bodystructure("imap.example.com", hosts))
        self.assertTrue(P.host_has_broken_bodystructure("a.broken.org", hosts))
        self.assertFalse(P.host_has_broken_bodystructure("notbroken.org", hosts))
        self.assertFalse(P.host_has_broken_bodystructure("x.com", []))


class BuildTests(SynchronousTestCase):
    def test_internaldate(self):
        self.assertEqual(
            P.internaldate_to_iso("17-Jul-1996 02:44:25 -0700"), "1996-07-17T09:44:25.000Z"
        )
        self.assertEqual(
            P.internaldate_to_iso(" 1-Jan-2026 00:30:00 +0100"), "2025-12-31T23:30:00.000Z"
        )
        for bad in [None, "", "32-Jan-2026 00:00:00 +0000", "1-Foo-2026 00:00:00 +0000", "x"]:
            self.assertIsNone(P.internaldate_to_iso(bad))

    def test_structure_message(self):
        parts = [part("1"), part("2", size=101)]
        p = P.plan_message(9, META, LIMITS, parser=parser_returning(parts))
        m = P.build_message(p, META, "INBOX", "7", {"1": b"a", "2": b"b" * 100, "9": b"x"})
        self.assertEqual((m.mailbox, m.uid_validity, m.uid, m.size), ("INBOX", "7", 9, 500))
        self.assertEqual(m.internal_date, "1996-07-17T09:44:25.000Z")
        self.assertEqual(m.header, META["header"])
        self.assertEqual(dict(m.texts), {"1": b"a", "2": b"b" * 100})
        self.assertEqual(tuple(m.truncated), ("2",))
        self.assertIsNone(m.raw)

    def test_full_message(self):
        p = P.plan_message(9, META, LIMITS, parser=None)
        m = P.build_message(p, META, "INBOX", "7", raw=b"raw")
        self.assertEqual((m.raw, tuple(m.parts)), (b"raw", ()))

    def test_header_only_message(self):
        meta = dict(META, size=2000)
        p = P.plan_message(9, meta, LIMITS, parser=None)
        m = P.build_message(p, meta, "INBOX", "7")
        self.assertIsNone(m.raw)
        self.assertEqual(tuple(m.truncated), (P.TEXT_NOT_DOWNLOADED,))
        self.assertEqual(m.header, META["header"])
