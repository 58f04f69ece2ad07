"""The installed ``twistd imapsvc`` plugin, as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from twisted.trial.unittest import TestCase

from imapsvc.config import CONTRACT_VARIABLES, SETTINGS


def _twistd() -> str:
    return os.path.join(os.path.dirname(sys.executable), "twistd")


class PluginTests(TestCase):
    def run_twistd(self, *args: str) -> subprocess.CompletedProcess:
        if not os.path.exists(_twistd()):
            self.skipTest("no twistd script next to the interpreter")
        return subprocess.run(
            [_twistd(), *args],
            capture_output=True,
            text=True,
            # outside the checkout: the plugin must come from the installation
            cwd=tempfile.mkdtemp(),
            timeout=120,
        )

    def test_listed_by_twistd(self) -> None:
        result = self.run_twistd("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("imapsvc", result.stdout)

    def test_help_lists_every_variable(self) -> None:
        result = self.run_twistd("imapsvc", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        flat = " ".join(result.stdout.split())
        for env in CONTRACT_VARIABLES:
            self.assertIn(env, flat)
        for setting in SETTINGS:
            self.assertIn(setting.env, flat)
            self.assertIn(f"--{setting.option}=", result.stdout)

    def test_module_entry_point(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "imapsvc", "config"],
            capture_output=True,
            text=True,
            cwd=tempfile.mkdtemp(),
            env={**os.environ, "IMAPSVC_ADMIN_TOKEN": "adm-integration-5e6f-7a8b9c0d1e2f3a4b5c6d"},
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("IMAPSVC_ADMIN_TOKEN", result.stdout)
        self.assertNotIn("adm-integration-5e6f-7a8b9c0d1e2f3a4b5c6d", result.stdout)
