"""``attachment_metadata``: names, ids, inline flags and the caps."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core.attachments import attachment_metadata
from imapsvc.core.bodystructure import make_part
from imapsvc.model import Limits
from tests.unit.test_structure_paths import structure_parts


def part(section, content_type="application/octet-stream", size=100, **kw):
    return make_part(
        section=section,
        content_type=content_type,
        params=kw.pop("params", {}),
        encoding=kw.pop("encoding", "7bit"),
        size=size,
        lines=None,
        content_id=kw.pop("content_id", None),
        disposition=kw.pop("disposition", None),
        disposition_params=kw.pop("disposition_params", {}),
        in_related=kw.pop("in_related", False),
    )


class Metadata(SynchronousTestCase):
    def test_mixed_pdf(self) -> None:
        attachments, reasons = attachment_metadata(structure_parts("mixed_pdf"), Limits())
        self.assertEqual(
            attachments,
            [
                {
                    "id": "2",
                    "name": "report.pdf",
                    "contentType": "application/pdf",
                    "size": 3000,
                    "contentId": None,
                    "isInline": False,
                }
            ],
        )
        self.assertEqual(reasons, [])

    def test_related_image_is_inline(self) -> None:
        (image,), _ = attachment_metadata(structure_parts("related"), Limits())
        self.assertEqual(image["id"], "2.2")
        self.assertEqual(image["name"], "attachment-2.2.png")
        self.assertEqual(image["contentId"], "logo@x")
        self.assertTrue(image["isInline"])

    def test_content_id_outside_related_is_not_inline(self) -> None:
        (item,), _ = attachment_metadata([part("2", content_id="<a@b>")], Limits())
        self.assertEqual(item["contentId"], "a@b")
        self.assertFalse(item["isInline"])
        (item,), _ = attachment_metadata([part("2", disposition="inline")], Limits())
        self.assertTrue(item["isInline"])

    def test_nested_message_and_tnef_names(self) -> None:
        (message,), _ = attachment_metadata(structure_parts("nested"), Limits())
        self.assertEqual(
            (message["name"], message["contentType"]), ("forwarded-message.eml", "message/rfc822")
        )
        (tnef,), _ = attachment_metadata(structure_parts("tnef"), Limits())
        self.assertEqual(
            (tnef["name"], tnef["contentType"]), ("winmail.dat", "application/ms-tnef")
        )

    def test_text_attachments_and_names(self) -> None:
        attachments, _ = attachment_metadata(structure_parts("rfc2231"), Limits())
        self.assertEqual(
            [(a["id"], a["name"]) for a in attachments],
            [("2", "\u20ac report.bin"), ("3", "\u00e4bc.txt"), ("4", "caf\u00e9.bin")],
        )

    def test_size_is_positive_integer(self) -> None:
        (item,), _ = attachment_metadata([part("1", size=0)], Limits())
        self.assertEqual(item["size"], 1)
        self.assertEqual(item["name"], "attachment-1.bin")


class Caps(SynchronousTestCase):
    def test_too_large_is_listed_and_reported(self) -> None:
        limits = Limits(max_attachment_bytes=1000, max_total_attachment_bytes=10_000)
        attachments, reasons = attachment_metadata(
            [part("1", size=500), part("2", size=5000, disposition_params={"filename": "big.iso"})],
            limits,
        )
        self.assertEqual([a["id"] for a in attachments], ["1", "2"])
        self.assertEqual(
            reasons,
            [
                {
                    "type": "attachment",
                    "reason": "attachment_over_max_bytes",
                    "attachmentId": "2",
                    "attachmentName": "big.iso",
                    "size": 5000,
                    "cap": 1000,
                    "detail": reasons[0]["detail"],
                }
            ],
        )
        self.assertIn("5000", reasons[0]["detail"])

    def test_total_cap(self) -> None:
        limits = Limits(max_attachment_bytes=1000, max_total_attachment_bytes=1500)
        attachments, reasons = attachment_metadata(
            [part("1", size=800), part("2", size=800), part("3", size=600)], limits
        )
        self.assertEqual(len(attachments), 3)
        self.assertEqual(
            [(r["type"], r["reason"], r["attachmentId"], r["size"], r["cap"]) for r in reasons],
            [("attachment", "attachment_total_bytes_exceeded", "2", 800, 1500)],
        )

    def test_count_cap_drops_the_rest(self) -> None:
        limits = Limits(max_attachment_count=2)
        attachments, reasons = attachment_metadata([part(str(i)) for i in range(1, 6)], limits)
        self.assertEqual([a["id"] for a in attachments], ["1", "2"])
        self.assertEqual(
            reasons,
            [
                {
                    "type": "attachment",
                    "reason": "attachment_count_exceeded",
                    "size": 5,
                    "cap": 2,
                    "detail": reasons[0]["detail"],
                }
            ],
        )

    def test_body_text_is_not_an_attachment(self) -> None:
        attachments, reasons = attachment_metadata(structure_parts("alternative"), Limits())
        self.assertEqual((attachments, reasons), ([], []))
