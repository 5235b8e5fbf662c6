"""
Tests of the status model and of the status server's endpoints: the health
check, the status document, the timeline, the image on screen and the page.

Most tests use L{MonitoredDispatcher}: the real scheduler and VSS display on
a L{task.Clock}, with VSS and the broker replaced by small doubles that have
the attributes monitoring reads (never a double of RabbitMQ itself).  The
tests at the end run the whole dispatcher against the real local RabbitMQ
and the VSS emulator.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import (
    Deferred,
    fail,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.broker import BrokerClient, unique_queues
from vss_dispatcher import monitoring
from vss_dispatcher.app import DispatcherService
from vss_dispatcher.config import ConfigurationError, Settings
from vss_dispatcher.emulator import EmulatedVSS, make_site
from vss_dispatcher.message import Job
from vss_dispatcher.metrics import Metrics
from vss_dispatcher.monitoring import (
    STATUS_SERVER,
    StatusServer,
    attach_monitoring,
    build_site,
    status_port,
)
from vss_dispatcher.scheduler import Delivery, JobRejected, Scheduler
from vss_dispatcher.status import (
    QueueCounts,
    Timeline,
    health_problems,
    image_file_in,
    iso_time,
    status_document,
    status_line,
)
from vss_dispatcher.vss import RetryingDisplay, TransientFailure

# 2026-01-01T00:00:00Z: the test clock reads like a real reactor's.
EPOCH = 1_767_225_600.0


class ScriptedVSS:
    """
    A display backend whose attempts stay pending until the test answers
    them.

    @ivar attempts: The pending attempts, oldest first, as (job, priority,
        Deferred).
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[Job, bool, Deferred[None]]] = []

    def attempt(self, job: Job, priority: bool) -> Deferred[None]:
        answer: Deferred[None] = Deferred()
        self.attempts.append((job, priority, answer))
        return answer

    def _oldest(self) -> Deferred[None]:
        while self.attempts:
            _, _, answer = self.attempts.pop(0)
            if not answer.called:
                return answer
        raise AssertionError("no request to VSS is pending")

    def accept(self) -> None:
        """
        Accept the oldest pending attempt.
        """
        self._oldest().callback(None)

    def fail(self, reason: str) -> None:
        """
        Fail the oldest pending attempt as if VSS were unreachable.
        """
        self._oldest().errback(TransientFailure(reason))

    def refuse(self, reason: str) -> None:
        """
        Refuse the job of the oldest pending attempt for good.
        """
        self._oldest().errback(JobRejected(reason))


class BrokerDouble:
    """
    Has the attributes of L{vss_dispatcher.amqp.Broker} that monitoring
    reads, and tells its observers what the test makes it do.

    @ivar counts: What C{queue_counts} answers: a dict, C{None} to fail, or
        a L{Deferred} the test fires itself.
    @ivar asked: How many times the counts were asked for.
    """

    def __init__(self, settings: Settings) -> None:
        self.state = "open"
        self.consuming = True
        self.reconnects = 0
        self.observers: list[Any] = []
        self.counts: Any = {
            settings.rabbitmq_normal_queue: 4,
            settings.rabbitmq_priority_queue: 1,
            settings.rabbitmq_dead_letter_queue: 2,
        }
        self.asked = 0

    def queue_counts(self) -> Deferred[dict[str, int]]:
        self.asked += 1
        if isinstance(self.counts, Deferred):
            return self.counts
        if self.counts is None:
            return fail(ConnectionError("not connected to RabbitMQ"))
        return succeed(self.counts)

    def lose(self, reason: str) -> None:
        """
        Lose the connection, as the broker tells it.
        """
        self.state = "connecting"
        self.consuming = False
        for observer in self.observers:
            observer.broker_lost(reason)

    def consume(self) -> None:
        """
        Open a connection and consume both queues.
        """
        self.state = "open"
        for observer in self.observers:
            observer.broker_connected()
        self.consuming = True
        for observer in self.observers:
            observer.broker_consuming()

    def set_aside(self, queue: str, category: str, reason: str) -> None:
        for observer in self.observers:
            observer.message_dead_lettered(queue, category, reason)


