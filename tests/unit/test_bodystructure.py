"""``parse_bodystructure``: real server output, odd servers, garbage."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.mail.imap4 import parseNestedParens
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core.bodystructure import (
    body_text_parts,
    decode_params,
    estimate_decoded_size,
    parse_bodystructure,
)
from tests.unit.test_structure_paths import structure_parts


def raw_parse(text: bytes):
    """The bytes-atom form ``parseNestedParens`` gives (no charmap step)."""
    return parseNestedParens(text)[0]


class DovecotStructures(SynchronousTestCase):
    def test_plain(self) -> None:
        (part,) = structure_parts("plain")
        self.assertEqual(part.section, "1")
        self.assertEqual(part.content_type, "text/plain")
        self.assertEqual(part.encoding, "quoted-printable")
        self.assertEqual((part.size, part.lines), (36, 2))
        self.assertEqual(part.params, {"charset": "utf-8"})
        self.assertTrue(part.is_body_text)

    def test_mixed_pdf(self) -> None:
        parts = structure_parts("mixed_pdf")
        self.assertEqual(
            [(p.section, p.content_type, p.is_body_text) for p in parts],
            [
                ("1.1", "text/plain", True),
                ("1.2", "text/html", True),
                ("2", "application/pdf", False),
            ],
        )
        pdf = parts[2]
        self.assertEqual(
            (pdf.filename, pdf.disposition, pdf.size), ("report.pdf", "attachment", 4104)
        )
        self.assertEqual(pdf.decoded_size, 3000)
        self.assertEqual([p.section for p in body_text_parts(parts)], ["1.1", "1.2"])

    def test_related_inline_image(self) -> None:
        parts = structure_parts("related")
        image = parts[2]
        self.assertEqual((image.section, image.content_type), ("2.2", "image/png"))
        self.assertEqual(image.content_id, "logo@x")
        self.assertTrue(image.in_related)
        self.assertFalse(parts[0].in_related)

    def test_nested_message_is_one_leaf(self) -> None:
        parts = structure_parts("nested")
        self.assertEqual([p.section for p in parts], ["1", "2"])
        message = parts[1]
        self.assertEqual(message.content_type, "message/rfc822")
        self.assertEqual((message.size, message.lines), (210, 13))
        self.assertEqual(message.disposition, "inline")
        self.assertFalse(message.is_body_text)
        # the inner text/html is not the outer body's html
        self.assertEqual([p.section for p in body_text_parts(parts)], ["1"])

    def test_tnef(self) -> None:
        tnef = structure_parts("tnef")[1]
        self.assertEqual((tnef.content_type, tnef.filename), ("application/ms-tnef", "winmail.dat"))

    def test_rfc2231_2047_and_8bit_names(self) -> None:
        parts = structure_parts("rfc2231")
        self.assertEqual(parts[1].filename, "\u20ac report.bin")
        self.assertEqual(parts[1].decoded_size, 300)  # size= parameter
        self.assertEqual(parts[2].filename, "\u00e4bc.txt")
        self.assertFalse(parts[2].is_body_text)  # text/plain attachment
        self.assertEqual(parts[3].filename, "caf\u00e9.bin")  # literal with raw UTF-8

    def test_uppercase_server(self) -> None:
        parts = structure_parts("odd")
        self.assertEqual(parts[0].content_type, "text/html")
        self.assertEqual(parts[0].encoding, "base64")
        self.assertEqual(parts[0].params, {"charset": "ISO-8859-1"})
        # first text/plain with inline disposition is the body; the later one is not
        self.assertEqual([p.section for p in body_text_parts(parts)], ["1", "3"])

    def test_digest(self) -> None:
        parts = structure_parts("digest")
        self.assertEqual([p.content_type for p in parts], ["message/rfc822"] * 2)
        self.assertEqual(body_text_parts(parts), [])


class OddServers(SynchronousTestCase):
    def test_bytes_atoms_and_quoted_numbers(self) -> None:
        struct = raw_parse(
            b'("TEXT" "PLAIN" ("CHARSET" "UTF-8") NIL NIL "QUOTED-PRINTABLE" "120" "4")'
        )
        (part,) = parse_bodystructure(struct)
        self.assertEqual((part.content_type, part.encoding), ("text/plain", "quoted-printable"))
        self.assertEqual((part.size, part.lines), (120, 4))
        self.assertTrue(part.is_body_text)

    def test_non_extensible_body_form(self) -> None:
        struct = raw_parse(
            b'(("text" "plain" NIL NIL NIL "7bit" 10 1)'
            b'("image" "jpeg" ("name" "a.jpg") NIL NIL "base64" 7800) "mixed")'
        )
        parts = parse_bodystructure(struct)
        self.assertEqual([p.section for p in parts], ["1", "2"])
        self.assertEqual(parts[1].filename, "a.jpg")
        self.assertEqual(parts[1].decoded_size, (7800 - 200) * 3 // 4)

    def test_message_rfc822_without_envelope(self) -> None:
        struct = raw_parse(
            b'(("text" "plain" NIL NIL NIL "7bit" 1 1)'
            b'("message" "rfc822" NIL NIL NIL "7bit" 50) "mixed")'
        )
        parts = parse_bodystructure(struct)
        self.assertEqual(parts[1].content_type, "message/rfc822")
        self.assertEqual(parts[1].size, 50)

    def test_deep_nesting_sections(self) -> None:
        leaf = b'("text" "plain" NIL NIL NIL "7bit" 1 1)'
        struct = raw_parse(
            b"(((" + leaf + leaf + b' "alternative")' + leaf + b' "mixed")' + leaf + b' "mixed")'
        )
        self.assertEqual(
            [p.section for p in parse_bodystructure(struct)], ["1.1.1", "1.1.2", "1.2", "2"]
        )

    def test_garbage_is_none(self) -> None:
        for bad in (None, "", "text", 5, [], [None], ["text"], [[]], {"a": 1}):
            self.assertIsNone(parse_bodystructure(bad), repr(bad))

    def test_weird_disposition_and_type(self) -> None:
        struct = raw_parse(
            b'(("text" "plain" NIL NIL NIL "7bit" 1 1 NIL "INLINE")'
            b'("garbage" "" NIL NIL NIL "7bit" 3 NIL ("X-FOO" NIL)) "mixed")'
        )
        parts = parse_bodystructure(struct)
        self.assertEqual(parts[0].disposition, "inline")
        self.assertEqual(parts[1].content_type, "application/octet-stream")
        self.assertEqual(parts[1].disposition, "attachment")

    @settings(max_examples=300, deadline=None)
    @given(
        st.recursive(
            st.none() | st.text(max_size=8) | st.binary(max_size=8) | st.integers(-5, 10**6),
            lambda children: st.lists(children, max_size=12),
            max_leaves=60,
        )
    )
    def test_never_raises(self, struct) -> None:
        result = parse_bodystructure(struct)
        self.assertTrue(result is None or isinstance(result, list))


class Params(SynchronousTestCase):
    def test_rfc2231_continuations(self) -> None:
        self.assertEqual(
            decode_params(
                [("NAME*1*", "%20b.txt"), ("name*0*", "iso-8859-1'de'%E4"), ("name*2", "!")]
            ),
            {"name": "\u00e4 b.txt!"},
        )

    def test_encoded_words_joined(self) -> None:
        self.assertEqual(
            decode_params([("filename", "=?utf-8?q?a=C3=A4?= =?utf-8?b?LnR4dA==?=")]),
            {"filename": "a\u00e4.txt"},
        )

    def test_bad_charset_falls_back(self) -> None:
        self.assertEqual(decode_params([("name*", "x-nope''a%2Eb")]), {"name": "a.b"})

    def test_decoded_size(self) -> None:
        self.assertEqual(estimate_decoded_size("base64", 780, 10, {}), 570)
        self.assertEqual(estimate_decoded_size("7bit", 99, 3, {}), 99)
        self.assertEqual(estimate_decoded_size("base64", 780, None, {"size": "12"}), 12)
        self.assertEqual(estimate_decoded_size("base64", 0, None, {}), 0)
