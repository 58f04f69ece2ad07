"""IMAP_ATTACHMENT_MODE inline/store, the pure part: which attachments get
content, incremental decoding, keys, the fetch plan and the mapping."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from imapsvc.core import plan as P
from imapsvc.core.attachment_content import (
    content_sections,
    decoded_chunks,
    digest_and_size,
    message_contents,
    object_key,
)
from imapsvc.core.email_data import map_message
from imapsvc.core.event import build_stream_entry
from imapsvc.core.mime_parts import part_bodies, split_message
from imapsvc.core.transfer import decode_transfer
from imapsvc.model import RAW_MIME_SECTION, FetchedMessage, Limits
from tests.attachment_fixtures import THREE_FILES, b64_lines, message_with_attachments, qp, sha256
from tests.contract_validator import validate_stream_entry

T = "11111111-1111-4111-8111-111111111111"
PID = "22222222-2222-4222-8222-222222222222"
NOW = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC)
INLINE = Limits(attachment_mode="inline")
STORE = Limits(attachment_mode="store")


def structure_message(raw: bytes, limits: Limits, uid: int = 5) -> FetchedMessage:
    """What the structure path hands over: the plan made from the parts and
    exactly the sections it asked for, as the server returns them."""
    header, parts, texts = split_message(raw)
    plan = P.plan_message(
        uid, {"size": len(raw), "bodystructure": "x"}, limits, True, lambda _b: parts
    )
    wanted = [s for s, _ in plan.sections]
    got = {s: bytes(v) for s, v in part_bodies(raw, wanted).items()}
    return P.build_message(plan, {"header": header}, "INBOX", "9", got)


def raw_message(raw: bytes, uid: int = 5) -> FetchedMessage:
    return FetchedMessage("INBOX", "9", uid, len(raw), None, raw=raw)


class DecodingTests(unittest.TestCase):
    @settings(max_examples=150, deadline=None)
    @given(
        data=st.binary(max_size=3000),
        step=st.integers(min_value=1, max_value=700),
        junk=st.sampled_from([b"", b"\r\n", b" ", b"\n!"]),
    )
    def test_base64_chunks_join_to_the_whole_decode(
        self, data: bytes, step: int, junk: bytes
    ) -> None:
        text = base64.b64encode(data)
        encoded = junk.join(text[i : i + 76] for i in range(0, len(text), 76))
        joined = b"".join(decoded_chunks("base64", encoded, step))
        self.assertEqual(joined, decode_transfer("base64", encoded))
        self.assertEqual(joined, data)

    @settings(max_examples=150, deadline=None)
    @given(data=st.binary(max_size=3000), step=st.integers(min_value=1, max_value=500))
    def test_quoted_printable_chunks_join_to_the_whole_decode(self, data: bytes, step: int) -> None:
        encoded = qp(data)
        joined = b"".join(decoded_chunks("quoted-printable", encoded, step))
        self.assertEqual(joined, decode_transfer("quoted-printable", encoded))

    @given(junk=st.binary(max_size=400), step=st.integers(min_value=1, max_value=64))
    def test_garbage_base64_matches_the_lenient_decoder(self, junk: bytes, step: int) -> None:
        self.assertEqual(
            b"".join(decoded_chunks("base64", junk, step)), decode_transfer("base64", junk)
        )

    def test_digest_and_size(self) -> None:
        data = bytes(range(256)) * 50
        self.assertEqual(
            digest_and_size("base64", b64_lines(data)),
            (hashlib.sha256(data).hexdigest(), len(data)),
        )
        self.assertEqual(digest_and_size("binary", memoryview(data))[1], len(data))


class SelectionTests(unittest.TestCase):
    def test_only_attachments_within_the_caps_get_content(self) -> None:
        files = [
            ("a.bin", "application/octet-stream", b"a" * 1000),
            ("big.bin", "application/octet-stream", b"b" * 5000),  # over the single cap
            ("c.bin", "application/octet-stream", b"c" * 1500),  # over the total
            ("d.bin", "application/octet-stream", b"d" * 10),
            ("e.bin", "application/octet-stream", b"e" * 10),  # over the count
        ]
        raw = message_with_attachments(files)
        parts = split_message(raw)[1]
        limits = Limits(
            max_attachment_bytes=4000, max_total_attachment_bytes=2000, max_attachment_count=4
        )
        self.assertEqual(content_sections(parts, limits), ["2", "5"])

    def test_keys_are_deterministic_and_cannot_escape(self) -> None:
        key = object_key("pre/fix", T, PID, "INBOX", "9", 5, "2")
        self.assertEqual(key, f"pre/fix/{T}/{PID}/INBOX/9/5/2")
        self.assertEqual(key, object_key("/pre/fix/", T, PID, "INBOX", "9", 5, "2"))
        self.assertEqual(object_key("", T, PID, "a/b", "9", 5, "1.2").split("/")[2], "a%2Fb")
        self.assertNotIn("/../", "/" + object_key("", T, PID, "..", "9", 5, "2") + "/")
        self.assertTrue(object_key("", T, PID, "X", "9", 5, RAW_MIME_SECTION).endswith("/raw.eml"))


class PlanTests(unittest.TestCase):
    def test_attachment_sections_are_fetched_only_in_content_modes(self) -> None:
        raw = message_with_attachments(THREE_FILES)
        parts = split_message(raw)[1]
        meta = {"size": len(raw), "bodystructure": "x"}
        plain = P.plan_message(1, meta, Limits(), True, lambda _b: parts)
        self.assertEqual([s for s, _ in plain.sections], ["1"])
        self.assertEqual(plain.content_sections, ())
        for limits in (INLINE, STORE):
            plan = P.plan_message(1, meta, limits, True, lambda _b: parts)
            self.assertEqual([s for s, _ in plan.sections], ["1", "2", "3", "4"])
            self.assertEqual(plan.content_sections, ("2", "3", "4"))
            self.assertGreater(plan.expected_bytes, 70_000)

    def test_build_message_keeps_texts_and_contents_apart(self) -> None:
        msg = structure_message(message_with_attachments(THREE_FILES), INLINE)
        self.assertEqual(set(msg.texts), {"1"})
        self.assertEqual(set(msg.contents), {"2", "3", "4"})

    def test_store_raw_mime_fetches_the_message_whole(self) -> None:
        raw = message_with_attachments(THREE_FILES)
        parts = split_message(raw)[1]
        limits = Limits(attachment_mode="store", store_raw_mime=True)
        plan = P.plan_message(
            1, {"size": len(raw), "bodystructure": "x"}, limits, True, lambda _b: parts
        )
        self.assertEqual(plan.kind, P.KIND_FULL)
        small = Limits(attachment_mode="store", store_raw_mime=True, max_raw_mime_bytes=1000,
                       max_attachment_bytes=1000)  # fmt: skip
        plan = P.plan_message(
            1, {"size": len(raw), "bodystructure": "x"}, small, True, lambda _b: parts
        )
        self.assertEqual(plan.kind, P.KIND_STRUCTURE)


class MappingTests(unittest.TestCase):
    def entry(self, msg: FetchedMessage, limits: Limits) -> dict:
        mapped = map_message(msg, T, PID, NOW, limits)
        fields = build_stream_entry(T, PID, mapped.email_data, "e", "x", NOW)
        fields["event_id"] = "11111111-1111-4111-8111-111111111112"
        fields["execution_id"] = "11111111-1111-4111-8111-111111111113"
        self.assertEqual(validate_stream_entry(fields), [])
        return mapped.email_data

    def test_inline_on_both_paths_carries_the_exact_bytes(self) -> None:
        raw = message_with_attachments(
            THREE_FILES, encodings=["base64", "base64", "quoted-printable"]
        )
        for msg in (structure_message(raw, INLINE), raw_message(raw)):
            data = self.entry(msg, INLINE)
            got = [base64.b64decode(a["content"]) for a in data["attachments"]]
            self.assertEqual(got, [f[2] for f in THREE_FILES])
            self.assertNotIn("storageKey", data["attachments"][0])

    def test_metadata_mode_has_no_content(self) -> None:
        raw = message_with_attachments(THREE_FILES)
        data = self.entry(raw_message(raw), Limits())
        self.assertEqual(len(data["attachments"]), 3)
        for a in data["attachments"]:
            self.assertNotIn("content", a)

    def test_inline_over_the_cap_is_listed_without_content_and_reported(self) -> None:
        files = [
            ("small.txt", "text/plain", b"x" * 10),
            ("big.bin", "application/pdf", b"y" * 5000),
        ]
        raw = message_with_attachments(files)
        limits = Limits(attachment_mode="inline", max_attachment_bytes=1000)
        for msg in (structure_message(raw, limits), raw_message(raw)):
            data = self.entry(msg, limits)
            self.assertEqual(base64.b64decode(data["attachments"][0]["content"]), b"x" * 10)
            self.assertNotIn("content", data["attachments"][1])
            self.assertEqual(
                [r["reason"] for r in data["ingressSkipReasons"]], ["attachment_over_max_bytes"]
            )
        self.assertEqual(structure_message(raw, limits).contents.keys(), {"2"})

    def test_store_references_come_from_what_was_stored(self) -> None:
        raw = message_with_attachments(THREE_FILES)
        stored = {
            s: {"storageKey": f"k/{s}", "sha256": sha256(s.encode()), "size": 1}
            for s in ("2", "3", "4")
        }
        stored[RAW_MIME_SECTION] = {
            "storageKey": "k/raw.eml",
            "sha256": sha256(raw),
            "size": len(raw),
        }
        msg = raw_message(raw)
        import attr

        data = self.entry(attr.evolve(msg, stored=stored), STORE)
        self.assertEqual([a["storageKey"] for a in data["attachments"]], ["k/2", "k/3", "k/4"])
        self.assertEqual(data["attachments"][0]["sha256"], sha256(b"2"))
        self.assertNotIn("content", data["attachments"][0])
        self.assertEqual(data["rawMime"]["storageKey"], "k/raw.eml")

    def test_message_contents_are_views_of_the_raw_message(self) -> None:
        raw = message_with_attachments(THREE_FILES)
        got = message_contents(raw_message(raw), STORE)
        self.assertEqual(list(got), ["2", "3", "4"])
        encoding, view, ctype = got["2"]
        self.assertIsInstance(view, memoryview)
        self.assertEqual((encoding, ctype), ("base64", "application/pdf"))
        self.assertEqual(b"".join(decoded_chunks(encoding, view)), THREE_FILES[0][2])

    def test_inline_payload_json_carries_content(self) -> None:
        raw = message_with_attachments(THREE_FILES)
        mapped = map_message(raw_message(raw), T, PID, NOW, INLINE)
        fields = build_stream_entry(T, PID, mapped.email_data, "e", "x", NOW)
        atts = json.loads(fields["payload_json"])["emailData"]["attachments"]
        self.assertEqual(base64.b64decode(atts[1]["content"]), THREE_FILES[1][2])

    def test_a_section_the_server_did_not_return_is_noted(self) -> None:
        import attr

        raw = message_with_attachments(THREE_FILES)
        msg = structure_message(raw, INLINE)
        msg = attr.evolve(msg, contents={k: v for k, v in msg.contents.items() if k != "3"})
        data = self.entry(msg, INLINE)
        self.assertEqual(["content" in a for a in data["attachments"]], [True, False, True])
        notes = [n for n in data["ingressNotes"] if n["reason"] == "attachment_content_missing"]
        self.assertEqual([(n["attachmentId"], n["type"]) for n in notes], [("3", "attachment")])
        self.assertEqual(data["ingressSkipReasons"], [])
        # Over-cap attachments are skip reasons, not notes.
        limits = Limits(attachment_mode="inline", max_attachment_bytes=1000)
        data = self.entry(structure_message(raw, limits), limits)
        self.assertFalse([n for n in data["ingressNotes"] if n["reason"].startswith("attachment")])
