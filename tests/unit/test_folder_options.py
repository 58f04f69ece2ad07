"""A folder built without settings behaves as the service does by default:
FolderOptions, Limits and the fetch plan take their defaults from the one
settings table (they were literal copies, and two had drifted)."""

from __future__ import annotations

import attr
from twisted.trial import unittest

from imapsvc.config import Settings
from imapsvc.core import plan
from imapsvc.folder.options import FolderOptions
from imapsvc.model import Limits


class DefaultsTests(unittest.TestCase):
    def test_folder_options_defaults_are_the_settings_defaults(self) -> None:
        built = FolderOptions.from_settings(Settings())
        bare = FolderOptions()
        # What from_settings derives (caps) or builds (limits) is not a default.
        for field in attr.fields(FolderOptions):
            if field.name in ("wire_caps", "limits", "budget", "connect_gate"):
                continue
            self.assertEqual(getattr(bare, field.name), getattr(built, field.name), field.name)

    def test_limits_defaults_are_the_settings_defaults(self) -> None:
        self.assertEqual(Limits(), Settings().limits())

    def test_plan_chunk_is_the_settings_default(self) -> None:
        self.assertEqual(plan.DEFAULT_FETCH_CHUNK, Settings().fetch_chunk)
