"""Charset fallback chain, header decoding and HTML to text."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core.charsets import decode_bytes, lookup_charset
from imapsvc.core.headers import Headers, decode_rfc2047, decode_value
from imapsvc.core.html_text import html_to_text


class CharsetTests(SynchronousTestCase):
    def test_aliases(self) -> None:
        self.assertEqual(lookup_charset("UTF8"), "utf-8")
        self.assertEqual(lookup_charset("iso-8859-1"), "cp1252")
        self.assertIsNone(lookup_charset("x-unknown"))
        self.assertIsNone(lookup_charset("rot13"))
        self.assertIsNone(lookup_charset("unicode_escape"))
        self.assertIsNone(lookup_charset("base64"))

    def test_declared(self) -> None:
        self.assertEqual(decode_bytes("Привет".encode("koi8-r"), "koi8-r"), "Привет")
        self.assertEqual(decode_bytes("日本語".encode("iso2022_jp"), "ISO-2022-JP"), "日本語")
        self.assertEqual(decode_bytes(b"\x93q\x94", "ISO-8859-1"), "\u201cq\u201d")

    def test_fallbacks(self) -> None:
        # us-ascii label on UTF-8 bytes.
        self.assertEqual(decode_bytes("Grüße".encode(), "us-ascii"), "Grüße")
        # Unknown label on windows-1252 bytes.
        self.assertEqual(decode_bytes(b"caf\xe9", "x-bogus"), "café")
        # Undefined in windows-1252 too: latin-1 always works.
        self.assertEqual(decode_bytes(b"\x81\x8d", None), "\x81\x8d")
        # A known charset with a bad byte keeps its text with a replacement.
        self.assertEqual(decode_bytes(b"\xe6\x97\xa5\xff", "utf-8"), "日\ufffd")


class HeaderTests(SynchronousTestCase):
    def test_junk_line_does_not_hide_later_fields(self) -> None:
        headers = Headers(b"From: a@example.com\r\njunk line\r\nSubject: hi\r\n\r\nSubject: no")
        self.assertEqual(headers.get("subject"), "hi")
        self.assertEqual(headers.junk_lines, 1)

    def test_unfolding_and_repeats(self) -> None:
        headers = Headers(b"Received: a\r\n\tb\r\nReceived: c\nX: 1\n")
        self.assertEqual(headers.get_all("received"), ["a\tb", "c"])

    def test_rfc2047(self) -> None:
        self.assertEqual(decode_rfc2047("=?utf-8?q?a?= =?utf-8?q?b?= c"), "ab c")
        self.assertEqual(decode_rfc2047("=?bogus?q?x?="), "x")
        self.assertEqual(decode_rfc2047("=?utf-8?b?w6k?="), "é")  # missing padding
        self.assertEqual(decode_value("a\x00b\x01c"), "a b c")

    def test_raw_8bit(self) -> None:
        headers = Headers("Subject: Grüße\r\n\r\n".encode())
        self.assertEqual(decode_value(headers.get("subject")), "Grüße")
        headers = Headers("Subject: Grüße\r\n\r\n".encode("latin-1"))
        self.assertEqual(decode_value(headers.get("subject")), "Grüße")


class HtmlTextTests(SynchronousTestCase):
    def test_blocks_entities_scripts(self) -> None:
        text = html_to_text(
            "<style>x{}</style><p>A &amp; B</p><div>C<br>D</div><script>bad()</script>"
        )
        self.assertEqual(text, "A & B\n\nC\nD")

    def test_broken_html(self) -> None:
        self.assertEqual(html_to_text("<p>unclosed <b>bold"), "unclosed bold")
        self.assertEqual(html_to_text(""), "")
