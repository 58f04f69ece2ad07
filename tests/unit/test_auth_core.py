"""imapsvc.core.auth: which login answers count, and the OAuth2 mechanism."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from imapsvc.core.auth import choose_oauth_mechanism, is_refusal


class RefusalTests(TestCase):
    def test_refusals(self) -> None:
        for code in (None, "", "AUTHENTICATIONFAILED", "authenticationfailed", "ALERT",
                     "AUTHORIZATIONFAILED", "EXPIRED"):
            self.assertTrue(is_refusal("NO", code), code)

    def test_not_refusals(self) -> None:
        for code in ("UNAVAILABLE", "THROTTLED", "LIMIT", "SERVERBUG", "CONTACTADMIN",
                     "PRIVACYREQUIRED", "X-NEW"):
            self.assertFalse(is_refusal("NO", code), code)
        self.assertFalse(is_refusal("BAD", None))
        self.assertFalse(is_refusal("BAD", "AUTHENTICATIONFAILED"))


class MechanismTests(TestCase):
    def test_auto(self) -> None:
        self.assertEqual(choose_oauth_mechanism("auto", ["XOAUTH2", "OAUTHBEARER"]), "xoauth2")
        self.assertEqual(choose_oauth_mechanism("auto", ["oauthbearer", "plain"]), "oauthbearer")
        self.assertEqual(choose_oauth_mechanism("auto", ["PLAIN"]), "xoauth2")
        self.assertEqual(choose_oauth_mechanism("auto", None), "xoauth2")
        self.assertEqual(choose_oauth_mechanism("", ["OAUTHBEARER"]), "oauthbearer")

    def test_forced(self) -> None:
        self.assertEqual(choose_oauth_mechanism("xoauth2", ["OAUTHBEARER"]), "xoauth2")
        self.assertEqual(choose_oauth_mechanism("OAUTHBEARER", ["XOAUTH2"]), "oauthbearer")
