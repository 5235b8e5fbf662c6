"""
Tests for L{vss_dispatcher.config}: the defaults, how the environment and
twistd options combine, and the one-sentence errors for unusable values.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from vss_dispatcher.config import (
    SETTINGS,
    ConfigurationError,
    Settings,
    load_settings,
)
from vss_dispatcher.options import DispatcherOptions

# The defaults as the README's table of settings lists them.
README_DEFAULTS = {
    "RABBITMQ_HOST": "rabbitmq",
    "RABBITMQ_PORT": "5672",
    "RABBITMQ_USERNAME": "guest",
    "RABBITMQ_PASSWORD": "guest",
    "RABBITMQ_VHOST": "/",
    "RABBITMQ_NORMAL_QUEUE": "vss.normal",
    "RABBITMQ_PRIORITY_QUEUE": "vss.priority",
    "RABBITMQ_DEAD_LETTER_QUEUE": "vss.dead",
    "RABBITMQ_PREFETCH_COUNT": "1",
    "RABBITMQ_HEARTBEAT": "30",
    "VSS_BASE_URL": "http://localhost:8080",
    "VSS_TIMEOUT": "30",
    "VSS_RETRY_COUNT": "3",
    "VSS_RETRY_DELAY": "1.0",
    "VSS_MODE": "display",
    "IMAGE_ROOT": "",
    "DEFAULT_DURATION": "5.0",
    "MAX_DURATION": "86400",
    "LOG_LEVEL": "INFO",
    "CHECK_INTERVAL": "0.1",
    "INTERRUPTED_JOBS": "drop",
    "ACK_AFTER": "600",
    "STATUS_ENDPOINT": "tcp:8089:interface=127.0.0.1",
}


class DefaultTests(SynchronousTestCase):
    """
    What the dispatcher runs with when nothing is set.
    """

    def test_table_defaults(self) -> None:
        """
        The defaults of the settings table are those the README documents.
        """
        defaults = {setting.variable: setting.default for setting in SETTINGS}
        for variable, default in README_DEFAULTS.items():
            self.assertEqual((variable, defaults[variable]), (variable, default))

    def test_loaded_defaults(self) -> None:
        """
        An empty environment gives the documented values, typed.
        """
        settings = load_settings({})
        self.assertEqual(settings.rabbitmq_host, "rabbitmq")
        self.assertEqual(settings.rabbitmq_port, 5672)
        self.assertEqual(
            (settings.rabbitmq_username, settings.rabbitmq_password), ("guest", "guest")
        )
        self.assertEqual(settings.rabbitmq_vhost, "/")
        self.assertEqual(
            (
                settings.rabbitmq_normal_queue,
                settings.rabbitmq_priority_queue,
                settings.rabbitmq_dead_letter_queue,
            ),
            ("vss.normal", "vss.priority", "vss.dead"),
        )
        self.assertEqual(settings.rabbitmq_prefetch_count, 1)
        self.assertEqual(settings.rabbitmq_heartbeat, 30)
        self.assertEqual(settings.vss_base_url, "http://localhost:8080")
        self.assertEqual(settings.vss_timeout, 30.0)
        self.assertEqual(settings.vss_retry_count, 3)
        self.assertEqual(settings.vss_retry_delay, 1.0)
        self.assertEqual(settings.vss_mode, "display")
        self.assertEqual(settings.image_root, "")
        self.assertEqual(settings.default_duration, 5.0)
        self.assertEqual(settings.max_duration, 86400.0)
        self.assertEqual(settings.log_level, "INFO")
        self.assertEqual(settings.check_interval, 0.1)
        self.assertEqual(settings.interrupted_jobs, "drop")
        self.assertEqual(settings.ack_after, 600.0)
        self.assertEqual(settings.status_endpoint, "tcp:8089:interface=127.0.0.1")

    def test_dataclass_defaults_match(self) -> None:
        """
        L{Settings} built without arguments equals the settings loaded from an
        empty environment, field by field and type by type.
        """
        loaded = load_settings({})
        built = Settings()
        self.assertEqual(built, loaded)
        for setting in SETTINGS:
            self.assertIs(
                type(getattr(built, setting.attribute)),
                type(getattr(loaded, setting.attribute)),
                setting.variable,
            )

    def test_every_setting_has_a_field(self) -> None:
        """
        Each setting of the table has a L{Settings} field, and each field a
        setting.
        """
        self.assertEqual(
            sorted(setting.attribute for setting in SETTINGS),
            sorted(Settings.__dataclass_fields__),
        )


class SourceTests(SynchronousTestCase):
    """
    Where values come from.
    """

    def test_environment(self) -> None:
        """
        Values are read from the environment and converted.
        """
        settings = load_settings(
            {
                "RABBITMQ_HOST": "broker.internal",
                "RABBITMQ_PORT": "5671",
                "VSS_BASE_URL": "https://vss.internal:8443/",
                "VSS_TIMEOUT": "2.5",
                "INTERRUPTED_JOBS": "Resume",
                "LOG_LEVEL": "warning",
            }
        )
        self.assertEqual(settings.rabbitmq_host, "broker.internal")
        self.assertEqual(settings.rabbitmq_port, 5671)
        self.assertEqual(settings.vss_base_url, "https://vss.internal:8443")
        self.assertEqual(settings.vss_timeout, 2.5)
        self.assertEqual(settings.interrupted_jobs, "resume")
        self.assertEqual(settings.log_level, "WARN")

    def test_options_override_environment(self) -> None:
        """
        A value given as a twistd option wins over the environment; options
        not given leave the environment in force.
        """
        options = DispatcherOptions()
        options.parseOptions(["--rabbitmq-host", "from-option", "--vss-timeout", "7"])
        settings = load_settings(
            {"RABBITMQ_HOST": "from-env", "RABBITMQ_PORT": "5673"}, options.overrides()
        )
        self.assertEqual(settings.rabbitmq_host, "from-option")
        self.assertEqual(settings.vss_timeout, 7.0)
        self.assertEqual(settings.rabbitmq_port, 5673)

    def test_image_root_real_path(self) -> None:
        """
        IMAGE_ROOT is kept as the real path of an existing directory.
        """
        root = self.mktemp()
        os.makedirs(root)
        link = self.mktemp()
        os.symlink(os.path.abspath(root), link)
        settings = load_settings({"IMAGE_ROOT": link})
        self.assertEqual(settings.image_root, os.path.realpath(root))


class InvalidValueTests(SynchronousTestCase):
    """
    Values the dispatcher cannot run with.
    """

    def assertRefused(
        self, environ: dict[str, str], variable: str, value: str, expected: str
    ) -> str:
        """
        Assert that loading C{environ} fails with one sentence naming the
        variable, the value and what is expected; return the sentence.
        """
        with self.assertRaises(ConfigurationError) as caught:
            load_settings(environ)
        message = str(caught.exception)
        self.assertIn(variable, message)
        self.assertIn(value, message)
        self.assertIn(f"expected {expected}", message)
        self.assertTrue(message.endswith("."))
        self.assertEqual(message.count(". "), 0, message)
        self.assertNotIn("\n", message)
        return message

    def test_port_not_a_number(self) -> None:
        """
        A port that is not a number is refused.
        """
        message = self.assertRefused(
            {"RABBITMQ_PORT": "abc"},
            "RABBITMQ_PORT",
            "'abc'",
            "a TCP port number from 1 to 65535",
        )
        self.assertEqual(
            message,
            "RABBITMQ_PORT is 'abc'; expected a TCP port number from 1 to 65535.",
        )

    def test_port_out_of_range(self) -> None:
        """
        A port outside 1 to 65535 is refused.
        """
        for port in ("0", "65536", "-1"):
            self.assertRefused(
                {"RABBITMQ_PORT": port}, "RABBITMQ_PORT", repr(port), "a TCP port"
            )

    def test_negative_timeout(self) -> None:
        """
        A negative or zero VSS timeout is refused.
        """
        for timeout in ("-1", "0", "nan", "inf", "soon"):
            self.assertRefused(
                {"VSS_TIMEOUT": timeout},
                "VSS_TIMEOUT",
                repr(timeout),
                "a number of seconds greater than 0",
            )

    def test_base_url_scheme(self) -> None:
        """
        A VSS base URL that is not http or https, or has no host, is refused.
        """
        for url in ("ftp://x", "localhost:8080", "http://", "http://[::1"):
            self.assertRefused(
                {"VSS_BASE_URL": url},
                "VSS_BASE_URL",
                repr(url),
                "an http:// or https://",
            )

    def test_other_values(self) -> None:
        """
        Unusable counts, delays, choices, levels and directories are each
        refused with their variable.
        """
        cases = [
            ("VSS_RETRY_COUNT", "0", "a whole number of at least 1"),
            ("VSS_RETRY_DELAY", "0", "a number of seconds greater than 0"),
            ("RABBITMQ_PREFETCH_COUNT", "1.5", "a whole number of at least 1"),
            ("RABBITMQ_HEARTBEAT", "-5", "a whole number of seconds"),
            ("RABBITMQ_HOST", "  ", "a host name or address"),
            ("INTERRUPTED_JOBS", "pause", "'drop', 'resume' or 'restart'"),
            ("VSS_MODE", "carrier-pigeon", "'display' or 'visionect'"),
            ("LOG_LEVEL", "loud", "DEBUG, INFO, WARN, ERROR or CRITICAL"),
            ("MAX_DURATION", "-1", "a number of seconds of at least 0"),
            ("DEFAULT_DURATION", "nan", "a number of seconds of at least 0"),
            ("ACK_AFTER", "0", "a number of seconds greater than 0"),
            ("IMAGE_ROOT", "/no/such/directory", "an existing directory, or empty"),
            ("DISPLAY_ROTATE", "45", "0, 90, 180 or 270"),
        ]
        for variable, value, expected in cases:
            self.assertRefused({variable: value}, variable, repr(value), expected)

    def test_image_root_is_a_file(self) -> None:
        """
        An IMAGE_ROOT that is a file, not a directory, is refused.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a directory")
        self.assertRefused(
            {"IMAGE_ROOT": path}, "IMAGE_ROOT", repr(path), "an existing directory"
        )

    def test_default_longer_than_maximum(self) -> None:
        """
        A default duration longer than the maximum is refused, naming both.
        """
        with self.assertRaises(ConfigurationError) as caught:
            load_settings({"DEFAULT_DURATION": "90", "MAX_DURATION": "60"})
        message = str(caught.exception)
        self.assertIn("DEFAULT_DURATION is 90", message)
        self.assertIn("MAX_DURATION (60)", message)

    def test_invalid_option(self) -> None:
        """
        An unusable value given as a twistd option is refused like one from
        the environment.
        """
        with self.assertRaises(ConfigurationError) as caught:
            load_settings({"RABBITMQ_PORT": "5672"}, {"RABBITMQ_PORT": "abc"})
        self.assertIn("RABBITMQ_PORT is 'abc'", str(caught.exception))

    def test_visionect_needs_credentials(self) -> None:
        """
        The visionect mode without API key, secret and devices is refused,
        naming what is missing.
        """
        with self.assertRaises(ConfigurationError) as caught:
            load_settings({"VSS_MODE": "visionect", "VSS_API_KEY": "key"})
        message = str(caught.exception)
        self.assertIn("VSS_API_SECRET", message)
        self.assertIn("VSS_DEVICE_UUIDS", message)
        self.assertNotIn("VSS_API_KEY,", message)


