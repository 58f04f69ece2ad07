"""``split_message`` on broken and hostile input, and ``decode_transfer``."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core.mime_parts import split_message
from imapsvc.core.transfer import decode_transfer


def summary(raw: bytes):
    header, parts, texts = split_message(raw)
    return header, [(p.section, p.content_type, p.size) for p in parts], texts


class Broken(SynchronousTestCase):
    def test_missing_closing_boundary(self) -> None:
        raw = (
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\none\r\n"
            b"--b\r\nContent-Type: text/html\r\n\r\n<p>two</p>\r\n"
        )
        _, parts, texts = summary(raw)
        self.assertEqual(parts, [("1", "text/plain", 3), ("2", "text/html", 12)])
        self.assertEqual(texts, {"1": b"one", "2": b"<p>two</p>\r\n"})

    def test_boundary_not_found_keeps_body_as_text(self) -> None:
        raw = b"Content-Type: multipart/mixed; boundary=zz\r\n\r\nhelp me please\r\n"
        _, parts, texts = summary(raw)
        self.assertEqual(parts, [("1", "text/plain", 16)])
        self.assertEqual(texts, {"1": b"help me please\r\n"})

    def test_longer_boundary_is_not_a_delimiter(self) -> None:
        raw = (
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\n--bb not a boundary\r\n--b--\r\n"
        )
        _, parts, texts = summary(raw)
        self.assertEqual(texts, {"1": b"--bb not a boundary"})

    def test_nested_inner_not_closed(self) -> None:
        raw = (
            b"Content-Type: multipart/mixed; boundary=out\r\n\r\n"
            b"--out\r\nContent-Type: multipart/alternative; boundary=in\r\n\r\n"
            b"--in\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
            b"--out\r\nContent-Type: image/png; name=x.png\r\n\r\nPNG\r\n--out--\r\n"
        )
        _, parts, _ = summary(raw)
        self.assertEqual(parts, [("1.1", "text/plain", 5), ("2", "image/png", 3)])

    def test_preamble_and_epilogue_ignored(self) -> None:
        raw = (
            b'Content-Type: multipart/alternative; boundary="x y"\r\n\r\n'
            b"preamble --x y\r\n--x y\r\n\r\nbody\r\n--x y--  \r\nepilogue\r\n--x y\r\nlate\r\n"
        )
        _, parts, texts = summary(raw)
        self.assertEqual(parts, [("1", "text/plain", 4)])
        self.assertEqual(texts, {"1": b"body"})

    def test_empty_part_between_delimiters(self) -> None:
        raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n--b\r\n\r\nx\r\n--b--\r\n"
        _, parts, _ = summary(raw)
        self.assertEqual([p[0] for p in parts], ["1", "2"])
        self.assertEqual(parts[0][2], 0)

    def test_huge_header_line_8bit_and_nul(self) -> None:
        header = b"X-Long: " + b"a" * 100_000 + b"\r\nSubject: caf\xe9 \x00\xff\r\n"
        raw = header + b"Content-Type: text/plain; charset=latin-1\r\n\r\nbody\x00\r\n"
        head, parts, texts = summary(raw)
        self.assertEqual(head, raw[: raw.index(b"\r\n\r\n") + 4])
        self.assertEqual(parts, [("1", "text/plain", 7)])
        self.assertEqual(texts, {"1": b"body\x00\r\n"})

    def test_lf_only_sizes_count_crlf(self) -> None:
        raw = b"Subject: x\n\nline one\nline two\n"
        head, parts, texts = split_message(raw)
        self.assertEqual(head, b"Subject: x\n\n")
        self.assertEqual((parts[0].size, parts[0].lines), (20, 2))
        self.assertEqual(texts, {"1": b"line one\nline two\n"})

    def test_cr_only_line_ends(self) -> None:
        raw = b"Subject: x\rContent-Type: text/html\r\r<p>hi</p>\r"
        head, parts, texts = split_message(raw)
        self.assertEqual(head, b"Subject: x\r\nContent-Type: text/html\r\n\r\n")
        self.assertEqual([p.content_type for p in parts], ["text/html"])
        self.assertEqual(texts, {"1": b"<p>hi</p>\r\n"})

    def test_no_blank_line_no_header_is_all_body(self) -> None:
        head, parts, texts = split_message(b"just some text without headers")
        self.assertEqual(head, b"")
        self.assertEqual(texts, {"1": b"just some text without headers"})

    def test_headers_only(self) -> None:
        head, parts, texts = split_message(b"Subject: x\r\nFrom: a@b.c\r\n")
        self.assertEqual(head, b"Subject: x\r\nFrom: a@b.c\r\n")
        self.assertEqual(texts, {"1": b""})

    def test_empty(self) -> None:
        head, parts, texts = split_message(b"")
        self.assertEqual(head, b"")
        self.assertEqual([p.section for p in parts], ["1"])
        self.assertEqual(texts, {"1": b""})

    def test_large_attachment_is_scanned_fast(self) -> None:
        blob = base64.encodebytes(bytes(range(256)) * 40_000).replace(b"\n", b"\r\n")
        raw = (
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            b"--b\r\nContent-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + blob
            + b"--b--\r\n"
        )
        _, parts, texts = split_message(raw)
        self.assertEqual(texts, {"1": b"hi"})
        self.assertLessEqual(abs(parts[1].decoded_size - 256 * 40_000), 4)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=2000))
    def test_arbitrary_bytes_never_raise(self, raw: bytes) -> None:
        head, parts, texts = split_message(raw)
        self.assertTrue(parts)
        self.assertTrue(raw.startswith(head) or b"\n" not in raw)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [
                    b"--b\r\n",
                    b"--b--\r\n",
                    b"--c\r\n",
                    b"\r\n",
                    b"Content-Type: multipart/mixed; boundary=c\r\n",
                    b"Content-Type: text/html\r\n",
                    b"Content-Type: message/rfc822\r\n",
                    b"text\r\n",
                    b"\n",
                    b"\r",
                ]
            ),
            max_size=40,
        )
    )
    def test_boundary_soup_never_raises(self, chunks) -> None:
        raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"".join(chunks)
        _, parts, texts = split_message(raw)
        sections = [p.section for p in parts]
        self.assertEqual(len(sections), len(set(sections)))
        self.assertEqual(set(texts), {p.section for p in parts if p.is_body_text})


class Transfer(SynchronousTestCase):
    def test_base64(self) -> None:
        self.assertEqual(decode_transfer("BASE64", b"aGVs\r\nbG8=\r\n"), b"hello")
        self.assertEqual(decode_transfer("base64", b"aGVsbG8"), b"hello")  # no padding
        self.assertEqual(decode_transfer("base64", b"a*GV!sbG8=junk"), b"hello")
        self.assertEqual(decode_transfer("base64", b"aGVsbG8xY"), b"hello1")  # dangling char
        self.assertEqual(decode_transfer("base64", b""), b"")

    def test_quoted_printable(self) -> None:
        self.assertEqual(
            decode_transfer("quoted-printable", b"caf=C3=A9 =\r\nok"), b"caf\xc3\xa9 ok"
        )
        self.assertEqual(decode_transfer("Quoted-Printable", b"100% =ZZ end="), b"100% =ZZ end=")

    def test_identity(self) -> None:
        for name in ("7bit", "8bit", "binary", "x-unknown", None, b"8BIT"):
            self.assertEqual(decode_transfer(name, b"\x00\xff=41"), b"\x00\xff=41")

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(["base64", "quoted-printable", "7bit", "x"]), st.binary(max_size=500))
    def test_never_raises(self, name: str, data: bytes) -> None:
        self.assertIsInstance(decode_transfer(name, data), bytes)