class MonitoredDispatcher(MultiService):
    """
    The parts of a dispatcher that monitoring reads, with the real
    L{Scheduler} and L{RetryingDisplay} on a L{Clock}.

    @ivar vss: Answers the display's requests as the test says.
    @ivar settled: Deliveries acknowledged, in order.
    @ivar rejected: Deliveries set aside, with their reasons.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__()
        self.settings = settings or Settings(status_endpoint="")
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.started: float | None = EPOCH
        self.version = "1.2.3"
        self.vss = ScriptedVSS()
        self.display = RetryingDisplay(self.vss, self.clock, retry_delay=1.0)
        self.settled: list[Delivery] = []
        self.rejected: list[tuple[Delivery, str]] = []
        self.scheduler = Scheduler(
            self.clock,
            self.display.show,
            settle=self.settled.append,
            reject=lambda delivery, reason: self.rejected.append((delivery, reason)),
        )
        self.broker = BrokerDouble(self.settings)

    def deliver(
        self,
        image: str,
        duration: float = 10.0,
        priority: bool = False,
        message_id: str | None = None,
        resolved_path: str | None = None,
    ) -> Delivery:
        """
        Hand the scheduler a job as the broker would.
        """
        settings = self.settings
        queue = (
            settings.rabbitmq_priority_queue
            if priority
            else settings.rabbitmq_normal_queue
        )
        delivery = Delivery(
            job=Job(image, duration, message_id, resolved_path),
            priority=priority,
            queue=queue,
            received=self.clock.seconds(),
        )
        self.scheduler.enqueue(delivery)
        return delivery

    def show(self, image: str, **fields: Any) -> Delivery:
        """
        Deliver a job and have VSS accept it at once.
        """
        delivery = self.deliver(image, **fields)
        self.vss.accept()
        return delivery


class StatusSite:
    """
    The status site of a L{MonitoredDispatcher}, requested in memory.
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        dispatcher: MonitoredDispatcher,
        run_in_thread: Callable[..., Deferred[Any]] | None = None,
    ):
        self.test = test
        self.dispatcher = dispatcher
        self.metrics = Metrics(dispatcher)
        self.timeline = Timeline(dispatcher.clock, dispatcher.scheduler)
        self.counts = QueueCounts(dispatcher.broker, dispatcher.clock)
        for observer in (self.metrics, self.timeline):
            dispatcher.scheduler.observers.append(observer)
            dispatcher.display.observers.append(observer)
            dispatcher.broker.observers.append(observer)
        site = build_site(
            dispatcher, self.metrics, self.timeline, self.counts, run_in_thread
        )
        self.client = StubTreq(site.resource)

    def request(self, path: str) -> Deferred[Any]:
        """
        Start a GET of C{path}; the answer may wait for the clock.
        """
        return self.client.get(f"http://status.test{path}")

    def answer(self, requested: Deferred[Any]) -> tuple[int, Any, bytes]:
        """
        The status, headers and body of a request that was answered.
        """
        self.client.flush()
        response = self.test.successResultOf(requested)
        reading = response.content()
        self.client.flush()
        body = self.test.successResultOf(reading)
        return response.code, response.headers, body

    def get(self, path: str) -> tuple[int, Any, bytes]:
        return self.answer(self.request(path))

    def get_json(self, path: str) -> tuple[int, Any]:
        code, headers, body = self.get(path)
        self.test.assertEqual(
            headers.getRawHeaders("content-type"), ["application/json; charset=utf-8"]
        )
        return code, json.loads(body)


class HealthTests(SynchronousTestCase):
    """
    C{/healthz} and L{health_problems}: healthy only while the broker is
    consumed and VSS answered the last request.
    """

    def setUp(self) -> None:
        self.dispatcher = MonitoredDispatcher()
        self.site = StatusSite(self, self.dispatcher)

    def test_healthy_when_consuming_and_vss_not_asked_yet(self) -> None:
        """
        A dispatcher that consumes both queues and made no VSS request yet is
        healthy: 200 and a short JSON answer.
        """
        self.assertEqual(self.site.get_json("/healthz"), (200, {"status": "ok"}))

    def test_unhealthy_while_the_broker_reconnects(self) -> None:
        """
        While the broker connection is being made again, the answer is 503
        with the reason.
        """
        self.dispatcher.broker.lose("connection reset")

        code, answer = self.site.get_json("/healthz")

        self.assertEqual(code, 503)
        self.assertEqual(
            answer,
            {
                "status": "unhealthy",
                "problems": ["the RabbitMQ connection is connecting, not open"],
            },
        )

    def test_unhealthy_when_connected_but_not_consuming(self) -> None:
        """
        An open connection whose consumers are not registered is not healthy.
        """
        self.dispatcher.broker.consuming = False

        self.assertEqual(
            health_problems(self.dispatcher), ["the queues are not being consumed"]
        )
        self.assertEqual(self.site.get("/healthz")[0], 503)

    def test_unhealthy_after_vss_failed_until_it_answers_again(self) -> None:
        """
        A failed VSS request makes the dispatcher unhealthy with VSS's error
        as the reason; the next accepted request makes it healthy again.
        """
        self.dispatcher.deliver("a.png")
        self.dispatcher.vss.fail("cannot reach VSS: connection refused")

        code, answer = self.site.get_json("/healthz")
        self.assertEqual(code, 503)
        self.assertEqual(
            answer["problems"],
            ["the last request to VSS failed: cannot reach VSS: connection refused"],
        )

        self.dispatcher.clock.advance(1.0)
        self.dispatcher.vss.accept()
        self.assertEqual(self.site.get_json("/healthz"), (200, {"status": "ok"}))

    def test_every_problem_is_listed(self) -> None:
        """
        A lost broker and a failing VSS are both reported.
        """
        self.dispatcher.deliver("a.png")
        self.dispatcher.vss.fail("VSS answered 503")
        self.dispatcher.broker.lose("connection reset")

        self.assertEqual(len(self.site.get_json("/healthz")[1]["problems"]), 2)


