"""map_message on the structure path: bodies, caps and failure handling."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core import email_data
from imapsvc.core.email_data import map_message
from imapsvc.model import BodyPart, FetchedMessage, Limits

NOW = datetime(2026, 2, 1, tzinfo=UTC)
HEADER = (
    b"From: A <a@example.com>\r\nTo: b@example.org\r\nSubject: s\r\n"
    b"Date: Sat, 10 Jan 2026 13:34:56 +0100\r\nMessage-ID: <m1@example.com>\r\n\r\n"
)


def part(section, ctype, encoding="7bit", size=10, charset="utf-8") -> BodyPart:
    return BodyPart(section, ctype, {"charset": charset}, encoding, size, size, is_body_text=True)


def message(parts, texts, truncated=()) -> FetchedMessage:
    return FetchedMessage(
        "INBOX", "9", 4, 5000, "2026-01-10T12:00:00.000Z",
        header=HEADER, parts=parts, texts=texts, truncated=truncated,
    )  # fmt: skip


class BodyTests(SynchronousTestCase):
    def test_transfer_and_charset(self) -> None:
        koi8 = base64.b64encode("Привет".encode("koi8-r")) + b"\r\n"
        msg = message(
            [
                part("1", "text/plain", "base64", charset="koi8-r"),
                part("2", "text/html", "quoted-printable"),
            ],
            {"1": koi8, "2": b"<p>caf=C3=A9</p>"},
        )
        data = map_message(msg, "t", "p", NOW, Limits()).email_data
        self.assertEqual(data["body"]["text"], "Привет")
        self.assertEqual(data["body"]["html"], "<p>café</p>")
        self.assertEqual(data["receivedAt"], "2026-01-10T12:34:56.000Z")
        self.assertEqual(
            data["imap"],
            {"mailbox": "INBOX", "uidValidity": "9", "uid": 4,
             "internalDate": "2026-01-10T12:00:00.000Z", "size": 5000},
        )  # fmt: skip

    def test_truncated_part_reported(self) -> None:
        limits = Limits(max_text_part_bytes=16)
        msg = message([part("TEXT", "text/plain", size=5000)], {"TEXT": b"x" * 16}, ("TEXT",))
        data = map_message(msg, "t", "p", NOW, limits).email_data
        (reason,) = data["ingressSkipReasons"]
        self.assertEqual(reason["type"], "body_truncated")
        self.assertEqual((reason["size"], reason["cap"]), (5000, 16))
        self.assertEqual(data["body"]["text"], "x" * 16)

    def test_whole_message_path_applies_the_same_cap(self) -> None:
        raw = HEADER + b"y" * 100
        msg = FetchedMessage("INBOX", "9", 4, len(raw), None, raw=raw)
        data = map_message(msg, "t", "p", NOW, Limits(max_text_part_bytes=10)).email_data
        self.assertEqual(data["body"]["text"], "y" * 10)
        self.assertEqual([r["type"] for r in data["ingressSkipReasons"]], ["body_truncated"])

    def test_keys(self) -> None:
        result = map_message(message([], {}), "t", "p", NOW, Limits())
        self.assertEqual(result.dedupe_key, "imap:INBOX:9:4")
        self.assertEqual(result.message_id_key, "<m1@example.com>")
        self.assertEqual(result.email_data["body"], {"text": "", "html": ""})


class FailureTests(SynchronousTestCase):
    def test_split_failure_is_parse_error(self) -> None:
        def boom(raw):
            raise ValueError("nope")

        self.patch(email_data, "_split", boom)
        raw = HEADER + b"body"
        result = map_message(
            FetchedMessage("INBOX", "9", 4, 9, None, raw=raw), "t", "p", NOW, Limits()
        )
        self.assertIsNone(result.skip_reason)
        self.assertEqual(result.email_data["subject"], "s")
        self.assertEqual(result.email_data["ingressSkipReasons"][0]["type"], "parse_error")

    def test_unexpected_failure_still_yields_a_result(self) -> None:
        def boom(*args):
            raise RuntimeError("bug")

        self.patch(email_data, "_headers_map", boom)
        result = map_message(message([], {}), "t", "p", NOW, Limits())
        self.assertEqual(result.email_data["from"]["email"], "a@example.com")
        self.assertEqual(result.email_data["id"], "<m1@example.com>")
        self.assertEqual(result.email_data["ingressSkipReasons"][0]["type"], "parse_error")
        self.assertEqual(result.message_id_key, "<m1@example.com>")
