"""Address parsing and the address validator."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core.addresses import is_valid_address, parse_addresses


class ValidatorTests(SynchronousTestCase):
    def test_accepts(self) -> None:
        for addr in (
            "a@b.co",
            "first.last+tag@sub.example.org",
            "o'neil@x.io",
            "x@xn--mnchen-3ya.de",
        ):
            self.assertTrue(is_valid_address(addr), addr)

    def test_rejects(self) -> None:
        for addr in (
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a..b@example.com",
            ".a@example.com",
            "a@-x.com",
            "a@x.c",
            "a@[1.2.3.4]",
            '"a b"@example.com',
            "jörg@example.de",
            "a b@example.com",
            "a@exa mple.com",
            "a@example.123",
            None,
            42,
        ):
            self.assertFalse(is_valid_address(addr), addr)


class ParseTests(SynchronousTestCase):
    def test_groups_flattened_empty_dropped(self) -> None:
        out = parse_addresses(["G: a@example.com, <b@example.com>;, undisclosed-recipients:;, <>"])
        self.assertEqual([a["email"] for a in out], ["a@example.com", "b@example.com"])

    def test_encoded_comma_does_not_split(self) -> None:
        (addr,) = parse_addresses(["=?utf-8?q?Doe=2C_John?= <jd@example.com>"])
        self.assertEqual(addr, {"email": "jd@example.com", "name": "Doe, John"})

    def test_unicode_domain_becomes_idna(self) -> None:
        (addr,) = parse_addresses(["x@münchen.de"])
        self.assertEqual(addr["email"], "x@xn--mnchen-3ya.de")

    def test_invalid_dropped_never_empty(self) -> None:
        out = parse_addresses(['nobody, a@b@c, user@localhost, "" <>, ok@example.com'])
        self.assertEqual(out, [{"email": "ok@example.com", "name": ""}])

    def test_huge_field_is_bounded(self) -> None:
        value = ", ".join(f"u{i}@example.com" for i in range(20000))
        out = parse_addresses([value])
        self.assertTrue(0 < len(out) <= 500)
