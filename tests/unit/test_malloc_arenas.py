"""The malloc arena cap is applied, unless the operator set it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from imapsvc.malloc_arenas import limit_arenas


class LimitArenasTests(SynchronousTestCase):
    def test_applied_in_a_fresh_process(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
        # This checkout, not the installed copy.
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        out = subprocess.run(
            [sys.executable, "-c",
             "from imapsvc.malloc_arenas import limit_arenas; print(limit_arenas())"],
            env=env, capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "True")

    def test_operator_setting_wins(self) -> None:
        self.patch(os, "environ", {**os.environ, "MALLOC_ARENA_MAX": "4"})
        self.assertFalse(limit_arenas())
