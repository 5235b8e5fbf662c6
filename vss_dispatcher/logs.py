"""
Where the dispatcher's log goes: standard output, as readable text or as
JSON lines, filtered by LOG_LEVEL, with pika's standard-library logging
carried into it.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from constantly import NamedConstant
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from zope.interface import implementer

from .aftersend import AfterSend

__all__ = [
    "AtLeast",
    "LineWriter",
    "PikaLogBridge",
    "bridge_pika_logging",
    "make_observer",
]

_LEVELS = {
    "DEBUG": LogLevel.debug,
    "INFO": LogLevel.info,
    "WARN": LogLevel.warn,
    "ERROR": LogLevel.error,
    "CRITICAL": LogLevel.critical,
}

# Levels whose lines are flushed at once.
_URGENT = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})


def make_observer(
    level: str = "INFO",
    log_format: str = "text",
    stream: IO[str] | None = None,
    after_send: AfterSend | None = None,
) -> ILogObserver:
    """
    Build the observer that writes the log.

    @param level: The lowest level written, as in LOG_LEVEL.
    @param log_format: C{"text"} for people, C{"json"} for one JSON object a
        line.
    @param stream: Where to write; standard output by default.
    @param after_send: When given, lines below warning level are written
        once the reactor has sent what it was given (see L{LineWriter});
        without it every line is written at once.
    """
    stream = stream if stream is not None else sys.stdout
    formatter: Callable[[LogEvent], str | None]
    formatter = _json_line if log_format == "json" else _ClassicText()
    writer = LineWriter(stream, formatter, after_send)
    return FilteringLogObserver(writer, [AtLeast(_LEVELS[level])])


@implementer(ILogFilterPredicate)
class AtLeast:
    """
    Lets through the events of C{level} and above, whatever their namespace;
    the same choice as Twisted's L{LogLevelFilterPredicate} with only a
    default level, in a set lookup.
    """

    def __init__(self, level: NamedConstant) -> None:
        self._levels = frozenset(
            known for known in LogLevel.iterconstants() if known >= level
        )

    def __call__(self, event: LogEvent) -> NamedConstant:
        if event.get("log_level") in self._levels and event.get("log_namespace"):
            return PredicateResult.maybe
        return PredicateResult.no


@implementer(ILogObserver)
class LineWriter:
    """
    Writes each event as the text its formatter makes of it.

    A job is logged twice, and writing each line on its own is a system
    call per line (standard output is usually unbuffered for services),
    which costs about as much as building the line.  With a reactor, the
    lines are kept and written together once the reactor has sent what it
    was given (see L{AfterSend}), which is before it next waits, so nothing
    is held while the dispatcher is idle.  Warnings and errors, and lines
    logged while the reactor is not running (start-up and the end of a
    stop), are written at once, with whatever was held before them.
    """

    def __init__(
        self,
        stream: IO[str],
        formatter: Callable[[LogEvent], str | None],
        after_send: AfterSend | None = None,
    ) -> None:
        self._stream = stream
        self._format = formatter
        self._after_send = after_send
        self._held: list[str] = []

    def __call__(self, event: LogEvent) -> None:
        text = self._format(event)
        if not text:
            return
        self._held.append(text)
        after_send = self._after_send
        if (
            after_send is None
            or event.get("log_level") in _URGENT
            or not after_send.call(self.flush)
        ):
            self.flush()

    def flush(self) -> None:
        """
        Write out the lines held.
        """
        if self._after_send is not None:
            self._after_send.discard(self.flush)
        held, self._held = self._held, []
        if held:
            self._stream.write("".join(held))
            self._stream.flush()


def format_message(event: LogEvent) -> str:
    """
    The text of an event.  Plain C{str.format} fields (all this project
    uses) are filled in by C{str.format_map}, many times faster than
    Twisted's general formatter, which handles the rest.
    """
    log_format = event.get("log_format")
    if isinstance(log_format, str) and "()" not in log_format:
        try:
            return log_format.format_map(event)
        except Exception:
            pass
    return formatEvent(event)


class _ClassicText:
    """
    Formats events the way Twisted's text log does (C{time [namespace#level]
    message}), with time stamps worked out once a second and messages
    through L{format_message}: the log is written once or twice per job, so
    its cost counts.
    """

    def __init__(self) -> None:
        self._second: int | None = None
        self._stamp = ""

    def _time(self, when: float | None) -> str:
        if when is None:
            return formatTime(when)
        second = math.floor(when)
        if second != self._second:
            self._second, self._stamp = second, formatTime(second)
        return self._stamp

    def __call__(self, event: LogEvent) -> str | None:
        if "log_failure" in event or "log_system" in event or "log_io" in event:
            return formatEventAsClassicLogText(event, formatTime=self._time)
        level = event.get("log_level")
        namespace = event.get("log_namespace", "-")
        system = f"{namespace}#{level.name}" if level is not None else namespace
        text = format_message(event).replace("\n", "\n\t")
        return f"{self._time(event.get('log_time'))} [{system}] {text}\n"


def _json_line(event: LogEvent) -> str:
    """
    An event as one flat JSON object on a line: C{time}, C{level},
    C{namespace}, C{message} (the formatted text), the event's own named
    fields when they are plain values, and C{traceback} for failures.  Log
    collectors can read it without knowing Twisted's event format.
    """
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.gmtime(event.get("log_time", time.time()))
        )
        + "Z",
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", ""),
        "message": format_message(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in record:
            continue
        if isinstance(value, (str, int, float, bool)) or value is None:
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record) + "\n"


class PikaLogBridge(logging.Handler):
    """
    Hands pika's log records to twisted.logger, so that under twistd they
    end up in the same place as everything else.
    """

    def __init__(self) -> None:
        super().__init__()
        self._loggers: dict[str, Logger] = {}

    def emit(self, record: logging.LogRecord) -> None:
        logger = self._loggers.get(record.name)
        if logger is None:
            logger = self._loggers[record.name] = Logger(namespace=record.name)
        if record.levelno >= logging.CRITICAL:
            level = LogLevel.critical
        elif record.levelno >= logging.ERROR:
            level = LogLevel.error
        elif record.levelno >= logging.WARNING:
            level = LogLevel.warn
        elif record.levelno >= logging.INFO:
            level = LogLevel.info
        else:
            level = LogLevel.debug
        try:
            text = record.getMessage()
        except Exception:  # a broken format string in a library must not crash us
            text = str(record.msg)
        logger.emit(level, "{pika_message}", pika_message=text)


def bridge_pika_logging(level: str = "INFO") -> PikaLogBridge:
    """
    Send pika's logging into twisted.logger.  pika is chatty at INFO, so it
    only speaks up from WARN unless LOG_LEVEL is DEBUG.
    """
    pika_logger = logging.getLogger("pika")
    for handler in list(pika_logger.handlers):
        if isinstance(handler, PikaLogBridge):
            pika_logger.removeHandler(handler)
    bridge = PikaLogBridge()
    pika_logger.addHandler(bridge)
    pika_logger.propagate = False
    pika_logger.setLevel(logging.INFO if level == "DEBUG" else logging.WARNING)
    return bridge


def install_on_application(application: Any, observer: ILogObserver) -> None:
    """
    Ask twistd to log through C{observer}: twistd starts logging after the
    application is built and uses the observer the application carries.
    """
    application.setComponent(ILogObserver, observer)
