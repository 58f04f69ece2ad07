"""What a folder knows the store holds (imapsvc/core/known_store.py)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core.known_store import KnownStore


class KnownStoreTests(SynchronousTestCase):
    def test_nothing_is_trusted_before_a_lost_session(self):
        known: KnownStore[int] = KnownStore()
        known.remember("INBOX", 7)
        self.assertFalse(known.take_trusted("INBOX"))
        self.assertEqual(known.value("INBOX"), 7)

    def test_a_lost_session_trusts_each_known_value_once(self):
        known: KnownStore[int] = KnownStore()
        known.remember("INBOX", 7)
        known.session_lost()
        self.assertTrue(known.take_trusted("INBOX"))
        self.assertFalse(known.take_trusted("INBOX"))
        self.assertFalse(known.take_trusted("Sent"))

    def test_forgotten_or_reloaded_is_not_trusted(self):
        known: KnownStore[int] = KnownStore()
        known.remember("INBOX", 7)
        known.remember("Sent", 3)
        known.session_lost()
        self.assertEqual(known.forget("INBOX"), 7)
        self.assertFalse(known.take_trusted("INBOX"))
        known.reload()
        self.assertFalse(known.take_trusted("Sent"))

    def test_none_is_a_value(self):
        # The modseq store's "nothing stored" is known, not unknown.
        known: KnownStore[None] = KnownStore()
        known.remember("INBOX", None)
        known.session_lost()
        self.assertTrue(known.take_trusted("INBOX"))
