"""winmail.dat (TNEF): the files inside listed as attachments (IMAP_EXPAND_TNEF)."""

from __future__ import annotations

import base64
import struct
import time

import attr
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core import tnef as T
from imapsvc.core.plan import KIND_STRUCTURE, plan_message
from imapsvc.model import BodyPart, Limits
from tests.tnef_builder import (
    LVL_ATTACHMENT,
    LVL_MESSAGE,
    SIGNATURE,
    attribute,
    tnef,
    with_embedded,
)

ON = Limits(expand_tnef=True)


def winmail(section: str = "2", size: int = 1000, **kw) -> BodyPart:
    values = dict(
        section=section,
        content_type="application/ms-tnef",
        params={"name": "winmail.dat"},
        encoding="base64",
        size=size,
        decoded_size=size * 3 // 4,
        disposition="attachment",
        filename="winmail.dat",
    )
    values.update(kw)
    return BodyPart(**values)


class TnefFilesTests(SynchronousTestCase):
    def test_names_types_sizes(self) -> None:
        blob = tnef(
            [("REPORT~1.PDF", b"%PDF" * 10), ("notes.txt", b"hi"), ("DATA~1.XYZ", b"xyz")],
            ["Quarterly report.pdf", None, None],
            ["application/pdf", None, None],
        )
        self.assertEqual(
            T.tnef_files(blob),
            [
                T.TnefFile("Quarterly report.pdf", "application/pdf", 40),
                T.TnefFile("notes.txt", "text/plain", 2),
                T.TnefFile("DATA~1.XYZ", "application/octet-stream", 3),
            ],
        )

    def test_8bit_title_without_long_name(self) -> None:
        (f,) = T.tnef_files(tnef([("Grüße.txt", b"x")]))
        self.assertEqual(f.name, "Grüße.txt")

    def test_not_tnef(self) -> None:
        for junk in (b"", b"PK\x03\x04", b"\x00" * 100):
            self.assertRaises(T.TnefError, T.tnef_files, junk)

    def test_no_files(self) -> None:
        self.assertEqual(T.tnef_files(tnef([])), [])

    def test_too_many_attributes_refused_fast(self) -> None:
        head = struct.pack("<IH", SIGNATURE, 1)
        blob = head + attribute(LVL_MESSAGE, 6, 0x9007, b"\x00" * 4) * (T.MAX_OBJECTS + 1)
        self.assertRaises(T.TnefError, T.tnef_files, blob)

    def test_hostile_mapi_count_is_bounded(self) -> None:
        # One attachment whose MAPI block claims 2**32-1 values of a 2-byte type.
        mapi = struct.pack("<I", 1) + struct.pack("<HHI", 0x1002, 0x3705, 0xFFFFFFFF)
        blob = tnef([("a.txt", b"x")]) + attribute(LVL_ATTACHMENT, 6, 0x9005, mapi)
        start = time.monotonic()
        files = T.tnef_files(blob)
        self.assertLess(time.monotonic() - start, 2.0)
        self.assertEqual([f.name for f in files], ["a.txt"])

    def test_hostile_property_count_is_bounded(self) -> None:
        # A MAPI block that claims 2**32-1 properties and holds none.
        blob = tnef([("a.txt", b"xyz")]) + attribute(
            LVL_ATTACHMENT, 6, 0x9005, struct.pack("<I", 0xFFFFFFFF)
        )
        start = time.monotonic()
        self.assertEqual([f.name for f in T.tnef_files(blob)], ["a.txt"])
        self.assertLess(time.monotonic() - start, 2.0)
        mapi = attribute(LVL_MESSAGE, 6, 0x9003, struct.pack("<I", 0xFFFFFFFF) + b"\x00" * 64)
        start = time.monotonic()
        T.tnef_files(tnef([("a.txt", b"xyz")]) + mapi)
        self.assertLess(time.monotonic() - start, 2.0)

    def test_embedded_messages_read_and_nesting_bounded(self) -> None:
        inner = tnef([("inner.txt", b"abc")])
        files = T.tnef_files(with_embedded(inner))
        self.assertEqual([f.name for f in files], ["EMBED~1.MSG"])
        deep = inner
        for _ in range(T.MAX_DEPTH + 1):
            deep = with_embedded(deep)
        self.assertRaises(T.TnefError, T.tnef_files, deep)
        # A nested blob with too many attributes is refused too, not parsed.
        head = struct.pack("<IH", SIGNATURE, 1)
        crowd = head + attribute(LVL_MESSAGE, 6, 0x9007, b"\x01" * 4) * (T.MAX_OBJECTS + 10)
        start = time.monotonic()
        self.assertRaises(T.TnefError, T.tnef_files, with_embedded(crowd))
        self.assertLess(time.monotonic() - start, 2.0)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=400), st.integers(0, 2000))
    def test_damaged_blobs_raise_only_tnef_error(self, tail: bytes, cut: int) -> None:
        blob = tnef([("a.pdf", b"%PDF" * 20)], ["Long name.pdf"], ["application/pdf"])
        damaged = blob[: min(cut, len(blob))] + tail
        try:
            files = T.tnef_files(damaged)
        except T.TnefError:
            return
        for f in files:
            self.assertIsInstance(f.name, str)
            self.assertGreaterEqual(f.size, 0)


