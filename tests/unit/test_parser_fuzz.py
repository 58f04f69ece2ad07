"""Hypothesis: wild input never makes the mapping raise or emit bad addresses."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core.addresses import is_valid_address, parse_addresses
from imapsvc.core.email_data import map_message
from imapsvc.core.event import build_stream_entry, event_ids
from imapsvc.model import FetchedMessage, Limits
from tests.contract_validator import validate_stream_entry

NOW = datetime(2026, 2, 1, tzinfo=UTC)
T = "11111111-1111-4111-8111-111111111111"
P = "22222222-2222-4222-8222-222222222222"

_fields = st.sampled_from(
    [b"From", b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"References",
     b"In-Reply-To", b"Content-Type", b"Content-Transfer-Encoding", b"X-Junk"]
)  # fmt: skip
_header_lines = st.lists(
    st.tuples(_fields, st.binary(max_size=80)).map(lambda t: t[0] + b": " + t[1] + b"\r\n"),
    max_size=12,
).map(b"".join)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(testcase: SynchronousTestCase, msg: FetchedMessage) -> None:
    result = map_message(msg, T, P, NOW, Limits())
    data = result.email_data
    json.dumps(data, allow_nan=False).encode("utf-8")
    for addr in ([data["from"]] if data["from"] else []) + data["to"] + data["cc"]:
        testcase.assertTrue(is_valid_address(addr["email"]), addr)
    if result.skip_reason is None:
        event_id, execution_id = event_ids(T, P, result.dedupe_key)
        fields = build_stream_entry(T, P, data, event_id, execution_id, NOW)
        testcase.assertEqual(validate_stream_entry(fields), [])


class FuzzTests(SynchronousTestCase):
    @SETTINGS
    @given(st.binary(max_size=2000))
    def test_arbitrary_raw_bytes(self, raw: bytes) -> None:
        check(self, FetchedMessage("INBOX", "1", 1, len(raw), None, raw=raw))

    @SETTINGS
    @given(_header_lines, st.binary(max_size=500))
    def test_header_shaped_raw(self, header: bytes, body: bytes) -> None:
        raw = b"From: a@example.com\r\n" + header + b"\r\n" + body
        check(self, FetchedMessage("INBOX", "1", 1, len(raw), None, raw=raw))

    @SETTINGS
    @given(st.binary(max_size=2000), st.one_of(st.none(), st.text(max_size=30)))
    def test_arbitrary_header_bytes(self, header: bytes, internal: str | None) -> None:
        check(self, FetchedMessage("INBOX", "1", 1, 10, internal, header=header))

    @SETTINGS
    @given(st.lists(st.text(max_size=80), max_size=4))
    def test_unicode_addresses_stay_valid(self, values: list[str]) -> None:
        for addr in parse_addresses(values):
            self.assertTrue(is_valid_address(addr["email"]), addr)
            self.assertIsInstance(addr["name"], str)
            addr["name"].encode("utf-8")

    @SETTINGS
    @given(st.text(max_size=200))
    def test_unicode_from_header(self, value: str) -> None:
        header = b"From: " + value.encode("utf-8", "surrogatepass") + b"\r\nSubject: x\r\n\r\n"
        check(self, FetchedMessage("INBOX", "1", 1, 10, None, header=header))
