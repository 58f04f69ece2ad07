"""Address parsing and the address validator."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core.addresses import is_valid_address, parse_addresses, simple_addresses


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


class SimpleFastPathTests(SynchronousTestCase):
    """The fast path agrees with the stdlib parser wherever it answers."""

    @staticmethod
    def stdlib(texts):
        from email.utils import getaddresses

        return [(n, a) for n, a in getaddresses(texts) if a]

    @settings(max_examples=400, derandomize=True, deadline=None)
    @given(st.lists(st.text(alphabet="ab.-_=?@<> ,\tö1", max_size=40), min_size=1, max_size=3))
    def test_agrees_with_getaddresses(self, texts):
        fast = simple_addresses(texts)
        if fast is not None:
            self.assertEqual(fast, self.stdlib(texts))

    _name = st.text(alphabet="ab .-_=?\u00f6\t1'", max_size=20)
    _addr = st.builds(
        lambda local, domain: local + "@" + domain,
        st.text(alphabet="ab.-_1+'", max_size=8),
        st.text(alphabet="ab.-1\u00f6", max_size=8),
    )
    _part = st.one_of(
        _addr,
        st.builds(lambda n, a, sp: n + sp + "<" + a + ">", _name, _addr,
                  st.sampled_from(["", " ", "  ", "\t"])),
    )

    @settings(max_examples=400, derandomize=True, deadline=None)
    @given(st.lists(st.lists(_part, min_size=1, max_size=4).map(", ".join), min_size=1,
                    max_size=2))
    def test_agrees_on_plausible_lists(self, texts):
        fast = simple_addresses(texts)
        if fast is not None:
            self.assertEqual(fast, self.stdlib(texts))

    def test_common_forms_take_the_fast_path(self):
        for text in [
            "Alice Example <alice@example.org>",
            "a@b.com, Jane Q. Doe <c@d.org>",
            "=?utf-8?q?J=C3=B6rg?= <j@x.de>",
        ]:
            self.assertIsNotNone(simple_addresses([text]), text)
            self.assertEqual(simple_addresses([text]), self.stdlib([text]))

    def test_anything_else_falls_back(self):
        for text in ['"Doe, J" <j@x.com>', "a@b.com (comment)", "Team: a@b.com;", "x\\y <a@b.c>"]:
            self.assertIsNone(simple_addresses([text]), text)


class CountedTests(SynchronousTestCase):
    def test_counts_beyond_the_cap(self) -> None:
        from imapsvc.core.addresses import MAX_ADDRESSES, parse_addresses_counted

        many = ", ".join(f"u{i}@example.com" for i in range(MAX_ADDRESSES + 7))
        found, total = parse_addresses_counted([many + ", not-an-address"])
        self.assertEqual((len(found), total), (MAX_ADDRESSES, MAX_ADDRESSES + 7))
        found, total = parse_addresses_counted(["a@example.com, junk, b@example.org"])
        self.assertEqual((len(found), total), (2, 2))
        self.assertEqual(parse_addresses_counted([]), ([], 0))
