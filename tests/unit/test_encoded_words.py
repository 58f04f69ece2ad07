"""RFC 2047: adjacent encoded words of one charset are joined as bytes before decoding."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core.bodystructure import decode_words
from imapsvc.core.headers import decode_rfc2047, decode_value


def q_word(charset: str, data: bytes) -> str:
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    body = "".join(
        chr(b) if b in safe else "_" if b == 0x20 else f"={b:02X}" for b in data
    )
    return f"=?{charset}?Q?{body}?="


def b_word(charset: str, data: bytes) -> str:
    return f"=?{charset}?B?{base64.b64encode(data).decode('ascii')}?="


class SplitCharacterTests(SynchronousTestCase):
    def test_utf8_character_split_across_two_b_words(self) -> None:
        data = "Grüße".encode()  # ü is C3 BC: cut between the two bytes
        value = b_word("UTF-8", data[:3]) + " " + b_word("UTF-8", data[3:])
        self.assertEqual(decode_rfc2047(value), "Grüße")
        self.assertEqual(decode_value("Subject " + value), "Subject Grüße")
        self.assertNotIn("\ufffd", decode_value(value))

    def test_b_and_q_mixed_and_charset_case(self) -> None:
        data = "€ 10".encode()  # E2 82 AC
        value = q_word("utf-8", data[:1]) + "\r\n " + b_word("UTF-8", data[1:])
        self.assertEqual(decode_rfc2047(value), "€ 10")

    def test_folded_words_and_text_around(self) -> None:
        data = "日本語".encode()
        words = [b_word("utf-8", data[i : i + 2]) for i in range(0, len(data), 2)]
        value = "Re: " + "\r\n\t".join(words) + " (fwd)"
        self.assertEqual(decode_rfc2047(value), "Re: 日本語 (fwd)")

    def test_shift_jis_split_inside_a_double_byte_character(self) -> None:
        data = "請求書".encode("shift_jis")
        value = b_word("Shift_JIS", data[:3]) + " " + b_word("shift_jis", data[3:])
        self.assertEqual(decode_rfc2047(value), "請求書")

    def test_different_charsets_are_not_joined(self) -> None:
        value = b_word("iso-8859-1", "é".encode("latin-1")) + " " + b_word("utf-8", "é".encode())
        self.assertEqual(decode_rfc2047(value), "éé")

    def test_text_between_words_keeps_them_apart(self) -> None:
        data = "ü".encode()
        value = b_word("utf-8", data[:1]) + " x " + b_word("utf-8", data[1:])
        # Not adjacent: each half decodes alone (the fallback chain keeps a byte each).
        self.assertTrue(decode_rfc2047(value).startswith(decode_rfc2047(b_word("utf-8", data[:1]))))
        self.assertIn(" x ", decode_rfc2047(value))

    def test_malformed_word_stays_and_ends_the_run(self) -> None:
        value = "=?utf-8?q?a?= =?utf-8?x?b?= =?utf-8?q?c?="
        self.assertEqual(decode_rfc2047(value), "a =?utf-8?x?b?= c")
        self.assertEqual(decode_rfc2047("=?utf-8?q?a?= =?utf-8?q?b?= c"), "ab c")

    def test_attachment_names_too(self) -> None:
        data = "Überweisung März.pdf".encode()
        value = b_word("UTF-8", data[:15]) + " " + b_word("UTF-8", data[15:])  # inside ä
        self.assertEqual(decode_words(value), "Überweisung März.pdf")


_CHARSETS = st.sampled_from([("utf-8", "utf-8"), ("UTF-8", "utf-8"), ("gb18030", "gb18030")])


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"),
            min_size=1,
            max_size=40,
        ),
        _CHARSETS,
        st.data(),
    )
    def test_any_split_decodes_back_exactly(self, text, charset, data) -> None:
        label, codec = charset
        raw = text.encode(codec)
        cuts = sorted(
            set(data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=8)))
        )
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)]) if raw[a:b]]
        words = []
        for piece in pieces:
            make = data.draw(st.sampled_from([b_word, q_word]))
            words.append(make(label, piece))
        seps = [data.draw(st.sampled_from(["", " ", "\r\n ", "\t", "  "])) for _ in words]
        value = "".join(w + s for w, s in zip(words, seps)).rstrip(" \t\r\n")
        self.assertEqual(decode_rfc2047(value), text)
        self.assertEqual(decode_words(value), text)
