"""Tests for :mod:`imapsvc.core.folders`."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core.folders import (
    WILDCARD,
    decode_mutf7,
    display_name,
    encode_mutf7,
    expand_wildcard,
    folder_filters_from_json,
    folder_key,
    resolve_folder,
    resolve_folders,
    skipped_special_use,
    unique_folders,
)

LISTING = [
    (("\\HasNoChildren",), "/", "INBOX"),
    (("\\HasChildren",), "/", "Archive"),
    ((), "/", "Archive/2025"),
    ((), "/", "Entw&APw-rfe"),
    (("\\Noselect",), "/", "Shared"),
    (("\\NonExistent",), "/", "Ghost"),
    ((), "/", "Support"),
    ((), "/", "support"),
]


class MUTF7Tests(SynchronousTestCase):
    def test_rfc_example(self):
        self.assertEqual(
            encode_mutf7("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-",
        )
        self.assertEqual(decode_mutf7("~peter/mail/&U,BTFw-/&ZeVnLIqe-"), "~peter/mail/台北/日本語")

    def test_ampersand(self):
        self.assertEqual(encode_mutf7("A&B"), "A&-B")
        self.assertEqual(decode_mutf7("A&-B"), "A&B")

    def test_ascii_unchanged(self):
        self.assertEqual(encode_mutf7("INBOX.Sent Items"), "INBOX.Sent Items")

    def test_umlaut(self):
        self.assertEqual(encode_mutf7("Entwürfe"), "Entw&APw-rfe")

    def test_astral_plane(self):
        self.assertEqual(decode_mutf7(encode_mutf7("a\U0001f600b")), "a\U0001f600b")

    def test_no_slash_in_base64(self):
        # U+FFFF encodes with '/' in standard base64, ',' in modified UTF-7.
        self.assertNotIn("/", encode_mutf7("\uffff\uffff"))

    def test_invalid(self):
        for bad in ["&AB", "&A=-", "é", "&A/8-", "&AA-"]:
            self.assertRaises(ValueError, decode_mutf7, bad)
            self.assertEqual(display_name(bad), bad)

    @given(st.text())
    def test_roundtrip(self, s):
        enc = encode_mutf7(s)
        self.assertTrue(all(0x20 <= ord(c) <= 0x7E for c in enc))
        self.assertEqual(decode_mutf7(enc), s)


class ResolveTests(SynchronousTestCase):
    def test_empty_means_inbox(self):
        res = resolve_folders([], LISTING)
        self.assertEqual(res.matched, (("INBOX", "INBOX"),))
        self.assertEqual(res.missing, ())

    def test_inbox_any_case(self):
        self.assertEqual(resolve_folder("inbox", [((), ".", "INBOX")]), "INBOX")
        self.assertEqual(resolve_folder("INBOX", [((), ".", "Inbox")]), "Inbox")

    def test_case_insensitive_returns_server_spelling(self):
        self.assertEqual(resolve_folder("ARCHIVE", LISTING), "Archive")

    def test_exact_preferred_over_case_insensitive(self):
        self.assertEqual(resolve_folder("support", LISTING), "support")
        self.assertEqual(resolve_folder("Support", LISTING), "Support")

    def test_unicode_filter_matches_encoded_name(self):
        self.assertEqual(resolve_folder("Entwürfe", LISTING), "Entw&APw-rfe")
        self.assertEqual(resolve_folder("ENTWÜRFE", LISTING), "Entw&APw-rfe")
        self.assertEqual(resolve_folder("Entw&APw-rfe", LISTING), "Entw&APw-rfe")

    def test_slash_matches_other_delimiter(self):
        listing = [((), ".", "INBOX"), ((), ".", "INBOX.Tickets")]
        self.assertEqual(resolve_folder("INBOX/Tickets", listing), "INBOX.Tickets")
        self.assertEqual(resolve_folder("inbox.tickets", listing), "INBOX.Tickets")

    def test_unselectable_reported(self):
        res = resolve_folders(["Shared", "Ghost", "Nope", "Archive/2025"], LISTING)
        self.assertEqual(res.matched, (("Archive/2025", "Archive/2025"),))
        self.assertEqual(
            res.missing,
            (("Shared", "not selectable"), ("Ghost", "not selectable"), ("Nope", "no such folder")),
        )

    def test_duplicate_filters_collapse(self):
        res = resolve_folders(["INBOX", "inbox"], LISTING)
        self.assertEqual(res.matched, (("INBOX", "INBOX"),))

    def test_noselect_flag_case(self):
        self.assertIsNone(resolve_folder("x", [(("\\NOSELECT",), "/", "x")]))

    @given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6, unique=True))
    def test_every_listed_selectable_name_resolves_to_itself(self, names):
        listing = [((), "/", encode_mutf7(n)) for n in names]
        for n in names:
            got = resolve_folder(n, listing)
            self.assertIsNotNone(got)
            # Exact matches always win over case-insensitive ones.
            self.assertEqual(display_name(got), n) if n.upper() != "INBOX" else None


class ConfiguredFilterTests(SynchronousTestCase):
    """``folder_filters`` as a store reads it: one connection per folder."""

    def test_repeats_differing_in_case_blanks_or_encoding_collapse(self):
        self.assertEqual(
            unique_folders(["INBOX", "inbox", "Support", " support ", "Entw&APw-rfe",
                            "entwürfe", "Archive/2025", "INBOX"]),
            ("INBOX", "Support", "Entw&APw-rfe", "Archive/2025"),
        )

    def test_first_spelling_kept_and_blanks_dropped(self):
        self.assertEqual(unique_folders(["", "  ", "sent", "Sent"]), ("sent",))
        self.assertEqual(folder_key(" Sent "), folder_key("SENT"))
        self.assertNotEqual(folder_key("Sent"), folder_key("Sent/Old"))

    def test_from_json(self):
        self.assertEqual(folder_filters_from_json(None), ())
        self.assertEqual(folder_filters_from_json([]), ())
        self.assertEqual(folder_filters_from_json(["INBOX", "INBOX"]), ("INBOX",))
        self.assertEqual(folder_filters_from_json(["INBOX", None, ""]), ("INBOX",))

    def test_from_json_refuses_what_is_no_list_of_paths(self):
        for value, words in [
            ("INBOX", "not a string"),
            ({"INBOX": 1}, "not an object"),
            (7, "not a number"),
            (["INBOX", 3], "folder_filters[1] is a number"),
            ([["INBOX"]], "folder_filters[0] is an array"),
            (["IN\r\nBOX"], "folder_filters[0] contains a line break"),
            (["IN\x00BOX"], "NUL"),
        ]:
            with self.assertRaises(ValueError) as ctx:
                folder_filters_from_json(value)
            self.assertIn(words, str(ctx.exception), value)


SPECIAL = [
    ((), "/", "Support"),
    (("\\HasNoChildren", "\\Sent"), "/", "Sent"),
    (("\\Junk",), "/", "Junk"),
    (("\\TRASH",), "/", "Deleted Items"),  # attributes are case-insensitive
    (("\\Drafts",), "/", "Drafts"),
    (("\\All",), "/", "All Mail"),
    (("\\AllMail",), "/", "[Gmail]/All Mail"),  # XLIST
    (("\\Spam",), "/", "[Gmail]/Spam"),  # XLIST
    (("\\Flagged",), "/", "Flagged"),
    (("\\Noselect",), "/", "Shared"),
    (("\\Archive",), "/", "Archive"),
    (("\\HasNoChildren",), "/", "inbox"),
]


class SpecialUseTests(SynchronousTestCase):
    def test_skipped_attributes(self):
        self.assertEqual(skipped_special_use(["\\HasNoChildren", "\\Sent"]), "\\sent")
        self.assertIsNone(skipped_special_use(["\\HasNoChildren", "\\Archive"]))
        self.assertIsNone(skipped_special_use([]))

    def test_wildcard_picks_every_ordinary_folder_inbox_first(self):
        self.assertEqual(expand_wildcard([WILDCARD], SPECIAL), ("inbox", "Support", "Archive"))

    def test_explicit_filter_wins(self):
        # Named explicitly, Sent is watched; the wildcard adds the rest once.
        self.assertEqual(
            expand_wildcard(["Sent", "*", "support"], SPECIAL),
            ("Sent", "inbox", "Support", "Archive"),
        )
        self.assertEqual(resolve_folder("Sent", SPECIAL), "Sent")
        self.assertEqual(resolve_folder("Junk", SPECIAL), "Junk")

    def test_without_wildcard_nothing_changes(self):
        self.assertEqual(expand_wildcard(["INBOX", "Junk"], SPECIAL), ("INBOX", "Junk"))
        self.assertEqual(expand_wildcard([" * "], []), ())


class BackfillFoldersTests(SynchronousTestCase):
    def test_every_folder_means_cursors_and_filters_not_the_wildcard(self):
        from imapsvc.store import backfill_folders

        state = {"INBOX": {"last_uid": "3"}, "Billing": {"last_uid": "1"}}
        self.assertEqual(backfill_folders(None, state, ["*", "Sent", " "]),
                         ["INBOX", "Billing", "Sent"])
        self.assertEqual(backfill_folders(None, {}, []), ["INBOX"])
        self.assertEqual(backfill_folders(None, {}, ["*"]), ["INBOX"])
        self.assertEqual(backfill_folders("Sent", state, []), ["Sent"])
