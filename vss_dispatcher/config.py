"""
Settings of the dispatcher: one table, read from the environment and from
twistd options, checked once at start-up.

Every setting has an environment variable, a default and a twistd option of
the same name in lower case with dashes (C{RABBITMQ_HOST} is
C{--rabbitmq-host}).  An option given on the command line wins over the
environment.  A value that cannot be used stops start-up with one sentence
naming the variable, the value and what is expected.

This module must stay import-light: twistd imports it to list the plugin's
options, long before the reactor or pika are wanted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

__all__ = [
    "ConfigurationError",
    "SETTINGS",
    "Setting",
    "Settings",
    "load_settings",
]


class ConfigurationError(Exception):
    """
    A setting has a value the dispatcher cannot run with.  The message is one
    sentence meant for the operator.
    """


@dataclass(frozen=True)
class Setting:
    """
    One configurable value.

    @ivar variable: The environment variable, for example C{VSS_TIMEOUT}.
    @ivar default: The default as the operator would write it.
    @ivar expected: What a valid value looks like, in plain words; used in
        error messages.
    @ivar parse: Turns the text of the value into the typed value, raising
        L{ValueError} when it is not acceptable.
    @ivar description: One line for C{--help} and the README.
    @ivar secret: Whether the value must never be shown.
    """

    variable: str
    default: str
    expected: str
    parse: Callable[[str], object]
    description: str
    secret: bool = False

    @property
    def attribute(self) -> str:
        """
        The name of the matching L{Settings} attribute.
        """
        return self.variable.lower()

    @property
    def option(self) -> str:
        """
        The long twistd option, without its leading dashes.
        """
        return self.variable.lower().replace("_", "-")


def _text(value: str) -> str:
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError(value)
    return value.strip()


def _port(value: str) -> int:
    port = int(value)
    if not 1 <= port <= 65535:
        raise ValueError(value)
    return port


def _whole(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise ValueError(value)
        return number

    return parse


def _seconds(minimum: float, inclusive: bool = True) -> Callable[[str], float]:
    def parse(value: str) -> float:
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(value)
        if number < minimum or (not inclusive and number == minimum):
            raise ValueError(value)
        return number

    return parse


def _http_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(value)
    return value.strip().rstrip("/")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        chosen = value.strip().lower()
        if chosen not in choices:
            raise ValueError(value)
        return chosen

    return parse


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level == "WARNING":
        level = "WARN"
    if level not in ("DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"):
        raise ValueError(value)
    return level


def _directory_or_empty(value: str) -> str:
    if not value:
        return ""
    path = os.path.realpath(value)
    if not os.path.isdir(path):
        raise ValueError(value)
    return path


def _uuid_list(value: str) -> tuple[str, ...]:
    uuids = tuple(part.strip() for part in value.split(",") if part.strip())
    for uuid in uuids:
        if "/" in uuid or "?" in uuid or "#" in uuid or " " in uuid:
            raise ValueError(value)
    return uuids


def _rotation(value: str) -> int:
    degrees = int(value)
    if degrees not in (0, 90, 180, 270):
        raise ValueError(value)
    return degrees


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "RABBITMQ_HOST",
        "rabbitmq",
        "a host name or address",
        _non_empty,
        "RabbitMQ host.",
    ),
    Setting(
        "RABBITMQ_PORT",
        "5672",
        "a TCP port number from 1 to 65535",
        _port,
        "RabbitMQ port.",
    ),
    Setting(
        "RABBITMQ_USERNAME",
        "guest",
        "a user name",
        _non_empty,
        "RabbitMQ user.",
    ),
    Setting(
        "RABBITMQ_PASSWORD",
        "guest",
        "a password",
        _text,
        "RabbitMQ password.",
        secret=True,
    ),
    Setting(
        "RABBITMQ_VHOST",
        "/",
        "a virtual host name",
        _non_empty,
        "RabbitMQ virtual host.",
    ),
    Setting(
        "RABBITMQ_NORMAL_QUEUE",
        "vss.normal",
        "a queue name",
        _non_empty,
        "Queue of normal display jobs.",
    ),
    Setting(
        "RABBITMQ_PRIORITY_QUEUE",
        "vss.priority",
        "a queue name",
        _non_empty,
        "Queue of priority display jobs, which interrupt normal ones.",
    ),
    Setting(
        "RABBITMQ_DEAD_LETTER_QUEUE",
        "vss.dead",
        "a queue name, or empty to discard bad messages",
        _text,
        "Queue where unusable messages are set aside with their reason"
        " (empty: reject them without keeping them).",
    ),
    Setting(
        "RABBITMQ_PREFETCH_COUNT",
        "1",
        "a whole number of at least 1",
        _whole(1),
        "Messages each queue may hand over before earlier ones are acked.",
    ),
    Setting(
        "RABBITMQ_HEARTBEAT",
        "30",
        "a whole number of seconds, 0 to turn heartbeats off",
        _whole(0),
        "AMQP heartbeat interval in seconds.",
    ),
    Setting(
        "VSS_BASE_URL",
        "http://localhost:8080",
        "an http:// or https:// URL with a host",
        _http_url,
        "Base URL of VSS.",
    ),
    Setting(
        "VSS_TIMEOUT",
        "30",
        "a number of seconds greater than 0",
        _seconds(0, inclusive=False),
        "Seconds to wait for VSS to answer one request.",
    ),
    Setting(
        "VSS_RETRY_COUNT",
        "3",
        "a whole number of at least 1",
        _whole(1),
        "Failed VSS requests in a row before an error is logged"
        " (the job is retried regardless).",
    ),
    Setting(
        "VSS_RETRY_DELAY",
        "1.0",
        "a number of seconds greater than 0",
        _seconds(0, inclusive=False),
        "Seconds before the first retry of a failed VSS request; later retries"
        " wait longer, up to 30 seconds.",
    ),
    Setting(
        "VSS_MODE",
        "display",
        "'display' or 'visionect'",
        _choice("display", "visionect"),
        "How to talk to VSS: 'display' posts JSON to /display, 'visionect'"
        " pushes the image to the Visionect Software Suite backend API.",
    ),
    Setting(
        "VSS_API_KEY",
        "",
        "the API key of the Visionect Software Suite",
        _text,
        "Visionect API key (visionect mode).",
    ),
    Setting(
        "VSS_API_SECRET",
        "",
        "the API secret of the Visionect Software Suite",
        _text,
        "Visionect API secret (visionect mode).",
        secret=True,
    ),
    Setting(
        "VSS_API_SECRET_FILE",
        "",
        "the path of a readable file holding the API secret",
        _text,
        "File holding the Visionect API secret, instead of VSS_API_SECRET.",
    ),
    Setting(
        "VSS_DEVICE_UUIDS",
        "",
        "device UUIDs separated by commas",
        _uuid_list,
        "Visionect devices that show the images (visionect mode).",
    ),
    Setting(
        "DISPLAY_WIDTH",
        "2560",
        "a whole number of pixels of at least 1",
        _whole(1),
        "Width of the image sent to the displays, the panel's native size, in"
        " pixels (visionect mode).",
    ),
    Setting(
        "DISPLAY_HEIGHT",
        "1440",
        "a whole number of pixels of at least 1",
        _whole(1),
        "Height of the image sent to the displays, the panel's native size, in"
        " pixels (visionect mode).",
    ),
    Setting(
        "DISPLAY_ROTATE",
        "0",
        "0, 90, 180 or 270",
        _rotation,
        "Degrees to turn images clockwise before sending them (visionect mode).",
    ),
    Setting(
        "IMAGE_ROOT",
        "",
        "an existing directory, or empty",
        _directory_or_empty,
        "Directory (the mounted share) that images must be inside; empty"
        " turns the file checks off.",
    ),
    Setting(
        "DEFAULT_DURATION",
        "5.0",
        "a number of seconds of at least 0",
        _seconds(0),
        "Seconds on screen for a message that gives no duration.",
    ),
    Setting(
        "MAX_DURATION",
        "86400",
        "a number of seconds of at least 0",
        _seconds(0),
        "Longest duration a message may ask for, in seconds.",
    ),
    Setting(
        "INTERRUPTED_JOBS",
        "drop",
        "'drop', 'resume' or 'restart'",
        _choice("drop", "resume", "restart"),
        "What happens to a normal image interrupted by a priority one: drop"
        " it, resume it for its remaining time, or restart it.",
    ),
    Setting(
        "ACK_AFTER",
        "600",
        "a number of seconds greater than 0",
        _seconds(0, inclusive=False),
        "Seconds after which a job still on screen is acknowledged, so that"
        " the broker's consumer timeout never fires.",
    ),
    Setting(
        "STATUS_ENDPOINT",
        "tcp:8089:interface=127.0.0.1",
        "a Twisted server endpoint such as tcp:8089, or empty",
        _text,
        "Where the status page, health check and metrics listen (empty: off).",
    ),
    Setting(
        "PLAY_LOG",
        "",
        "a file path, or empty",
        _text,
        "File that receives one JSON line per finished display (empty: off).",
    ),
    Setting(
        "LOG_FORMAT",
        "text",
        "'text' or 'json'",
        _choice("text", "json"),
        "Log output: readable text, or JSON lines for containers.",
    ),
    Setting(
        "LOG_LEVEL",
        "INFO",
        "DEBUG, INFO, WARN, ERROR or CRITICAL",
        _log_level,
        "Lowest level of log events written.",
    ),
    Setting(
        "CHECK_INTERVAL",
        "0.1",
        "a number of seconds greater than 0",
        _seconds(0, inclusive=False),
        "Accepted for old environment files; preemption is immediate and does"
        " not depend on it.",
    ),
)


@dataclass(frozen=True)
class Settings:
    """
    The checked settings.  Build one with L{load_settings}; the defaults here
    match L{SETTINGS} so tests can build one directly.
    """

    rabbitmq_host: str = "rabbitmq"
    rabbitmq_port: int = 5672
    rabbitmq_username: str = "guest"
    rabbitmq_password: str = "guest"
    rabbitmq_vhost: str = "/"
    rabbitmq_normal_queue: str = "vss.normal"
    rabbitmq_priority_queue: str = "vss.priority"
    rabbitmq_dead_letter_queue: str = "vss.dead"
    rabbitmq_prefetch_count: int = 1
    rabbitmq_heartbeat: int = 30
    vss_base_url: str = "http://localhost:8080"
    vss_timeout: float = 30.0
    vss_retry_count: int = 3
    vss_retry_delay: float = 1.0
    vss_mode: str = "display"
    vss_api_key: str = ""
    vss_api_secret: str = ""
    vss_api_secret_file: str = ""
    vss_device_uuids: tuple[str, ...] = ()
    display_width: int = 2560
    display_height: int = 1440
    display_rotate: int = 0
    image_root: str = ""
    default_duration: float = 5.0
    max_duration: float = 86400.0
    interrupted_jobs: str = "drop"
    ack_after: float = 600.0
    status_endpoint: str = "tcp:8089:interface=127.0.0.1"
    play_log: str = ""
    log_format: str = "text"
    log_level: str = "INFO"
    check_interval: float = 0.1

    def __repr__(self) -> str:
        shown = []
        for setting in SETTINGS:
            value = getattr(self, setting.attribute)
            if setting.secret and value:
                value = "***"
            shown.append(f"{setting.attribute}={value!r}")
        return f"Settings({', '.join(shown)})"


def _check_visionect(settings: Settings) -> Settings:
    """
    Check the settings that only the visionect mode needs, and read the
    secret from its file when one is given.
    """
    if settings.vss_mode != "visionect":
        return settings

    secret = settings.vss_api_secret
    if settings.vss_api_secret_file:
        try:
            with open(settings.vss_api_secret_file, encoding="utf-8") as f:
                secret = f.read().strip()
        except OSError as error:
            raise ConfigurationError(
                f"VSS_API_SECRET_FILE is {settings.vss_api_secret_file!r}, which"
                f" cannot be read ({error.strerror}); expected the path of a"
                " readable file holding the API secret."
            ) from None
    missing = [
        name
        for name, value in (
            ("VSS_API_KEY", settings.vss_api_key),
            ("VSS_API_SECRET", secret),
            ("VSS_DEVICE_UUIDS", settings.vss_device_uuids),
        )
        if not value
    ]
    if missing:
        raise ConfigurationError(
            f"VSS_MODE is 'visionect' but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} empty; expected the API"
            " key, the API secret (or VSS_API_SECRET_FILE) and at least one"
            " device UUID."
        )
    if not settings.image_root:
        raise ConfigurationError(
            "VSS_MODE is 'visionect' but IMAGE_ROOT is empty; expected the"
            " directory that holds the images, since they are read and"
            " converted before they are sent."
        )
    return _replace(settings, vss_api_secret=secret)


def _replace(settings: Settings, **changes: object) -> Settings:
    values = {field.name: getattr(settings, field.name) for field in fields(settings)}
    values.update(changes)
    return Settings(**values)


def load_settings(
    environ: Mapping[str, str],
    overrides: Mapping[str, str | None] | None = None,
) -> Settings:
    """
    Read and check every setting.

    @param environ: The environment, usually C{os.environ}.
    @param overrides: Values from twistd options, keyed by environment
        variable name; C{None} means the option was not given.
    @return: The checked settings.
    @raise ConfigurationError: When a value cannot be used.
    """
    overrides = overrides or {}
    values: dict[str, object] = {}
    for setting in SETTINGS:
        given = overrides.get(setting.variable)
        if given is None:
            given = environ.get(setting.variable, setting.default)
        try:
            values[setting.attribute] = setting.parse(given)
        except ValueError:
            shown = "(hidden)" if setting.secret else repr(given)
            raise ConfigurationError(
                f"{setting.variable} is {shown}; expected {setting.expected}."
            ) from None
    settings = Settings(**values)  # type: ignore[arg-type]

    if settings.default_duration > settings.max_duration:
        raise ConfigurationError(
            f"DEFAULT_DURATION is {settings.default_duration:g}, longer than"
            f" MAX_DURATION ({settings.max_duration:g}); expected a default"
            " no longer than the maximum."
        )
    return _check_visionect(settings)
