"""Stream entries, deterministic ids and ledger keys."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime

from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core import ledger
from imapsvc.core.dates import iso_z
from imapsvc.core.event import (
    StreamEntry,
    build_auto_paused_entry,
    build_encoded_entry,
    build_stream_entry,
    encode_fields,
    event_ids,
)
from tests.contract_validator import validate_stream_entry

T = "11111111-1111-4111-8111-111111111111"
P = "22222222-2222-4222-8222-222222222222"
NOW = datetime(2026, 1, 10, 12, 34, 56, 789123, tzinfo=UTC)


def email_data() -> dict:
    return {
        "id": "<a@example.com>",
        "provider": "imap",
        "providerId": P,
        "tenant": T,
        "receivedAt": "2026-01-10T12:00:00.000Z",
        "from": {"email": "a@example.com", "name": "A"},
        "to": [],
        "cc": [],
        "subject": "s",
        "body": {"text": "t", "html": ""},
        "attachments": [],
        "threadId": "<a@example.com>",
        "references": [],
        "headers": {"subject": "s"},
        "ingressSkipReasons": [],
        "imap": {"mailbox": "INBOX", "uidValidity": "1", "uid": 3, "internalDate": None, "size": 9},
        "automated": {"autoReply": False, "bounce": False, "bulk": False, "signals": []},
    }


class EventTests(SynchronousTestCase):
    def test_ids_deterministic_and_distinct(self) -> None:
        a = event_ids(T, P, "imap:INBOX:1:3")
        self.assertEqual(a, event_ids(T, P, "imap:INBOX:1:3"))
        self.assertNotEqual(a[0], a[1])
        self.assertNotEqual(a, event_ids(T, P, "imap:INBOX:1:4"))
        self.assertNotEqual(a, event_ids(T, "other", "imap:INBOX:1:3"))
        # Pinned: a change of namespace would re-key every published event.
        self.assertEqual(a, event_ids(*[T, P, "imap:INBOX:1:3"]))

    def test_entry(self) -> None:
        event_id, execution_id = event_ids(T, P, "imap:INBOX:1:3")
        fields = build_stream_entry(T, P, email_data(), event_id, execution_id, NOW)
        self.assertEqual(validate_stream_entry(fields), [])
        self.assertEqual(fields["timestamp"], "2026-01-10T12:34:56.789Z")
        self.assertEqual(fields["event_type"], "INBOUND_EMAIL_RECEIVED")
        payload = json.loads(fields["payload_json"])
        self.assertEqual(payload["tenantId"], T)
        self.assertEqual(payload["emailData"]["id"], "<a@example.com>")
        self.assertNotIn(" ", fields["payload_json"][:20])

    def test_ids_are_uuid5_under_the_namespace(self) -> None:
        import uuid

        from imapsvc.core.event import NAMESPACE

        for identity in ("imap:INBOX:1:3", "", "caf\u00e9 \U0001f600", "x" * 500):
            base = "\x00".join((T, P, identity))
            self.assertEqual(
                event_ids(T, P, identity),
                (str(uuid.uuid5(NAMESPACE, "event\x00" + base)),
                 str(uuid.uuid5(NAMESPACE, "execution\x00" + base))))
        # Pinned: published ids must never change.
        self.assertEqual(event_ids(T, P, "imap:INBOX:1:3"),
                         ("c1a4e2b6-3951-517a-928e-8501da256217",
                          "baa9e4c3-c03a-5c00-8c50-2d09fbd385ba"))

    def test_validator_catches(self) -> None:
        event_id, execution_id = event_ids(T, P, "x")
        data = email_data()
        data["to"] = [{"email": "", "name": ""}]
        data["threadId"] = "<other@x.com>"
        data["attachments"] = [
            {"id": "2", "name": "a", "contentType": "x/y", "size": 0, "contentId": None,
             "isInline": False}
        ]  # fmt: skip
        fields = build_stream_entry(T, P, data, event_id, execution_id, NOW)
        fields["user_id"] = "u"
        errors = "\n".join(validate_stream_entry(fields))
        for needle in ("to[0].email", "threadId", "size", "user_id"):
            self.assertIn(needle, errors)

    def test_validator_checks_automated(self) -> None:
        event_id, execution_id = event_ids(T, P, "x")
        cases = [
            (None, "automated: not an object"),
            ({"autoReply": "yes", "bounce": False, "bulk": False, "signals": ["a: b"]},
             "automated.autoReply"),
            ({"autoReply": True, "bounce": False, "bulk": False, "signals": []},
             "a flag without a signal"),
            ({"autoReply": False, "bounce": False, "bulk": True, "signals": ["nocolon"]},
             "automated.signals"),
            ({"autoReply": False, "bounce": False, "signals": []}, "automated: keys"),
        ]  # fmt: skip
        for value, needle in cases:
            data = email_data()
            if value is None:
                del data["automated"]
            else:
                data["automated"] = value
            fields = build_stream_entry(T, P, data, event_id, execution_id, NOW)
            self.assertIn(needle, "\n".join(validate_stream_entry(fields)), value)

    def test_auto_paused(self) -> None:
        event_id, fields = build_auto_paused_entry(T, P, "auth_failure", 5, "AUTHFAILED", NOW)
        self.assertEqual(fields["event_id"], event_id)
        self.assertEqual(fields["event_type"], "INBOUND_EMAIL_PROVIDER_AUTO_PAUSED")
        self.assertEqual(validate_stream_entry(fields), [])
        again, _ = build_auto_paused_entry(T, P, "auth_failure", 5, "AUTHFAILED", NOW)
        self.assertEqual(again, event_id)
        payload = json.loads(fields["payload_json"])
        self.assertEqual(payload["failureCount"], 5)
        self.assertEqual(payload["lastErrorCode"], "AUTHFAILED")

    def test_auto_paused_carries_the_apps_pause_fields(self) -> None:
        _, fields = build_auto_paused_entry(
            T, P, "auth_failure", 3, "AUTHENTICATIONFAILED", NOW,
            provider_name="Support", mailbox="support@example.com",
        )
        self.assertEqual(validate_stream_entry(fields), [])
        payload = json.loads(fields["payload_json"])
        self.assertEqual(
            {k: payload[k] for k in ("authFailureCode", "pausedAt", "providerName", "mailbox",
                                     "providerType", "actorType")},
            {"authFailureCode": "AUTHENTICATIONFAILED", "pausedAt": payload["occurredAt"],
             "providerName": "Support", "mailbox": "support@example.com",
             "providerType": "imap", "actorType": "system"},
        )
        # The contract's own fields stay.
        for key in ("tenantId", "providerId", "reason", "failureCount", "lastErrorCode"):
            self.assertIn(key, payload)
        broken = dict(fields, payload_json=json.dumps(dict(payload, actorType="user")))
        self.assertIn("payload.actorType: not 'system'", validate_stream_entry(broken))

    def test_payload_encoding_matches_the_stdlib_and_survives_odd_text(self) -> None:
        event_id, execution_id = event_ids(T, P, "x")
        data = email_data()
        data["subject"] = 'caf\u00e9 "q" \\ \u2028 \x00 \U0001f600'
        fields = build_stream_entry(T, P, data, event_id, execution_id, NOW)
        payload = fields["payload_json"]
        # Same text as the stdlib encoder gave (compact, non-ASCII kept).
        self.assertEqual(payload, json.dumps(json.loads(payload), separators=(",", ":"),
                                             ensure_ascii=False))
        self.assertIn("caf\u00e9", payload)
        # A lone surrogate cannot be UTF-8 (Redis, Postgres): escaped instead.
        data["subject"] = "bad \ud800 text"
        fields = build_stream_entry(T, P, data, event_id, execution_id, NOW)
        fields["payload_json"].encode("utf-8")
        self.assertEqual(json.loads(fields["payload_json"])["emailData"]["subject"],
                         "bad \ud800 text")
        self.assertEqual(validate_stream_entry(fields), [])

    def test_encode_fields_keeps_order(self) -> None:
        fields = {"b": "1", "a": "\u00e9", "payload_json": '{"x":"y"}'}
        text = encode_fields(fields)
        self.assertEqual(list(json.loads(text).items()), list(fields.items()))
        self.assertEqual(text, '{"b":"1","a":"\u00e9","payload_json":"{\\"x\\":\\"y\\"}"}'
                         .encode())

    def test_encoded_entry_is_the_same_entry_with_the_payload_as_bytes(self) -> None:
        event_id, execution_id = event_ids(T, P, "imap:INBOX:1:3")
        data = email_data()
        data["subject"] = 'caf\u00e9 "q" \\ \n\t \u2028 \U0001f600 \x7f'
        plain = build_stream_entry(T, P, data, event_id, execution_id, NOW)
        entry = build_encoded_entry(T, P, data, event_id, execution_id, NOW)
        self.assertIsInstance(entry, StreamEntry)
        self.assertEqual(entry, plain)
        self.assertEqual(list(entry), list(plain))
        self.assertEqual(len(entry), len(plain))
        self.assertIn("payload_json", entry)
        self.assertEqual(entry.wire_payload(), plain["payload_json"].encode("utf-8"))
        # The outbox text, built without decoding the payload, is what the
        # encoder makes of the plain fields.
        self.assertEqual(entry.to_json(), encode_fields(plain))
        self.assertEqual(json.loads(entry.to_json()), plain)
        self.assertEqual(validate_stream_entry(entry), [])
        self.assertEqual(pickle.loads(pickle.dumps(entry)), plain)
        self.assertEqual(StreamEntry({}, b"{}").to_json(), b'{"payload_json":"{}"}')

    def test_iso_z(self) -> None:
        self.assertEqual(iso_z(datetime(2026, 1, 1)), "2026-01-01T00:00:00.000Z")


class LedgerTests(SynchronousTestCase):
    def test_keys(self) -> None:
        self.assertEqual(ledger.dedupe_key("INBOX", "17", 5), "imap:INBOX:17:5")
        self.assertEqual(ledger.normalise_message_id(" <Ab.C@X.Org>\r\n "), "<ab.c@x.org>")
        self.assertEqual(ledger.normalise_message_id("<a b@x>"), "<ab@x>")
        self.assertEqual(ledger.normalise_message_id("bare@x.org"), "<bare@x.org>")
        for junk in (None, "", "   ", "<>", "no id", "<" * 2000):
            self.assertIsNone(ledger.normalise_message_id(junk), junk)
