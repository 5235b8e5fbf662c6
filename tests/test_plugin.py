"""
Tests for the twistd plugins in C{twisted/plugins/vss_dispatcher_plugin.py}:
that twistd finds them, that listing them stays cheap, and what
C{twistd vss-dispatcher} prints for help and for a bad setting.

The command-line tests run twistd in a fresh interpreter, as an operator
would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from vss_dispatcher.config import SETTINGS
from vss_dispatcher.options import DispatcherOptions, EmulatorOptions

# Modules that must not be loaded just to list plugins or print help: pika
# installs the global reactor, and the application pulls in everything.
HEAVY_MODULES = (
    "pika",
    "treq",
    "twisted.internet.reactor",
    "vss_dispatcher.amqp",
    "vss_dispatcher.app",
    "vss_dispatcher.emulator",
)

IMPORT_CHECK = """
import json, sys
heavy = {heavy!r}

def loaded():
    return sorted(name for name in heavy if name in sys.modules)

report = {{}}
import twisted.plugins.vss_dispatcher_plugin
report["import"] = loaded()

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
makers = {{maker.tapname: maker for maker in getPlugins(IServiceMaker)}}
report["names"] = sorted(makers)
report["listing"] = loaded()

makers["vss-dispatcher"].options().parseOptions([])
makers["vss-emulator"].options().parseOptions([])
report["options"] = loaded()
print(json.dumps(report))
"""

# Runs twistd when no twistd script sits next to the interpreter.
TWISTD_MAIN = (
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
)


def twistd_command() -> list[str]:
    """
    The command that starts the twistd of this interpreter's environment.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-c", TWISTD_MAIN]


class PluginTests(SynchronousTestCase):
    """
    The plugins as twistd sees them.
    """

    def run_python(
        self, *arguments: str, **environ: str
    ) -> subprocess.CompletedProcess[str]:
        """
        Run a fresh interpreter (or twistd) in an empty directory, with none
        of the dispatcher's variables set but those in C{environ}.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        variables = {setting.variable for setting in SETTINGS}
        env = {
            name: value for name, value in os.environ.items() if name not in variables
        }
        env.update(environ)
        return subprocess.run(
            list(arguments),
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            # Only a guard against a hung child; the tests never wait for it.
            timeout=300,
        )

    def test_plugins_found(self) -> None:
        """
        twistd's plugin lookup finds C{vss-dispatcher} and C{vss-emulator}
        with their options.
        """
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("vss-dispatcher", makers)
        self.assertIn("vss-emulator", makers)
        self.assertIs(makers["vss-dispatcher"].options, DispatcherOptions)
        self.assertIs(makers["vss-emulator"].options, EmulatorOptions)
        self.assertIn("priority", makers["vss-dispatcher"].description)

    def test_listing_is_import_light(self) -> None:
        """
        Importing the plugin module, listing plugins and building their
        options load neither pika, nor treq, nor the reactor, nor the
        application.
        """
        result = self.run_python(
            sys.executable, "-c", IMPORT_CHECK.format(heavy=HEAVY_MODULES)
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        report = json.loads(result.stdout.strip().splitlines()[-1])
        self.assertIn("vss-dispatcher", report["names"])
        self.assertIn("vss-emulator", report["names"])
        self.assertEqual(report["import"], [])
        self.assertEqual(report["listing"], [])
        self.assertEqual(report["options"], [])

    def test_help_lists_every_setting(self) -> None:
        """
        C{twistd vss-dispatcher --help} lists an option for every setting,
        with its environment variable and its default.
        """
        result = self.run_python(*twistd_command(), "vss-dispatcher", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        flowing = " ".join(result.stdout.split())
        for setting in SETTINGS:
            self.assertIn(f"--{setting.option}=", flowing)
            self.assertIn(
                f"[env {setting.variable}, default {setting.default!r}]", flowing
            )

    def test_invalid_environment(self) -> None:
        """
        An unusable environment value stops C{twistd vss-dispatcher} with a
        non-zero status and the one sentence about it, without a traceback.
        """
        result = self.run_python(
            *twistd_command(),
            "-n",
            "--pidfile=",
            "vss-dispatcher",
            RABBITMQ_PORT="abc",
        )
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0, output)
        self.assertIn(
            "RABBITMQ_PORT is 'abc'; expected a TCP port number from 1 to 65535.",
            output,
        )
        self.assertNotIn("Traceback", output)

    def test_invalid_option(self) -> None:
        """
        An unusable option value stops C{twistd vss-dispatcher} the same way.
        """
        result = self.run_python(
            *twistd_command(),
            "-n",
            "--pidfile=",
            "vss-dispatcher",
            "--vss-timeout=-1",
        )
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0, output)
        self.assertIn(
            "VSS_TIMEOUT is '-1'; expected a number of seconds greater than 0.", output
        )
        self.assertNotIn("Traceback", output)
