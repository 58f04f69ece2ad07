"""SPECIAL-USE (RFC 6154) and UID SEARCH SINCE against the rig's Dovecot
(issue 13 items 4 and 6), through the real client."""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from imapsvc.core.folders import expand_wildcard, resolve_folder
from tests.integration import test_protocol_dovecot as base
from tests.rig import mail
from tests.rig.dovecot import DEFAULT_PASSWORD


class DovecotSpecialUseTests(TestCase):
    timeout = 60
    setUp = base.DovecotProtocolTests.setUp
    open = base.DovecotProtocolTests.open
    _close = base.DovecotProtocolTests._close
    login = base.DovecotProtocolTests.login

    @defer.inlineCallbacks
    def test_list_carries_special_use_and_the_wildcard_skips_them(self):
        for name in ("Sent", "Trash", "Junk", "Drafts", "Support", "Billing"):
            mail.create_folder(self.user, DEFAULT_PASSWORD, name)
        client, _before, caps = yield self.login()
        self.assertIn(b"SPECIAL-USE", caps)
        listing = yield client.list_folders()
        flags = {name: {f.lower() for f in fl} for fl, _d, name in listing}
        self.assertIn("\\sent", flags["Sent"])
        self.assertIn("\\junk", flags["Junk"])
        self.assertIn("\\trash", flags["Trash"])
        self.assertIn("\\drafts", flags["Drafts"])
        self.assertEqual(expand_wildcard(["*"], listing), ("INBOX", "Billing", "Support"))
        # Named explicitly, a special-use folder is still found.
        self.assertEqual(resolve_folder("Sent", listing), "Sent")
        yield client.logout()

    @defer.inlineCallbacks
    def test_uid_search_since(self):
        for n, when in enumerate((datetime(2025, 10, 1, 23, 30, tzinfo=UTC),
                                  datetime(2025, 12, 24, 9, 0, tzinfo=UTC),
                                  datetime(2025, 9, 1, 9, 0, tzinfo=UTC),
                                  datetime(2026, 1, 2, 9, 0, tzinfo=UTC))):
            raw = b"Subject: %d\r\n\r\nbody\r\n" % n
            mail.append(self.user, DEFAULT_PASSWORD, "INBOX", raw, internaldate=when)
        client, _before, _caps = yield self.login()
        yield client.examine_folder("INBOX")
        self.assertEqual((yield client.uid_search_since("1-Dec-2025")), [2, 4])
        self.assertEqual((yield client.uid_search_since("1-Oct-2025")), [1, 2, 4])
        self.assertEqual((yield client.uid_search_since("3-Jan-2026")), [])
        yield client.logout()
