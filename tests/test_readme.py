"""
Tests that the README keeps up with the code it documents.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from vss_dispatcher.config import SETTINGS

README = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"
)


class SettingsTableTests(SynchronousTestCase):
    """
    The README's settings table matches the settings the code reads.
    """

    def test_every_setting_has_a_row_with_its_option_and_default(self) -> None:
        """
        Each setting appears in the table with its option and its default.
        """
        with open(README, encoding="utf-8") as f:
            rows = {
                line.split("|")[1].strip().strip("`"): line
                for line in f
                if line.startswith("| `") and "`--" in line
            }
        for setting in SETTINGS:
            self.assertIn(setting.variable, rows, f"{setting.variable} has no row")
            row = rows[setting.variable]
            self.assertIn(f"`--{setting.option}`", row)
            shown = f"`{setting.default}`" if setting.default else "(empty)"
            self.assertIn(shown, row, f"{setting.variable} shows the wrong default")

    def test_readme_names_both_set_up_commands(self) -> None:
        """
        The README gives the command that runs the dispatcher and the one
        that runs the tests.
        """
        with open(README, encoding="utf-8") as f:
            text = f.read()
        self.assertIn("make run", text)
        self.assertIn("make test", text)
