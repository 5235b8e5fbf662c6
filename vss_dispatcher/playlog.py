"""
Proof of play: one record for every display that ended, saying what was on
screen, for how long, and how it ended.

Each record is a log event with named fields and, when PLAY_LOG names a
file, the same record as one JSON line appended to that file.  The file is
only ever appended to, one flushed line at a time, so it can be shipped or
rotated by the usual tools; a line cut short by a crash is ended before the
next one is written, so it never spoils the record after it.
"""

from __future__ import annotations

import errno
import json
import os
from typing import IO, Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .config import ConfigurationError
from .scheduler import Delivery, Outcome
from .status import iso_time

__all__ = ["STOPPED", "INTERRUPTED", "PlayLog"]

# Besides the scheduler's outcomes (completed, preempted, failed), a display
# may end because the dispatcher stopped, or because the broker connection
# was lost and the broker will deliver the job again.
STOPPED = "stopped"
INTERRUPTED = "interrupted"


class PlayLog(Service):
    """
    Writes a record when a display ends, as an observer of the scheduler and
    the broker.
    """

    log = Logger()

    def __init__(self, path: str, clock: IReactorTime, scheduler: Any) -> None:
        """
        @param path: The file to append JSON lines to, or empty for log
            events alone.
        @param clock: Where time comes from; its seconds are epoch seconds.
        @param scheduler: Tells which delivery is current, to notice a
            display that ended without the scheduler saying so.
        """
        self.path = path
        self._clock = clock
        self._scheduler = scheduler
        self._file: IO[bytes] | None = None
        self._failing = False
        self._cut_short = False
        self._showing: tuple[Delivery, float] | None = None
        self._lost_at: float | None = None

    def open(self) -> None:
        """
        Open the file for appending, if there is one and it is not open yet.

        @raise ConfigurationError: When the file cannot be opened.
        """
        if not self.path or self._file is not None:
            return
        try:
            # Unbuffered: each record reaches the file in one write, and a
            # failed write leaves nothing behind to be written later.
            opened = open(self.path, "a+b", buffering=0)
        except OSError as error:
            raise ConfigurationError(
                f"PLAY_LOG is {self.path!r}, which cannot be opened for appending"
                f" ({error.strerror}); expected a file path in a writable"
                " directory, or empty."
            ) from None
        try:
            if opened.seek(0, os.SEEK_END) > 0:
                opened.seek(-1, os.SEEK_END)
                # The last run may have stopped in the middle of a line.
                self._cut_short = opened.read(1) != b"\n"
        except OSError:
            opened.close()
            raise
        self._file = opened

    def startService(self) -> None:
        """
        Open the file, if it is not open yet.
        """
        self.open()
        super().startService()

    def stopService(self) -> None:
        """
        Record the display on screen as stopped, then close the file.
        """
        # The dispatcher stops its scheduler first, which forgets the display
        # on screen; only a display forgotten earlier was interrupted.
        if self._scheduler.state != "stopped" or self._lost_at is not None:
            self._close_abandoned()
        showing, self._showing = self._showing, None
        if showing is not None:
            delivery, started = showing
            self.record(delivery, STOPPED, delivery.remaining, started)
        super().stopService()
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def record(
        self, delivery: Delivery, outcome: str, planned: float, started: float
    ) -> None:
        """
        Write the record of one display, which ended now after it went on
        screen at C{started}.
        """
        ended = self._clock.seconds()
        self.write(delivery, outcome, planned, max(0.0, ended - started), ended)

    def write(
        self,
        delivery: Delivery,
        outcome: str,
        planned: float,
        actual: float,
        ended: float,
    ) -> None:
        """
        Log and append the record of one display.

        @param outcome: C{completed}, C{preempted}, C{failed}, C{stopped} or
            C{interrupted}.
        @param planned: Seconds it was meant to stay on screen.
        @param actual: Seconds it stayed.
        @param ended: When it ended.
        """
        job = delivery.job
        fields = {
            "started": iso_time(ended - actual),
            "ended": iso_time(ended),
            "image": job.image_path,
            "message_id": job.message_id,
            "queue": delivery.queue,
            "priority": delivery.priority,
            "planned": round(planned, 3),
            "actual": round(actual, 3),
            "outcome": outcome,
        }
        self.log.info(
            "Played {image} from {queue} for {actual} of {planned} s: {outcome}",
            play=True,
            **fields,
        )
        if self._file is not None:
            self._append(json.dumps(fields, ensure_ascii=False) + "\n")

    def _append(self, line: str) -> None:
        """
        Append one line in a single write; a failure is logged once until
        writing works again.
        """
        assert self._file is not None
        data = line.encode("utf-8")
        if self._cut_short:
            data = b"\n" + data
        try:
            written = 0
            while written < len(data):
                count = self._file.write(data[written:])
                if not count:
                    raise OSError(errno.EIO, "the file took nothing")
                written += count
        except OSError as error:
            # Part of the line may be in the file: end it before the next.
            self._cut_short = True
            if not self._failing:
                self.log.error(
                    "Cannot write to the play log {path} ({error}); the records"
                    " stay in this log until it works again",
                    path=self.path,
                    error=error.strerror,
                )
            self._failing = True
            return
        self._cut_short = False
        if self._failing:
            self.log.info("Writing to the play log {path} again", path=self.path)
            self._failing = False

    def _close_abandoned(self) -> None:
        """
        Record the display that went away without an end: the scheduler
        forgets a job that was not acknowledged when the broker connection
        is lost, since the broker delivers it again.
        """
        showing = self._showing
        if showing is None or self._scheduler.current is showing[0]:
            return
        self._showing = None
        delivery, started = showing
        ended = self._lost_at if self._lost_at is not None else self._clock.seconds()
        actual = max(0.0, ended - started)
        self.write(delivery, INTERRUPTED, delivery.remaining, actual, ended)

    def display_sending(self, delivery: Delivery) -> None:
        """
        A new job goes to VSS: the display on screen may have been forgotten.
        """
        self._close_abandoned()

    def display_started(self, delivery: Delivery) -> None:
        """
        Remember the display that begins, to record it if it never ends.
        """
        self._close_abandoned()
        self._lost_at = None
        self._showing = (delivery, self._clock.seconds())

    def display_ended(
        self, delivery: Delivery, outcome: Outcome, planned: float, actual: float
    ) -> None:
        """
        Record the display that ended.
        """
        if self._showing is not None and self._showing[0] is delivery:
            self._showing = None
        self.write(delivery, outcome.value, planned, actual, self._clock.seconds())

    def broker_connected(self) -> None:
        """
        Nothing to record.
        """
        pass

    def broker_consuming(self) -> None:
        """
        Consuming again: a display forgotten meanwhile is over.
        """
        self._close_abandoned()

    def broker_lost(self, reason: str) -> None:
        """
        Remember when the connection was lost: a display the scheduler
        forgets because of it ended then.
        """
        if self._showing is not None:
            self._lost_at = self._clock.seconds()

    def message_dead_lettered(self, queue: str, category: str, reason: str) -> None:
        """
        Nothing to record: the message was never shown.
        """
        pass
