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
        self.assertEqual(data["ingressSkipReasons"], [])
        (reason,) = data["ingressNotes"]
        self.assertEqual((reason["type"], reason["reason"]), ("body", "body_truncated"))
        self.assertEqual((reason["size"], reason["cap"]), (5000, 16))
        self.assertEqual(data["body"]["text"], "x" * 16)

    def test_whole_message_path_applies_the_same_cap(self) -> None:
        raw = HEADER + b"y" * 100
        msg = FetchedMessage("INBOX", "9", 4, len(raw), None, raw=raw)
        data = map_message(msg, "t", "p", NOW, Limits(max_text_part_bytes=10)).email_data
        self.assertEqual(data["body"]["text"], "y" * 10)
        self.assertEqual([r["reason"] for r in data["ingressNotes"]], ["body_truncated"])

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
        self.assertEqual(result.email_data["ingressNotes"][0]["reason"], "parse_error")

    def test_unexpected_failure_still_yields_a_result(self) -> None:
        def boom(*args):
            raise RuntimeError("bug")

        self.patch(email_data, "_headers_map", boom)
        result = map_message(message([], {}), "t", "p", NOW, Limits())
        self.assertEqual(result.email_data["from"]["email"], "a@example.com")
        self.assertEqual(result.email_data["id"], "<m1@example.com>")
        self.assertEqual(result.email_data["ingressNotes"][0]["reason"], "parse_error")
        self.assertEqual(result.email_data["ingressSkipReasons"], [])
        self.assertEqual(result.message_id_key, "<m1@example.com>")


class SkipReasonTests(SynchronousTestCase):
    """ingressSkipReasons carries only the app's codes; other cuts go to
    ingressNotes; both say what was cut (issue 10)."""

    def entry(self, data):
        from imapsvc.core.event import build_stream_entry
        from tests.contract_validator import validate_stream_entry

        return validate_stream_entry(
            build_stream_entry("t", "p", data, "a" * 8 + "-aaaa-4aaa-8aaa-" + "a" * 12,
                               "b" * 8 + "-bbbb-4bbb-8bbb-" + "b" * 12, NOW)
        )

    def test_raw_mime_over_cap_header_only(self) -> None:
        from imapsvc.core import plan as P

        limits = Limits(max_raw_mime_bytes=1000)
        meta = {"size": 5000, "bodystructure": None, "header": HEADER,
                "internaldate": "10-Jan-2026 12:00:00 +0000"}
        plan = P.plan_message(4, meta, limits, trust_structure=True, parser=lambda s: None)
        self.assertEqual(plan.kind, P.KIND_HEADER_ONLY)
        msg = P.build_message(plan, meta, "INBOX", "9")
        data = map_message(msg, "t", "p", NOW, limits).email_data
        self.assertEqual(data["body"], {"text": "", "html": ""})
        (reason,) = data["ingressSkipReasons"]
        self.assertEqual(
            {k: reason[k] for k in ("type", "reason", "size", "cap")},
            {"type": "raw_mime", "reason": "raw_mime_over_max_bytes", "size": 5000, "cap": 1000},
        )
        self.assertIn("not downloaded", reason["detail"])
        self.assertEqual(self.entry(data), [])

    def test_raw_mime_over_cap_structure_path(self) -> None:
        limits = Limits(max_raw_mime_bytes=1000)
        msg = message([part("1", "text/plain")], {"1": b"hello"})  # size 5000
        data = map_message(msg, "t", "p", NOW, limits).email_data
        self.assertEqual(data["body"]["text"], "hello")
        self.assertEqual([r["reason"] for r in data["ingressSkipReasons"]],
                         ["raw_mime_over_max_bytes"])
        self.assertIn("text parts", data["ingressSkipReasons"][0]["detail"])

    def test_raw_mime_at_cap_has_no_reason(self) -> None:
        msg = message([part("1", "text/plain")], {"1": b"hello"})
        data = map_message(msg, "t", "p", NOW, Limits(max_raw_mime_bytes=5000)).email_data
        self.assertEqual(data["ingressSkipReasons"], [])

    def test_address_lists_cut_say_so(self) -> None:
        to = ", ".join(f"user{i}@example.com" for i in range(600))
        header = (b"From: a@example.com\r\nTo: " + to.encode() + b"\r\nCc: c@example.com\r\n"
                  b"Subject: many\r\nMessage-ID: <m2@example.com>\r\n\r\n")
        msg = FetchedMessage("INBOX", "9", 4, 50000, None, header=header,
                             parts=[part("1", "text/plain")], texts={"1": b"x"})
        data = map_message(msg, "t", "p", NOW, Limits()).email_data
        self.assertEqual(len(data["to"]), 500)
        self.assertEqual(data["to"][-1]["email"], "user499@example.com")
        self.assertEqual(len(data["cc"]), 1)
        # (The long To header value itself is also noted as header_truncated.)
        (note,) = [n for n in data["ingressNotes"] if n["reason"] == "address_count_exceeded"]
        self.assertEqual(
            {k: note[k] for k in ("type", "reason", "size", "cap")},
            {"type": "to", "reason": "address_count_exceeded", "size": 600, "cap": 500},
        )
        self.assertEqual(data["ingressSkipReasons"], [])
        self.assertEqual(self.entry(data), [])

    def test_validator_refuses_codes_the_app_does_not_know(self) -> None:
        msg = message([part("1", "text/plain")], {"1": b"hello"})
        data = map_message(msg, "t", "p", NOW, Limits()).email_data
        data["ingressSkipReasons"] = [
            {"type": "body_truncated", "reason": "text part cut", "size": 1, "cap": 1}
        ]
        errors = "\n".join(self.entry(data))
        self.assertIn("ingressSkipReasons[0].type", errors)
        self.assertIn("ingressSkipReasons[0].reason", errors)
