"""
Tests of the proof-of-play records: the log event and the JSON line of
each display that ended.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from tests.test_status import MonitoredDispatcher
from vss_dispatcher.config import ConfigurationError
from vss_dispatcher.playlog import PlayLog


class PlayLogTests(SynchronousTestCase):
    """
    L{PlayLog} writes one record per display that ended.
    """

    def setUp(self) -> None:
        self.dispatcher = MonitoredDispatcher()
        self.path = os.path.join(os.path.realpath(self.mktemp()), "play.jsonl")
        os.makedirs(os.path.dirname(self.path))
        self.events: list[dict[str, Any]] = []

    def start(self, path: str | None = None) -> PlayLog:
        play_log = PlayLog(
            self.path if path is None else path,
            self.dispatcher.clock,
            self.dispatcher.scheduler,
        )
        play_log.log = Logger(observer=self.events.append)
        play_log.startService()
        self.addCleanup(lambda: play_log.running and play_log.stopService())
        self.dispatcher.scheduler.observers.append(play_log)
        self.dispatcher.broker.observers.append(play_log)
        return play_log

    def records(self) -> list[dict[str, Any]]:
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def plays(self) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("play")]

    def test_completed_display(self) -> None:
        """
        A display that ran its course gives one log event with named fields
        and the same record as one JSON line.
        """
        self.start()
        self.dispatcher.show("lobby/welcome.png", duration=30, message_id="w-1")
        self.dispatcher.clock.advance(30)

        expected = {
            "started": "2026-01-01T00:00:00.000Z",
            "ended": "2026-01-01T00:00:30.000Z",
            "image": "lobby/welcome.png",
            "message_id": "w-1",
            "queue": "vss.normal",
            "priority": False,
            "planned": 30,
            "actual": 30,
            "outcome": "completed",
        }
        self.assertEqual(self.records(), [expected])
        [event] = self.plays()
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual({key: event[key] for key in expected}, expected)

    def test_preempted_display(self) -> None:
        """
        A normal display cut short by a priority job is recorded as
        preempted with the time it really stayed, then the priority job as
        completed.
        """
        self.start()
        self.dispatcher.show("a.png", duration=30)
        self.dispatcher.clock.advance(7.25)
        self.dispatcher.show("alert.png", priority=True, duration=5)
        self.dispatcher.clock.advance(5)

        self.assertEqual(
            [
                (r["image"], r["queue"], r["planned"], r["actual"], r["outcome"])
                for r in self.records()
            ],
            [
                ("a.png", "vss.normal", 30, 7.25, "preempted"),
                ("alert.png", "vss.priority", 5, 5, "completed"),
            ],
        )

    def test_refused_job(self) -> None:
        """
        A job VSS refused is recorded as failed, never on screen.
        """
        self.start()
        self.dispatcher.deliver("broken.png", duration=10)
        self.dispatcher.vss.refuse("VSS answered 422")

        [record] = self.records()
        self.assertEqual(
            (record["outcome"], record["planned"], record["actual"]), ("failed", 10, 0)
        )

    def test_display_on_screen_when_stopping(self) -> None:
        """
        A display still on screen when the dispatcher stops is recorded as
        stopped, with the time it was on screen.
        """
        play_log = self.start()
        self.dispatcher.show("a.png", duration=30)
        self.dispatcher.clock.advance(4)

        play_log.stopService()

        [record] = self.records()
        self.assertEqual(
            (record["outcome"], record["planned"], record["actual"]),
            ("stopped", 30, 4),
        )

    def test_display_forgotten_when_the_broker_is_lost(self) -> None:
        """
        A display the scheduler forgets because the broker connection was
        lost is recorded as interrupted, ending when the connection was lost.
        """
        self.start()
        self.dispatcher.show("a.png", duration=30)
        self.dispatcher.clock.advance(4)
        self.dispatcher.broker.lose("connection reset")
        self.dispatcher.scheduler.forget_unsettled()
        self.dispatcher.clock.advance(3)
        self.dispatcher.broker.consume()

        [record] = self.records()
        self.assertEqual(
            (record["outcome"], record["actual"], record["ended"]),
            ("interrupted", 4, "2026-01-01T00:00:04.000Z"),
        )

    def test_records_are_appended(self) -> None:
        """
        Records of an earlier run are kept and new ones come after them.
        """
        with open(self.path, "w", encoding="utf-8") as f:
            f.write('{"image": "earlier.png"}\n')
        self.start()
        self.dispatcher.show("a.png", duration=0)

        self.assertEqual([r["image"] for r in self.records()], ["earlier.png", "a.png"])

    def test_line_cut_short_by_a_crash(self) -> None:
        """
        A last line cut short by a crash is ended before the next record, so
        the new record is a whole line of its own.
        """
        with open(self.path, "w", encoding="utf-8") as f:
            f.write('{"image": "earlier.png"}\n{"image": "cut sh')
        self.start()
        self.dispatcher.show("a.png", duration=0)

        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        self.assertEqual(lines[1], '{"image": "cut sh')
        self.assertEqual(json.loads(lines[2])["image"], "a.png")
        self.assertEqual(lines[3:], [""])

    def test_each_record_is_on_disk_at_once(self) -> None:
        """
        A record can be read from the file as soon as the display ended,
        while the play log is still open.
        """
        self.start()
        self.dispatcher.show("a.png", duration=1)
        self.dispatcher.clock.advance(1)

        self.assertEqual(len(self.records()), 1)

    def test_without_a_file(self) -> None:
        """
        With PLAY_LOG empty the records are log events only.
        """
        self.start(path="")
        self.dispatcher.show("a.png", duration=0)

        self.assertEqual([e["image"] for e in self.plays()], ["a.png"])
        self.assertFalse(os.path.exists(self.path))

    def test_file_that_cannot_be_opened(self) -> None:
        """
        A PLAY_LOG in a folder that does not exist stops start-up with one
        sentence naming the setting and the path.
        """
        path = os.path.join(os.path.dirname(self.path), "missing", "play.jsonl")
        play_log = PlayLog(path, self.dispatcher.clock, self.dispatcher.scheduler)

        error = self.assertRaises(ConfigurationError, play_log.open)

        self.assertEqual(
            str(error),
            f"PLAY_LOG is {path!r}, which cannot be opened for appending (No such"
            " file or directory); expected a file path in a writable directory,"
            " or empty.",
        )

    def test_write_failure_is_reported_once(self) -> None:
        """
        When the file cannot be written (here a full device), the failure is
        logged once, not per record, and the records still reach the log.
        """
        if not os.path.exists("/dev/full"):
            self.skipTest("this system has no /dev/full to fill")
        self.start(path="/dev/full")
        self.dispatcher.show("a.png", duration=0)
        self.dispatcher.show("b.png", duration=0)

        errors = [e for e in self.events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["path"], "/dev/full")
        self.assertEqual([e["image"] for e in self.plays()], ["a.png", "b.png"])

    def test_display_on_screen_when_the_scheduler_stopped_first(self) -> None:
        """
        The dispatcher stops its scheduler before its other services; the
        display it was showing is still recorded as stopped.
        """
        play_log = self.start()
        self.dispatcher.show("a.png", duration=30)
        self.dispatcher.clock.advance(4)

        self.dispatcher.scheduler.stop()
        play_log.stopService()

        [record] = self.records()
        self.assertEqual((record["outcome"], record["actual"]), ("stopped", 4))
