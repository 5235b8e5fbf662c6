"""
Tests for where the log goes: level filtering, JSON lines, and pika's
logging carried into twisted.logger.
"""

from __future__ import annotations

import io
import json
import logging

from twisted.internet.task import Clock
from twisted.logger import (
    Logger,
    LogLevel,
    LogPublisher,
    PredicateResult,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from vss_dispatcher.aftersend import AfterSend
from vss_dispatcher.logs import AtLeast, bridge_pika_logging, make_observer


class ObserverTests(SynchronousTestCase):
    """
    The observer built from LOG_LEVEL and LOG_FORMAT.
    """

    def publish(self, observer: object) -> Logger:
        publisher = LogPublisher(observer)  # type: ignore[arg-type]
        return Logger(namespace="vss.test", observer=publisher)

    def test_events_below_the_level_are_dropped(self) -> None:
        """
        With LOG_LEVEL=WARN, info events are not written and warnings are.
        """
        stream = io.StringIO()
        log = self.publish(make_observer("WARN", "text", stream))
        log.info("quiet {what}", what="info")
        log.warn("loud {what}", what="warning")
        self.assertNotIn("quiet", stream.getvalue())
        self.assertIn("loud warning", stream.getvalue())

    def test_json_format_writes_one_flat_object_per_line(self) -> None:
        """
        With LOG_FORMAT=json each event is one JSON object carrying the
        formatted message, the level and the named fields.
        """
        stream = io.StringIO()
        log = self.publish(make_observer("INFO", "json", stream))
        log.info("Showing {image} for {seconds} s", image="a.png", seconds=5)
        log.warn("second")
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first = json.loads(lines[0])
        self.assertEqual(first["message"], "Showing a.png for 5 s")
        self.assertEqual(first["level"], "info")
        self.assertEqual(first["image"], "a.png")
        self.assertEqual(first["seconds"], 5)
        self.assertEqual(first["namespace"], "vss.test")
        self.assertTrue(first["time"].endswith("Z"))

    def test_json_format_includes_tracebacks(self) -> None:
        """
        A logged failure carries its traceback in the JSON record.
        """
        stream = io.StringIO()
        log = self.publish(make_observer("INFO", "json", stream))
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            log.failure("it broke", Failure())
        record = json.loads(stream.getvalue())
        self.assertEqual(record["level"], "critical")
        self.assertIn("ZeroDivisionError", record["traceback"])


class CountingStream(io.StringIO):
    """
    An unbuffered stream, as standard output is for most services: it
    tells how often it was written to.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    @property
    def flushed(self) -> str:
        return self.getvalue()


class RunningClock(Clock):
    """
    A clock standing in for a running reactor.
    """

    running = True


class AtLeastTests(SynchronousTestCase):
    """
    The level filter behind LOG_LEVEL.
    """

    def test_levels(self) -> None:
        """
        Events at the level and above pass on, in any namespace; events
        below it, and events without a level or namespace, do not.
        """
        levels = list(LogLevel.iterconstants())
        for threshold in levels:
            allow = AtLeast(threshold)
            for level in levels:
                event = {"log_level": level, "log_namespace": "pika.connection"}
                expected = (
                    PredicateResult.maybe if level >= threshold else PredicateResult.no
                )
                self.assertIs(allow(event), expected, (threshold, level))
        allow = AtLeast(LogLevel.debug)
        self.assertIs(allow({"log_namespace": "x"}), PredicateResult.no)
        self.assertIs(allow({"log_level": LogLevel.error}), PredicateResult.no)


class FlushTests(SynchronousTestCase):
    """
    Lines are flushed together at the end of a reactor turn, except where
    waiting could lose them.
    """

    def setUp(self) -> None:
        self.stream = CountingStream()
        self.clock = RunningClock()
        self.after_send = AfterSend(self.clock)
        publisher = LogPublisher(
            make_observer("INFO", "text", self.stream, self.after_send)
        )
        self.log = Logger(namespace="vss.test", observer=publisher)

    def test_info_lines_flushed_together_after_the_turn(self) -> None:
        """
        Info lines written in one reactor turn are flushed once, when the
        reactor gets to its next turn.
        """
        self.log.info("Showing {image}", image="a.png")
        self.log.info("Played {image}", image="a.png")
        self.assertEqual(self.stream.flushed, "")
        self.clock.advance(0)
        self.assertEqual(self.stream.writes, 1)
        self.assertIn("Showing a.png", self.stream.flushed)
        self.assertIn("Played a.png", self.stream.flushed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_warnings_flushed_at_once(self) -> None:
        """
        A warning is flushed as soon as it is written, with what was
        waiting before it, and nothing is left scheduled.
        """
        self.log.info("first")
        self.log.warn("VSS is not answering")
        self.assertEqual(self.stream.writes, 1)
        self.assertIn("first", self.stream.flushed)
        self.assertIn("VSS is not answering", self.stream.flushed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flushed_at_once_when_the_reactor_is_not_running(self) -> None:
        """
        Before the reactor runs and once it has stopped, no later turn would
        flush a line, so each is flushed at once.
        """
        self.clock.running = False
        self.log.info("Stopped")
        self.assertEqual(self.stream.writes, 1)
        self.assertIn("Stopped", self.stream.flushed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_json_lines_buffered_the_same_way(self) -> None:
        """
        JSON lines are flushed the same way as text lines.
        """
        stream = CountingStream()
        publisher = LogPublisher(make_observer("INFO", "json", stream, self.after_send))
        log = Logger(namespace="vss.test", observer=publisher)
        log.info("one")
        log.info("two")
        self.clock.advance(0)
        self.assertEqual(stream.writes, 1)
        self.assertEqual(len(stream.flushed.splitlines()), 2)


class PikaBridgeTests(SynchronousTestCase):
    """
    pika's standard-library logging reaches twisted.logger.
    """

    def test_pika_warnings_become_twisted_log_events(self) -> None:
        """
        A warning pika logs is published to twisted.logger at warn level
        with its text, and pika's info records are held back.
        """
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        bridge = bridge_pika_logging("INFO")
        self.addCleanup(logging.getLogger("pika").removeHandler, bridge)

        logging.getLogger("pika.connection").warning("socket %s closed", "x")
        logging.getLogger("pika.connection").info("chatter")

        mine = [e for e in events if e.get("log_namespace") == "pika.connection"]
        self.assertEqual(len(mine), 1)
        self.assertEqual(mine[0]["pika_message"], "socket x closed")
        self.assertEqual(mine[0]["log_level"], LogLevel.warn)
