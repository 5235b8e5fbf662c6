"""
Prometheus metrics of one dispatcher.

L{Metrics} observes the scheduler, the VSS display and the broker, and keeps
its own L{CollectorRegistry}: two dispatchers in one process (as in the
tests) never share or clash over a metric.  Values that already live in the
dispatcher's parts (what is on screen, reconnections, the queue counts) are
read when Prometheus scrapes rather than copied as they change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from .scheduler import Delivery, Outcome
from .status import Dispatcher, health_problems

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

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


class _CurrentState:
    """
    The metrics read from the dispatcher's parts at scrape time.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        """
        @param dispatcher: Read at each scrape.
        """
        self._dispatcher = dispatcher
        self.queue_counts: dict[str, int] | None = None

    def describe(self) -> Iterable[Metric]:
        """
        The names of the metrics, for the registry to check for clashes.
        """
        # Names only, so that registering does not read the dispatcher.
        return [
            GaugeMetricFamily(f"{PREFIX}_on_screen", ""),
            GaugeMetricFamily(f"{PREFIX}_jobs_waiting", ""),
            GaugeMetricFamily(f"{PREFIX}_queue_messages", ""),
            GaugeMetricFamily(f"{PREFIX}_healthy", ""),
            GaugeMetricFamily(f"{PREFIX}_broker_consuming", ""),
            GaugeMetricFamily(f"{PREFIX}_vss_failures_in_a_row", ""),
            GaugeMetricFamily(f"{PREFIX}_start_time_seconds", ""),
            CounterMetricFamily(f"{PREFIX}_broker_reconnects", ""),
            InfoMetricFamily(f"{PREFIX}_build", ""),
        ]

    def collect(self) -> Iterator[Metric]:
        """
        The metrics as they are now.
        """
        dispatcher = self._dispatcher
        settings = dispatcher.settings
        queues = (settings.rabbitmq_normal_queue, settings.rabbitmq_priority_queue)
        scheduler = dispatcher.scheduler

        on_screen = GaugeMetricFamily(
            f"{PREFIX}_on_screen",
            "1 for the queue whose job VSS shows now, 0 for the other.",
            labels=["queue"],
        )
        current: Delivery | None = scheduler.current
        shown_queue = (
            current.queue if current and scheduler.state == "showing" else None
        )
        for queue in queues:
            on_screen.add_metric([queue], 1.0 if queue == shown_queue else 0.0)
        yield on_screen

        waiting = GaugeMetricFamily(
            f"{PREFIX}_jobs_waiting",
            "Jobs received from the queue and waiting their turn in the dispatcher.",
            labels=["queue"],
        )
        held = {queue: 0 for queue in queues}
        for delivery in scheduler.waiting():
            held[delivery.queue] = held.get(delivery.queue, 0) + 1
        for queue, count in held.items():
            waiting.add_metric([queue], float(count))
        yield waiting

        if self.queue_counts is not None:
            messages = GaugeMetricFamily(
                f"{PREFIX}_queue_messages",
                "Messages ready on the queue, as the broker counts them.",
                labels=["queue"],
            )
            for queue, count in sorted(self.queue_counts.items()):
                messages.add_metric([queue], float(count))
            yield messages

        yield GaugeMetricFamily(
            f"{PREFIX}_healthy",
            "1 when the broker is consumed and VSS answered the last request.",
            value=0.0 if health_problems(dispatcher) else 1.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_broker_consuming",
            "1 while both queues are consumed.",
            value=1.0 if dispatcher.broker.consuming else 0.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_vss_failures_in_a_row",
            "VSS requests that failed since the last one that succeeded.",
            value=float(dispatcher.display.failures),
        )
        if dispatcher.started is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_start_time_seconds",
                "When the dispatcher started, in seconds since the epoch.",
                value=float(dispatcher.started),
            )
        yield CounterMetricFamily(
            f"{PREFIX}_broker_reconnects",
            "Times the RabbitMQ connection was opened again after the first.",
            value=float(dispatcher.broker.reconnects),
        )
        build = InfoMetricFamily(f"{PREFIX}_build", "The dispatcher's version.")
        build.add_metric([], {"version": dispatcher.version})
        yield build


class Metrics:
    """
    The dispatcher's metrics, updated as an observer of its scheduler, VSS
    display and broker.

    @ivar registry: Holds every metric of this dispatcher and nothing else.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        """
        @param dispatcher: Gives the clock, the queue names, and the state
            read at scrape time.
        """
        self._clock = dispatcher.clock
        self.registry = CollectorRegistry()
        settings = dispatcher.settings
        queues = (settings.rabbitmq_normal_queue, settings.rabbitmq_priority_queue)

        def counter(name: str, text: str, labels: tuple[str, ...]) -> Counter:
            return Counter(f"{PREFIX}_{name}", text, labels, registry=self.registry)

        self.shown = counter(
            "jobs_shown", "Jobs VSS accepted and put on screen.", ("queue",)
        )
        self.completed = counter(
            "jobs_completed", "Jobs shown for their whole duration.", ("queue",)
        )
        self.preempted = counter(
            "jobs_preempted",
            "Normal jobs taken off the screen by a priority job.",
            ("queue",),
        )
        self.dead_lettered = counter(
            "jobs_dead_lettered",
            "Messages set aside: invalid_message (unusable message) or"
            " rejected_by_vss (VSS refused the job).",
            ("queue", "reason"),
        )
        self.retries = counter(
            "vss_retries", "VSS requests that failed and will be retried.", ()
        )
        self.vss_latency = Histogram(
            f"{PREFIX}_vss_request_seconds",
            "Time VSS took to answer one request; result is accepted, rejected,"
            " transient or configuration.",
            ("result",),
            buckets=VSS_BUCKETS,
            registry=self.registry,
        )
        self.preemption_latency = Histogram(
            f"{PREFIX}_preemption_seconds",
            "Time from a priority job's arrival until VSS accepted it, including"
            " any wait behind other priority jobs.",
            buckets=PREEMPTION_BUCKETS,
            registry=self.registry,
        )

        # Series that exist from the start, so that rates and alerts work
        # before the first event.
        for queue in queues:
            self.shown.labels(queue)
            self.completed.labels(queue)
            self.preempted.labels(queue)
            for category in DEAD_LETTER_CATEGORIES:
                self.dead_lettered.labels(queue, category)
        self.state = _CurrentState(dispatcher)
        self.registry.register(self.state)

    def render(self, queue_counts: dict[str, int] | None = None) -> bytes:
        """
        Every metric in Prometheus' text format.

        @param queue_counts: Messages on the broker by queue name, or
            C{None} to leave that gauge out.
        """
        self.state.queue_counts = queue_counts
        try:
            return generate_latest(self.registry)
        finally:
            self.state.queue_counts = None

    def display_sending(self, delivery: Delivery) -> None:
        """
        Nothing is counted until VSS accepted the job.
        """
        pass

    def display_started(self, delivery: Delivery) -> None:
        """
        Count a job shown and, for a priority job, how long it took.
        """
        self.shown.labels(delivery.queue).inc()
        if delivery.priority:
            waited = self._clock.seconds() - delivery.received
            self.preemption_latency.observe(max(0.0, waited))

    def display_ended(
        self, delivery: Delivery, outcome: Outcome, planned: float, actual: float
    ) -> None:
        """
        Count a job completed or preempted.
        """
        if outcome is Outcome.COMPLETED:
            self.completed.labels(delivery.queue).inc()
        elif outcome is Outcome.PREEMPTED:
            self.preempted.labels(delivery.queue).inc()

    def vss_answered(self, seconds: float, result: str) -> None:
        """
        Time one VSS request under its result.
        """
        self.vss_latency.labels(result).observe(seconds)

    def vss_retrying(self, failures: int, delay: float, reason: str) -> None:
        """
        Count a retry.
        """
        self.retries.inc()

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
        self.dead_lettered.labels(queue, category).inc()
