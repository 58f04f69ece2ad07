"""The single-regex tokenizer of :mod:`imapsvc.imap.responses` and the tab
fast path of :func:`imapsvc.core.headers.decode_value` (performance changes
that must not change results)."""

from __future__ import annotations

from twisted.trial import unittest

from imapsvc.core.headers import decode_value
from imapsvc.imap.responses import ResponseParseError, tokenize

BODYSTRUCTURE = (
    b'(UID 7 RFC822.SIZE 10452 INTERNALDATE "03-Mar-2025 07:32:37 +0000" BODYSTRUCTURE '
    b'(("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 3731 61 NIL NIL NIL NIL)'
    b'("text" "html" ("charset" "utf-8") NIL NIL "quoted-printable" 5426 91 NIL NIL NIL NIL)'
    b' "alternative" ("boundary" "b1") NIL NIL NIL) BODY[HEADER] {5}'
)


class TokenizeTests(unittest.TestCase):
    def test_fetch_with_bodystructure_and_literal(self) -> None:
        tokens = tokenize([BODYSTRUCTURE, b")"], [b"H: v\r"])
        self.assertEqual(len(tokens), 1)
        items = tokens[0]
        self.assertEqual(items[:4], ["UID", "7", "RFC822.SIZE", "10452"])
        self.assertEqual(items[5], b"03-Mar-2025 07:32:37 +0000")
        structure = items[7]
        self.assertEqual(structure[0][:2], [b"text", b"plain"])
        self.assertEqual(structure[0][2], [b"charset", b"utf-8"])
        self.assertEqual(structure[0][3:5], [None, None])
        self.assertEqual(structure[2], b"alternative")
        self.assertEqual(items[8:], ["BODY[HEADER]", b"H: v\r"])

    def test_atoms_quoted_nil(self) -> None:
        self.assertEqual(
            tokenize([b'\t a  "b\\"c\\\\" "" NIL nil Nil NILS a]b BODY[HEADER.FIELDS (TO)]<0>']),
            ["a", b'b"c\\', b"", None, None, None, "NILS", "a]b", "BODY[HEADER.FIELDS (TO)]<0>"],
        )

    def test_quoted_keeps_newlines_and_8bit(self) -> None:
        self.assertEqual(tokenize([b'"a\nb" \xff']), [b"a\nb", "\xff"])

    def test_literal_plus_and_text_after(self) -> None:
        self.assertEqual(tokenize([b"(x {3+}", b" y)"], [b"abc"]), [["x", b"abc", "y"]])

    def test_errors(self) -> None:
        bad = [
            ([b'"unterminated'], []),
            ([b"{3} x", b""], [b"abc"]),  # marker not at the end
            ([b"{4}", b""], [b"abc"]),  # size mismatch
            ([b"{3}"], []),  # no literal for it
            ([b"(a"], []),
            ([b"a)"], []),
            ([b"BODY[abc"], []),
            ([b"a\rb"], []),
            ([b"{x}"], []),
            ([b"a", b"b"], []),  # segments and literals do not pair up
        ]
        for texts, literals in bad:
            with self.assertRaises(ResponseParseError, msg=repr(texts)):
                tokenize(texts, literals)


class DecodeValueTests(unittest.TestCase):
    def test_tabs_kept_other_controls_replaced(self) -> None:
        self.assertEqual(decode_value("a=1;\tb=2"), "a=1;\tb=2")
        self.assertEqual(decode_value("a\x01b\tc"), "a b\tc")
