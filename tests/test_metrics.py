"""
Tests of the Prometheus metrics, read back through Prometheus' own parser.
"""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tests.test_status import MonitoredDispatcher, StatusSite
from vss_dispatcher.metrics import Metrics


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """
    Every sample of a scrape, keyed by name and labels.
    """
    found = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


class MetricsTests(SynchronousTestCase):
    """
    L{Metrics} counts what the scheduler, VSS and the broker do, and reads
    the rest from the dispatcher when scraped.
    """

    def setUp(self) -> None:
        self.dispatcher = MonitoredDispatcher()
        self.metrics = Metrics(self.dispatcher)
        for parts in (
            self.dispatcher.scheduler,
            self.dispatcher.display,
            self.dispatcher.broker,
        ):
            parts.observers.append(self.metrics)

    def value(self, name: str, **labels: str) -> float | None:
        return samples(self.metrics.render()).get((name, frozenset(labels.items())))

    def test_series_of_both_queues_exist_from_the_start(self) -> None:
        """
        Before any job, the counters of both queues are there at zero, so
        rates and alerts work from the first scrape.
        """
        for queue in ("vss.normal", "vss.priority"):
            for name in (
                "vss_dispatcher_jobs_shown_total",
                "vss_dispatcher_jobs_completed_total",
                "vss_dispatcher_jobs_preempted_total",
            ):
                self.assertEqual(self.value(name, queue=queue), 0.0)
            for reason in ("invalid_message", "rejected_by_vss"):
                self.assertEqual(
                    self.value(
                        "vss_dispatcher_jobs_dead_lettered_total",
                        queue=queue,
                        reason=reason,
                    ),
                    0.0,
                )

    def test_shown_completed_and_preempted_by_queue(self) -> None:
        """
        Jobs shown, completed and preempted are counted by the queue they
        came from.
        """
        dispatcher = self.dispatcher
        dispatcher.show("a.png", duration=30)
        dispatcher.clock.advance(5)
        dispatcher.show("alert.png", priority=True, duration=2)
        dispatcher.clock.advance(2)
        dispatcher.show("b.png", duration=1)
        dispatcher.clock.advance(1)

        self.assertEqual(
            [
                self.value("vss_dispatcher_jobs_shown_total", queue="vss.normal"),
                self.value("vss_dispatcher_jobs_shown_total", queue="vss.priority"),
                self.value("vss_dispatcher_jobs_completed_total", queue="vss.normal"),
                self.value("vss_dispatcher_jobs_completed_total", queue="vss.priority"),
                self.value("vss_dispatcher_jobs_preempted_total", queue="vss.normal"),
            ],
            [2.0, 1.0, 1.0, 1.0, 1.0],
        )

    def test_dead_lettered_by_queue_and_reason(self) -> None:
        """
        Messages set aside are counted by queue and by the category of the
        reason.
        """
        broker = self.dispatcher.broker
        broker.set_aside("vss.normal", "invalid_message", "not JSON")
        broker.set_aside("vss.normal", "invalid_message", "no image_path")
        broker.set_aside("vss.priority", "rejected_by_vss", "VSS answered 422")

        self.assertEqual(
            self.value(
                "vss_dispatcher_jobs_dead_lettered_total",
                queue="vss.normal",
                reason="invalid_message",
            ),
            2.0,
        )
        self.assertEqual(
            self.value(
                "vss_dispatcher_jobs_dead_lettered_total",
                queue="vss.priority",
                reason="rejected_by_vss",
            ),
            1.0,
        )

    def test_vss_requests_and_retries(self) -> None:
        """
        Every VSS request is timed under its result, and each failure that
        will be retried is counted.
        """
        dispatcher = self.dispatcher
        dispatcher.deliver("a.png")
        dispatcher.vss.fail("VSS answered 503")
        dispatcher.clock.advance(1)
        dispatcher.vss.fail("VSS answered 503")
        dispatcher.clock.advance(2)
        dispatcher.vss.accept()

        self.assertEqual(
            self.value("vss_dispatcher_vss_request_seconds_count", result="transient"),
            2.0,
        )
        self.assertEqual(
            self.value("vss_dispatcher_vss_request_seconds_count", result="accepted"),
            1.0,
        )
        self.assertEqual(self.value("vss_dispatcher_vss_retries_total"), 2.0)

    def test_preemption_latency(self) -> None:
        """
        The time from a priority job's arrival until VSS accepted it is
        observed once per priority job, and not for normal jobs.
        """
        dispatcher = self.dispatcher
        dispatcher.show("a.png", duration=60)
        dispatcher.clock.advance(10)
        dispatcher.deliver("alert.png", priority=True)
        dispatcher.clock.advance(0.2)
        dispatcher.vss.accept()

        name = "vss_dispatcher_preemption_seconds"
        self.assertEqual(self.value(f"{name}_count"), 1.0)
        self.assertAlmostEqual(self.value(f"{name}_sum") or 0.0, 0.2)
        self.assertEqual(self.value(f"{name}_bucket", le="0.1"), 0.0)
        self.assertEqual(self.value(f"{name}_bucket", le="0.25"), 1.0)

    def test_what_is_on_screen(self) -> None:
        """
        The on-screen gauge is 1 for the queue whose job VSS shows, and 0
        for both while a job is only being sent.
        """
        name = "vss_dispatcher_on_screen"
        dispatcher = self.dispatcher
        dispatcher.deliver("a.png")
        self.assertEqual(
            (
                self.value(name, queue="vss.normal"),
                self.value(name, queue="vss.priority"),
            ),
            (0.0, 0.0),
        )

        dispatcher.vss.accept()
        self.assertEqual(
            (
                self.value(name, queue="vss.normal"),
                self.value(name, queue="vss.priority"),
            ),
            (1.0, 0.0),
        )

        dispatcher.show("alert.png", priority=True)
        self.assertEqual(
            (
                self.value(name, queue="vss.normal"),
                self.value(name, queue="vss.priority"),
            ),
            (0.0, 1.0),
        )

    def test_state_read_when_scraped(self) -> None:
        """
        Jobs waiting, health, consumption, VSS failures in a row,
        reconnections, start time and version are read at scrape time.
        """
        dispatcher = self.dispatcher
        dispatcher.show("a.png", priority=True)
        dispatcher.deliver("b.png")
        dispatcher.deliver("c.png")
        dispatcher.broker.reconnects = 4

        self.assertEqual(
            [
                self.value("vss_dispatcher_jobs_waiting", queue="vss.normal"),
                self.value("vss_dispatcher_jobs_waiting", queue="vss.priority"),
                self.value("vss_dispatcher_healthy"),
                self.value("vss_dispatcher_broker_consuming"),
                self.value("vss_dispatcher_vss_failures_in_a_row"),
                self.value("vss_dispatcher_broker_reconnects_total"),
                self.value("vss_dispatcher_start_time_seconds"),
                self.value("vss_dispatcher_build_info", version="1.2.3"),
            ],
            [2.0, 0.0, 1.0, 1.0, 0.0, 4.0, dispatcher.started, 1.0],
        )

        dispatcher.broker.lose("connection reset")
        self.assertEqual(
            [
                self.value("vss_dispatcher_healthy"),
                self.value("vss_dispatcher_broker_consuming"),
            ],
            [0.0, 0.0],
        )

    def test_each_dispatcher_has_its_own_registry(self) -> None:
        """
        A second dispatcher's metrics start from zero, and nothing lands in
        prometheus_client's global registry.
        """
        self.dispatcher.show("a.png")
        other = Metrics(MonitoredDispatcher())

        scraped = samples(other.render())
        self.assertEqual(
            scraped[
                (
                    "vss_dispatcher_jobs_shown_total",
                    frozenset({("queue", "vss.normal")}),
                )
            ],
            0.0,
        )
        self.assertIsNone(REGISTRY.get_sample_value("vss_dispatcher_jobs_shown_total"))