class StatusDocumentTests(SynchronousTestCase):
    """
    C{/status}: what is on screen, what waits, the broker's counts and the
    state of both connections.
    """

    def setUp(self) -> None:
        self.dispatcher = MonitoredDispatcher()
        self.site = StatusSite(self, self.dispatcher)

    def test_job_on_screen(self) -> None:
        """
        The job on screen is described with its image, id, queue, the ISO
        time it went on screen and the seconds it has left.
        """
        self.dispatcher.show("lobby/welcome.png", duration=30, message_id="w-1")
        self.dispatcher.clock.advance(12)

        code, status = self.site.get_json("/status")

        self.assertEqual(code, 200)
        self.assertEqual(
            status["current"],
            {
                "image": "lobby/welcome.png",
                "message_id": "w-1",
                "queue": "vss.normal",
                "priority": False,
                "state": "showing",
                "since": "2026-01-01T00:00:00.000Z",
                "duration": 30,
                "remaining": 18,
                "preview": False,
            },
        )
        self.assertEqual(status["state"], "showing")

    def test_job_being_sent(self) -> None:
        """
        A job VSS has not accepted yet has its whole duration ahead of it.
        """
        self.dispatcher.deliver("a.png", duration=20)
        self.dispatcher.clock.advance(5)

        current = self.site.get_json("/status")[1]["current"]

        self.assertEqual(
            (current["state"], current["remaining"], current["duration"]),
            ("sending", 20, 20),
        )

    def test_nothing_on_screen(self) -> None:
        """
        An idle dispatcher has no current job and nothing waiting.
        """
        status = self.site.get_json("/status")[1]
        self.assertEqual(
            (status["state"], status["current"], status["waiting"]), ("idle", None, [])
        )

    def test_waiting_jobs_in_the_order_they_will_be_shown(self) -> None:
        """
        Jobs held by the dispatcher are listed priority first, each with its
        queue and duration.
        """
        self.dispatcher.show("alert-1.png", priority=True, duration=5)
        self.dispatcher.deliver("later.png", duration=7, message_id="n-1")
        self.dispatcher.deliver("alert-2.png", priority=True, duration=3)

        waiting = self.site.get_json("/status")[1]["waiting"]

        self.assertEqual(
            [(job["image"], job["queue"], job["duration"]) for job in waiting],
            [("alert-2.png", "vss.priority", 3), ("later.png", "vss.normal", 7)],
        )
        self.assertEqual(waiting[1]["message_id"], "n-1")
        self.assertEqual(waiting[1]["received"], "2026-01-01T00:00:00.000Z")

    def test_broker_counts_of_both_queues(self) -> None:
        """
        The message counts the broker gives for both queues are included.
        """
        status = self.site.get_json("/status")[1]
        self.assertEqual(status["queues"], {"vss.normal": 4, "vss.priority": 1})

    def test_counts_are_null_when_the_broker_cannot_count(self) -> None:
        """
        When the broker cannot count (not connected), the counts are null and
        the rest of the document is still there.
        """
        self.dispatcher.broker.lose("connection refused")
        self.dispatcher.broker.counts = None

        status = self.site.get_json("/status")[1]

        self.assertEqual(status["queues"], {"vss.normal": None, "vss.priority": None})
        self.assertEqual(
            status["broker"],
            {"state": "connecting", "consuming": False, "reconnects": 0},
        )

    def test_counts_are_null_when_the_broker_does_not_answer_in_time(self) -> None:
        """
        A broker that does not answer the count holds the answer back for at
        most three seconds, then the counts are null.
        """
        self.dispatcher.broker.counts = Deferred()
        requested = self.site.request("/status")
        self.site.client.flush()
        self.assertNoResult(requested)

        self.dispatcher.clock.advance(3)

        self.assertEqual(
            json.loads(self.site.answer(requested)[2])["queues"],
            {"vss.normal": None, "vss.priority": None},
        )

    def test_counts_are_asked_for_at_most_every_two_seconds(self) -> None:
        """
        Pages polling every second do not make the broker count every time.
        """
        self.site.get("/status")
        self.site.get("/status")
        self.site.get("/metrics")
        self.assertEqual(self.dispatcher.broker.asked, 1)

        self.dispatcher.clock.advance(2)
        self.site.get("/status")
        self.assertEqual(self.dispatcher.broker.asked, 2)

    def test_connection_state_reconnects_errors_version_uptime(self) -> None:
        """
        The broker's state and reconnections, VSS's last error, the version
        and the uptime are reported.
        """
        self.dispatcher.broker.reconnects = 3
        self.dispatcher.deliver("a.png")
        self.dispatcher.vss.fail("VSS did not answer within 30 s")
        self.dispatcher.clock.advance(90)

        status = self.site.get_json("/status")[1]

        self.assertEqual(
            status["broker"], {"state": "open", "consuming": True, "reconnects": 3}
        )
        self.assertEqual(
            status["vss"],
            {"failures": 1, "last_error": "VSS did not answer within 30 s"},
        )
        self.assertEqual(
            (status["version"], status["uptime"], status["started"], status["healthy"]),
            ("1.2.3", 90, "2026-01-01T00:00:00.000Z", False),
        )
        self.assertEqual(
            status["problems"],
            ["the last request to VSS failed: VSS did not answer within 30 s"],
        )

    def test_uptime_is_null_before_start(self) -> None:
        """
        Before the dispatcher started, its uptime is unknown rather than
        invented.
        """
        self.dispatcher.started = None
        document = status_document(self.dispatcher, None)
        self.assertEqual((document["uptime"], document["started"]), (None, None))


class StatusLineTests(SynchronousTestCase):
    """
    L{status_line} says in one line what the dispatcher does.
    """

    def setUp(self) -> None:
        self.dispatcher = MonitoredDispatcher(
            Settings(status_endpoint="", rabbitmq_host="mq.local")
        )

    def test_lines(self) -> None:
        """
        Each state reads as a plain sentence: waiting, sending, showing,
        VSS failing, broker lost.
        """
        lines = [status_line(self.dispatcher)]
        self.dispatcher.deliver("a.png")
        lines.append(status_line(self.dispatcher))
        self.dispatcher.vss.accept()
        self.dispatcher.deliver("b.png")
        lines.append(status_line(self.dispatcher))
        self.dispatcher.clock.advance(10)
        self.dispatcher.vss.fail("VSS answered 502")
        lines.append(status_line(self.dispatcher))
        self.dispatcher.broker.reconnects = 2
        self.dispatcher.broker.lose("connection reset")
        lines.append(status_line(self.dispatcher))

        self.assertEqual(
            lines,
            [
                "Waiting for jobs on vss.normal and vss.priority",
                "Sending a.png from vss.normal; 0 waiting",
                "Showing a.png from vss.normal; 1 waiting",
                "VSS failed 1 requests in a row, retrying: VSS answered 502",
                "RabbitMQ connection connecting (mq.local:5672, 2 reconnections"
                " so far)",
            ],
        )


