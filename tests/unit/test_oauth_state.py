"""Signed OAuth state, PKCE, presets and the redirect allowlist (pure)."""

import base64
import hashlib
import json
from urllib.parse import parse_qs, urlsplit

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from imapsvc.core import oauth_state as o

KEY = o.state_key("k1")


def claims(**kw):
    base = dict(tenant="t", provider_id="p", nonce="n", expires_at=1000, return_url=None)
    base.update(kw)
    return o.StateClaims(**base)


class StateTests(unittest.TestCase):
    def test_round_trip(self):
        c = claims(return_url="https://app.example.com/x")
        self.assertEqual(o.verify_state(KEY, o.sign_state(KEY, c), now=999), c)

    def test_expired(self):
        token = o.sign_state(KEY, claims(expires_at=1000))
        self.assertRaises(o.StateError, o.verify_state, KEY, token, 1000)

    def test_tampered_body(self):
        token = o.sign_state(KEY, claims())
        body, mac = token.split(".")
        data = json.loads(base64.urlsafe_b64decode(body + "=="))
        data["t"] = "other-tenant"
        forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
        self.assertRaises(o.StateError, o.verify_state, KEY, forged + "." + mac, 0)

    def test_other_key(self):
        token = o.sign_state(o.state_key("k2"), claims())
        self.assertRaises(o.StateError, o.verify_state, KEY, token, 0)

    def test_garbage(self):
        for junk in ["", ".", "a.b.c", "!!!.???", "x" * 5000, None, 7]:
            self.assertRaises(o.StateError, o.verify_state, KEY, junk, 0)

    @given(st.text(max_size=300))
    def test_never_raises_other_errors(self, junk):
        try:
            o.verify_state(KEY, junk, 0)
        except o.StateError:
            pass


class PkceTests(unittest.TestCase):
    def test_s256(self):
        verifier, challenge = o.pkce_pair()
        self.assertGreaterEqual(len(verifier), 43)
        digest = hashlib.sha256(verifier.encode()).digest()
        self.assertEqual(challenge, base64.urlsafe_b64encode(digest).rstrip(b"=").decode())
        # RFC 7636 appendix B example.
        self.assertEqual(
            o.pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        )


class UrlTests(unittest.TestCase):
    def test_authorize_url(self):
        url = o.authorize_url(
            "https://auth.example.com/authorize", "cid", "https://svc/cb", "a b", "ST", "CH"
        )
        q = parse_qs(urlsplit(url).query)
        self.assertEqual(q["access_type"], ["offline"])
        self.assertEqual(q["prompt"], ["consent"])
        self.assertEqual(q["code_challenge_method"], ["S256"])
        self.assertEqual(q["code_challenge"], ["CH"])
        self.assertEqual(q["scope"], ["a b"])
        self.assertEqual(q["redirect_uri"], ["https://svc/cb"])
        self.assertEqual(q["state"], ["ST"])

    def test_presets(self):
        a, t, s = o.endpoints("imap.gmail.com", None, None, None)
        self.assertEqual(s, "https://mail.google.com/")
        a, t, s = o.endpoints("outlook.office365.com", "", "", "")
        self.assertEqual(s, "https://outlook.office.com/IMAP.AccessAsUser.All offline_access")
        self.assertIn("login.microsoftonline.com", t)
        a, t, s = o.endpoints("imap.gmail.com", "https://own/a", "https://own/t", "x")
        self.assertEqual((a, t, s), ("https://own/a", "https://own/t", "x"))
        self.assertRaises(ValueError, o.endpoints, "imap.example.org", None, None, None)


class AllowlistTests(unittest.TestCase):
    ALLOW = ["https://app.example.com/settings", "http://localhost:3000"]

    def test_allowed(self):
        for url in [
            "https://app.example.com/settings",
            "https://app.example.com/settings/",
            "https://APP.example.com/settings?x=1&provider=p",
        ]:
            self.assertTrue(o.redirect_allowed(url, self.ALLOW), url)
        # http only to loopback and only when explicitly allowed (tests).
        self.assertFalse(o.redirect_allowed("http://localhost:3000/", self.ALLOW))
        self.assertTrue(o.redirect_allowed("http://localhost:3000/", self.ALLOW, True))

    def test_exact_path_after_normalisation(self):
        for url in [
            "https://app.example.com/settings/../admin",
            "https://app.example.com/settings/./x",
            "https://app.example.com/settings/%2e%2e/admin",
            "https://app.example.com/settings%2fx",
            "https://app.example.com/settings/email",  # a sub-path: not exact
            "https://app.example.com//settings",
            "https://app.example.com/settings\\..\\x",
            "https://app.example.com/settings#frag",
            "http://localhost:3000/../x",
        ]:
            self.assertFalse(o.redirect_allowed(url, self.ALLOW, True), url)

    def test_refused(self):
        for url in [
            "https://app.example.com.evil.net/settings",
            "https://app.example.com@evil.net/settings",
            "https://evil.net/?https://app.example.com/settings",
            "http://app.example.com/settings",
            "https://app.example.com/settingsevil",
            "https://app.example.com/",
            "http://localhost:3001/",
            "javascript:alert(1)",
            "//evil.net/x",
            "https://app.example.com:99999/settings",
            "",
        ]:
            self.assertFalse(o.redirect_allowed(url, self.ALLOW), url)
        self.assertFalse(o.redirect_allowed("https://app.example.com/settings", []))
