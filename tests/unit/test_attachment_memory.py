"""Peak memory of one message at the attachment caps (25 MiB decoded in
three parts), measured with tracemalloc on top of the fetched bytes: the
figures docs/attachments.md quotes. The bounds fail if a mode starts
holding whole extra copies of the attachments."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime
from typing import Any, Iterable

from twisted.internet import defer
from twisted.trial import unittest

from imapsvc.core.email_data import map_message
from imapsvc.core.event import build_encoded_entry
from imapsvc.model import Limits
from imapsvc.objectstore.upload import ObjectUploader
from tests.attachment_fixtures import message_with_attachments, payload
from tests.unit.test_attachment_content import structure_message

MIB = 1024 * 1024
NOW = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC)
T = "11111111-1111-4111-8111-111111111111"
PID = "22222222-2222-4222-8222-222222222222"


class DiscardingStore:
    """Consumes and drops what it is given (what S3 does from our side)."""

    def put(self, key: str, chunks: Iterable[bytes], content_type: str) -> Any:
        for _ in chunks:
            pass
        return defer.succeed(None)


def at_the_caps(limits: Limits) -> Any:
    files = [
        ("a.bin", "application/octet-stream", payload(1, 10 * MIB - 64)),
        ("b.bin", "application/octet-stream", payload(2, 10 * MIB - 64)),
        ("c.bin", "application/octet-stream", payload(3, 5 * MIB - 64)),
    ]
    return structure_message(message_with_attachments(files), limits)


def peak_of(f: Any) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        f()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


class PeakMemoryTests(unittest.TestCase):
    def test_inline_holds_about_three_encoded_copies(self) -> None:
        limits = Limits(attachment_mode="inline")
        msg = at_the_caps(limits)
        encoded = sum(len(v) for v in msg.contents.values())
        self.assertGreater(encoded, 33 * MIB)

        def run() -> None:
            mapped = map_message(msg, T, PID, NOW, limits)
            self.assertIn("content", mapped.email_data["attachments"][0])
            # What the pipeline records: the payload kept as the encoder's bytes.
            build_encoded_entry(T, PID, mapped.email_data, "e", "x", NOW)

        peak = peak_of(run)
        # content strings + payload_json bytes, whose orjson buffer grows as it
        # writes (+ one part's decode in flight): about 4.4 copies measured.
        self.assertLess(peak, 4.8 * encoded, f"peak {peak / MIB:.0f} MiB")

    def test_store_holds_one_part_and_one_slice(self) -> None:
        limits = Limits(attachment_mode="store")
        msg = at_the_caps(limits)
        uploader = ObjectUploader(DiscardingStore(), limits)

        def run() -> None:
            [out] = self.successResultOf(uploader.store_batch(T, PID, "INBOX", [msg]))
            mapped = map_message(out, T, PID, NOW, limits)
            # What the pipeline records: the payload kept as the encoder's bytes.
            build_encoded_entry(T, PID, mapped.email_data, "e", "x", NOW)

        peak = peak_of(run)
        # Encoded and cleaned 1 MiB slices and their decoded bytes; an S3
        # store adds its part buffer (IMAP_OBJECT_STORE_PART_BYTES, twice).
        self.assertLess(peak, 6 * MIB, f"peak {peak / MIB:.1f} MiB")
