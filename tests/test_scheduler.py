"""
Tests for L{vss_dispatcher.scheduler}: the order of jobs, preemption by
priority jobs, when messages are settled, and that no timer is ever left
behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from vss_dispatcher.aftersend import AfterSend
from vss_dispatcher.message import Job
from vss_dispatcher.scheduler import (
    Delivery,
    Interrupted,
    JobRejected,
    Outcome,
    Scheduler,
    sleep_precisely,
)
from vss_dispatcher.vss import RetryingDisplay, TransientFailure


class DisplayRequest:
    """
    One job handed to the fake VSS, answered when the test says so.

    @ivar job: The job as the scheduler sent it (its duration is the time
        still to show).
    @ivar priority: Whether it was sent as a priority job.
    @ivar cancelled: Whether the scheduler cancelled the request.
    @ivar deferred: What the scheduler waits on.
    """

    def __init__(self, job: Job, priority: bool) -> None:
        self.job = job
        self.priority = priority
        self.cancelled = False
        self.deferred: Deferred[float | None] = Deferred(self._cancel)

    def _cancel(self, deferred: Deferred[float | None]) -> None:
        self.cancelled = True

    def accept(self, answered: float | None = None) -> None:
        """
        Answer as VSS does once the image is on screen.

        @param answered: When VSS's answer arrived, if the display knows.
        """
        self.deferred.callback(answered)


class FakeDisplay:
    """
    Stands in for VSS: records every job it is handed and leaves the answer
    to the test.
    """

    def __init__(self) -> None:
        self.requests: list[DisplayRequest] = []

    def __call__(self, job: Job, priority: bool) -> Deferred[float | None]:
        request = DisplayRequest(job, priority)
        self.requests.append(request)
        return request.deferred


class RecordingObserver:
    """
    Records what the scheduler tells its observers, by image path.
    """

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def display_sending(self, delivery: Delivery) -> None:
        self.events.append(("sending", delivery.job.image_path))

    def display_started(self, delivery: Delivery) -> None:
        self.events.append(("started", delivery.job.image_path))

    def display_ended(
        self, delivery: Delivery, outcome: Outcome, planned: float, actual: float
    ) -> None:
        self.events.append(("ended", delivery.job.image_path, outcome, planned, actual))


class FlakyBackend:
    """
    A VSS backend that fails the first attempts for some images, then
    accepts them.

    @ivar attempts: The image path of every attempt, in order.
    """

    def __init__(self, failures: dict[str, int]) -> None:
        self._failures = dict(failures)
        self.attempts: list[str] = []

    def attempt(self, job: Job, priority: bool) -> Deferred[None]:
        self.attempts.append(job.image_path)
        left = self._failures.get(job.image_path, 0)
        if left:
            self._failures[job.image_path] = left - 1
            return fail(TransientFailure("VSS answered 503: busy"))
        return succeed(None)


class SchedulerTestCase(SynchronousTestCase):
    """
    Builds a scheduler on a L{Clock} with a fake display, and checks after
    every test that no DelayedCall is left on the clock.
    """

    def setUp(self) -> None:
        self.build()

    def build(
        self,
        interrupted: Interrupted = Interrupted.DROP,
        ack_after: float = 600.0,
        display: Callable[[Job, bool], Deferred[None]] | None = None,
        clock: Clock | None = None,
        observe_later: bool = False,
        settle: Callable[[Delivery], None] | None = None,
    ) -> None:
        """
        Replace the scheduler under test with one built with these
        arguments.
        """
        self.clock = Clock() if clock is None else clock
        self.display = FakeDisplay()
        self.settled: list[Delivery] = []
        self.rejected: list[tuple[Delivery, str]] = []
        self.observer = RecordingObserver()
        self.scheduler = Scheduler(
            self.clock,
            self.display if display is None else display,
            self.settled.append if settle is None else settle,
            lambda delivery, reason: self.rejected.append((delivery, reason)),
            interrupted,
            ack_after,
            after_send=AfterSend(self.clock) if observe_later else None,
        )
        self.scheduler.observers.append(self.observer)
        clock = self.clock
        self.addCleanup(lambda: self.assertEqual(clock.getDelayedCalls(), []))

    def deliver(self, path: str, duration: float, priority: bool = False) -> Delivery:
        """
        Hand the scheduler a new job, as the message source would.
        """
        queue = "vss.priority" if priority else "vss.normal"
        delivery = Delivery(Job(path, duration, f"id-{path}"), priority, queue)
        self.scheduler.enqueue(delivery)
        return delivery

    def sent(self) -> list[str]:
        """
        The image paths handed to VSS so far, in order.
        """
        return [request.job.image_path for request in self.display.requests]

    def pending(self) -> DisplayRequest:
        """
        The last request handed to VSS, which must not be answered yet.
        """
        request = self.display.requests[-1]
        self.assertFalse(request.deferred.called)
        return request

    def show_pending(self) -> None:
        """
        Let VSS accept the pending request and let its display run out.
        """
        request = self.pending()
        request.accept()
        self.clock.advance(request.job.duration)

    def show_all(self) -> None:
        """
        Show every job until the scheduler is idle.
        """
        while self.scheduler.current is not None:
            self.show_pending()


class OrderTests(SchedulerTestCase):
    """
    Which job goes next.
    """

    def test_one_image_at_a_time(self) -> None:
        """
        The next job is handed to VSS only once the display of the previous
        one has ended.
        """
        first = self.deliver("a.png", 5)
        second = self.deliver("b.png", 5)
        self.assertEqual(self.sent(), ["a.png"])

        self.pending().accept()
        self.clock.advance(4.9)
        self.assertEqual(self.sent(), ["a.png"])

        self.clock.advance(0.1)
        self.assertEqual(self.sent(), ["a.png", "b.png"])
        self.show_pending()
        self.assertEqual(self.settled, [first, second])

    def test_waiting_priority_jobs_go_first(self) -> None:
        """
        Waiting priority jobs are shown before waiting normal jobs, and each
        queue keeps its arrival order.
        """
        self.deliver("p0.png", 1, priority=True)
        self.deliver("n1.png", 1)
        self.deliver("p1.png", 1, priority=True)
        self.deliver("n2.png", 1)
        self.deliver("p2.png", 1, priority=True)
        self.deliver("n3.png", 1)

        waiting = [delivery.job.image_path for delivery in self.scheduler.waiting()]
        self.assertEqual(waiting, ["p1.png", "p2.png", "n1.png", "n2.png", "n3.png"])
        self.show_all()
        self.assertEqual(
            self.sent(),
            ["p0.png", "p1.png", "p2.png", "n1.png", "n2.png", "n3.png"],
        )

    def test_normal_jobs_in_arrival_order(self) -> None:
        """
        Normal jobs are shown in the order they arrived, and each is settled
        once its own display ended.
        """
        deliveries = [self.deliver(f"{index}.png", 2) for index in range(5)]
        self.show_all()
        self.assertEqual(self.sent(), [f"{index}.png" for index in range(5)])
        self.assertEqual(self.settled, deliveries)
        self.assertEqual(self.clock.seconds(), 10)

    def test_normal_job_waits_for_a_normal_job(self) -> None:
        """
        A normal job never interrupts another normal job.
        """
        first = self.deliver("a.png", 5)
        self.pending().accept()
        self.deliver("b.png", 5)
        self.assertEqual(self.scheduler.current, first)
        self.assertEqual(self.sent(), ["a.png"])
        self.clock.advance(5)
        self.show_all()

    def test_duration_zero_moves_on_at_once(self) -> None:
        """
        A job of duration 0 is settled as soon as VSS accepts it, without a
        DelayedCall, and the next job is sent at once.
        """
        zero = self.deliver("zero.png", 0)
        self.deliver("next.png", 5)
        self.pending().accept()

        self.assertEqual(self.settled, [zero])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.sent(), ["zero.png", "next.png"])
        self.show_all()

    def test_long_chain_of_zero_durations_through_a_timer(self) -> None:
        """
        Thousands of zero-duration jobs accepted synchronously, started when
        a display's DelayedCall fires, are shown in a loop rather than by
        recursion.
        """
        sent: list[str] = []

        def display(job: Job, priority: bool) -> Deferred[None]:
            sent.append(job.image_path)
            return succeed(None)

        self.build(display=display)
        first = self.deliver("first.png", 1)
        chain = [self.deliver(f"{index}.png", 0) for index in range(5000)]
        self.assertEqual(sent, ["first.png"])

        self.clock.advance(1)
        self.assertEqual(self.settled, [first, *chain])
        self.assertEqual(len(sent), 5001)
        self.assertIsNone(self.scheduler.current)

    def test_next_job_goes_out_before_the_acknowledgement(self) -> None:
        """
        When a display ends with the next job in hand, that job is sent to
        VSS first and the finished one acknowledged right after, in the same
        turn.
        """
        happened: list[str] = []

        def display(job: Job, priority: bool) -> Deferred[None]:
            happened.append(f"sent {job.image_path}")
            return succeed(None)

        self.build(
            display=display,
            settle=lambda d: happened.append(f"acknowledged {d.job.image_path}"),
        )
        self.deliver("a.png", 1)
        self.deliver("b.png", 1)

        self.clock.advance(1)

        self.assertEqual(happened, ["sent a.png", "sent b.png", "acknowledged a.png"])
        self.clock.advance(1)
        self.assertEqual(happened[-1], "acknowledged b.png")

    def test_long_chain_of_zero_durations_through_an_answer(self) -> None:
        """
        Thousands of zero-duration jobs accepted synchronously, started when
        VSS answers a pending request, are shown in a loop rather than by
        recursion.
        """
        held: Deferred[None] = Deferred()
        sent: list[str] = []

        def display(job: Job, priority: bool) -> Deferred[None]:
            sent.append(job.image_path)
            return held if len(sent) == 1 else succeed(None)

        self.build(display=display)
        chain = [self.deliver(f"{index}.png", 0) for index in range(5000)]
        held.callback(None)
        self.assertEqual(self.settled, chain)
        self.assertEqual(self.scheduler.state, "idle")


class PreemptionTests(SchedulerTestCase):
    """
    A priority job interrupting a normal job at each stage of its display.
    """

    def test_preempts_while_sending(self) -> None:
        """
        A priority job that arrives while a normal job is being sent cancels
        that request; the normal job is shown in full after the priority job,
        ahead of other normal jobs, and settled only then.
        """
        normal = self.deliver("n.png", 10)
        request = self.pending()
        later = self.deliver("later.png", 1)
        priority = self.deliver("p.png", 3, priority=True)

        self.assertTrue(request.cancelled)
        self.assertEqual(self.sent(), ["n.png", "p.png"])
        self.assertTrue(self.display.requests[-1].priority)
        self.assertEqual(self.settled, [])
        self.assertEqual(self.rejected, [])

        self.show_pending()
        self.assertEqual(self.settled, [priority])
        self.assertEqual(self.sent(), ["n.png", "p.png", "n.png"])
        self.assertEqual(self.pending().job.duration, 10)

        self.show_all()
        self.assertEqual(self.settled, [priority, normal, later])

    def test_preempts_while_vss_retries(self) -> None:
        """
        A priority job that arrives while VSS is failing for a normal job
        stops those retries, is shown, and the normal job is retried and
        shown afterwards.
        """
        backend = FlakyBackend({"n.png": 3})
        clock = Clock()
        retrying = RetryingDisplay(backend, clock, retry_delay=1.0)
        self.build(display=retrying.show, clock=clock)

        normal = self.deliver("n.png", 10)
        self.clock.advance(1)
        self.assertEqual(backend.attempts, ["n.png", "n.png"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

        priority = self.deliver("p.png", 3, priority=True)
        self.assertEqual(backend.attempts, ["n.png", "n.png", "p.png"])
        self.assertEqual(self.scheduler.state, "showing")
        # Only the priority job's display timer is left: the retry is gone.
        [timer] = self.clock.getDelayedCalls()
        self.assertEqual(timer.getTime(), self.clock.seconds() + 3)
        self.assertEqual(self.settled, [])

        self.clock.advance(3)
        self.assertEqual(self.settled, [priority])
        self.assertEqual(backend.attempts[-1], "n.png")
        self.clock.advance(1)
        self.assertEqual(self.scheduler.state, "showing")
        self.assertEqual(self.scheduler.current, normal)
        self.clock.advance(9.9)
        self.assertEqual(self.settled, [priority])
        self.clock.advance(0.1)
        self.assertEqual(self.settled, [priority, normal])
        self.assertEqual(
            backend.attempts, ["n.png", "n.png", "p.png", "n.png", "n.png"]
        )

    def test_preempts_on_screen_and_drops(self) -> None:
        """
        With INTERRUPTED_JOBS=drop, a normal job on screen is taken off at
        once when a priority job arrives, settled at that moment, and not
        shown again.
        """
        normal = self.deliver("n.png", 10)
        self.pending().accept()
        self.clock.advance(4)

        priority = self.deliver("p.png", 3, priority=True)
        self.assertEqual(self.settled, [normal])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.sent(), ["n.png", "p.png"])

        self.show_all()
        self.assertEqual(self.settled, [normal, priority])
        self.assertEqual(self.sent(), ["n.png", "p.png"])
        self.assertIn(
            ("ended", "n.png", Outcome.PREEMPTED, 10, 4), self.observer.events
        )

    def test_preempts_on_screen_and_resumes(self) -> None:
        """
        With INTERRUPTED_JOBS=resume, a normal job interrupted on screen is
        sent again after the priority job for its remaining time, and
        settled only when that display ends.
        """
        self.build(interrupted=Interrupted.RESUME)
        normal = self.deliver("n.png", 10)
        self.pending().accept()
        self.clock.advance(4)

        priority = self.deliver("p.png", 3, priority=True)
        self.assertEqual(self.settled, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.show_pending()
        self.assertEqual(self.settled, [priority])

        resumed = self.pending()
        self.assertEqual(resumed.job, Job("n.png", 6.0, "id-n.png"))
        self.assertFalse(resumed.priority)
        resumed.accept()
        self.clock.advance(5.9)
        self.assertEqual(self.settled, [priority])
        self.clock.advance(0.1)
        self.assertEqual(self.settled, [priority, normal])
        self.assertEqual(
            [event for event in self.observer.events if event[0] == "ended"],
            [
                ("ended", "n.png", Outcome.PREEMPTED, 10, 4),
                ("ended", "p.png", Outcome.COMPLETED, 3, 3),
                ("ended", "n.png", Outcome.COMPLETED, 6, 6),
            ],
        )

    def test_resume_counts_every_interruption(self) -> None:
        """
        A resumed job interrupted again resumes for what is left after both
        displays, and keeps its remaining time when interrupted before VSS
        showed it.
        """
        self.build(interrupted=Interrupted.RESUME)
        normal = self.deliver("n.png", 10)
        self.pending().accept()
        self.clock.advance(4)
        self.deliver("p1.png", 1, priority=True)
        self.show_pending()

        self.pending().accept()
        self.clock.advance(2)
        self.deliver("p2.png", 1, priority=True)
        self.show_pending()

        # Interrupted again while being sent: it was not on screen meanwhile.
        self.assertEqual(self.pending().job.duration, 4)
        self.deliver("p3.png", 1, priority=True)
        self.show_pending()

        self.assertEqual(self.pending().job.duration, 4)
        self.show_pending()
        self.assertEqual(self.settled[-1], normal)
        self.assertEqual(len(self.settled), 4)

    def test_preempts_on_screen_and_restarts(self) -> None:
        """
        With INTERRUPTED_JOBS=restart, a normal job interrupted on screen is
        shown again for its full duration after the priority job.
        """
        self.build(interrupted=Interrupted.RESTART)
        normal = self.deliver("n.png", 10)
        self.pending().accept()
        self.clock.advance(4)

        priority = self.deliver("p.png", 3, priority=True)
        self.assertEqual(self.settled, [])
        self.show_pending()

        restarted = self.pending()
        self.assertEqual(restarted.job.image_path, "n.png")
        self.assertEqual(restarted.job.duration, 10)
        restarted.accept()
        self.clock.advance(9.9)
        self.assertEqual(self.settled, [priority])
        self.clock.advance(0.1)
        self.assertEqual(self.settled, [priority, normal])

    def test_priority_never_preempts_priority(self) -> None:
        """
        A priority job waits for a priority job being sent or on screen.
        """
        first = self.deliver("p1.png", 5, priority=True)
        request = self.pending()
        second = self.deliver("p2.png", 5, priority=True)
        self.assertFalse(request.cancelled)

        request.accept()
        self.clock.advance(2)
        third = self.deliver("p3.png", 5, priority=True)
        self.assertEqual(self.scheduler.current, first)
        self.assertEqual(self.settled, [])
        self.assertEqual(self.sent(), ["p1.png"])

        self.clock.advance(3)
        self.assertEqual(self.settled, [first])
        self.show_all()
        self.assertEqual(self.settled, [first, second, third])


class SettlingTests(SchedulerTestCase):
    """
    When messages are acknowledged or set aside.
    """

    def test_settled_only_when_display_ends(self) -> None:
        """
        A job is not settled when it is received, sent or accepted, only when
        its display ends.
        """
        delivery = self.deliver("a.png", 5)
        self.deliver("b.png", 5)
        self.assertEqual(self.settled, [])
        self.pending().accept()
        self.assertEqual(self.settled, [])
        self.clock.advance(4.9)
        self.assertEqual(self.settled, [])
        self.clock.advance(0.1)
        self.assertEqual(self.settled, [delivery])
        self.assertTrue(delivery.settled)
        self.show_all()

    def test_rejected_job_is_set_aside(self) -> None:
        """
        A job VSS refuses is rejected with VSS's reason instead of being
        settled, and the next job is sent at once.
        """
        bad = self.deliver("bad.png", 5)
        good = self.deliver("good.png", 5)
        self.pending().deferred.errback(JobRejected("VSS answered 422: unknown image"))

        self.assertEqual(self.rejected, [(bad, "VSS answered 422: unknown image")])
        self.assertEqual(self.settled, [])
        self.assertIn(
            ("ended", "bad.png", Outcome.FAILED, 5, 0.0), self.observer.events
        )
        self.assertEqual(self.sent(), ["bad.png", "good.png"])
        self.show_all()
        self.assertEqual(self.settled, [good])

    def test_unexpected_error_is_set_aside_and_logged(self) -> None:
        """
        A display that fails with something other than a refusal is set
        aside with an internal-error reason and the error is logged.
        """
        broken = self.deliver("broken.png", 5)
        self.pending().deferred.errback(RuntimeError("display exploded"))

        self.assertEqual(self.rejected, [(broken, "internal error: display exploded")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.scheduler.state, "idle")

    def test_ack_after_settles_long_display_once(self) -> None:
        """
        A job on screen longer than ACK_AFTER is settled at ACK_AFTER, stays
        on screen to its end, and is not settled again.
        """
        self.build(ack_after=600)
        long = self.deliver("long.png", 1000)
        self.pending().accept()

        self.clock.advance(599.9)
        self.assertEqual(self.settled, [])
        self.clock.advance(0.1)
        self.assertEqual(self.settled, [long])
        self.assertEqual(self.scheduler.state, "showing")
        self.assertIs(self.scheduler.current, long)

        self.clock.advance(400)
        self.assertEqual(self.settled, [long])
        self.assertIsNone(self.scheduler.current)
        self.assertEqual(
            self.observer.events[-1],
            ("ended", "long.png", Outcome.COMPLETED, 1000, 400 + 600),
        )

    def test_no_early_ack_within_ack_after(self) -> None:
        """
        A job no longer than ACK_AFTER gets no extra DelayedCall and is
        settled when its display ends.
        """
        self.build(ack_after=600)
        delivery = self.deliver("a.png", 600)
        self.pending().accept()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(600)
        self.assertEqual(self.settled, [delivery])

    def test_early_ack_then_drop_settles_once(self) -> None:
        """
        A job settled at ACK_AFTER and then interrupted with
        INTERRUPTED_JOBS=drop is not settled a second time.
        """
        self.build(ack_after=10)
        normal = self.deliver("n.png", 100)
        self.pending().accept()
        self.clock.advance(20)
        priority = self.deliver("p.png", 1, priority=True)
        self.show_all()
        self.assertEqual(self.settled, [normal, priority])

    def test_early_ack_then_resume_settles_once(self) -> None:
        """
        A job settled at ACK_AFTER, interrupted and resumed, is shown for
        its remaining time and not settled a second time.
        """
        self.build(interrupted=Interrupted.RESUME, ack_after=10)
        normal = self.deliver("n.png", 100)
        self.pending().accept()
        self.clock.advance(20)
        priority = self.deliver("p.png", 1, priority=True)
        self.show_pending()

        self.assertEqual(self.pending().job.duration, 80)
        self.show_pending()
        self.assertEqual(self.settled, [normal, priority])

    def test_preemption_cancels_ack_timer(self) -> None:
        """
        Interrupting a long job before ACK_AFTER cancels its early
        acknowledgement along with its display.
        """
        self.build(interrupted=Interrupted.RESTART, ack_after=10)
        normal = self.deliver("n.png", 100)
        self.pending().accept()
        self.clock.advance(5)
        priority = self.deliver("p.png", 1, priority=True)

        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.settled, [])
        self.show_pending()
        self.pending().accept()
        self.clock.advance(10)
        self.assertEqual(self.settled, [priority, normal])
        self.clock.advance(90)
        self.assertEqual(self.settled, [priority, normal])


class ConnectionLossTests(SchedulerTestCase):
    """
    L{Scheduler.forget_unsettled}, called when the broker connection is lost.
    """

    def test_forgets_waiting_and_sending_jobs(self) -> None:
        """
        Unsettled waiting jobs of both queues are dropped and the unsettled
        job being sent is cancelled, with nothing settled; later jobs are
        shown normally.
        """
        self.deliver("a.png", 5, priority=True)
        request = self.pending()
        self.deliver("b.png", 5)
        self.deliver("c.png", 5, priority=True)
        self.assertEqual(len(self.scheduler.waiting()), 2)

        self.scheduler.forget_unsettled()
        self.assertTrue(request.cancelled)
        self.assertIsNone(self.scheduler.current)
        self.assertEqual(self.scheduler.waiting(), [])
        self.assertEqual(self.settled, [])
        self.assertEqual(self.rejected, [])

        fresh = self.deliver("d.png", 5)
        self.show_all()
        self.assertEqual(self.settled, [fresh])

    def test_forgets_unsettled_job_on_screen(self) -> None:
        """
        An unsettled job on screen is dropped and its DelayedCall cancelled.
        """
        self.deliver("a.png", 5)
        self.pending().accept()
        self.clock.advance(2)

        self.scheduler.forget_unsettled()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.scheduler.current)
        self.assertEqual(self.scheduler.state, "idle")
        self.assertEqual(self.settled, [])

    def test_keeps_settled_job_on_screen(self) -> None:
        """
        A job already settled (at ACK_AFTER) stays on screen to its end
        while the unsettled waiting jobs are dropped.
        """
        self.build(ack_after=10)
        long = self.deliver("long.png", 30)
        self.pending().accept()
        self.clock.advance(10)
        self.deliver("b.png", 5)
        self.assertEqual(self.settled, [long])

        self.scheduler.forget_unsettled()
        self.assertIs(self.scheduler.current, long)
        self.assertEqual(self.scheduler.state, "showing")
        self.assertEqual(self.scheduler.waiting(), [])

        self.clock.advance(20)
        self.assertIsNone(self.scheduler.current)
        self.assertEqual(self.settled, [long])
        self.assertEqual(self.sent(), ["long.png"])

    def test_keeps_settled_waiting_job(self) -> None:
        """
        A settled job waiting to resume is kept and shown for its remaining
        time, while the unsettled priority job being sent is dropped.
        """
        self.build(interrupted=Interrupted.RESUME, ack_after=10)
        long = self.deliver("long.png", 30)
        self.pending().accept()
        self.clock.advance(12)
        self.deliver("p.png", 1, priority=True)
        priority_request = self.pending()

        self.scheduler.forget_unsettled()
        self.assertTrue(priority_request.cancelled)
        self.assertEqual(self.sent(), ["long.png", "p.png", "long.png"])
        self.assertEqual(self.pending().job.duration, 18)
        self.show_pending()
        self.assertEqual(self.settled, [long])


class StopTests(SchedulerTestCase):
    """
    L{Scheduler.stop}.
    """

    def test_stop_while_sending(self) -> None:
        """
        Stopping cancels the pending request and the waiting jobs and settles
        nothing; jobs received afterwards are ignored.
        """
        self.deliver("a.png", 5)
        request = self.pending()
        self.deliver("b.png", 5)
        self.deliver("c.png", 5, priority=True)
        self.deliver("d.png", 5)

        self.scheduler.stop()
        self.assertTrue(request.cancelled)
        self.assertEqual(self.scheduler.state, "stopped")
        self.assertIsNone(self.scheduler.current)
        self.assertEqual(self.scheduler.waiting(), [])

        self.deliver("e.png", 5)
        self.assertEqual(self.sent(), ["a.png", "c.png"])
        self.assertEqual(self.settled, [])
        self.assertEqual(self.rejected, [])

    def test_stop_while_showing(self) -> None:
        """
        Stopping while a job is on screen cancels its DelayedCall and its
        early acknowledgement and settles nothing.
        """
        self.build(ack_after=10)
        self.deliver("a.png", 50)
        self.pending().accept()
        self.clock.advance(5)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)

        self.scheduler.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.settled, [])

    def test_stop_while_vss_retries(self) -> None:
        """
        Stopping while VSS keeps failing cancels the retries.
        """
        backend = FlakyBackend({"a.png": 100})
        clock = Clock()
        retrying = RetryingDisplay(backend, clock, retry_delay=1.0)
        self.build(display=retrying.show, clock=clock)
        self.deliver("a.png", 5)
        self.clock.advance(1)
        self.assertEqual(backend.attempts, ["a.png", "a.png"])

        self.scheduler.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.settled, [])
        self.assertEqual(self.rejected, [])


class ObserverTests(SchedulerTestCase):
    """
    What observers are told.
    """

    def test_sending_started_ended(self) -> None:
        """
        Observers hear when a job is sent, when VSS accepted it, and when its
        display ended, with the planned and actual seconds on screen.
        """
        self.deliver("a.png", 5)
        self.assertEqual(self.observer.events, [("sending", "a.png")])

        self.clock.advance(1)
        self.pending().accept()
        self.assertEqual(self.observer.events[-1], ("started", "a.png"))

        self.clock.advance(5)
        self.assertEqual(
            self.observer.events[-1], ("ended", "a.png", Outcome.COMPLETED, 5, 5)
        )
        self.assertEqual(len(self.observer.events), 3)

    def test_preempted_display(self) -> None:
        """
        An interrupted display ends with the outcome C{preempted} and the
        seconds it was actually on screen.
        """
        self.deliver("n.png", 10)
        self.pending().accept()
        self.clock.advance(2.5)
        self.deliver("p.png", 1, priority=True)
        self.show_all()
        self.assertEqual(
            self.observer.events,
            [
                ("sending", "n.png"),
                ("started", "n.png"),
                ("ended", "n.png", Outcome.PREEMPTED, 10, 2.5),
                ("sending", "p.png"),
                ("started", "p.png"),
                ("ended", "p.png", Outcome.COMPLETED, 1, 1),
            ],
        )


class ObserveLaterTests(SchedulerTestCase):
    """
    With an L{AfterSend}, observers hear of events at the end of the
    reactor turn, in order, after the acknowledgement and the next request.
    """

    def setUp(self) -> None:
        self.build(observe_later=True)

    def test_held_until_the_turn_ends(self) -> None:
        """
        A finished job is acknowledged and the next one sent before the
        observers hear that it ended; then they hear everything in order,
        the "Showing" lines logged with them.
        """
        self.deliver("a.png", 0)
        self.deliver("b.png", 5)
        with capturedLogs() as events:
            self.pending().accept()
            self.assertEqual([d.job.image_path for d in self.settled], ["a.png"])
            self.assertEqual(self.sent(), ["a.png", "b.png"])
            self.assertEqual(self.observer.events, [])
            self.assertEqual(events, [])

            self.clock.advance(0)
        self.assertEqual(
            self.observer.events,
            [
                ("sending", "a.png"),
                ("started", "a.png"),
                ("ended", "a.png", Outcome.COMPLETED, 0, 0),
                ("sending", "b.png"),
            ],
        )
        [line] = [formatEvent(event) for event in events]
        self.assertEqual(line, "Showing a.png from vss.normal for 0 s")
        self.pending().accept()
        self.clock.advance(5)
        self.assertEqual(self.observer.events[-2][:2], ("started", "b.png"))
        self.assertEqual(
            self.observer.events[-1][:3], ("ended", "b.png", Outcome.COMPLETED)
        )

    def test_preemption_told_in_order(self) -> None:
        """
        The end of a preempted display reaches observers before the
        priority job's sending, as it happened.
        """
        self.deliver("n.png", 10)
        self.pending().accept()
        self.clock.advance(2)
        self.deliver("p.png", 1, priority=True)
        self.clock.advance(0)
        self.assertEqual(
            self.observer.events,
            [
                ("sending", "n.png"),
                ("started", "n.png"),
                ("ended", "n.png", Outcome.PREEMPTED, 10, 2),
                ("sending", "p.png"),
            ],
        )
        self.show_all()

    def test_stop_tells_what_is_held(self) -> None:
        """
        Stopping passes on the events still held, so that observers know
        what was on screen, and leaves nothing scheduled.
        """
        self.deliver("a.png", 5)
        self.pending().accept()
        self.scheduler.stop()
        self.assertEqual(
            self.observer.events, [("sending", "a.png"), ("started", "a.png")]
        )

    def test_connection_loss_tells_what_is_held(self) -> None:
        """
        Before forgetting unsettled deliveries, the scheduler passes on the
        events held, so observers see the forgotten display start first.
        """
        self.deliver("a.png", 5)
        self.pending().accept()
        self.scheduler.forget_unsettled()
        self.assertEqual(
            self.observer.events, [("sending", "a.png"), ("started", "a.png")]
        )
        self.assertIsNone(self.scheduler.current)


class TimerPrecisionTests(SynchronousTestCase):
    """
    A display timer set to wake early ends the display at its deadline, not
    before, by sleeping the rest.
    """

    def test_early_timer_sleeps_the_rest_then_ends_the_display(self) -> None:
        """
        With wake_early, the timer fires that much before the deadline, the
        scheduler sleeps what is left, and only then settles the job.
        """
        clock = Clock()
        display = FakeDisplay()
        settled: list[Delivery] = []
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            clock.advance(seconds)

        scheduler = Scheduler(
            clock,
            display,
            settled.append,
            lambda delivery, reason: None,
            wake_early=0.002,
            sleep=sleep,
        )
        scheduler.enqueue(Delivery(Job("a.png", 1.0), False, "vss.normal"))
        display.requests[-1].accept()

        clock.advance(0.997)
        self.assertEqual(settled, [])
        clock.advance(0.0015)
        self.assertEqual(len(sleeps), 1)
        self.assertAlmostEqual(sleeps[0], 0.0015)
        self.assertEqual(len(settled), 1)
        self.assertAlmostEqual(clock.seconds(), 1.0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_late_timer_does_not_sleep(self) -> None:
        """
        A timer that fires after the deadline ends the display at once.
        """
        clock = Clock()
        display = FakeDisplay()
        settled: list[Delivery] = []
        sleeps: list[float] = []
        scheduler = Scheduler(
            clock,
            display,
            settled.append,
            lambda delivery, reason: None,
            wake_early=0.002,
            sleep=sleeps.append,
        )
        scheduler.enqueue(Delivery(Job("a.png", 1.0), False, "vss.normal"))
        display.requests[-1].accept()
        clock.advance(1.5)
        self.assertEqual(sleeps, [])
        self.assertEqual(len(settled), 1)


class AnswerTimeTests(SchedulerTestCase):
    """
    A display is counted from the moment VSS answered, as the display
    reports it, not from when the answer reached the scheduler.
    """

    def test_counted_from_the_answer(self) -> None:
        """
        An answer that arrived half a second before the scheduler heard of
        it ends the display half a second earlier, and is the time the
        display is on screen since.
        """
        self.clock.advance(10)
        delivery = self.deliver("a.png", 5)
        self.pending().accept(answered=9.5)
        self.assertEqual(self.scheduler.since, 9.5)

        self.clock.advance(4.4)
        self.assertEqual(self.settled, [])
        self.clock.advance(0.1)
        self.assertEqual(self.settled, [delivery])

    def test_answer_from_the_future_counts_as_now(self) -> None:
        """
        A time later than the clock's (a clock stepped back, say) never
        lengthens the display.
        """
        self.clock.advance(10)
        delivery = self.deliver("a.png", 5)
        self.pending().accept(answered=12.0)
        self.assertEqual(self.scheduler.since, 10.0)
        self.clock.advance(5)
        self.assertEqual(self.settled, [delivery])

    def test_early_acknowledgement_counted_from_the_answer(self) -> None:
        """
        The acknowledgement of a long display is also due ACK_AFTER seconds
        after VSS answered.
        """
        self.build(ack_after=60)
        self.clock.advance(10)
        delivery = self.deliver("a.png", 120)
        self.pending().accept(answered=9.0)
        self.clock.advance(58.9)
        self.assertEqual(self.settled, [])
        self.clock.advance(0.1)
        self.assertEqual(self.settled, [delivery])
        self.clock.advance(60)
        self.assertEqual(self.settled, [delivery])


class SleepPreciselyTests(SynchronousTestCase):
    """
    L{sleep_precisely}, the wait at the end of a display.
    """

    def test_never_returns_early(self) -> None:
        """
        Whether the wait is shorter or longer than the part spent watching
        the clock, it lasts at least as long as asked.
        """
        for seconds in (0.00005, 0.0002, 0.0015):
            started = time.perf_counter()
            sleep_precisely(seconds)
            self.assertGreaterEqual(time.perf_counter() - started, seconds)

    def test_nothing_to_wait(self) -> None:
        """
        Zero or a negative time returns at once, without sleeping.
        """
        slept: list[float] = []
        self.patch(time, "sleep", slept.append)
        sleep_precisely(0)
        sleep_precisely(-1)
        self.assertEqual(slept, [])
