"""IMAP_ATTACHMENT_MODE wiring: settings, the runtime's object store
choice, the folder's fetch chunk, and start-up errors an operator sees."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from imapsvc.config import ConfigError, Settings, load_settings
from imapsvc.folder import FolderOptions
from imapsvc.model import Limits
from imapsvc.objectstore.local import LocalFolderStore
from imapsvc.objectstore.s3 import S3ObjectStore

AWS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-example"}


class SettingsTests(TestCase):
    def test_defaults_keep_metadata(self) -> None:
        s = load_settings({})
        self.assertEqual(s.attachment_mode, "metadata")
        self.assertEqual(s.limits(), Limits())

    def test_mode_and_raw_mime_reach_the_limits(self) -> None:
        s = load_settings({"IMAP_ATTACHMENT_MODE": "store", "IMAP_STORE_RAW_MIME": "true"})
        self.assertEqual(s.limits().attachment_mode, "store")
        self.assertTrue(s.limits().store_raw_mime)

    def test_bad_values_name_the_variable(self) -> None:
        cases = {
            "IMAP_ATTACHMENT_MODE": "base64",
            "IMAP_OBJECT_STORE_URL": "s3://bucket",
            "IMAP_OBJECT_STORE_PREFIX": "a/../b",
        }
        with self.assertRaises(ConfigError) as caught:
            load_settings({"IMAP_OBJECT_STORE_URL": "http://key:hush-hush@s3.local"})
        self.assertNotIn("hush-hush", str(caught.exception))
        for env, value in cases.items():
            with self.assertRaises(ConfigError) as caught:
                load_settings({env: value})
            self.assertIn(env, str(caught.exception))

    def test_url_needs_a_bucket(self) -> None:
        with self.assertRaises(ConfigError):
            load_settings({"IMAP_OBJECT_STORE_URL": "http://s3.local:9000"})

    def test_prefix_is_normalised(self) -> None:
        s = load_settings({"IMAP_OBJECT_STORE_PREFIX": "/mail/in/"})
        self.assertEqual(s.object_store_prefix, "mail/in")

    def test_content_modes_cap_the_fetch_chunk(self) -> None:
        self.assertEqual(FolderOptions.from_settings(Settings()).fetch_chunk, 50)
        inline = Settings(attachment_mode="inline", attachment_fetch_chunk=3)
        self.assertEqual(FolderOptions.from_settings(inline).fetch_chunk, 3)
        self.assertEqual(FolderOptions.from_settings(inline).limits.attachment_mode, "inline")


class RuntimeTests(TestCase):
    def runtime(self, environ: dict[str, str], **kw: Any) -> Any:
        from imapsvc.runtime import Runtime

        self.patch(os, "environ", dict(environ))
        d = tempfile.mkdtemp()
        settings = Settings(
            events_file=os.path.join(d, "e.jsonl"), sqlite_path=os.path.join(d, "s.db"), **kw
        )
        return Runtime(settings, MemoryReactorClock())

    def test_metadata_has_no_uploader(self) -> None:
        runtime = self.runtime({})
        self.assertIsNone(runtime.object_uploader)
        self.assertIsNone(runtime.pipeline._uploader)

    def test_store_defaults_to_the_local_folder(self) -> None:
        runtime = self.runtime({}, attachment_mode="store", object_store_dir="/tmp/x-objects")
        self.assertIsInstance(runtime.object_uploader.store, LocalFolderStore)
        self.assertIs(runtime.pipeline._uploader, runtime.object_uploader)

    def test_s3_with_aws_credentials(self) -> None:
        runtime = self.runtime(
            AWS, attachment_mode="store", object_store_url="http://127.0.0.1:9000",
            object_store_bucket="mail", object_store_prefix="in",
        )  # fmt: skip
        uploader = runtime.object_uploader
        self.assertIsInstance(uploader.store, S3ObjectStore)
        self.assertEqual(uploader.prefix, "in")
        self.assertNotIn(AWS["AWS_SECRET_ACCESS_KEY"], uploader.store.describe())

    def test_s3_credentials_from_the_secrets_dir(self) -> None:
        secrets = self.mktemp()
        os.makedirs(secrets)
        for name, value in AWS.items():
            with open(os.path.join(secrets, name), "w") as f:
                f.write(value + "\n")
        runtime = self.runtime(
            {}, attachment_mode="store", object_store_url="http://127.0.0.1:9000",
            object_store_bucket="mail", secrets_dir=secrets,
        )  # fmt: skip
        creds = runtime.object_uploader.store._creds
        self.assertEqual(
            (creds.access_key, creds.secret_key),
            (AWS["AWS_ACCESS_KEY_ID"], AWS["AWS_SECRET_ACCESS_KEY"]),
        )

    def test_s3_without_credentials_is_a_config_error(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.runtime(
                {}, attachment_mode="store", object_store_url="http://127.0.0.1:9000",
                object_store_bucket="mail",
            )  # fmt: skip
        self.assertIn("AWS_ACCESS_KEY_ID", str(caught.exception))


class TwistdTests(TestCase):
    def test_missing_credentials_stop_start_up_with_one_line(self) -> None:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            self.skipTest("no twistd script next to the interpreter")
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("IMAP", "PORT", "AWS_"))
        }
        environ.update(
            IMAP_ATTACHMENT_MODE="store",
            IMAP_OBJECT_STORE_URL="http://127.0.0.1:9",
            IMAP_OBJECT_STORE_BUCKET="mail",
        )
        result = subprocess.run(
            [twistd, "-n", "--pidfile=", "imapsvc"],
            capture_output=True, text=True, env=environ, cwd=tempfile.mkdtemp(), timeout=60,
        )  # fmt: skip
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        self.assertIn("imapsvc: IMAP_OBJECT_STORE_URL is set but AWS_ACCESS_KEY_ID", result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