class TimelineTests(SynchronousTestCase):
    """
    The timeline keeps the displays and failures of the last hours.
    """

    def setUp(self) -> None:
        self.dispatcher = MonitoredDispatcher()
        self.site = StatusSite(self, self.dispatcher)

    def test_displays_with_their_outcomes(self) -> None:
        """
        Each display is recorded from when VSS accepted it until it ended,
        with preempted, completed and the one on screen told apart.
        """
        dispatcher = self.dispatcher
        dispatcher.show("normal.png", duration=30, message_id="n")
        dispatcher.clock.advance(5)
        dispatcher.show("alert.png", priority=True, duration=3)
        dispatcher.clock.advance(3)
        dispatcher.show("next.png", duration=60)
        dispatcher.clock.advance(1)

        code, timeline = self.site.get_json("/timeline")

        self.assertEqual(code, 200)
        self.assertEqual(
            [
                (s["image"], s["queue"], s["started"], s["ended"], s["outcome"])
                for s in timeline["showings"]
            ],
            [
                (
                    "normal.png",
                    "vss.normal",
                    "2026-01-01T00:00:00.000Z",
                    "2026-01-01T00:00:05.000Z",
                    "preempted",
                ),
                (
                    "alert.png",
                    "vss.priority",
                    "2026-01-01T00:00:05.000Z",
                    "2026-01-01T00:00:08.000Z",
                    "completed",
                ),
                ("next.png", "vss.normal", "2026-01-01T00:00:08.000Z", None, None),
            ],
        )
        self.assertEqual(timeline["time"], "2026-01-01T00:00:09.000Z")
        self.assertEqual(timeline["from"], "2025-12-31T21:00:09.000Z")

    def test_failures_are_marked(self) -> None:
        """
        VSS failures, a lost broker connection and messages set aside are
        marked with the moment they happened and a plain description.
        """
        dispatcher = self.dispatcher
        dispatcher.deliver("a.png")
        dispatcher.vss.fail("VSS answered 503")
        dispatcher.clock.advance(1)
        dispatcher.broker.lose("connection reset")
        dispatcher.clock.advance(1)
        dispatcher.broker.set_aside(
            "vss.normal", "invalid_message", "field 'duration' is 'x'"
        )

        marks = self.site.get_json("/timeline")[1]["marks"]

        self.assertEqual(
            marks,
            [
                {
                    "time": "2026-01-01T00:00:00.000Z",
                    "kind": "vss_failure",
                    "text": "VSS request failed (VSS answered 503); 1 in a row,"
                    " retrying in 1 s",
                },
                {
                    "time": "2026-01-01T00:00:01.000Z",
                    "kind": "broker_lost",
                    "text": "lost the RabbitMQ connection (connection reset)",
                },
                {
                    "time": "2026-01-01T00:00:02.000Z",
                    "kind": "dead_lettered",
                    "text": "set aside a message from vss.normal: field 'duration'"
                    " is 'x'",
                },
            ],
        )

    def test_old_entries_are_forgotten(self) -> None:
        """
        Displays that ended and marks older than the span kept are dropped.
        """
        timeline = Timeline(self.dispatcher.clock, self.dispatcher.scheduler, keep=60)
        self.dispatcher.scheduler.observers.append(timeline)
        self.dispatcher.display.observers.append(timeline)
        self.dispatcher.show("old.png", duration=1)
        self.dispatcher.clock.advance(1)
        self.dispatcher.deliver("a.png")
        self.dispatcher.vss.fail("VSS answered 503")
        self.dispatcher.clock.advance(1)
        self.dispatcher.vss.accept()
        self.dispatcher.clock.advance(30)
        self.assertEqual(len(timeline.as_json()["showings"]), 2)

        self.dispatcher.clock.advance(40)
        document = timeline.as_json()

        self.assertEqual([s["image"] for s in document["showings"]], ["a.png"])
        self.assertEqual(document["marks"], [])

    def test_a_bounded_number_of_entries_is_kept(self) -> None:
        """
        However many jobs are shown, the timeline keeps at most its number of
        entries, the newest ones.
        """
        timeline = Timeline(self.dispatcher.clock, self.dispatcher.scheduler, entries=3)
        self.dispatcher.scheduler.observers.append(timeline)
        for number in range(5):
            self.dispatcher.show(f"{number}.png", duration=0)

        self.assertEqual(
            [s["image"] for s in timeline.as_json()["showings"]],
            ["2.png", "3.png", "4.png"],
        )

    def test_display_abandoned_when_the_broker_is_lost(self) -> None:
        """
        A display forgotten because the broker connection was lost ends, in
        the timeline, when the connection was lost, as interrupted.
        """
        dispatcher = self.dispatcher
        dispatcher.show("a.png", duration=30)
        dispatcher.clock.advance(4)
        dispatcher.broker.lose("connection reset")
        dispatcher.scheduler.forget_unsettled()
        dispatcher.clock.advance(6)
        dispatcher.broker.consume()

        showing = self.site.get_json("/timeline")[1]["showings"][0]

        self.assertEqual(
            (showing["ended"], showing["outcome"]),
            ("2026-01-01T00:00:04.000Z", "interrupted"),
        )


class ServedSite:
    """
    The status site of a L{MonitoredDispatcher} on a real port of
    127.0.0.1, for the responses Twisted streams from files.
    """

    def __init__(self, test: TestCase, dispatcher: MonitoredDispatcher) -> None:
        self.test = test
        self.dispatcher = dispatcher
        self.site = StatusSite(test, dispatcher)
        self.server = StatusServer(
            "tcp:0:interface=127.0.0.1",
            reactor,
            build_site(
                dispatcher, self.site.metrics, self.site.timeline, self.site.counts
            ),
        )
        self.server.startService()
        test.addCleanup(self.server.stopService)

    @inlineCallbacks
    def get(self, path: str) -> Any:
        """
        GET C{path}, on a connection of its own, and return the status,
        headers and body.
        """
        port = status_port_of(self.server)
        yield self.server.when_listening()
        response = yield http_client().get(f"http://127.0.0.1:{port}{path}")
        body = yield response.content()
        return response.code, response.headers, body

    @inlineCallbacks
    def get_json(self, path: str) -> Any:
        code, _, body = yield self.get(path)
        return code, json.loads(body)


