"""
The twistd command-line options of both plugins.

Kept free of pika and of the reactor: twistd imports this module just to list
its plugins and print C{--help}.
"""

from __future__ import annotations

import math

from twisted.python import usage

from .config import SETTINGS

__all__ = ["DispatcherOptions", "EmulatorOptions"]


def _parameters() -> list[list[str | None]]:
    parameters: list[list[str | None]] = []
    for setting in SETTINGS:
        # Defaults are public (the README lists them), so even a secret's
        # default is shown; the value in use never is.
        shown = repr(setting.default)
        parameters.append(
            [
                setting.option,
                None,
                None,
                f"{setting.description} [env {setting.variable}, default {shown}]",
            ]
        )
    return parameters


class DispatcherOptions(usage.Options):
    """
    Options of C{twistd vss-dispatcher}.  Each one overrides the environment
    variable of the same name; left out, the environment (or the default)
    applies.
    """

    synopsis = "[options]"
    longdesc = (
        "Takes display jobs from two RabbitMQ queues and shows them through"
        " VSS, priority jobs first. Every option can also be set with the"
        " environment variable named in its help."
    )
    optParameters = _parameters()

    def overrides(self) -> dict[str, str | None]:
        """
        The values given on the command line, keyed by environment variable.
        """
        return {setting.variable: self[setting.option] for setting in SETTINGS}


class EmulatorOptions(usage.Options):
    """
    Options of C{twistd vss-emulator}.
    """

    synopsis = "[options]"
    longdesc = (
        "A stand-in for VSS that accepts what the dispatcher sends, records it"
        " and shows it on a small web page."
    )
    optParameters = [
        ["endpoint", None, "tcp:8080:interface=127.0.0.1", "Where to listen."],
        ["status", None, "200", "HTTP status to answer every display request with."],
        ["delay", None, "0", "Seconds to wait before answering."],
        ["history", None, "50", "How many past images to remember."],
    ]

    def postOptions(self) -> None:
        """
        Turn C{--status}, C{--delay} and C{--history} into numbers, refusing
        values the emulator cannot use.
        """
        self["status"] = _number(self["status"], "--status", int, 100, 599)
        self["delay"] = _number(self["delay"], "--delay", float, 0, None)
        self["history"] = _number(self["history"], "--history", int, 1, None)


def _number(
    given: str,
    option: str,
    kind: type[int] | type[float],
    minimum: float,
    maximum: float | None,
) -> float:
    if kind is float:
        expected = f"a number of seconds of at least {minimum:g}"
    elif maximum is None:
        expected = f"a whole number of at least {minimum:g}"
    else:
        expected = f"a whole number from {minimum:g} to {maximum:g}"
    problem = usage.UsageError(f"{option} is {given!r}; expected {expected}.")
    try:
        value = kind(given)
    except (TypeError, ValueError):
        raise problem from None
    if not math.isfinite(value) or value < minimum:
        raise problem
    if maximum is not None and value > maximum:
        raise problem
    return value
