"""
Prometheus metrics of one dispatcher, in Prometheus' text format (written by
L{vss_dispatcher.exposition}).

L{Metrics} observes the scheduler, the VSS display and the broker, and keeps
its own counters and histograms: two dispatchers in one process (as in the
tests) never share or clash over a metric.  Values that already live in the
dispatcher's parts (what is on screen, reconnections, the queue counts) are
read when Prometheus scrapes rather than copied as they change.
"""

from __future__ import annotations

from collections.abc import Iterator

from .exposition import (
    CONTENT_TYPE,
    ByLabel,
    Counter,
    Histogram,
    family,
    gauge,
    label_text,
    sample,
)
from .scheduler import Delivery, Outcome
from .status import Dispatcher, health_problems

__all__ = ["CONTENT_TYPE", "Metrics"]

PREFIX = "vss_dispatcher"

# Categories the broker gives when it sets a message aside.
DEAD_LETTER_CATEGORIES = ("invalid_message", "rejected_by_vss")

# A VSS request normally takes tens of milliseconds; the upper buckets
# catch a slow VSS long before VSS_TIMEOUT cuts it off.
VSS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# From a priority job's arrival until VSS accepted it: milliseconds when all
# is well, up to the retry delays when VSS is struggling.
PREEMPTION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Metrics:
    """
    The dispatcher's metrics, updated as an observer of its scheduler, VSS
    display and broker.

    @ivar counters: The metrics counted as things happen.
    @ivar histograms: The metrics observed as things happen.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        """
        @param dispatcher: Gives the clock, the queue names, and the state
            read at scrape time.
        """
        self._dispatcher = dispatcher
        self._clock = dispatcher.clock
        settings = dispatcher.settings
        self._queues = (
            settings.rabbitmq_normal_queue,
            settings.rabbitmq_priority_queue,
        )

        shown = Counter(
            f"{PREFIX}_jobs_shown", "Jobs VSS accepted and put on screen.", ("queue",)
        )
        completed = Counter(
            f"{PREFIX}_jobs_completed",
            "Jobs shown for their whole duration.",
            ("queue",),
        )
        preempted = Counter(
            f"{PREFIX}_jobs_preempted",
            "Normal jobs taken off the screen by a priority job.",
            ("queue",),
        )
        self._dead_lettered = Counter(
            f"{PREFIX}_jobs_dead_lettered",
            "Messages set aside: invalid_message (unusable message) or"
            " rejected_by_vss (VSS refused the job).",
            ("queue", "reason"),
        )
        retries = Counter(
            f"{PREFIX}_vss_retries", "VSS requests that failed and will be retried.", ()
        )
        vss_latency = Histogram(
            f"{PREFIX}_vss_request_seconds",
            "Time VSS took to answer one request; result is accepted, rejected,"
            " transient or configuration.",
            ("result",),
            VSS_BUCKETS,
        )
        preemption_latency = Histogram(
            f"{PREFIX}_preemption_seconds",
            "Time from a priority job's arrival until VSS accepted it, including"
            " any wait behind other priority jobs.",
            (),
            PREEMPTION_BUCKETS,
        )
        self.counters = (shown, completed, preempted, self._dead_lettered, retries)
        self.histograms = (vss_latency, preemption_latency)

        # Series that exist from the start, so that rates and alerts work
        # before the first event.
        self._shown = ByLabel(shown, self._queues)
        self._completed = ByLabel(completed, self._queues)
        self._preempted = ByLabel(preempted, self._queues)
        for queue in self._queues:
            for category in DEAD_LETTER_CATEGORIES:
                self._dead_lettered.child(queue, category)

        self._retries = retries.child()
        self._vss_latency = ByLabel(vss_latency)
        self._preemption_latency = preemption_latency.child()

    def render(self, queue_counts: dict[str, int] | None = None) -> bytes:
        """
        Every metric in Prometheus' text format.

        @param queue_counts: Messages on the broker by queue name, or
            C{None} to leave that gauge out.
        """
        lines: list[str] = []
        for metric in self.counters:
            lines.extend(metric.lines())
        for histogram in self.histograms:
            lines.extend(histogram.lines())
        lines.extend(self._current_state(queue_counts))
        lines.append("")
        return "\n".join(lines).encode("utf-8")

    def _current_state(self, queue_counts: dict[str, int] | None) -> Iterator[str]:
        """
        The metrics read from the dispatcher's parts, as they are now.
        """
        dispatcher = self._dispatcher
        scheduler = dispatcher.scheduler
        by_queue = ("queue",)

        current: Delivery | None = scheduler.current
        shown_queue = (
            current.queue if current and scheduler.state == "showing" else None
        )
        yield from gauge(
            f"{PREFIX}_on_screen",
            "1 for the queue whose job VSS shows now, 0 for the other.",
            [
                (label_text(by_queue, (queue,)), 1.0 if queue == shown_queue else 0.0)
                for queue in self._queues
            ],
        )

        held = {queue: 0 for queue in self._queues}
        for delivery in scheduler.waiting():
            held[delivery.queue] = held.get(delivery.queue, 0) + 1
        yield from gauge(
            f"{PREFIX}_jobs_waiting",
            "Jobs received from the queue and waiting their turn in the dispatcher.",
            [(label_text(by_queue, (queue,)), count) for queue, count in held.items()],
        )

        if queue_counts is not None:
            yield from gauge(
                f"{PREFIX}_queue_messages",
                "Messages ready on the queue, as the broker counts them.",
                [
                    (label_text(by_queue, (queue,)), count)
                    for queue, count in sorted(queue_counts.items())
                ],
            )

        yield from gauge(
            f"{PREFIX}_healthy",
            "1 when the broker is consumed and VSS answered the last request.",
            [("", 0.0 if health_problems(dispatcher) else 1.0)],
        )
        yield from gauge(
            f"{PREFIX}_broker_consuming",
            "1 while both queues are consumed.",
            [("", 1.0 if dispatcher.broker.consuming else 0.0)],
        )
        yield from gauge(
            f"{PREFIX}_vss_failures_in_a_row",
            "VSS requests that failed since the last one that succeeded.",
            [("", dispatcher.display.failures)],
        )
        if dispatcher.started is not None:
            yield from gauge(
                f"{PREFIX}_start_time_seconds",
                "When the dispatcher started, in seconds since the epoch.",
                [("", dispatcher.started)],
            )

        reconnects = f"{PREFIX}_broker_reconnects_total"
        yield from family(
            reconnects,
            "counter",
            "Times the RabbitMQ connection was opened again after the first.",
        )
        yield sample(reconnects, "", dispatcher.broker.reconnects)

        yield from gauge(
            f"{PREFIX}_build_info",
            "The dispatcher's version.",
            [(label_text(("version",), (dispatcher.version,)), 1.0)],
        )

    def display_sending(self, delivery: Delivery) -> None:
        """
        Nothing is counted until VSS accepted the job.
        """
        pass

    def display_started(self, delivery: Delivery) -> None:
        """
        Count a job shown and, for a priority job, how long it took.
        """
        self._shown[delivery.queue].inc()
        if delivery.priority:
            waited = self._clock.seconds() - delivery.received
            self._preemption_latency.observe(max(0.0, waited))

    def display_ended(
        self, delivery: Delivery, outcome: Outcome, planned: float, actual: float
    ) -> None:
        """
        Count a job completed or preempted.
        """
        if outcome is Outcome.COMPLETED:
            self._completed[delivery.queue].inc()
        elif outcome is Outcome.PREEMPTED:
            self._preempted[delivery.queue].inc()

    def vss_answered(self, seconds: float, result: str) -> None:
        """
        Time one VSS request under its result.
        """
        self._vss_latency[result].observe(seconds)

    def vss_retrying(self, failures: int, delay: float, reason: str) -> None:
        """
        Count a retry.
        """
        self._retries.inc()

    def broker_connected(self) -> None:
        """
        Reconnections are read from the broker when scraped.
        """
        pass

    def broker_consuming(self) -> None:
        """
        Consumption is read from the broker when scraped.
        """
        pass

    def broker_lost(self, reason: str) -> None:
        """
        Reconnections are read from the broker when scraped.
        """
        pass

    def message_dead_lettered(self, queue: str, category: str, reason: str) -> None:
        """
        Count a message set aside.
        """
        self._dead_lettered.child(queue, category).inc()
