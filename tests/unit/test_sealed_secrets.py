"""Secrets at rest: sealing, tamper detection, slot binding, rotation, mounted files."""

import base64
import os
import tempfile

from twisted.internet.task import Clock
from twisted.trial import unittest

from imapsvc import sealed_secrets as secrets
from imapsvc.sealed_secrets import SecretBox, SecretDecryptError, SecretKeyError, SecretStore
from imapsvc.store.memory import MemoryStore

T = "11111111-1111-1111-1111-111111111111"
P = "22222222-2222-2222-2222-222222222222"


class SecretBoxTests(unittest.TestCase):
    def setUp(self):
        self.key = secrets.generate_key()
        self.box = SecretBox.from_setting(self.key)

    def test_round_trip_and_not_plaintext(self):
        sealed = self.box.seal(T, "imap_password_" + P, b"hunter2-very-secret")
        self.assertNotIn(b"hunter2", sealed)
        self.assertEqual(self.box.open(T, "imap_password_" + P, sealed), b"hunter2-very-secret")

    def test_nonce_differs_each_time(self):
        a = self.box.seal(T, "n", b"x")
        b = self.box.seal(T, "n", b"x")
        self.assertNotEqual(a, b)

    def test_tampered_ciphertext_refused(self):
        sealed = bytearray(self.box.seal(T, "n", b"secret"))
        sealed[-1] ^= 1
        self.assertRaises(SecretDecryptError, self.box.open, T, "n", bytes(sealed))

    def test_bound_to_tenant_and_name(self):
        sealed = self.box.seal(T, "imap_password_" + P, b"secret")
        other = "33333333-3333-3333-3333-333333333333"
        self.assertRaises(SecretDecryptError, self.box.open, other, "imap_password_" + P, sealed)
        self.assertRaises(SecretDecryptError, self.box.open, T, "imap_refresh_token_" + P, sealed)

    def test_wrong_key_refused(self):
        sealed = self.box.seal(T, "n", b"secret")
        other = SecretBox.from_setting(secrets.generate_key())
        self.assertRaises(SecretDecryptError, other.open, T, "n", sealed)

    def test_rotation_reads_old_and_writes_new(self):
        old_sealed = self.box.seal(T, "n", b"secret")
        new_key = secrets.generate_key()
        rotated = SecretBox.from_setting(new_key + "," + self.key)
        self.assertEqual(rotated.open(T, "n", old_sealed), b"secret")
        self.assertTrue(rotated.needs_reseal(old_sealed))
        fresh = rotated.seal(T, "n", b"secret")
        self.assertFalse(rotated.needs_reseal(fresh))
        # The new seal opens with the new key alone, not with the old one.
        self.assertEqual(SecretBox.from_setting(new_key).open(T, "n", fresh), b"secret")
        self.assertRaises(SecretDecryptError, self.box.open, T, "n", fresh)

    def test_bad_keys(self):
        for bad in ["", "short", base64.urlsafe_b64encode(b"x" * 16).decode(), "zz" * 32]:
            self.assertRaises(SecretKeyError, SecretBox.from_setting, bad)
        SecretBox.from_setting("ab" * 32)  # hex is accepted

    def test_garbage_sealed_value(self):
        for junk in [b"", b"v1", b"v2" + b"x" * 60, os.urandom(80)]:
            self.assertRaises(SecretDecryptError, self.box.open, T, "n", junk)
        self.assertRaises(SecretDecryptError, self.box.open_text, T, "n", "not base64 !!")

    def test_text_helpers(self):
        sealed = self.box.seal_text(T, "access", "ya29.token")
        self.assertNotIn("ya29", sealed)
        self.assertEqual(self.box.open_text(T, "access", sealed), "ya29.token")

    def test_names(self):
        self.assertEqual(secrets.password_name(P), "imap_password_" + P)
        self.assertEqual(secrets.client_secret_name(P), "imap_oauth_client_secret_" + P)
        self.assertEqual(secrets.refresh_token_name(P), "imap_refresh_token_" + P)
        self.assertRaises(ValueError, secrets.password_name, "../../etc/passwd")


class SecretStoreTests(unittest.TestCase):
    def setUp(self):
        self.store = MemoryStore(Clock())
        self.key = secrets.generate_key()
        self.secrets = SecretStore(self.store, SecretBox.from_setting(self.key))

    def test_put_get_delete_encrypted_at_rest(self):
        name = secrets.password_name(P)
        self.successResultOf(self.secrets.put(T, name, "pässword"))
        raw = self.successResultOf(self.store.get_secret(T, name))
        self.assertNotIn("pässword".encode(), raw)
        self.assertEqual(self.successResultOf(self.secrets.get(T, name)), "pässword")
        self.successResultOf(self.secrets.delete(T, name))
        self.assertIsNone(self.successResultOf(self.secrets.get(T, name)))

    def test_rotation_reseals_on_read(self):
        name = secrets.refresh_token_name(P)
        self.successResultOf(self.secrets.put(T, name, "1//refresh"))
        new_key = secrets.generate_key()
        rotated = SecretStore(self.store, SecretBox.from_setting(new_key + "," + self.key))
        self.assertEqual(self.successResultOf(rotated.get(T, name)), "1//refresh")
        only_new = SecretStore(self.store, SecretBox.from_setting(new_key))
        self.assertEqual(self.successResultOf(only_new.get(T, name)), "1//refresh")

    def test_mounted_directory_wins(self):
        d = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(d))
        name = secrets.password_name(P)
        os.makedirs(os.path.join(d, T))
        with open(os.path.join(d, T, name), "w") as f:
            f.write("from-file\n")
        store = SecretStore(self.store, SecretBox.from_setting(self.key), secrets_dir=d)
        self.successResultOf(self.secrets.put(T, name, "from-db"))
        self.assertEqual(self.successResultOf(store.get(T, name)), "from-file")
        other = secrets.password_name("44444444-4444-4444-4444-444444444444")
        self.assertIsNone(self.successResultOf(store.get(T, other)))
