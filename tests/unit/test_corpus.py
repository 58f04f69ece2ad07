"""Every fixture of ``tests/fixtures/corpus`` through both fetch paths.

The whole-message path hands ``raw`` to :func:`map_message`; the structure
path hands over the header block (cut here, independently, the way
``BODY[HEADER]`` returns it: up to and including the empty line), the parts
and the text bytes. Both must give the same ``emailData`` and pass the
contract validator.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime

from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core.email_data import SKIP_NO_FROM, map_message
from imapsvc.core.event import build_stream_entry, event_ids
from imapsvc.core.mime_parts import split_message
from imapsvc.core.plan import plan_message
from imapsvc.model import FetchedMessage, Limits
from tests.contract_validator import validate_stream_entry

CORPUS = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "corpus")
TENANT = "11111111-1111-4111-8111-111111111111"
PROVIDER = "22222222-2222-4222-8222-222222222222"
FETCHED_AT = datetime(2026, 2, 1, 8, 0, 0, 123456, tzinfo=UTC)
INTERNAL = "2026-01-31T23:59:58.000Z"

# name -> (subject, from email or None (skipped), to count, attachment names, text snippet)
EXPECTED = {
    "plain": ("Printer on floor 3 is jammed", "alice@example.com", 1, [], "Café is closed"),
    "alternative": ("Re: Ticket #1234 VPN drops", "carol@example.net", 2, [], "every 10 minutes"),
    "latin1": ("Problème de facturation", "francois@example.fr", 1, [], "erronée"),
    "cp1252": ("Smart quotes", "grace@example.com", 1, [], "\u201cit works\u201d \u2013"),
    "koi8r": ("Не работает почта", "ivan@example.ru", 1, [], "Здравствуйте"),
    "iso2022jp": ("請求書の件", "yamada@example.jp", 1, [], "請求書を送ります"),
    "raw8bit_headers": ("Grüße aus Köln", "joerg@example.de", 1, [], "Viele Grüße"),
    "rfc2047_names": ("Rechnung für Januar €", "hans.mueller@example.de", 2, [], "Siehe"),
    "group_addresses": ("Group addressed", "lead@example.com", 3, [], "Hello group."),
    "undisclosed": ("Monthly update", "newsletter@example.com", 0, [], "News."),
    "no_message_id": ("No id here", "henry@example.com", 1, [], "no Message-ID"),
    "dup_message_id_a": ("Duplicate id a", "ivy@example.com", 1, [], "First copy."),
    "dup_message_id_b": ("Duplicate id b", "ivy@example.com", 1, [], "Second delivery"),
    "nested_rfc822": (
        "Fwd: Original problem",
        "jack@example.com",
        1,
        ["original.eml"],
        "forwarded message below",
    ),
    "inline_image": ("Screenshot inline", "liam@example.com", 1, ["screenshot.png"], "See the"),
    "tnef": ("Outlook rich text", "mia@example.com", 1, ["winmail.dat"], "attached file"),
    "html_only": ("HTML only", "noah@example.com", 1, [], "The portal is down & nobody"),
    "broken_boundary": ("Broken boundaries", "olivia@example.com", 1, ["data.bin"], "missing"),
    "missing_date": ("No date", "paul@example.com", 1, [], "Undated."),
    "long_header": ("Long header", "quinn@example.com", 1, [], "Short body."),
    "no_from": ("Who sent this?", None, 1, [], "Nobody."),
    "bad_from": ("Junk From", None, 1, [], "From is junk."),
    "rfc2231_attachment": (
        "Invoice attached",
        "rita@example.com",
        1,
        ["Rechnung März.pdf"],
        "Invoice attached.",
    ),
    "autoreply": ("Automatic reply: Printer on floor 3 is jammed", "sam@example.net", 1, [],
                  "out of the office"),
    "bounce": (
        "Undelivered Mail Returned to Sender",
        "MAILER-DAEMON@mx.example.org",
        1,
        ["attachment-2.txt", "attachment-3.txt"],
        "could not\nbe delivered",
    ),
    "list_mail": ("[announce] Version 4.2 released", "announce@lists.example.com", 1, [],
                  "Version 4.2 is out."),
    "tnef_files": ("Report from Outlook", "nora@example.com", 1, ["winmail.dat"], "attached"),
    "split_words": (
        "Ihre Überweisung über 100 € ist eingegangen",
        "service@bank.example.ch",
        1,
        [],
        "Zahlungseingang",
    ),
}  # fmt: skip

# name -> (autoReply, bounce, bulk, signals); every other fixture: nothing.
AUTOMATED = {
    "autoreply": (
        True,
        False,
        False,
        [
            "auto-submitted: auto-replied (vacation)",
            "x-auto-response-suppress: All",
            "return-path: <>",
        ],
    ),
    "bounce": (
        False,
        True,
        False,
        [
            "content-type: multipart/report; report-type=delivery-status",
            "content-type: message/delivery-status",
            "x-failed-recipients: nobody@example.com",
            "from: Mail Delivery System <MAILER-DAEMON@mx.example.org>",
            "return-path: <>",
        ],
    ),
    "list_mail": (
        False,
        False,
        True,
        [
            "precedence: list",
            "list-id: Product announcements <announce.lists.example.com>",
            "list-unsubscribe: <mailto:announce-leave@lists.example.com>,"
            " <https://lists.example.com/unsubscribe/announce>",
        ],
    ),
}

_BLANK = re.compile(rb"\r?\n\r?\n")


def load(name: str) -> bytes:
    with open(os.path.join(CORPUS, name + ".eml"), "rb") as f:
        return f.read()


def raw_message(raw: bytes, uid: int = 7) -> FetchedMessage:
    return FetchedMessage("INBOX", "1735234567", uid, len(raw), INTERNAL, raw=raw)


DEFAULT_LIMITS = Limits()


def structure_message(
    raw: bytes, uid: int = 7, limits: Limits = DEFAULT_LIMITS
) -> FetchedMessage:
    """What the structure path hands over: the sections ``plan_message``
    asks for (here cut from the raw message), nothing else."""
    match = _BLANK.search(raw)
    header = raw if match is None else raw[: match.end()]
    _, parts, every = split_message(raw, want=lambda _p: True)
    meta = {"size": len(raw), "bodystructure": ()}
    plan = plan_message(uid, meta, limits, parser=lambda _: parts)
    texts = {s: every[s] for s, _ in plan.sections}
    return FetchedMessage(
        "INBOX", "1735234567", uid, len(raw), INTERNAL, header=header, parts=parts, texts=texts
    )


def mapped(msg: FetchedMessage, limits: Limits = DEFAULT_LIMITS):
    return map_message(msg, TENANT, PROVIDER, FETCHED_AT, limits)


def entry_for(result) -> dict[str, str]:
    event_id, execution_id = event_ids(TENANT, PROVIDER, result.dedupe_key)
    return build_stream_entry(
        TENANT, PROVIDER, result.email_data, event_id, execution_id, FETCHED_AT
    )


def without_sizes(data: dict) -> dict:
    out = dict(data)
    out["attachments"] = [{k: v for k, v in a.items() if k != "size"} for a in data["attachments"]]
    return out


class CorpusTests(SynchronousTestCase):
    def test_every_fixture_has_expectations(self) -> None:
        names = {f[:-4] for f in os.listdir(CORPUS) if f.endswith(".eml")}
        self.assertEqual(names, set(EXPECTED))

    def test_expected_values_both_paths(self) -> None:
        for name, (subject, sender, to_count, attachments, snippet) in EXPECTED.items():
            raw = load(name)
            for path, msg in (("raw", raw_message(raw)), ("structure", structure_message(raw))):
                where = f"{name} ({path})"
                result = mapped(msg)
                data = result.email_data
                self.assertEqual(data["subject"], subject, where)
                self.assertEqual(len(data["to"]), to_count, where)
                self.assertEqual([a["name"] for a in data["attachments"]], attachments, where)
                self.assertIn(snippet, data["body"]["text"], where)
                if sender is None:
                    self.assertEqual(result.skip_reason, SKIP_NO_FROM, where)
                    self.assertIsNone(data["from"], where)
                    continue
                self.assertIsNone(result.skip_reason, where)
                self.assertEqual(data["from"]["email"], sender, where)
                errors = validate_stream_entry(entry_for(result))
                self.assertEqual(errors, [], where)

    def test_paths_agree(self) -> None:
        for name in EXPECTED:
            raw = load(name)
            a = mapped(raw_message(raw))
            b = mapped(structure_message(raw))
            self.assertEqual(without_sizes(a.email_data), without_sizes(b.email_data), name)
            self.assertEqual(a.message_id_key, b.message_id_key, name)
            self.assertEqual(a.skip_reason, b.skip_reason, name)
            for x, y in zip(a.email_data["attachments"], b.email_data["attachments"]):
                self.assertLessEqual(abs(x["size"] - y["size"]), 4, name)

    def test_automated_both_paths(self) -> None:
        for name in EXPECTED:
            raw = load(name)
            auto, bounce, bulk, signals = AUTOMATED.get(name, (False, False, False, []))
            for path, msg in (("raw", raw_message(raw)), ("structure", structure_message(raw))):
                got = mapped(msg).email_data["automated"]
                self.assertEqual(
                    got,
                    {"autoReply": auto, "bounce": bounce, "bulk": bulk, "signals": signals},
                    f"{name} ({path})",
                )

    def test_duplicate_message_ids_share_the_key(self) -> None:
        a = mapped(raw_message(load("dup_message_id_a"), uid=1))
        b = mapped(raw_message(load("dup_message_id_b"), uid=2))
        self.assertEqual(a.message_id_key, "<dup-id-11@example.com>")
        self.assertEqual(a.message_id_key, b.message_id_key)
        self.assertEqual(a.email_data["id"], "<DUP-ID-11@Example.COM>")
        self.assertNotEqual(a.dedupe_key, b.dedupe_key)

    def test_synthetic_id_is_stable(self) -> None:
        raw = load("no_message_id")
        a = mapped(raw_message(raw))
        b = mapped(structure_message(raw))
        self.assertIsNone(a.message_id_key)
        self.assertRegex(a.email_data["id"], r"^<[0-9a-f]{32}@imapsvc\.local>$")
        self.assertEqual(a.email_data["id"], b.email_data["id"])
        self.assertEqual(a.email_data["threadId"], a.email_data["id"])
        # A different INTERNALDATE (another copy) gives another id.
        other = map_message(
            FetchedMessage("INBOX", "1", 7, len(raw), "2026-01-01T00:00:00.000Z", raw=raw),
            TENANT,
            PROVIDER,
            FETCHED_AT,
            Limits(),
        )
        self.assertNotEqual(other.email_data["id"], a.email_data["id"])

    def test_missing_date_uses_internaldate(self) -> None:
        data = mapped(raw_message(load("missing_date"))).email_data
        self.assertEqual(data["receivedAt"], INTERNAL)
        no_internal = FetchedMessage("INBOX", "1", 7, 10, None, raw=load("missing_date"))
        data = map_message(no_internal, TENANT, PROVIDER, FETCHED_AT, Limits()).email_data
        self.assertEqual(data["receivedAt"], "2026-02-01T08:00:00.123Z")

    def test_threading(self) -> None:
        data = mapped(raw_message(load("alternative"))).email_data
        self.assertEqual(data["references"], ["<root-1@example.org>", "<reply-1@example.net>"])
        self.assertEqual(data["inReplyTo"], "<root-1@example.org>")
        self.assertEqual(data["threadId"], "<root-1@example.org>")
        self.assertIn("<b>10 minutes</b>", data["body"]["html"])
        self.assertEqual([c["email"] for c in data["cc"]], ["eve@example.org"])

    def test_long_header_is_capped(self) -> None:
        data = mapped(raw_message(load("long_header"))).email_data
        self.assertEqual(len(data["headers"]["x-long"]), 8192)
        self.assertEqual(data["ingressSkipReasons"], [])
        reasons = [r for r in data["ingressNotes"] if r["reason"] == "header_truncated"]
        self.assertEqual(reasons[0]["type"], "header")
        self.assertEqual(len(reasons), 1)
        self.assertEqual(reasons[0]["size"], 102400)

    def test_names_and_groups(self) -> None:
        data = mapped(raw_message(load("rfc2047_names"))).email_data
        self.assertEqual(data["from"]["name"], "Müller, Hans")
        self.assertEqual(
            data["to"],
            [
                {"email": "anna@example.de", "name": "Schmidt, Anna"},
                {"email": "emile@example.fr", "name": "Émile"},
            ],
        )
        data = mapped(raw_message(load("group_addresses"))).email_data
        self.assertEqual(
            [a["email"] for a in data["to"]],
            ["a1@example.org", "a2@example.org", "outside@example.net"],
        )
        data = mapped(raw_message(load("raw8bit_headers"))).email_data
        self.assertEqual(data["from"]["name"], "Jörg Müller")
        self.assertEqual(data["headers"]["x-legacy"], "café crème")

    def test_tnef_files_listed_when_enabled_both_paths(self) -> None:
        on = Limits(expand_tnef=True)
        raw = load("tnef_files")
        results = [mapped(raw_message(raw), on), mapped(structure_message(raw, limits=on), on)]
        for result in results:
            data = result.email_data
            self.assertEqual(
                [(a["id"], a["name"], a["contentType"], a["size"]) for a in data["attachments"]],
                [
                    ("2/tnef/1", "Quarterly report 2025.pdf", "application/pdf", 1033),
                    ("2/tnef/2", "notes.txt", "text/plain", 7),
                    ("2/tnef/3", "image001.png", "image/png", 108),
                ],
            )
            self.assertEqual(data["ingressSkipReasons"], [])
            self.assertEqual(validate_stream_entry(entry_for(result)), [])
        self.assertEqual(results[0].email_data, results[1].email_data)
        # The zero-filled winmail.dat of "tnef" holds no file: it stays listed.
        data = mapped(structure_message(load("tnef"), limits=on), on).email_data
        self.assertEqual([a["name"] for a in data["attachments"]], ["winmail.dat"])

    def test_paths_agree_with_tnef_expansion(self) -> None:
        on = Limits(expand_tnef=True)
        for name in EXPECTED:
            raw = load(name)
            a = mapped(raw_message(raw), on).email_data
            b = mapped(structure_message(raw, limits=on), on).email_data
            self.assertEqual(without_sizes(a), without_sizes(b), name)

    def test_characters_split_across_encoded_words(self) -> None:
        for msg in (raw_message(load("split_words")), structure_message(load("split_words"))):
            data = mapped(msg).email_data
            self.assertEqual(data["from"]["name"], "Kundenservice Bank Zürich")
            self.assertEqual(data["subject"], "Ihre Überweisung über 100 € ist eingegangen")
            self.assertNotIn("\ufffd", data["headers"]["subject"])

    def test_html_only_text_drops_script_and_style(self) -> None:
        body = mapped(raw_message(load("html_only"))).email_data["body"]
        self.assertNotIn("color", body["text"])
        self.assertNotIn("var x", body["text"])
        self.assertIn("- Since 09:00\n- All users", body["text"])

    def test_inline_image(self) -> None:
        (att,) = mapped(raw_message(load("inline_image"))).email_data["attachments"]
        self.assertEqual(att["contentType"], "image/png")
        self.assertTrue(att["isInline"])
        self.assertIn("shot1@example.com", att["contentId"])
        # Decoded size 1024, estimated from the encoded size: within a few bytes.
        self.assertLessEqual(abs(att["size"] - 1024), 4)