class SecretTests(SynchronousTestCase):
    """
    Passwords and API secrets stay out of messages and representations.
    """

    PASSWORD = "s3cret-amqp-pw"
    API_SECRET = "s3cret-api-secret"

    def test_repr_hides_secrets(self) -> None:
        """
        The representation of the settings hides the password and the API
        secret but shows the other values.
        """
        settings = load_settings(
            {"RABBITMQ_PASSWORD": self.PASSWORD, "VSS_API_SECRET": self.API_SECRET}
        )
        self.assertEqual(settings.rabbitmq_password, self.PASSWORD)
        for text in (repr(settings), str(settings)):
            self.assertNotIn(self.PASSWORD, text)
            self.assertNotIn(self.API_SECRET, text)
            self.assertIn("rabbitmq_password='***'", text)
            self.assertIn("rabbitmq_host='rabbitmq'", text)

    def test_errors_hide_secrets(self) -> None:
        """
        A configuration error never quotes a secret set alongside the bad
        value.
        """
        environ = {
            "RABBITMQ_PASSWORD": self.PASSWORD,
            "VSS_API_SECRET": self.API_SECRET,
        }
        bad_values = [
            {"RABBITMQ_PORT": "abc"},
            {"VSS_MODE": "visionect"},
            {"VSS_MODE": "visionect", "VSS_API_KEY": "key", "VSS_DEVICE_UUIDS": "d1"},
        ]
        for bad in bad_values:
            with self.assertRaises(ConfigurationError) as caught:
                load_settings({**environ, **bad})
            self.assertNotIn(self.PASSWORD, str(caught.exception))
            self.assertNotIn(self.API_SECRET, str(caught.exception))