def http_client() -> HTTPClient:
    """
    A client that keeps no connection open once a response is read, so
    that no test leaves one behind.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, pool=pool))


def status_port_of(server: StatusServer) -> int:
    assert server.port is not None
    return int(server.port.getHost().port)


class ImageTests(TestCase):
    """
    C{/image/current} serves the image on screen, and only from inside
    IMAGE_ROOT.
    """

    def setUp(self) -> None:
        base = os.path.realpath(self.mktemp())
        self.root = os.path.join(base, "images")
        os.makedirs(os.path.join(self.root, "lobby"))
        self.image = os.path.join(self.root, "lobby", "welcome.png")
        with open(self.image, "wb") as f:
            f.write(b"\x89PNG pretend image")
        self.outside = os.path.join(base, "secret.png")
        with open(self.outside, "wb") as f:
            f.write(b"not for the page")

    def site_for(self, image_root: str) -> tuple[MonitoredDispatcher, ServedSite]:
        dispatcher = MonitoredDispatcher(
            Settings(status_endpoint="", image_root=image_root)
        )
        return dispatcher, ServedSite(self, dispatcher)

    @inlineCallbacks
    def test_image_inside_the_root(self) -> Any:
        """
        The file of the job on screen is served with its image type, and the
        status says a preview is available.
        """
        dispatcher, site = self.site_for(self.root)
        dispatcher.show("lobby/welcome.png", resolved_path=self.image)

        code, headers, body = yield site.get("/image/current")

        self.assertEqual((code, body), (200, b"\x89PNG pretend image"))
        self.assertEqual(headers.getRawHeaders("content-type"), ["image/png"])
        self.assertEqual(headers.getRawHeaders("cache-control"), ["no-store"])
        _, status = yield site.get_json("/status")
        self.assertTrue(status["current"]["preview"])

    @inlineCallbacks
    def test_path_without_resolved_file_is_taken_inside_the_root(self) -> Any:
        """
        A job without a resolved path has its image path taken relative to
        IMAGE_ROOT.
        """
        dispatcher, site = self.site_for(self.root)
        dispatcher.show("lobby/welcome.png")

        code, _, body = yield site.get("/image/current")
        self.assertEqual((code, body), (200, b"\x89PNG pretend image"))

    @inlineCallbacks
    def test_nothing_without_image_root(self) -> Any:
        """
        With IMAGE_ROOT empty no file is ever served.
        """
        dispatcher, site = self.site_for("")
        dispatcher.show(self.image)

        code, _, _ = yield site.get("/image/current")
        self.assertEqual(code, 404)
        _, status = yield site.get_json("/status")
        self.assertFalse(status["current"]["preview"])

    @inlineCallbacks
    def test_nothing_outside_the_root(self) -> Any:
        """
        A path that leads outside IMAGE_ROOT, by C{..}, by an absolute path
        or through a symbolic link, is not served.
        """
        os.symlink(self.outside, os.path.join(self.root, "link.png"))
        dispatcher, site = self.site_for(self.root)
        for path in ("../secret.png", self.outside, "link.png"):
            dispatcher.scheduler.stop()
            dispatcher.scheduler = Scheduler(
                dispatcher.clock, dispatcher.display.show, lambda d: None, print
            )
            dispatcher.show(path)
            current = dispatcher.scheduler.current
            assert current is not None
            self.assertIsNone(image_file_in(self.root, current.job))
            code, _, body = yield site.get("/image/current")
            self.assertEqual(code, 404, path)
            self.assertNotIn(b"not for the page", body)

    @inlineCallbacks
    def test_nothing_when_nothing_is_on_screen(self) -> Any:
        """
        Without a job on screen the answer is 404.
        """
        _, site = self.site_for(self.root)
        code, _, _ = yield site.get("/image/current")
        self.assertEqual(code, 404)

    @inlineCallbacks
    def test_missing_file(self) -> Any:
        """
        An image removed since the job arrived is a 404, not an error.
        """
        dispatcher, site = self.site_for(self.root)
        dispatcher.show("lobby/welcome.png", resolved_path=self.image)
        os.remove(self.image)
        code, _, _ = yield site.get("/image/current")
        self.assertEqual(code, 404)


class _HeldThreads:
    """
    Stands in for the worker threads: each piece of work waits until the
    test lets it run, as it would on a slow or hung network share.
    """

    def __init__(self) -> None:
        self.waiting: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]]
        self.waiting = []

    def __call__(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        self.waiting.append((function, args, done))
        return done

    def run_all(self) -> None:
        """
        Let the waiting work run, in order.
        """
        waiting, self.waiting = self.waiting, []
        for function, args, done in waiting:
            done.callback(function(*args))


class ImageReadingTests(SynchronousTestCase):
    """
    The image on screen is found and read in a worker thread, so that a
    slow image share never holds up the dispatcher or the rest of the site.
    """

    def setUp(self) -> None:
        self.root = os.path.realpath(self.mktemp())
        os.makedirs(self.root)
        self.image = os.path.join(self.root, "welcome.png")
        with open(self.image, "wb") as f:
            f.write(b"\x89PNG pretend image")
        self.threads = _HeldThreads()
        self.dispatcher = MonitoredDispatcher(
            Settings(status_endpoint="", image_root=self.root)
        )
        self.site = StatusSite(self, self.dispatcher, self.threads)
        self.dispatcher.show("welcome.png", resolved_path=self.image)

    def test_slow_share_holds_up_only_the_image(self) -> None:
        """
        While the file is being read, the image request waits and the rest
        of the site answers; the image follows once the read is done.
        """
        requested = self.site.request("/image/current")
        self.site.client.flush()

        self.assertNoResult(requested)
        self.assertEqual(self.site.get_json("/healthz")[0], 200)
        self.assertEqual(len(self.threads.waiting), 1)

        self.threads.run_all()
        code, headers, body = self.site.answer(requested)
        self.assertEqual((code, body), (200, b"\x89PNG pretend image"))
        self.assertEqual(headers.getRawHeaders("content-type"), ["image/png"])
        self.assertEqual(headers.getRawHeaders("cache-control"), ["no-store"])

    def test_too_large_for_a_preview(self) -> None:
        """
        A file larger than the preview limit is not sent.
        """
        self.patch(monitoring, "MAX_PREVIEW_BYTES", 5)
        requested = self.site.request("/image/current")
        self.threads.run_all()

        code, _, body = self.site.answer(requested)

        self.assertEqual(code, 404)
        self.assertNotIn(b"PNG", body)

    def test_status_offers_preview_without_reading(self) -> None:
        """
        The status says whether a preview is offered without any work in a
        thread or on the file system.
        """
        os.remove(self.image)

        code, status = self.site.get_json("/status")

        self.assertEqual(code, 200)
        self.assertTrue(status["current"]["preview"])
        self.assertEqual(self.threads.waiting, [])


class PageTests(TestCase):
    """
    C{/} is a page for people, made only of the dispatcher's own files.
    """

    def setUp(self) -> None:
        self.site = ServedSite(self, MonitoredDispatcher())

    @inlineCallbacks
    def test_page_and_its_files(self) -> Any:
        """
        The page is HTML that loads its script and style sheet from the
        dispatcher, which serves them with their types.
        """
        code, headers, page = yield self.site.get("/")
        self.assertEqual(code, 200)
        self.assertEqual(
            headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"]
        )
        self.assertIn(b'<script src="static/page.js"', page)
        self.assertIn(b'<link rel="stylesheet" href="static/page.css"', page)

        code, headers, script = yield self.site.get("/static/page.js")
        self.assertEqual(code, 200)
        self.assertIn("javascript", headers.getRawHeaders("content-type")[0])
        self.assertIn(b"pollStatus", script)
        code, headers, _ = yield self.site.get("/static/page.css")
        self.assertEqual(
            (code, headers.getRawHeaders("content-type")), (200, ["text/css"])
        )

    @inlineCallbacks
    def test_nothing_is_loaded_from_elsewhere(self) -> Any:
        """
        Neither the page nor its files refer to another site, and the
        content security policy forbids it anyway.
        """
        texts = []
        for path in ("/", "/static/page.js", "/static/page.css"):
            code, headers, text = yield self.site.get(path)
            texts.append(text)
            self.assertIn(
                b"default-src 'self'",
                headers.getRawHeaders(b"content-security-policy")[0],
            )
        for text in texts:
            for reference in (
                b'src="http',
                b'href="http',
                b"url(",
                b"//cdn",
                b"import ",
            ):
                self.assertNotIn(reference, text)

    @inlineCallbacks
    def test_unknown_paths(self) -> Any:
        """
        Anything but the endpoints and the page's files is not found, and the
        folder of the page's files is not listed.
        """
        for path in (
            "/nothing",
            "/static/",
            "/static/missing.js",
            "/static/../monitoring.py",
            "/image/other",
            "/image/",
        ):
            code, _, _ = yield self.site.get(path)
            self.assertEqual(code, 404, path)


class StatusServerTests(TestCase):
    """
    L{StatusServer} and L{attach_monitoring}: where the site listens, and
    what happens when it cannot.
    """

    def test_endpoint_that_is_not_one(self) -> None:
        """
        A STATUS_ENDPOINT Twisted cannot read stops start-up with one
        sentence naming the setting, the value and what is expected.
        """
        dispatcher = MonitoredDispatcher(Settings(status_endpoint="tcpp:8089"))

        error = self.assertRaises(
            ConfigurationError, attach_monitoring, dispatcher, reactor, {}
        )

        self.assertTrue(str(error).startswith("STATUS_ENDPOINT is 'tcpp:8089', which"))
        self.assertTrue(
            str(error).endswith(
                "expected a Twisted server endpoint such as"
                " tcp:8089:interface=127.0.0.1, or empty."
            )
        )

    @inlineCallbacks
    def test_attached_site_listens_and_observes(self) -> Any:
        """
        With STATUS_ENDPOINT set, the dispatcher gets a status server that
        listens once the dispatcher starts, whose port can be found, and whose
        endpoints follow the dispatcher; stopping it closes the port.
        """
        dispatcher = MonitoredDispatcher(
            Settings(status_endpoint="tcp:0:interface=127.0.0.1")
        )
        attach_monitoring(dispatcher, reactor, environ={})
        self.assertIsNone(status_port(dispatcher))
        dispatcher.startService()
        self.addCleanup(lambda: dispatcher.running and dispatcher.stopService())
        yield dispatcher.getServiceNamed(STATUS_SERVER).when_listening()
        port = status_port(dispatcher)
        assert port is not None
        dispatcher.show("a.png", duration=30)

        response = yield http_client().get(f"http://127.0.0.1:{port}/status")
        status = yield response.json()
        self.assertEqual(status["current"]["image"], "a.png")
        response = yield http_client().get(f"http://127.0.0.1:{port}/metrics")
        metrics = yield response.text()
        self.assertIn(
            'vss_dispatcher_jobs_shown_total{queue="vss.normal"} 1.0', metrics
        )

        yield dispatcher.stopService()
        self.assertIsNone(status_port(dispatcher))
        refused = yield self.assertFailure(
            http_client().get(f"http://127.0.0.1:{port}/healthz"), Exception
        )
        self.assertIn("refused", str(refused).lower())

    @inlineCallbacks
    def test_port_in_use(self) -> Any:
        """
        When the port is taken, the error is logged in plain words and the
        dispatcher runs on without its status site.
        """
        taken = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        number = taken.getHost().port
        events: list[dict[str, Any]] = []
        server = StatusServer(
            f"tcp:{number}:interface=127.0.0.1", reactor, Site(Resource())
        )
        server.log = Logger(observer=events.append)

        server.startService()
        port = yield server.when_listening()
        yield server.stopService()

        self.assertIsNone(port)
        [error] = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(error["endpoint"], f"tcp:{number}:interface=127.0.0.1")
        self.assertIn("address already in use", error["error"].lower())


def eventually(check: Callable[[], Any], interval: float = 0.05) -> Deferred[Any]:
    """
    Fire with the first true result of C{check} (which may return a
    Deferred), asking again every C{interval} seconds.  The test's own
    timeout bounds the wait: this waits for an event, not for a time.
    """

    @inlineCallbacks
    def attempt() -> Any:
        while True:
            result = yield maybeDeferred(check)
            if result:
                return result
            yield deferLater(reactor, interval, lambda: None)

    return attempt()


def make_image(path: str, size: tuple[int, int], colour: str) -> None:
    """
    Write a PNG of one colour.
    """
    from PIL import Image

    Image.new("RGB", size, colour).save(path)


class LiveDispatcher(TestCase):
    """
    A whole dispatcher in this process, against the real local RabbitMQ
    (queues of its own, deleted afterwards) and the VSS emulator, with its
    status server on a free port of 127.0.0.1.
    """

    timeout = 60

    def setUp(self) -> None:
        self.normal, self.priority, self.dead = unique_queues("monitoring")
        self.client = BrokerClient()
        self.addCleanup(self.client.close)
        self.addCleanup(self.client.delete, self.normal, self.priority, self.dead)
        self.vss = EmulatedVSS(history=100)
        self.vss_port = reactor.listenTCP(0, make_site(self.vss), interface="127.0.0.1")
        self.addCleanup(self.vss_port.stopListening)

        folder = os.path.realpath(self.mktemp())
        self.image_root = os.path.join(folder, "images")
        os.makedirs(self.image_root)
        make_image(os.path.join(self.image_root, "wide.png"), (320, 180), "#3b6fd8")
        make_image(os.path.join(self.image_root, "tall.png"), (180, 320), "#e08a1e")
        make_image(os.path.join(self.image_root, "square.png"), (200, 200), "#1f8a4c")
        self.play_log = os.path.join(folder, "play.jsonl")

    @inlineCallbacks
    def start(self) -> Any:
        """
        Start a monitored dispatcher and wait until it says it is healthy.
        """
        settings = Settings(
            rabbitmq_host="127.0.0.1",
            rabbitmq_normal_queue=self.normal,
            rabbitmq_priority_queue=self.priority,
            rabbitmq_dead_letter_queue=self.dead,
            vss_base_url=f"http://127.0.0.1:{self.vss_port.getHost().port}",
            vss_retry_delay=0.05,
            status_endpoint="tcp:0:interface=127.0.0.1",
            image_root=self.image_root,
            play_log=self.play_log,
        )
        dispatcher = DispatcherService(settings, reactor)
        if not any(service.name == STATUS_SERVER for service in dispatcher):
            attach_monitoring(dispatcher, reactor, environ={})
        dispatcher.startService()
        self.addCleanup(self.stop, dispatcher)
        # Nothing can be connected before the reactor has run.
        self.assertEqual(
            health_problems(dispatcher),
            ["the RabbitMQ connection is connecting, not open"],
        )

        server = dispatcher.getServiceNamed(STATUS_SERVER)
        yield server.when_listening()
        self.base = f"http://127.0.0.1:{status_port(dispatcher)}"
        yield eventually(lambda: self.health_code().addCallback(lambda c: c == 200))
        return dispatcher

    @inlineCallbacks
    def stop(self, dispatcher: Any) -> Any:
        if dispatcher.running:
            yield dispatcher.stopService()

    @inlineCallbacks
    def get(self, path: str) -> Any:
        response = yield http_client().get(self.base + path)
        body = yield response.content()
        return response.code, body

    @inlineCallbacks
    def health_code(self) -> Any:
        code, _ = yield self.get("/healthz")
        return code

    @inlineCallbacks
    def status(self) -> Any:
        code, body = yield self.get("/status")
        self.assertEqual(code, 200)
        return json.loads(body)

    @inlineCallbacks
    def metrics(self) -> Any:
        from tests.test_metrics import samples

        code, body = yield self.get("/metrics")
        self.assertEqual(code, 200)
        return samples(body)

    def publish(self, queue: str, image: str, duration: float, **fields: Any) -> None:
        self.client.publish(
            queue, {"image_path": image, "duration": duration, **fields}
        )


class RealBrokerTests(LiveDispatcher):
    """
    The endpoints follow a dispatcher that takes real jobs from RabbitMQ and
    shows them through the VSS emulator.
    """

    @inlineCallbacks
    def test_endpoints_follow_the_jobs(self) -> Any:
        """
        As a normal job is shown, preempted by a priority job and followed by
        the next one, C{/status}, C{/image/current}, C{/metrics},
        C{/timeline} and the play log say so.
        """
        dispatcher = yield self.start()
        status = yield self.status()
        self.assertEqual(
            (status["current"], status["queues"], status["healthy"]),
            (None, {self.normal: 0, self.priority: 0}, True),
        )

        self.publish(self.normal, "wide.png", 300, message_id="wide-1")
        yield self.vss.request_number(1)
        status = yield eventually(
            lambda: self.status().addCallback(
                lambda s: s if s["state"] == "showing" else None
            )
        )
        current = status["current"]
        self.assertEqual(
            (current["image"], current["message_id"], current["queue"]),
            ("wide.png", "wide-1", self.normal),
        )
        self.assertTrue(0 < current["remaining"] <= 300)
        self.assertTrue(current["preview"])
        code, image = yield self.get("/image/current")
        with open(os.path.join(self.image_root, "wide.png"), "rb") as f:
            self.assertEqual((code, image), (200, f.read()))

        # The job on screen holds the consumer's only prefetched message, so
        # the next one waits on the broker, where the status counts it.
        self.publish(self.normal, "square.png", 300)
        yield eventually(
            lambda: self.status().addCallback(lambda s: s["queues"][self.normal] == 1)
        )

        self.publish(self.priority, "tall.png", 0)
        yield self.vss.request_number(3)
        status = yield eventually(
            lambda: self.status().addCallback(
                lambda s: s if s["state"] == "showing" else None
            )
        )
        self.assertEqual(status["current"]["image"], "square.png")

        scraped = yield self.metrics()

        def metric(name: str, **labels: str) -> float:
            return scraped.get((name, frozenset(labels.items())), -1.0)

        self.assertEqual(
            [
                metric("vss_dispatcher_jobs_shown_total", queue=self.normal),
                metric("vss_dispatcher_jobs_shown_total", queue=self.priority),
                metric("vss_dispatcher_jobs_preempted_total", queue=self.normal),
                metric("vss_dispatcher_jobs_completed_total", queue=self.priority),
                metric("vss_dispatcher_preemption_seconds_count"),
                metric("vss_dispatcher_vss_request_seconds_count", result="accepted"),
                metric("vss_dispatcher_on_screen", queue=self.normal),
                metric("vss_dispatcher_on_screen", queue=self.priority),
                metric("vss_dispatcher_healthy"),
            ],
            [2.0, 1.0, 1.0, 1.0, 1.0, 3.0, 1.0, 0.0, 1.0],
        )

        code, body = yield self.get("/timeline")
        self.assertEqual(
            [(s["image"], s["outcome"]) for s in json.loads(body)["showings"]],
            [
                ("wide.png", "preempted"),
                ("tall.png", "completed"),
                ("square.png", None),
            ],
        )

        yield dispatcher.stopService()
        with open(self.play_log, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        self.assertEqual(
            [(r["image"], r["queue"], r["message_id"], r["outcome"]) for r in records],
            [
                ("wide.png", self.normal, "wide-1", "preempted"),
                ("tall.png", self.priority, None, "completed"),
                ("square.png", self.normal, None, "stopped"),
            ],
        )

    @inlineCallbacks
    def test_health_follows_vss(self) -> Any:
        """
        While VSS answers 503, C{/healthz} answers 503 with VSS's answer as
        the reason and retries are counted; once VSS answers again, the
        dispatcher is healthy again.
        """
        yield self.start()
        self.vss.status = 503
        self.publish(self.normal, "wide.png", 300)
        yield self.vss.request_number(1)

        code, body = yield eventually(
            lambda: self.get("/healthz").addCallback(
                lambda answer: answer if answer[0] == 503 else None
            )
        )
        [problem] = json.loads(body)["problems"]
        self.assertTrue(
            problem.startswith("the last request to VSS failed: VSS answered 503"),
            problem,
        )

        self.vss.status = 200
        yield eventually(lambda: self.health_code().addCallback(lambda c: c == 200))
        scraped = yield self.metrics()
        self.assertGreaterEqual(
            scraped[("vss_dispatcher_vss_retries_total", frozenset())], 1
        )

    @inlineCallbacks
    def test_messages_set_aside_are_counted_and_marked(self) -> Any:
        """
        An unusable message is counted by queue and reason in C{/metrics},
        marked in C{/timeline}, and the dead-letter queue's count shows in
        the metrics.
        """
        yield self.start()
        self.client.publish(self.normal, b"this is not JSON")

        def dead_lettered(scraped: Any) -> bool:
            key = (
                "vss_dispatcher_jobs_dead_lettered_total",
                frozenset({("queue", self.normal), ("reason", "invalid_message")}),
            )
            return scraped.get(key) == 1.0

        yield eventually(lambda: self.metrics().addCallback(dead_lettered))
        code, body = yield self.get("/timeline")
        [mark] = json.loads(body)["marks"]
        self.assertEqual(mark["kind"], "dead_lettered")
        self.assertIn("not JSON", mark["text"])
        yield eventually(
            lambda: self.metrics().addCallback(
                lambda s: s.get(
                    ("vss_dispatcher_queue_messages", frozenset({("queue", self.dead)}))
                )
                == 1.0
            )
        )


class IsoTimeTests(SynchronousTestCase):
    """
    L{iso_time} writes the times of the status page and the play log.
    """

    def slow(self, seconds: float) -> str:
        moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def test_known_times(self) -> None:
        """
        UTC, with milliseconds cut (not rounded) and a Z.
        """
        self.assertEqual(iso_time(EPOCH), "2026-01-01T00:00:00.000Z")
        self.assertEqual(iso_time(EPOCH + 61.2349), "2026-01-01T00:01:01.234Z")
        self.assertEqual(iso_time(EPOCH - 0.5), "2025-12-31T23:59:59.500Z")
        self.assertIsNone(iso_time(None))

    def test_same_as_datetime(self) -> None:
        """
        Whatever order times come in, across second boundaries and where the
        microseconds round up to the next second, the text is the one
        datetime writes.
        """
        rng = random.Random(7)
        times = [rng.uniform(0, 4e9) for _ in range(2000)]
        edges = [0.9999995, 0.0005, 0.0004999, 0.9994999, 0.1234565, 0.0]
        times += [float(int(t)) + edge for t in times[:500] for edge in edges]
        times += [-1.25, -0.0000004, 1e10 + 0.9999999]
        for seconds in times:
            self.assertEqual(iso_time(seconds), self.slow(seconds), seconds)