class ExpandTests(SynchronousTestCase):
    def blob(self) -> bytes:
        return base64.b64encode(tnef([("a.pdf", b"1" * 300), ("b.txt", b"22")]))

    def test_off_by_default(self) -> None:
        self.assertFalse(Limits().expand_tnef)
        self.assertFalse(T.wants_tnef_bytes(winmail(), Limits()))
        self.assertTrue(T.wants_tnef_bytes(winmail(), ON))

    def test_detected_by_type_or_name(self) -> None:
        self.assertTrue(T.is_tnef(winmail(filename=None)))
        self.assertTrue(T.is_tnef(winmail(content_type="application/vnd.ms-tnef")))
        self.assertTrue(
            T.is_tnef(winmail(content_type="application/octet-stream", filename="WINMAIL.DAT"))
        )
        self.assertFalse(T.is_tnef(winmail(content_type="application/pdf", filename="x.pdf")))

    def test_files_replace_winmail_dat(self) -> None:
        parts, reasons = T.expand_tnef([winmail()], {"2": self.blob()}, ON)
        self.assertEqual(reasons, [])
        self.assertEqual([p.section for p in parts], ["2/tnef/1", "2/tnef/2"])
        self.assertEqual([p.filename for p in parts], ["a.pdf", "b.txt"])
        self.assertEqual([p.decoded_size for p in parts], [300, 2])
        self.assertEqual([p.content_type for p in parts], ["application/pdf", "text/plain"])

    def test_over_the_cap_stays_winmail_dat(self) -> None:
        small = attr.evolve(ON, max_attachment_bytes=100)
        part = winmail(size=1000)
        self.assertFalse(T.wants_tnef_bytes(part, small))
        parts, reasons = T.expand_tnef([part], {"2": self.blob()}, small)
        self.assertEqual((parts, reasons), ([part], []))

    def test_unreadable_is_reported_and_listed(self) -> None:
        parts, reasons = T.expand_tnef([winmail()], {"2": base64.b64encode(b"junk")}, ON)
        self.assertEqual([p.filename for p in parts], ["winmail.dat"])
        self.assertEqual(len(reasons), 1)
        self.assertEqual(reasons[0]["type"], T.REASON_TNEF_UNREADABLE)
        self.assertEqual(reasons[0]["attachmentId"], "2")

    def test_plan_fetches_the_part_only_when_wanted(self) -> None:
        body = BodyPart("1", "text/plain", {}, "7bit", 10, 10, is_body_text=True)
        parts = [body, winmail(size=400)]
        meta = {"size": 2000, "bodystructure": object()}
        for limits, want in (
            (Limits(), (("1", None),)),
            (ON, (("1", None), ("2", None))),
            (attr.evolve(ON, max_attachment_bytes=100), (("1", None),)),
        ):
            plan = plan_message(7, meta, limits, parser=lambda _s: parts)
            self.assertEqual(plan.kind, KIND_STRUCTURE)
            self.assertEqual(plan.sections, want)
        plan = plan_message(7, meta, ON, parser=lambda _s: parts)
        self.assertEqual(plan.expected_bytes, 10 + 400)
