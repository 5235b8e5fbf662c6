"""
Tests that the package, built and installed the way users install it,
carries the twistd plugins and nothing that would break Twisted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WheelTests(TestCase):
    """
    Build a wheel of the checkout and look inside it.
    """

    def build_wheel(self) -> str:
        # Built from a copy, so that builds running side by side (trial -j)
        # do not share the checkout's build directory.
        source = self.mktemp()
        shutil.copytree(
            ROOT,
            source,
            ignore=shutil.ignore_patterns(
                ".git",
                ".venv",
                "build",
                "dist",
                "_trial_temp*",
                "__pycache__",
                "*.egg-info",
                "results",
                "dropin.cache",
            ),
        )
        out = self.mktemp()
        os.makedirs(out)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--wheel-dir",
                out,
                source,
            ],
            check=True,
            capture_output=True,
        )
        (name,) = [n for n in os.listdir(out) if n.endswith(".whl")]
        return os.path.join(out, name)

    def test_wheel_carries_the_plugin_and_no_twisted_package_files(self) -> None:
        """
        The wheel holds the plugin module under twisted/plugins and no
        __init__.py of Twisted's own packages, which would hide Twisted.
        """
        with zipfile.ZipFile(self.build_wheel()) as wheel:
            names = set(wheel.namelist())
        self.assertIn("twisted/plugins/vss_dispatcher_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertIn("vss_dispatcher/app.py", names)

    def test_installed_wheel_offers_both_plugins_to_twistd(self) -> None:
        """
        Installed into a fresh directory, the wheel makes twistd find both
        plugins, and listing them imports neither pika nor the reactor.
        """
        wheel = self.build_wheel()
        target = os.path.abspath(self.mktemp())
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                target,
                wheel,
            ],
            check=True,
            capture_output=True,
        )
        script = (
            "import os, sys\n"
            f"sys.path = [{target!r}] + [p for p in sys.path"
            f" if p and os.path.realpath(p) != {ROOT!r}]\n"
            "from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "names = sorted(p.tapname for p in getPlugins(IServiceMaker))\n"
            "print(','.join(n for n in names if n.startswith('vss-')))\n"
            "print('pika' in sys.modules, 'twisted.internet.reactor' in sys.modules)\n"
        )
        # The installed copy comes first and the checkout is taken off the
        # path, or the test would find the checkout's plugin and prove nothing.
        result = subprocess.run(
            [sys.executable, "-I", "-c", script],
            capture_output=True,
            text=True,
            cwd=target,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.split()
        self.assertEqual(lines[0], "vss-dispatcher,vss-emulator")
        self.assertEqual(lines[1:], ["False", "False"])
