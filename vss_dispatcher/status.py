"""
What the dispatcher is doing, in the words of its operator: whether it is
healthy, what is on screen, what waits, and what happened in the last hours.

Everything here reads the dispatcher's parts (scheduler, VSS display,
broker) through the attributes described by L{Dispatcher}, and keeps a short
history of its own as an observer of those parts.  The web pages and
systemd's watchdog are built on top of it, in L{vss_dispatcher.monitoring}
and L{vss_dispatcher.sdnotify}.
"""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from .config import Settings
from .message import Job
from .scheduler import Delivery, Outcome

__all__ = [
    "Dispatcher",
    "QueueCounts",
    "Timeline",
    "health_problems",
    "image_file_in",
    "iso_time",
    "status_document",
    "status_line",
]

# How far back the timeline reaches, and how many entries it keeps at most
# whatever the time span, so that a flood of short jobs cannot grow it
# without bound.  2000 entries cover the 3 hours when displays last 5.4 s or
# more on average (an e-paper screen takes seconds to redraw), in about
# 0.6 MB.
TIMELINE_SECONDS = 3 * 3600.0
TIMELINE_ENTRIES = 2000


class Dispatcher(Protocol):
    """
    The parts of the dispatcher service that monitoring reads.

    @ivar settings: The checked settings.
    @ivar scheduler: What is on screen and what waits
        (L{vss_dispatcher.scheduler.Scheduler}).
    @ivar display: The VSS side (L{vss_dispatcher.vss.RetryingDisplay}).
    @ivar broker: The RabbitMQ side (L{vss_dispatcher.amqp.Broker}).
    @ivar clock: The reactor; its seconds are seconds since the epoch.
    @ivar started: When the dispatcher started, on C{clock}; C{None} before
        it started.
    @ivar version: The dispatcher's version.
    """

    settings: Settings
    scheduler: Any
    display: Any
    broker: Any
    clock: Any
    started: float | None
    version: str


def iso_time(seconds: float | None) -> str | None:
    """
    Seconds since the epoch as an ISO 8601 UTC time with milliseconds, or
    C{None} for C{None}.
    """
    if seconds is None:
        return None
    return _iso_times(seconds)


