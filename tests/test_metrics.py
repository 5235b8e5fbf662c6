"""
Tests of the Prometheus metrics, read back through prometheus_client's parser.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tests.test_status import MonitoredDispatcher, StatusSite
from vss_dispatcher.exposition import CONTENT_TYPE, Histogram
from vss_dispatcher.metrics import VSS_BUCKETS, Metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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

    def test_each_dispatcher_has_its_own_metrics(self) -> None:
        """
        A second dispatcher's metrics start from zero, whatever the first
        one counted.
        """
        self.dispatcher.show("a.png")
        other = Metrics(MonitoredDispatcher())

        self.assertEqual(
            self.value("vss_dispatcher_jobs_shown_total", queue="vss.normal"), 1.0
        )
        self.assertEqual(
            samples(other.render())[
                (
                    "vss_dispatcher_jobs_shown_total",
                    frozenset({("queue", "vss.normal")}),
                )
            ],
            0.0,
        )

    def test_histogram_buckets_are_cumulative(self) -> None:
        """
        Each bucket counts every value up to and including its bound, the
        C{+Inf} bucket counts them all and equals C{_count}, and C{_sum}
        adds them up.
        """
        for seconds in (0.003, 0.1, 0.1000001, 0.7, 45.0, 90.0):
            self.metrics.vss_answered(seconds, "accepted")

        name = "vss_dispatcher_vss_request_seconds"
        bounds = [repr(bound) for bound in VSS_BUCKETS] + ["+Inf"]
        self.assertEqual(
            [self.value(f"{name}_bucket", result="accepted", le=le) for le in bounds],
            [1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 4.0, 4.0, 4.0, 4.0, 4.0, 5.0, 6.0],
        )
        self.assertEqual(self.value(f"{name}_count", result="accepted"), 6.0)
        self.assertAlmostEqual(
            self.value(f"{name}_sum", result="accepted") or 0.0, 135.9030001
        )

    def test_label_values_are_escaped(self) -> None:
        """
        A backslash, a double quote and a line break in a label value are
        escaped, and Prometheus reads the value back unchanged.
        """
        odd = 'a\\b "c"\nd'
        self.dispatcher.version = odd
        self.metrics.message_dead_lettered(odd, "invalid_message", "not JSON")
        text = self.metrics.render()

        self.assertIn(
            b'vss_dispatcher_build_info{version="a\\\\b \\"c\\"\\nd"} 1.0\n', text
        )
        self.assertIn(
            b'vss_dispatcher_jobs_dead_lettered_total{queue="a\\\\b \\"c\\"\\nd",'
            b'reason="invalid_message"} 1.0\n',
            text,
        )
        self.assertEqual(self.value("vss_dispatcher_build_info", version=odd), 1.0)
        self.assertEqual(
            self.value(
                "vss_dispatcher_jobs_dead_lettered_total",
                queue=odd,
                reason="invalid_message",
            ),
            1.0,
        )

    def test_type_lines(self) -> None:
        """
        Every metric has a C{# HELP} line followed by its C{# TYPE} line;
        counters are named with C{_total} there as in their samples.
        """
        lines = self.metrics.render({"vss.normal": 0}).decode("utf-8").splitlines()
        types = [line for line in lines if line.startswith("# TYPE ")]

        self.assertEqual(
            types,
            [
                "# TYPE vss_dispatcher_jobs_shown_total counter",
                "# TYPE vss_dispatcher_jobs_completed_total counter",
                "# TYPE vss_dispatcher_jobs_preempted_total counter",
                "# TYPE vss_dispatcher_jobs_dead_lettered_total counter",
                "# TYPE vss_dispatcher_vss_retries_total counter",
                "# TYPE vss_dispatcher_vss_request_seconds histogram",
                "# TYPE vss_dispatcher_preemption_seconds histogram",
                "# TYPE vss_dispatcher_on_screen gauge",
                "# TYPE vss_dispatcher_jobs_waiting gauge",
                "# TYPE vss_dispatcher_queue_messages gauge",
                "# TYPE vss_dispatcher_healthy gauge",
                "# TYPE vss_dispatcher_broker_consuming gauge",
                "# TYPE vss_dispatcher_vss_failures_in_a_row gauge",
                "# TYPE vss_dispatcher_start_time_seconds gauge",
                "# TYPE vss_dispatcher_broker_reconnects_total counter",
                "# TYPE vss_dispatcher_build_info gauge",
            ],
        )
        for line in types:
            name = line.split()[2]
            before = lines[lines.index(line) - 1]
            self.assertTrue(before.startswith(f"# HELP {name} "), before)


class ExpositionTests(SynchronousTestCase):
    """
    The counters and histograms of L{vss_dispatcher.metrics} write what
    Prometheus' text format requires.
    """

    def test_help_text_is_escaped(self) -> None:
        """
        A backslash and a line break in a help text are escaped, and
        Prometheus reads the text back unchanged.
        """
        text = "Seconds\\waited\nin all."
        histogram = Histogram("waited_seconds", text, (), (1.0,))
        lines = list(histogram.lines())

        self.assertEqual(lines[0], "# HELP waited_seconds Seconds\\\\waited\\nin all.")
        [family] = text_string_to_metric_families("\n".join(lines) + "\n")
        self.assertEqual(family.documentation, text)

    def test_special_values(self) -> None:
        """
        Infinities and not-a-number are written C{+Inf}, C{-Inf} and
        C{NaN}; C{-Inf} falls in the first bucket and C{+Inf} in the
        C{+Inf} bucket alone.
        """
        histogram = Histogram("waited_seconds", "Time waited.", (), (1.0,))
        histogram.child().observe(-math.inf)
        after_minus = list(histogram.lines())[2:]
        histogram.child().observe(math.inf)
        after_both = list(histogram.lines())[2:]

        self.assertEqual(
            after_minus,
            [
                'waited_seconds_bucket{le="1.0"} 1.0',
                'waited_seconds_bucket{le="+Inf"} 1.0',
                "waited_seconds_sum -Inf",
                "waited_seconds_count 1.0",
            ],
        )
        self.assertEqual(
            after_both,
            [
                'waited_seconds_bucket{le="1.0"} 1.0',
                'waited_seconds_bucket{le="+Inf"} 2.0',
                "waited_seconds_sum NaN",
                "waited_seconds_count 2.0",
            ],
        )
        late = Histogram("late_seconds", "Time late.", (), (1.0,))
        late.child().observe(math.inf)
        self.assertEqual(list(late.lines())[-2], "late_seconds_sum +Inf")

    def test_buckets_must_increase(self) -> None:
        """
        Buckets that do not increase, or that include an infinity, are
        refused.
        """
        for buckets in ((1.0, 1.0), (2.0, 1.0), (1.0, math.inf)):
            with self.assertRaises(ValueError):
                Histogram("waited_seconds", "Time waited.", (), buckets)

    def test_importing_leaves_prometheus_client_out(self) -> None:
        """
        Importing the metrics and the status server does not import
        prometheus_client, which the dispatcher does not need at run time.
        """
        script = (
            "import sys, vss_dispatcher.metrics, vss_dispatcher.monitoring\n"
            "print(sorted(m for m in sys.modules if m.startswith('prometheus')))\n"
        )
        # A fresh interpreter: this test's own process has imported the
        # parser.
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT
        )

        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "[]")


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
        self.assertEqual(
            headers.getRawHeaders("content-type"),
            ["text/plain; version=0.0.4; charset=utf-8"],
        )
        self.assertEqual(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
        self.assertTrue(body.endswith(b"\n"))
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