class MetricsEndpointTests(SynchronousTestCase):
    """
    C{/metrics} answers in Prometheus' text format, with the broker's
    counts when it can give them.
    """

    def setUp(self) -> None:
        self.dispatcher = MonitoredDispatcher()
        self.site = StatusSite(self, self.dispatcher)

    def test_text_format_with_queue_counts(self) -> None:
        """
        The answer is Prometheus text, including the messages waiting on
        each queue, the dead-letter queue too.
        """
        self.dispatcher.show("a.png")
        code, headers, body = self.site.get("/metrics")

        self.assertEqual(code, 200)
        self.assertTrue(
            headers.getRawHeaders("content-type")[0].startswith("text/plain; version=")
        )
        scraped = samples(body)
        self.assertEqual(
            [
                scraped[("vss_dispatcher_queue_messages", frozenset({("queue", q)}))]
                for q in ("vss.normal", "vss.priority", "vss.dead")
            ],
            [4.0, 1.0, 2.0],
        )
        self.assertEqual(
            scraped[
                (
                    "vss_dispatcher_jobs_shown_total",
                    frozenset({("queue", "vss.normal")}),
                )
            ],
            1.0,
        )

    def test_no_queue_counts_when_the_broker_cannot_count(self) -> None:
        """
        Without the broker's counts the gauge is left out rather than shown
        as zero, and the other metrics are still there.
        """
        self.dispatcher.broker.counts = None
        scraped = samples(self.site.get("/metrics")[2])

        self.assertFalse(
            [key for key in scraped if key[0] == "vss_dispatcher_queue_messages"]
        )
        self.assertIn(("vss_dispatcher_healthy", frozenset()), scraped)