class _IsoTimes:
    """
    Writes times as L{iso_time} does, working out the date and time of day
    once a second: the play log writes two times for every display.
    """

    def __init__(self) -> None:
        self._second = 0
        self._stamp = ""

    def __call__(self, seconds: float) -> str:
        # Rounded to the microsecond first, then cut to the millisecond, as
        # datetime does.
        fraction, whole = math.modf(seconds)
        micros = round(fraction * 1_000_000)
        if micros >= 1_000_000:
            whole += 1
            micros -= 1_000_000
        if micros < 0:
            return _slow_iso_time(seconds)
        second = int(whole)
        if second != self._second or not self._stamp:
            moment = datetime.fromtimestamp(second, tz=timezone.utc)
            self._second, self._stamp = second, moment.strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._stamp}.{micros // 1000:03d}Z"


def _slow_iso_time(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_iso_times = _IsoTimes()


def health_problems(dispatcher: Dispatcher) -> list[str]:
    """
    Why the dispatcher cannot do its work right now, in plain words.

    It is healthy (the list is empty) when the broker connection is open,
    both queues are consumed, and VSS accepted the last request (or none was
    made yet).
    """
    problems = []
    broker = dispatcher.broker
    if broker.state != "open":
        problems.append(f"the RabbitMQ connection is {broker.state}, not open")
    elif not broker.consuming:
        problems.append("the queues are not being consumed")
    last_error = dispatcher.display.last_error
    if last_error is not None:
        problems.append(f"the last request to VSS failed: {last_error}")
    return problems


def status_line(dispatcher: Dispatcher) -> str:
    """
    What the dispatcher does now, in one line (for C{systemctl status}).
    """
    broker = dispatcher.broker
    settings = dispatcher.settings
    if broker.state != "open":
        return (
            f"RabbitMQ connection {broker.state} ({settings.rabbitmq_host}:"
            f"{settings.rabbitmq_port}, {broker.reconnects} reconnections so far)"
        )
    if not broker.consuming:
        return "Connected to RabbitMQ, not consuming the queues yet"
    display = dispatcher.display
    if display.last_error is not None:
        return (
            f"VSS failed {display.failures} requests in a row, retrying:"
            f" {display.last_error}"
        )
    scheduler = dispatcher.scheduler
    current: Delivery | None = scheduler.current
    waiting = len(scheduler.waiting())
    if current is None:
        return (
            f"Waiting for jobs on {settings.rabbitmq_normal_queue} and"
            f" {settings.rabbitmq_priority_queue}"
        )
    verb = "Showing" if scheduler.state == "showing" else "Sending"
    return f"{verb} {current.job.image_path} from {current.queue}; {waiting} waiting"


def image_file_in(root: str, job: Job) -> str | None:
    """
    The file of C{job}'s image, if it may be served: only a file inside
    C{root} (following symbolic links) qualifies.  This looks at the file
    system, which for a network share can take long: call it from a worker
    thread.
    """
    root = os.path.realpath(root)
    candidate = job.resolved_path or os.path.join(root, job.image_path)
    resolved = os.path.realpath(candidate)
    if os.path.commonpath([resolved, root]) != root or resolved == root:
        return None
    if not os.path.isfile(resolved):
        return None
    return resolved


def may_preview(dispatcher: Dispatcher, delivery: Delivery | None) -> bool:
    """
    Whether C{delivery}'s image can be offered as a preview, judged from its
    path alone, without touching the file system: a job's path was checked
    against IMAGE_ROOT when it arrived.  L{image_file_in} decides when the file
    is asked for.
    """
    root = dispatcher.settings.image_root
    if delivery is None or not root:
        return False
    job = delivery.job
    candidate = os.path.normpath(
        job.resolved_path or os.path.join(root, job.image_path)
    )
    return os.path.commonpath([candidate, root]) == root and candidate != root


def _describe_waiting(delivery: Delivery) -> dict[str, Any]:
    """
    A waiting delivery as JSON.
    """
    return {
        "image": delivery.job.image_path,
        "message_id": delivery.job.message_id,
        "queue": delivery.queue,
        "priority": delivery.priority,
        "duration": delivery.remaining,
        "received": iso_time(delivery.received),
    }


def _describe_current(dispatcher: Dispatcher) -> dict[str, Any] | None:
    """
    The delivery being sent or shown as JSON, or C{None}.
    """
    scheduler = dispatcher.scheduler
    delivery: Delivery | None = scheduler.current
    if delivery is None:
        return None
    if scheduler.state == "showing":
        elapsed = dispatcher.clock.seconds() - scheduler.since
        remaining = max(0.0, delivery.remaining - elapsed)
    else:
        # Not on screen yet: the whole time is still ahead.
        remaining = delivery.remaining
    return {
        "image": delivery.job.image_path,
        "message_id": delivery.job.message_id,
        "queue": delivery.queue,
        "priority": delivery.priority,
        "state": scheduler.state,
        "since": iso_time(scheduler.since),
        "duration": delivery.remaining,
        "remaining": remaining,
        "preview": may_preview(dispatcher, delivery),
    }


def status_document(
    dispatcher: Dispatcher, counts: dict[str, int] | None
) -> dict[str, Any]:
    """
    The whole state of the dispatcher as one JSON-ready document.

    @param counts: Messages waiting on the broker by queue name, or C{None}
        when the broker could not tell.
    """
    settings = dispatcher.settings
    now = dispatcher.clock.seconds()
    problems = health_problems(dispatcher)
    started = dispatcher.started
    queues = (settings.rabbitmq_normal_queue, settings.rabbitmq_priority_queue)
    broker = dispatcher.broker
    display = dispatcher.display
    return {
        "version": dispatcher.version,
        "time": iso_time(now),
        "started": iso_time(dispatcher.started),
        "uptime": None if started is None else max(0.0, now - started),
        "healthy": not problems,
        "problems": problems,
        "state": dispatcher.scheduler.state,
        "current": _describe_current(dispatcher),
        "waiting": [_describe_waiting(d) for d in dispatcher.scheduler.waiting()],
        "queues": {
            queue: (counts.get(queue) if counts is not None else None)
            for queue in queues
        },
        "broker": {
            "state": broker.state,
            "consuming": broker.consuming,
            "reconnects": broker.reconnects,
        },
        "vss": {
            "failures": display.failures,
            "last_error": display.last_error,
        },
    }


class QueueCounts:
    """
    The broker's message counts, asked for at most once every C{max_age}
    seconds however many pages poll the status, and given up on after
    C{timeout} seconds.
    """

    def __init__(
        self,
        broker: Any,
        clock: IReactorTime,
        max_age: float = 2.0,
        timeout: float = 3.0,
    ) -> None:
        """
        @param broker: Gives the counts (L{vss_dispatcher.amqp.Broker}).
        @param clock: Measures the age of the counts and the timeout.
        @param max_age: Seconds a count is reused.
        @param timeout: Seconds to wait for the broker's answer.
        """
        self._broker = broker
        self._clock = clock
        self._max_age = max_age
        self._timeout = timeout
        self._counts: dict[str, int] | None = None
        self._asked_at: float | None = None
        self._waiting: list[Deferred[dict[str, int] | None]] = []

    def get(self) -> Deferred[dict[str, int] | None]:
        """
        The counts by queue name, or C{None} when the broker is not
        connected or did not answer in time.
        """
        result: Deferred[dict[str, int] | None] = Deferred()
        if self._waiting:
            # A question is out already: share its answer.
            self._waiting.append(result)
            return result
        now = self._clock.seconds()
        if self._asked_at is not None and now - self._asked_at < self._max_age:
            return succeed(self._counts)
        self._waiting.append(result)
        self._asked_at = now
        self._ask()
        return result

    def _ask(self) -> None:
        """
        Ask the broker, once, for the waiting requests.
        """
        try:
            asking: Deferred[dict[str, int]] = self._broker.queue_counts()
        except Exception:
            asking = Deferred.fromCoroutine(_unavailable())
        asking.addTimeout(self._timeout, self._clock)
        asking.addCallbacks(self._answered, self._unanswered)

    def _answered(self, counts: dict[str, int]) -> None:
        """
        Hand the broker's counts to every waiting request.
        """
        self._deliver(dict(counts))

    def _unanswered(self, failure: Failure) -> None:
        """
        The broker could not count: every waiting request gets C{None}.
        """
        self._deliver(None)

    def _deliver(self, counts: dict[str, int] | None) -> None:
        """
        Keep C{counts} and fire every waiting request with them.
        """
        self._counts = counts
        waiting, self._waiting = self._waiting, []
        for result in waiting:
            result.callback(counts)


async def _unavailable() -> dict[str, int]:
    """
    Fail as C{queue_counts} does when the broker is not connected.
    """
    raise ConnectionError("the broker cannot count messages now")


@dataclass(slots=True)
class Showing:
    """
    One display in the timeline: an image that VSS accepted, from when it
    went on screen until it ended (C{ended} is C{None} while it is on
    screen).

    Only what the page shows is kept, so thousands of entries stay small;
    the delivery itself is held only while it is on screen.
    """

    image: str
    message_id: str | None
    queue: str
    priority: bool
    started: float
    ended: float | None = None
    outcome: str | None = None
    delivery: Delivery | None = None

    @classmethod
    def of(cls, delivery: Delivery, started: float) -> Showing:
        """
        The entry for C{delivery}, on screen since C{started}.
        """
        job = delivery.job
        return cls(
            job.image_path,
            job.message_id,
            delivery.queue,
            delivery.priority,
            started,
            delivery=delivery,
        )

    def end(self, when: float, outcome: str) -> None:
        """
        Record the end of the display.
        """
        self.ended = when
        self.outcome = outcome
        self.delivery = None

    def as_json(self) -> dict[str, Any]:
        """
        The display as a JSON-ready document.
        """
        return {
            "image": self.image,
            "message_id": self.message_id,
            "queue": self.queue,
            "priority": self.priority,
            "started": iso_time(self.started),
            "ended": iso_time(self.ended),
            "outcome": self.outcome,
        }


@dataclass(frozen=True, slots=True)
class Mark:
    """
    Something that went wrong at one moment: C{kind} is C{"vss_failure"},
    C{"broker_lost"} or C{"dead_lettered"}.
    """

    time: float
    kind: str
    text: str

    def as_json(self) -> dict[str, Any]:
        """
        The mark as a JSON-ready document.
        """
        return {"time": iso_time(self.time), "kind": self.kind, "text": self.text}


class Timeline:
    """
    The displays and the failures of the last hours, as an observer of the
    scheduler, the VSS display and the broker.
    """

    def __init__(
        self,
        clock: IReactorTime,
        scheduler: Any,
        keep: float = TIMELINE_SECONDS,
        entries: int = TIMELINE_ENTRIES,
    ) -> None:
        """
        @param clock: Where time comes from; its seconds are epoch seconds.
        @param scheduler: Tells which delivery is current, to notice a
            display abandoned without an end (the broker connection was
            lost, and the broker delivers the job again).
        @param keep: Seconds of history to keep.
        @param entries: Most displays, and most marks, to keep.
        """
        self._clock = clock
        self._scheduler = scheduler
        self._keep = keep
        self.showings: deque[Showing] = deque(maxlen=entries)
        self.marks: deque[Mark] = deque(maxlen=entries)
        self._lost_at: float | None = None

    def _open(self) -> Showing | None:
        """
        The display on screen, if the timeline has one.
        """
        if self.showings and self.showings[-1].ended is None:
            return self.showings[-1]
        return None

    def _close_abandoned(self) -> None:
        """
        End the display on screen if the scheduler forgot it (the broker
        connection was lost): it ended when the connection was lost.
        """
        showing = self._open()
        if showing is None or self._scheduler.current is showing.delivery:
            return
        now = self._clock.seconds()
        showing.end(self._lost_at if self._lost_at is not None else now, "interrupted")

    def _prune(self) -> None:
        """
        Drop what is older than the span kept.
        """
        horizon = self._clock.seconds() - self._keep
        while self.showings:
            ended = self.showings[0].ended
            if ended is None or ended >= horizon:
                break
            self.showings.popleft()
        while self.marks and self.marks[0].time < horizon:
            self.marks.popleft()

    def _mark(self, kind: str, text: str) -> None:
        """
        Mark a failure now.
        """
        self.marks.append(Mark(self._clock.seconds(), kind, text))
        self._prune()

    def display_sending(self, delivery: Delivery) -> None:
        """
        A new job goes to VSS: the display on screen may have been forgotten.
        """
        self._close_abandoned()

    def display_started(self, delivery: Delivery) -> None:
        """
        VSS accepted C{delivery}: a new display begins.
        """
        self._close_abandoned()
        self._lost_at = None
        self.showings.append(Showing.of(delivery, self._clock.seconds()))
        self._prune()

    def display_ended(
        self, delivery: Delivery, outcome: Outcome, planned: float, actual: float
    ) -> None:
        """
        The display of C{delivery} ended with C{outcome}.
        """
        showing = self._open()
        # A job VSS refused never started, and is marked when it is set aside.
        if showing is not None and showing.delivery is delivery:
            showing.end(self._clock.seconds(), outcome.value)

    def vss_answered(self, seconds: float, result: str) -> None:
        """
        Answers are not in the timeline, only failures.
        """
        pass

    def vss_retrying(self, failures: int, delay: float, reason: str) -> None:
        """
        A VSS request failed: mark it.
        """
        self._mark(
            "vss_failure",
            f"VSS request failed ({reason}); {failures} in a row,"
            f" retrying in {delay:g} s",
        )

    def broker_connected(self) -> None:
        """
        Nothing to mark: consuming is what counts.
        """
        pass

    def broker_consuming(self) -> None:
        """
        Consuming again: a display forgotten meanwhile is over.
        """
        self._close_abandoned()

    def broker_lost(self, reason: str) -> None:
        """
        The broker connection was lost: mark it.
        """
        self._lost_at = self._clock.seconds()
        self._mark("broker_lost", f"lost the RabbitMQ connection ({reason})")

    def message_dead_lettered(self, queue: str, category: str, reason: str) -> None:
        """
        A message was set aside: mark it.
        """
        self._mark("dead_lettered", f"set aside a message from {queue}: {reason}")

    def as_json(self) -> dict[str, Any]:
        """
        The timeline as a JSON-ready document, oldest first.
        """
        self._close_abandoned()
        self._prune()
        now = self._clock.seconds()
        return {
            "time": iso_time(now),
            "from": iso_time(now - self._keep),
            "showings": [showing.as_json() for showing in self.showings],
            "marks": [mark.as_json() for mark in self.marks],
        }
