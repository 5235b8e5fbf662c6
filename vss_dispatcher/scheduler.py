"""
The schedule: which job is on screen, for how long, and what comes next.

The scheduler knows a clock, a way to put a job on screen and a way to settle
a message; it knows nothing of AMQP or HTTP, so it is tested with
L{twisted.internet.task.Clock} alone.

At any moment it is in one of three states:

  - idle: nothing is being sent and no display is running;
  - sending: a job was handed to VSS and VSS has not accepted it yet (this
    includes the retries while VSS is unreachable);
  - showing: VSS accepted the job and a L{DelayedCall} holds it on screen for
    its duration.

Priority jobs go before normal ones.  A priority job that arrives while a
normal job is being sent or shown preempts it at once: the pending request or
the DelayedCall is cancelled and the priority job is sent.

Observers (the status page, the metrics, the play log) hear of each change
in the order the changes happened.  Under the dispatcher they hear of them
once the reactor has sent what the change produced, so that acknowledging a
job and sending the next one never wait for them.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .aftersend import AfterSend
from .message import Job

__all__ = [
    "Delivery",
    "Interrupted",
    "JobRejected",
    "Outcome",
    "Scheduler",
    "SchedulerObserver",
    "sleep_precisely",
]


class JobRejected(Exception):
    """
    VSS answered that it can never show this job; the reason is in plain
    words and ends up in the dead-letter headers.
    """

    @property
    def reason(self) -> str:
        return str(self.args[0])


class Interrupted(enum.Enum):
    """
    What happens to a normal job that a priority job interrupts after VSS
    accepted it.
    """

    DROP = "drop"
    RESUME = "resume"
    RESTART = "restart"


class Outcome(str, enum.Enum):
    """
    How a display ended.
    """

    COMPLETED = "completed"
    PREEMPTED = "preempted"
    FAILED = "failed"


@dataclass(eq=False)
class Delivery:
    """
    A job as received from one of the queues, until it is settled.

    @ivar job: The job.
    @ivar priority: Whether it came from the priority queue.
    @ivar queue: The name of the queue it came from.
    @ivar token: Whatever the message source needs to settle it later; the
        scheduler never looks inside.
    @ivar received: When it was received, on the scheduler's clock.
    @ivar remaining: Seconds still to show; less than the job's duration
        when a display is resumed after a preemption.
    @ivar settled: Whether the message was acknowledged already.
    """

    job: Job
    priority: bool
    queue: str = ""
    token: object = None
    received: float = 0.0
    remaining: float = field(default=-1.0)
    settled: bool = False

    def __post_init__(self) -> None:
        if self.remaining < 0:
            self.remaining = self.job.duration


class SchedulerObserver(Protocol):
    """
    Something that wants to know what the scheduler does: the status page,
    the metrics, the play log.
    """

    def display_sending(self, delivery: Delivery) -> None:
        """
        C{delivery} was handed to VSS.
        """

    def display_started(self, delivery: Delivery) -> None:
        """
        VSS accepted C{delivery}; it is on screen now.
        """

    def display_ended(
        self, delivery: Delivery, outcome: Outcome, planned: float, actual: float
    ) -> None:
        """
        The display of C{delivery} ended after C{actual} of C{planned}
        seconds.
        """


class _State(enum.Enum):
    IDLE = "idle"
    SENDING = "sending"
    SHOWING = "showing"
    STOPPED = "stopped"


class Scheduler:
    """
    Decides what is on screen.

    @ivar current: The delivery being sent or shown, if any.
    @ivar since: When the current delivery went on screen (or was sent).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        display: Callable[[Job, bool], Deferred[float | None]],
        settle: Callable[[Delivery], None],
        reject: Callable[[Delivery, str], None],
        interrupted: Interrupted = Interrupted.DROP,
        ack_after: float = 600.0,
        wake_early: float = 0.0,
        sleep: Callable[[float], None] | None = None,
        after_send: AfterSend | None = None,
    ) -> None:
        """
        @param clock: Where time comes from.
        @param display: Sends a job to VSS: called with the job and whether
            it is a priority job, it returns a L{Deferred} that fires when
            VSS accepted it (with the time VSS's answer arrived, on
            C{clock}, or C{None} for "now"), fails with L{JobRejected} when
            VSS never will, and stops what it does when cancelled.  The
            display is counted from the time VSS answered.
        @param settle: Acknowledges a delivery; called once per delivery.
        @param reject: Sets a delivery aside with a reason; called instead of
            C{settle} for a job VSS refuses.
        @param interrupted: What to do with a normal job interrupted on
            screen.
        @param ack_after: Seconds after which a delivery still on screen is
            settled without waiting for its display to end.
        @param wake_early: Seconds by which the end of a display is
            scheduled early, the rest being waited out with C{sleep}.  A
            reactor wakes up to a millisecond late (its poll counts whole
            milliseconds), which would lengthen every display; two
            milliseconds early and a short sleep end it on time.
        @param sleep: Waits a fraction of a second, blocking;
            L{sleep_precisely} when not given.
        @param after_send: When given, the observers are told, and the
            "Showing" line logged, once the reactor has sent what it was
            given, rather than at once, in the same order.  The
            acknowledgement of a finished job and the request for the next
            one then leave without waiting for them, and the observers run
            while the dispatcher waits for the next message from the broker.
        """
        self._clock = clock
        self._display = display
        self._settle = settle
        self._reject = reject
        self._interrupted = interrupted
        self._ack_after = ack_after
        self._wake_early = wake_early
        self._sleep = sleep_precisely if sleep is None else sleep
        self._after_send = after_send

        self._state = _State.IDLE
        self._priority: deque[Delivery] = deque()
        self._normal: deque[Delivery] = deque()
        self._ended: deque[Delivery] = deque()
        self._sending: Deferred[float | None] | None = None
        self._timer: IDelayedCall | None = None
        self._ack_timer: IDelayedCall | None = None
        self._advancing = False
        self._told: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self.current: Delivery | None = None
        self.since = 0.0
        self.observers: list[SchedulerObserver] = []

    @property
    def state(self) -> str:
        """
        C{"idle"}, C{"sending"}, C{"showing"} or C{"stopped"}.
        """
        return self._state.value

    def waiting(self) -> list[Delivery]:
        """
        The deliveries waiting their turn, in the order they will be shown.
        """
        return [*self._priority, *self._normal]

    def enqueue(self, delivery: Delivery) -> None:
        """
        Take a new delivery and, if it is a priority job, interrupt a normal
        job on screen for it.
        """
        if self._state is _State.STOPPED:
            return
        if delivery.priority:
            self._priority.append(delivery)
            current = self.current
            if current is not None and not current.priority:
                self._preempt(current)
        else:
            self._normal.append(delivery)
        self._advance()

    def _preempt(self, current: Delivery) -> None:
        """
        Take C{current}, a normal job, off the screen (or out of VSS's hands)
        so that the waiting priority job goes next.
        """
        state = self._state
        self.current = None
        self._state = _State.IDLE
        if state is _State.SENDING:
            # VSS has not shown it yet, so it must still be shown later.
            self.log.info(
                "Priority job interrupts {image} before it was shown;"
                " it will be shown after the priority jobs",
                image=current.job.image_path,
            )
            self._cancel_sending()
            self._normal.appendleft(current)
        else:
            shown_for = self._clock.seconds() - self.since
            self._cancel_timers()
            self._tell(
                self._display_ended,
                current,
                Outcome.PREEMPTED,
                current.remaining,
                shown_for,
            )
            if self._interrupted is Interrupted.DROP:
                self.log.info(
                    "Priority job interrupts {image} after {seconds:.3f} s;"
                    " it is finished",
                    image=current.job.image_path,
                    seconds=shown_for,
                )
                self._settle_once(current)
            else:
                if self._interrupted is Interrupted.RESUME:
                    current.remaining = max(0.0, current.remaining - shown_for)
                else:
                    current.remaining = current.job.duration
                self.log.info(
                    "Priority job interrupts {image} after {seconds:.3f} s;"
                    " it will be shown again for {remaining:.3f} s",
                    image=current.job.image_path,
                    seconds=shown_for,
                    remaining=current.remaining,
                )
                self._normal.appendleft(current)

    def _advance(self) -> None:
        """
        Start the next job if nothing is running.  Jobs that need no time on
        screen are finished in this loop rather than by recursion.
        """
        if self._advancing:
            return
        self._advancing = True
        try:
            while self._state is _State.IDLE and (self._priority or self._normal):
                delivery = (self._priority or self._normal).popleft()
                self._send(delivery)
        finally:
            self._advancing = False

    def _send(self, delivery: Delivery) -> None:
        self._state = _State.SENDING
        self.current = delivery
        self.since = self._clock.seconds()
        job = delivery.job
        if delivery.remaining != job.duration:
            job = replace(job, duration=delivery.remaining)
        self._tell(self._display_sending, delivery)

        sending = self._display(job, delivery.priority)
        if self.current is delivery and self._state is _State.SENDING:
            self._sending = sending
        sending.addCallbacks(
            lambda answered: self._accepted(delivery, answered),
            lambda failure: self._failed(delivery, failure),
        )

    def _accepted(self, delivery: Delivery, answered: float | None) -> None:
        if self.current is not delivery or self._state is not _State.SENDING:
            return
        self._sending = None
        self._state = _State.SHOWING
        now = self._clock.seconds()
        self.since = now if answered is None else min(answered, now)
        # The timers start before the log line and the observers run, so
        # that their work does not lengthen the display.
        if delivery.remaining > 0:
            deadline = self.since + delivery.remaining
            self._timer = self._clock.callLater(
                max(0.0, deadline - now - self._wake_early),
                self._on_time,
                delivery,
                deadline,
            )
            if not delivery.settled and delivery.remaining > self._ack_after:
                self._ack_timer = self._clock.callLater(
                    max(0.0, self.since + self._ack_after - now),
                    self._acknowledge_early,
                    delivery,
                )
        self._tell(self._display_started, delivery, delivery.remaining)

        if delivery.remaining <= 0:
            self._finished(delivery)

    def _failed(self, delivery: Delivery, failure: Failure) -> None:
        if self.current is not delivery or self._state is not _State.SENDING:
            # Preempted or stopped: the request was cancelled on purpose.
            return
        self._sending = None
        self.current = None
        self._state = _State.IDLE

        if failure.check(JobRejected):
            reason = failure.value.reason  # type: ignore[union-attr]
        else:
            self.log.failure(
                "Unexpected error while sending {image}; it is set aside",
                failure,
                image=delivery.job.image_path,
            )
            reason = f"internal error: {failure.getErrorMessage()}"
        self._tell(
            self._display_ended, delivery, Outcome.FAILED, delivery.remaining, 0.0
        )
        if not delivery.settled:
            delivery.settled = True
            self._reject(delivery, reason)
        self._advance()

    def _on_time(self, delivery: Delivery, deadline: float) -> None:
        """
        The display timer fired, a little before C{deadline}: wait out the
        rest, then end the display.
        """
        left = deadline - self._clock.seconds()
        if 0 < left <= self._wake_early:
            self._sleep(left)
        self._finished(delivery)

    def _finished(self, delivery: Delivery) -> None:
        self._timer = None
        self._cancel_ack_timer()
        planned = delivery.remaining
        shown_for = self._clock.seconds() - self.since
        self.current = None
        self._state = _State.IDLE
        self._tell(self._display_ended, delivery, Outcome.COMPLETED, planned, shown_for)
        # The next job in hand goes to VSS before the acknowledgement: the
        # broker, woken by the acknowledgement, then competes with nothing
        # that keeps the screen waiting.  The finished job is acknowledged
        # all the same, after its display ended, and finished jobs are
        # acknowledged in the order they finished.
        self._ended.append(delivery)
        self._advance()
        while self._ended:
            self._settle_once(self._ended.popleft())

    def _acknowledge_early(self, delivery: Delivery) -> None:
        self._ack_timer = None
        self.log.info(
            "{image} has been on screen for {seconds:g} s; acknowledging it now"
            " so the broker does not time out, it stays on screen",
            image=delivery.job.image_path,
            seconds=self._ack_after,
        )
        self._settle_once(delivery)

    def _tell(self, event: Callable[..., None], *details: Any) -> None:
        """
        Pass an event to the observers, now or once the reactor has sent
        what it was given.
        """
        if self._after_send is None:
            event(*details)
            return
        self._told.append((event, details))
        if not self._after_send.call(self.tell_observers):
            self.tell_observers()

    def tell_observers(self) -> None:
        """
        Pass every event still held to the observers, in order.
        """
        if self._after_send is not None:
            self._after_send.discard(self.tell_observers)
        told = self._told
        while told:
            event, details = told.popleft()
            event(*details)

    def _display_sending(self, delivery: Delivery) -> None:
        for observer in self.observers:
            observer.display_sending(delivery)

    def _display_started(self, delivery: Delivery, seconds: float) -> None:
        self.log.info(
            "Showing {image} from {queue} for {seconds:g} s",
            queue=delivery.queue,
            image=delivery.job.image_path,
            seconds=seconds,
        )
        for observer in self.observers:
            observer.display_started(delivery)

    def _display_ended(
        self, delivery: Delivery, outcome: Outcome, planned: float, actual: float
    ) -> None:
        for observer in self.observers:
            observer.display_ended(delivery, outcome, planned, actual)

    def _settle_once(self, delivery: Delivery) -> None:
        if not delivery.settled:
            delivery.settled = True
            self._settle(delivery)

    def _cancel_sending(self) -> None:
        sending, self._sending = self._sending, None
        if sending is not None:
            sending.cancel()

    def _cancel_ack_timer(self) -> None:
        _cancel(self._ack_timer)
        self._ack_timer = None

    def _cancel_timers(self) -> None:
        _cancel(self._timer)
        self._timer = None
        self._cancel_ack_timer()

    def forget_unsettled(self) -> None:
        """
        Drop every delivery that is not settled yet, because the connection
        it came on is gone and the broker will deliver it again.  A job on
        screen that was already settled stays on screen to the end.
        """
        self.tell_observers()
        self._priority = deque(d for d in self._priority if d.settled)
        self._normal = deque(d for d in self._normal if d.settled)
        current = self.current
        if current is not None and not current.settled:
            self.current = None
            self._state = _State.IDLE
            self._cancel_sending()
            self._cancel_timers()
        self._advance()

    def stop(self) -> None:
        """
        Stop for good: cancel the pending request and the running display and
        settle nothing more, so the broker keeps every unfinished job.
        """
        self.tell_observers()
        self._state = _State.STOPPED
        self.current = None
        self._cancel_sending()
        self._cancel_timers()
        self._priority.clear()
        self._normal.clear()


# The system's sleep ends up to a few tenths of a millisecond late; this last
# part of a wait is spent watching the clock instead.
_WATCHED = 0.0003


def sleep_precisely(seconds: float) -> None:
    """
    Block for C{seconds}, a few milliseconds at most, and return within a
    few microseconds of that time rather than whenever the system wakes the
    process up.
    """
    until = time.perf_counter() + seconds
    if seconds > _WATCHED:
        time.sleep(seconds - _WATCHED)
    while time.perf_counter() < until:
        pass


def _cancel(timer: IDelayedCall | None) -> None:
    """
    Cancel C{timer} unless it has run or is gone already.
    """
    if timer is not None and timer.active():
        timer.cancel()
