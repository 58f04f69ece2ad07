"""Hostile server bytes: every parser on the IMAP path stays linear and
bounded (issue 11, item 1).

Timing assertions are deliberately loose: each hostile input is sized so the
old quadratic code would take minutes to hours (1 MB of ``[`` ~ 30 min;
8,000 LIST entries with distinct delimiters ~ 8 min) while the linear code
takes well under a second; the bound sits far between the two. Where a
structural guarantee exists it is asserted directly (the number of regex
matches, the nesting depth, the memory of a SEARCH answer).
"""

from __future__ import annotations

import time
import tracemalloc
from array import array

from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core import plan as P
from imapsvc.core.bodystructure import parse_bodystructure
from imapsvc.core.folders import resolve_folders
from imapsvc.imap import responses
from imapsvc.imap.responses import ResponseParseError
from imapsvc.model import Limits
from tests.unit.test_imap_protocol import ClientTestCase, sent

MB = 1_000_000
#: Far above what linear code needs on a loaded 2-core machine, far below
#: what quadratic code needs for the same input.
GENEROUS_S = 5.0


def elapsed(fn, *args):
    start = time.perf_counter()
    try:
        fn(*args)
    except ResponseParseError:
        pass
    return time.perf_counter() - start


class TokenizerTests(SynchronousTestCase):
    def test_error_branch_swallows_the_rest_of_the_segment(self):
        # Structural: after the first unclosed "[" there is nothing left to
        # scan, so no position is scanned to the end of the line twice.
        self.assertEqual(len(responses._TOKEN.findall(b"[" * 1000)), 1)
        self.assertEqual(len(responses._TOKEN.findall(b"a[" * 1000)), 2)

    def test_one_megabyte_hostile_lines(self):
        for unit in (b"[", b"a[", b"BODY[", b'"', b"(", b"()", b"x ", b"{1}"):
            line = b"(" + unit * (MB // len(unit)) + b")"
            self.assertLess(elapsed(responses.tokenize, [line]), GENEROUS_S, unit)

    def test_growth_is_linear_not_quadratic(self):
        # 4x the input must cost well under 16x (quadratic); allow 10x.
        def cost(n):
            return min(elapsed(responses.tokenize, [b"(" + b"[" * n + b")"]) for _ in range(3))

        small, big = cost(50_000), cost(200_000)
        self.assertLess(big, max(small, 1e-4) * 10 + 0.05)

    def test_unclosed_bracket_still_rejected(self):
        with self.assertRaisesRegex(ResponseParseError, "unexpected byte"):
            responses.tokenize([b"(" + b"[" * 100 + b")"])
        with self.assertRaisesRegex(ResponseParseError, "unterminated"):
            responses.tokenize([b'(UID 1 "abc)'])

    def test_nesting_is_bounded(self):
        deep = b"(" * 3000 + b")" * 3000
        with self.assertRaisesRegex(ResponseParseError, "nesting"):
            responses.tokenize([deep])
        ok = b"(" * responses.MAX_NESTING + b")" * responses.MAX_NESTING
        self.assertEqual(len(responses.tokenize([ok])), 1)

    def test_token_count_is_bounded(self):
        with self.assertRaisesRegex(ResponseParseError, "tokens"):
            responses.tokenize([b"(" + b"() " * (responses.MAX_TOKENS + 1) + b")"])

    def test_salvage_is_linear(self):
        for unit in (b"BODY[", b'INTERNALDATE "', b"UID ", b"RFC822.SIZE \t"):
            text = unit * (MB // len(unit)) + b" BODY[TEXT] {3}"
            start = time.perf_counter()
            out = responses.salvage_fetch([text, b")"], [b"abc"])
            self.assertLess(time.perf_counter() - start, GENEROUS_S, unit)
            self.assertEqual(out.get("BODY[TEXT]"), b"abc")


class SearchMemoryTests(SynchronousTestCase):
    def test_search_of_four_mib_costs_about_its_size(self):
        line = b" ".join(b"%d" % (1_000_000 + i) for i in range(500_000))
        self.assertGreater(len(line), 3_900_000)
        tracemalloc.start()
        try:
            numbers = responses.parse_search(line)
            uids = responses.sorted_unique_from(numbers, 1_000_010)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertIsInstance(uids, array)
        self.assertEqual(len(uids), 500_000 - 10)
        # Was ~8x the line (a list of bytes, then of ints, then a set).
        self.assertLess(peak, 3 * len(line))

    def test_unsorted_and_repeated_answers(self):
        numbers = responses.parse_search(b"9 3 3 7 (MODSEQ 12) 1")
        self.assertEqual(list(numbers), [9, 3, 3, 7, 1])
        self.assertEqual(list(responses.sorted_unique_from(numbers, 3)), [3, 7, 9])

    def test_numbers_beyond_64_bits_rejected(self):
        self.assertRaises(ResponseParseError, responses.parse_search, b"1 " + b"9" * 20)


class FolderMatchingTests(SynchronousTestCase):
    def test_many_delimiters_linear(self):
        # 2,000 entries used to take 32 s; 8,000 would take ~8 min.
        listing = [((), chr(0x100 + i), f"Folder{i}") for i in range(8000)]
        listing.append(((), "/", "Team/Support"))
        start = time.perf_counter()
        res = resolve_folders(["Team/Support", "INBOX", "nope/x"], listing)
        self.assertLess(time.perf_counter() - start, GENEROUS_S)
        self.assertEqual(res.matched, (("Team/Support", "Team/Support"),))

    def test_slash_matches_the_entrys_own_delimiter(self):
        listing = [((), ".", "INBOX"), ((), ".", "Team.Support")]
        res = resolve_folders(["Team/Support"], listing)
        self.assertEqual(res.matched, (("Team/Support", "Team.Support"),))


def nested_structure(depth: int) -> bytes:
    leaf = b'("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 5 1 NIL NIL NIL)'
    return b"(" * depth + leaf + b' "mixed")' * depth


class DeepBodystructureTests(ClientTestCase):
    def test_three_thousand_deep_falls_back_to_the_whole_message(self):
        header = b"From: a@example.com\r\n\r\n"
        client, transport, clock = self.connect()
        d = client.fetch_meta([7])
        sent(transport)
        client.dataReceived(
            b'* 1 FETCH (UID 7 RFC822.SIZE 500 INTERNALDATE "10-Jan-2026 12:00:00 +0000" '
            b"BODYSTRUCTURE "
            + nested_structure(3000)
            + b" BODY[HEADER] {%d}\r\n" % len(header)
            + header
            + b")\r\n0001 OK done\r\n"
        )
        meta = self.successResultOf(d)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(meta[7]["size"], 500)
        self.assertEqual(meta[7]["header"], header)
        self.assertIsNone(meta[7]["bodystructure"])
        plan = P.plan_message(7, meta[7], Limits(), True, parse_bodystructure)
        self.assertEqual(plan.kind, P.KIND_FULL)
        # ... and that path keeps its cap: too big is not downloaded.
        big = dict(meta[7], size=Limits().max_raw_mime_bytes + 1)
        self.assertEqual(
            P.plan_message(7, big, Limits(), True, parse_bodystructure).kind, P.KIND_HEADER_ONLY
        )

    def test_moderately_deep_structure_still_parsed(self):
        client, transport, clock = self.connect()
        d = client.fetch_meta([7])
        sent(transport)
        client.dataReceived(
            b"* 1 FETCH (UID 7 RFC822.SIZE 500 BODYSTRUCTURE "
            + nested_structure(20)
            + b' BODY[HEADER] "")\r\n0001 OK done\r\n'
        )
        meta = self.successResultOf(d)
        parts = parse_bodystructure(meta[7]["bodystructure"])
        self.assertIsNotNone(parts)
        self.assertEqual(parts[0].section, ".".join(["1"] * 20))


class DeepMimeTests(SynchronousTestCase):
    def test_whole_message_path_survives_three_thousand_nested_multiparts(self):
        # Where a too-deep BODYSTRUCTURE sends a message: it must map (or be
        # skipped with a reason), never raise out of the pipeline.
        from datetime import UTC, datetime

        from imapsvc.core.email_data import map_message
        from imapsvc.model import FetchedMessage

        body = b"".join(
            b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
            for i in range(3000)
        ) + b"Content-Type: text/plain\r\n\r\nhello\r\n" + b"".join(
            b"--b%d--\r\n" % i for i in reversed(range(3000))
        )
        raw = b"From: a@example.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n" + body
        msg = FetchedMessage("INBOX", "7", 1, len(raw), None, raw=raw)
        start = time.perf_counter()
        mapped = map_message(msg, "t", "p", datetime.now(UTC), Limits())
        self.assertLess(time.perf_counter() - start, GENEROUS_S)
        self.assertEqual(mapped.dedupe_key, "imap:INBOX:7:1")


class TokenBudgetTests(ClientTestCase):
    def test_tokens_per_command_are_bounded(self):
        client, transport, clock = self.connect()
        client.max_command_tokens = 50_000
        d = client.fetch_meta([1, 2, 3])
        sent(transport)
        empty_lists = b"()" * 20_000  # 20,000 tokens (lists; a ")" builds nothing)
        for seq in (1, 2, 3):
            client.dataReceived(
                b"* %d FETCH (UID %d RFC822.SIZE 10 BODYSTRUCTURE (\"text\" \"plain\" ("
                % (seq, seq) + empty_lists + b') NIL NIL "7bit" 5 1) BODY[HEADER] "")\r\n'
            )
        client.dataReceived(b"0001 OK done\r\n")
        meta = self.successResultOf(d)
        # The first two fit (2 x ~20,000 tokens); the third is salvaged: no
        # structure kept, so it takes the whole-message path.
        self.assertIsNotNone(meta[1]["bodystructure"])
        self.assertIsNotNone(meta[2]["bodystructure"])
        self.assertIsNone(meta[3]["bodystructure"])
        self.assertEqual(meta[3]["size"], 10)


class FetchRefusedTests(ClientTestCase):
    def test_no_on_fetch_counts_against_the_message(self):
        from imapsvc.core import poison
        from imapsvc.imap.errors import CommandFailed

        client, transport, clock = self.connect()
        d = client.fetch_meta([3])
        self.assertEqual(
            sent(transport),
            b"0001 UID FETCH 3 (UID RFC822.SIZE INTERNALDATE BODYSTRUCTURE BODY.PEEK[HEADER])\r\n",
        )
        client.dataReceived(b"0001 NO [UNAVAILABLE] message unreadable\r\n")
        failure = self.failureResultOf(d, CommandFailed)
        self.assertTrue(poison.counts_against_message(failure.value))
        self.assertTrue(transport.disconnecting)


# -- the old (quadratic) matcher as the reference for one-delimiter listings --
# Copied from imapsvc/core/folders.py before issue 11: on a listing whose
# entries share one delimiter the linear matcher must agree with it exactly.
from typing import Iterable, Optional, Sequence  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from imapsvc.core.folders import (  # noqa: E402
    ListEntry,
    Resolution,
    _candidates,
    _norm_inbox,
    display_name,
)


def _reference_resolve(
    filters: Sequence[str], listing: Iterable[tuple[Sequence[str], Optional[str], str]]
) -> Resolution:
    """Match configured folder paths against a LIST result.

    An empty ``filters`` means ``INBOX``. Matching prefers an exact match of
    the decoded name, then a case-insensitive one (the server's spelling is
    returned either way); ``/`` in a filter also matches the server's
    hierarchy delimiter. ``\\Noselect``/``\\NonExistent`` folders never match.
    """
    entries = [ListEntry(tuple(f), d, n) for f, d, n in listing]
    wanted = list(filters) or ["INBOX"]
    matched: list[tuple[str, str]] = []
    missing: list[tuple[str, str]] = []
    used: set[str] = set()

    def names_for(entry: ListEntry) -> list[str]:
        decoded = display_name(entry.name)
        return [_norm_inbox(decoded, entry.delimiter), _norm_inbox(entry.name, entry.delimiter)]

    for flt in wanted:
        forms: list[str] = []
        typed = [flt] + ([flt.strip()] if flt.strip() != flt else [])
        for form in [c for t in typed for c in _candidates(t)]:
            forms.append(form)
            for entry in entries:
                if entry.delimiter and entry.delimiter != "/" and "/" in form:
                    forms.append(form.replace("/", entry.delimiter))
        forms = list(dict.fromkeys(_norm_inbox(f, "/") for f in forms)) + list(dict.fromkeys(forms))
        hit: Optional[ListEntry] = None
        unselectable = False
        for exact in (True, False):
            for entry in entries:
                keys = names_for(entry)
                for form in forms:
                    if exact:
                        ok = any(k == _norm_inbox(form, entry.delimiter) for k in keys)
                    else:
                        ok = any(
                            k.casefold() == _norm_inbox(form, entry.delimiter).casefold()
                            for k in keys
                        )
                    if ok:
                        if entry.selectable:
                            hit = entry
                        else:
                            unselectable = True
                        break
                if hit is not None:
                    break
            if hit is not None:
                break
        if hit is None:
            missing.append((flt, "not selectable" if unselectable else "no such folder"))
        elif hit.name not in used:
            used.add(hit.name)
            matched.append((flt, hit.name))
    return Resolution(tuple(matched), tuple(missing))


_NAME = st.text(alphabet="abAB/.&-_ \u00e9", min_size=1, max_size=8)


class FolderMatchingPropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        delimiter=st.sampled_from(["/", ".", None]),
        names=st.lists(_NAME, max_size=8),
        flags=st.lists(st.sampled_from([(), ("\\Noselect",), ("\\HasChildren",)]),
                       min_size=8, max_size=8),
        filters=st.lists(st.one_of(_NAME, st.sampled_from(["INBOX", "inbox", "a/b"])),
                         max_size=4),
    )
    def test_same_result_as_the_reference_on_one_delimiter(self, delimiter, names, flags,
                                                           filters):
        listing = [(flags[i], delimiter, n) for i, n in enumerate(names)]
        self.assertEqual(resolve_folders(filters, listing),
                         _reference_resolve(filters, listing))


class TokenizerRunsPropertyTests(SynchronousTestCase):
    """STACK.md: fuzz with long runs of one byte. 60,000 of one unit took
    seconds with the quadratic tokenizer (``[``: ~5 s); linear: milliseconds."""

    @settings(max_examples=40, deadline=None)
    @given(
        unit=st.binary(min_size=1, max_size=3),
        prefix=st.sampled_from([b"", b"(", b"* 1 FETCH (", b"BODY[", b'"']),
    )
    def test_long_runs_stay_fast(self, unit, prefix):
        line = prefix + unit * (60_000 // len(unit))
        self.assertLess(elapsed(responses.tokenize, [line]), 1.5)
        start = time.perf_counter()
        responses.salvage_fetch([line + b" BODY[1] {1}", b")"], [b"x"])
        responses.parse_status(line)
        try:
            responses.literal_size(line)
        except ResponseParseError:
            pass  # e.g. "{" + 60,000 digits + "}": refused, quickly
        self.assertLess(time.perf_counter() - start, 1.5)


class TokenMemoryTests(SynchronousTestCase):
    def test_long_flat_line_stops_at_the_token_cap(self):
        # 8 MB of "x ": four million atoms if nothing stopped it (~250 MB).
        line = b"x " * 4_000_000
        tracemalloc.start()
        try:
            with self.assertRaisesRegex(ResponseParseError, "tokens"):
                responses.tokenize([line])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 30_000_000)


class SearchSliceTests(SynchronousTestCase):
    def test_slices_agree_with_one_pass(self):
        from imapsvc.imap import responses as R

        numbers = list(range(1, 120_000, 3))
        text = b" ".join(b"%d" % n for n in numbers)
        # A MODSEQ suffix cut by a slice boundary is still skipped.
        cut = R._SEARCH_SLICE - 4
        text2 = text[:cut].rsplit(b" ", 1)[0] + b" (MODSEQ 917162500) 5"
        self.assertEqual(list(R.parse_search(text)), numbers)
        self.assertEqual(list(R.parse_search(text2))[-1], 5)
        old = R._SEARCH_SLICE
        try:
            for size in (7, 8, 9, 64):
                R._SEARCH_SLICE = size
                self.assertEqual(list(R.parse_search(b"1 22 (MODSEQ 333) 4444 55555")),
                                 [1, 22, 4444, 55555])
                self.assertEqual(list(R.parse_search(text[:5000])),
                                 [int(w) for w in text[:5000].split()])
        finally:
            R._SEARCH_SLICE = old

    def test_four_mib_search_is_quick(self):
        line = b" ".join(b"%d" % (1_000_000 + i) for i in range(500_000))
        start = time.perf_counter()
        self.assertEqual(len(responses.parse_search(line)), 500_000)
        # Was 1.8 s on the reactor thread; the C-level slices take ~0.1 s.
        self.assertLess(time.perf_counter() - start, 1.5)
