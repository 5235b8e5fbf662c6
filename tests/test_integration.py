"""
End-to-end tests of the dispatcher against the real local RabbitMQ and the
VSS emulator, a real HTTP server.

Each test uses queues of its own and deletes them afterwards.  Tests wait for
events (a request reaching the emulator, the dispatcher consuming), never for
a fixed amount of time.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.broker import BrokerClient, close_connections_named, unique_queues
from vss_dispatcher.app import DispatcherService
from vss_dispatcher.config import Settings
from vss_dispatcher.emulator import EmulatedVSS, make_site


def wait_for(condition: Callable[[], bool], interval: float = 0.02) -> Deferred[None]:
    """
    Fire once C{condition()} holds, checking every C{interval} seconds.  The
    test's own timeout bounds the wait.
    """
    done: Deferred[None] = Deferred()

    def check() -> None:
        if done.called:
            return
        if condition():
            done.callback(None)
        else:
            reactor.callLater(interval, check)

    check()
    return done


class _Observer:
    """
    Collects the broker's events for a test.
    """

    def __init__(self) -> None:
        self.consuming = 0
        self.lost: list[str] = []
        self.dead_lettered: list[tuple[str, str, str]] = []

    def broker_connected(self) -> None:
        pass

    def broker_consuming(self) -> None:
        self.consuming += 1

    def broker_lost(self, reason: str) -> None:
        self.lost.append(reason)

    def message_dead_lettered(self, queue: str, category: str, reason: str) -> None:
        self.dead_lettered.append((queue, category, reason))


class DispatcherTestCase(TestCase):
    """
    Runs a dispatcher in this process, with its own queues and its own VSS
    emulator.
    """

    timeout = 60

    def setUp(self) -> None:
        self.normal, self.priority, self.dead = unique_queues()
        self.client = BrokerClient()
        self.addCleanup(self.client.close)
        self.addCleanup(self.client.delete, self.normal, self.priority, self.dead)
        self.vss = EmulatedVSS(history=500)
        self.port = reactor.listenTCP(0, make_site(self.vss), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def settings(self, **changes: Any) -> Settings:
        values: dict[str, Any] = dict(
            rabbitmq_host="127.0.0.1",
            rabbitmq_normal_queue=self.normal,
            rabbitmq_priority_queue=self.priority,
            rabbitmq_dead_letter_queue=self.dead,
            vss_base_url=f"http://127.0.0.1:{self.port.getHost().port}",
            vss_retry_delay=0.05,
            status_endpoint="",
        )
        values.update(changes)
        return Settings(**values)

    @inlineCallbacks
    def start(self, **changes: Any) -> Any:
        """
        Start a dispatcher and wait until it consumes both queues.
        """
        dispatcher = DispatcherService(self.settings(**changes), reactor)
        self.observer = _Observer()
        dispatcher.broker.observers.append(self.observer)
        dispatcher.startService()
        self.addCleanup(self.stop, dispatcher)
        yield wait_for(lambda: self.observer.consuming > 0)
        return dispatcher

    @inlineCallbacks
    def stop(self, dispatcher: DispatcherService) -> Any:
        if dispatcher.running:
            yield dispatcher.stopService()

    def shown(self) -> list[tuple[str, bool]]:
        return [(r.image_path, r.priority) for r in self.vss.requests if r.accepted]


class OrderTests(DispatcherTestCase):
    """
    Jobs reach VSS in the promised order and are acknowledged after display.
    """

    @inlineCallbacks
    def test_normal_jobs_are_shown_in_order_and_acknowledged(self) -> Any:
        """
        Normal jobs are shown one after another in publishing order, and none
        is left on the queue once they were shown.
        """
        dispatcher = yield self.start()
        for name in ("a.png", "b.png", "c.png"):
            self.client.publish(self.normal, {"image_path": name, "duration": 0})
        yield self.vss.request_number(3)
        yield wait_for(lambda: dispatcher.scheduler.state == "idle")
        yield dispatcher.stopService()

        self.assertEqual(
            self.shown(), [("a.png", False), ("b.png", False), ("c.png", False)]
        )
        self.assertEqual(self.client.count(self.normal), 0)

    @inlineCallbacks
    def test_waiting_priority_jobs_go_first(self) -> Any:
        """
        Jobs waiting on both queues when the dispatcher starts are shown
        priority first.
        """
        self.client.declare(self.normal, self.priority)
        self.client.publish(self.normal, {"image_path": "normal.png", "duration": 0})
        self.client.publish(self.priority, {"image_path": "urgent.png", "duration": 0})
        yield self.start()
        yield self.vss.request_number(2)

        self.assertEqual(self.shown(), [("urgent.png", True), ("normal.png", False)])

    @inlineCallbacks
    def test_priority_job_preempts_the_normal_job_on_screen(self) -> Any:
        """
        A priority job published while a long normal job is on screen is
        sent at once, and with INTERRUPTED_JOBS=drop the normal job is
        acknowledged.
        """
        dispatcher = yield self.start()
        self.client.publish(self.normal, {"image_path": "long.png", "duration": 300})
        yield self.vss.request_number(1)
        yield wait_for(lambda: dispatcher.scheduler.state == "showing")

        self.client.publish(
            self.priority,
            {"image_path": "alert.png", "duration": 0, "message_id": "a1"},
        )
        second = yield self.vss.request_number(2)
        self.assertEqual(
            (second.image_path, second.priority, second.message_id),
            ("alert.png", True, "a1"),
        )
        yield wait_for(lambda: dispatcher.scheduler.state == "idle")
        yield dispatcher.stopService()
        self.assertEqual(self.client.count(self.normal), 0)
        self.assertEqual(self.client.count(self.priority), 0)

    @inlineCallbacks
    def test_resumed_job_comes_back_for_its_remaining_time(self) -> Any:
        """
        With INTERRUPTED_JOBS=resume the interrupted normal job is sent again
        after the priority job, for less than its full duration.
        """
        dispatcher = yield self.start(interrupted_jobs="resume")
        self.client.publish(self.normal, {"image_path": "long.png", "duration": 300})
        yield self.vss.request_number(1)
        yield wait_for(lambda: dispatcher.scheduler.state == "showing")
        self.client.publish(self.priority, {"image_path": "alert.png", "duration": 0})
        third = yield self.vss.request_number(3)

        self.assertEqual(third.image_path, "long.png")
        assert third.duration is not None
        self.assertLess(third.duration, 300)
        self.assertGreater(third.duration, 200)


class DeadLetterTests(DispatcherTestCase):
    """
    Unusable messages are moved to the dead-letter queue with their reason,
    and the good ones behind them go on.
    """

    @inlineCallbacks
    def test_bad_message_is_set_aside_and_the_next_one_shown(self) -> Any:
        """
        A message that is not JSON lands unchanged on the dead-letter queue
        with its reason and source queue, and the job behind it is shown.
        """
        dispatcher = yield self.start()
        self.client.publish(self.normal, b"{not json", headers={"producer": "test"})
        self.client.publish(self.normal, {"image_path": "good.png", "duration": 0})
        first = yield self.vss.request_number(1)
        self.assertEqual(first.image_path, "good.png")
        # The request reached VSS; its display ends once the answer is back.
        yield wait_for(lambda: dispatcher.scheduler.state == "idle")
        yield wait_for(lambda: self.client.count(self.dead) == 1)
        yield dispatcher.stopService()

        method, properties, body = self.client.get(self.dead)
        self.assertEqual(body, b"{not json")
        self.assertIn("not JSON", properties.headers["x-vss-reason"])
        self.assertEqual(properties.headers["x-vss-source-queue"], self.normal)
        self.assertEqual(properties.headers["producer"], "test")
        self.assertEqual(self.client.count(self.normal), 0)
        self.assertEqual(self.vss.received, 1)
        self.assertEqual(
            [(q, c) for q, c, _ in self.observer.dead_lettered],
            [(self.normal, "invalid_message")],
        )

    @inlineCallbacks
    def test_without_dead_letter_queue_bad_message_is_rejected(self) -> Any:
        """
        With RABBITMQ_DEAD_LETTER_QUEUE empty, a bad message is rejected
        (not requeued, so it does not come back) and the next job is shown.
        """
        dispatcher = yield self.start(rabbitmq_dead_letter_queue="")
        self.client.publish(self.normal, {"image_path": ""})
        self.client.publish(self.normal, {"image_path": "good.png", "duration": 0})
        first = yield self.vss.request_number(1)
        self.assertEqual(first.image_path, "good.png")
        yield wait_for(lambda: dispatcher.scheduler.state == "idle")
        yield dispatcher.stopService()

        self.assertEqual(self.client.count(self.normal), 0)
        self.assertEqual(self.vss.received, 1)
        self.assertEqual(
            [(q, c) for q, c, _ in self.observer.dead_lettered],
            [(self.normal, "invalid_message")],
        )

    @inlineCallbacks
    def test_job_vss_refuses_is_set_aside_with_its_answer(self) -> Any:
        """
        A job VSS answers with 422 is moved to the dead-letter queue with the
        status in its reason, and not retried.
        """
        self.vss.answer_with(422)
        dispatcher = yield self.start()
        self.client.publish(self.normal, {"image_path": "odd.png", "duration": 0})
        self.client.publish(self.normal, {"image_path": "fine.png", "duration": 0})
        yield self.vss.request_number(2)
        yield wait_for(lambda: dispatcher.scheduler.state == "idle")
        yield wait_for(lambda: self.client.count(self.dead) == 1)
        yield dispatcher.stopService()

        method, properties, body = self.client.get(self.dead)
        self.assertIn("VSS answered 422", properties.headers["x-vss-reason"])
        self.assertIn(b"odd.png", body)
        self.assertEqual(
            [r.image_path for r in self.vss.requests], ["odd.png", "fine.png"]
        )
        self.assertEqual(self.client.count(self.normal), 0)


class ImageRootTests(DispatcherTestCase):
    """
    With IMAGE_ROOT set, each image is checked on the share before it is
    shown.
    """

    def setUp(self) -> None:
        super().setUp()
        self.root = os.path.realpath(self.mktemp())
        os.makedirs(self.root)
        for name in ("a.png", "b.png"):
            with open(os.path.join(self.root, name), "wb") as image:
                image.write(b"\x89PNG")

    @inlineCallbacks
    def test_missing_image_set_aside_and_order_kept(self) -> Any:
        """
        A job whose image is not on the share is set aside with a reason that
        names the field and the value; the jobs around it are shown in
        order.
        """
        dispatcher = yield self.start(image_root=self.root)
        for name in ("a.png", "missing.png", "b.png"):
            self.client.publish(self.normal, {"image_path": name, "duration": 0})
        yield self.vss.request_number(2)
        yield wait_for(lambda: dispatcher.scheduler.state == "idle")
        yield wait_for(lambda: self.client.count(self.dead) == 1)
        yield dispatcher.stopService()

        self.assertEqual(self.shown(), [("a.png", False), ("b.png", False)])
        method, properties, body = self.client.get(self.dead)
        reason = properties.headers["x-vss-reason"]
        self.assertIn("field 'image_path' is \"missing.png\"", reason)
        self.assertIn("not an existing file", reason)
        self.assertEqual(self.client.count(self.normal), 0)


class OutageTests(DispatcherTestCase):
    """
    Broker and VSS outages lose nothing.
    """

    @inlineCallbacks
    def test_jobs_survive_vss_errors_in_order(self) -> Any:
        """
        While VSS answers 503, the first job is retried and the second waits;
        both are shown, in order, once VSS recovers.
        """
        self.vss.answer_with(503, 503, 503)
        dispatcher = yield self.start()
        self.client.publish(self.normal, {"image_path": "one.png", "duration": 0})
        self.client.publish(self.normal, {"image_path": "two.png", "duration": 0})
        yield self.vss.request_number(5)

        self.assertEqual(
            [(r.image_path, r.status) for r in self.vss.requests],
            [("one.png", 503)] * 3 + [("one.png", 200), ("two.png", 200)],
        )
        self.assertIsNone(dispatcher.display.last_error)

    @inlineCallbacks
    def test_jobs_wait_while_vss_is_unreachable(self) -> Any:
        """
        With nothing listening at VSS's address the job is retried until VSS
        comes up, then shown.
        """
        spare = socket.socket()
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
        spare.close()
        dispatcher = yield self.start(vss_base_url=f"http://127.0.0.1:{port}")
        self.client.publish(self.normal, {"image_path": "patient.png", "duration": 0})
        yield wait_for(lambda: dispatcher.display.failures >= 3)
        self.assertIn("cannot reach VSS", dispatcher.display.last_error or "")

        late = reactor.listenTCP(port, make_site(self.vss), interface="127.0.0.1")
        self.addCleanup(late.stopListening)
        first = yield self.vss.request_number(1)
        self.assertEqual(first.image_path, "patient.png")

    @inlineCallbacks
    def test_broker_closing_the_connection_loses_nothing(self) -> Any:
        """
        When the broker closes the connection during a display, the
        dispatcher reconnects, the job is delivered again and shown again,
        and new jobs flow as before.
        """
        dispatcher = yield self.start()
        self.client.publish(self.normal, {"image_path": "long.png", "duration": 300})
        yield self.vss.request_number(1)

        closed = yield deferToThread(
            close_connections_named, f"vss-dispatcher {self.normal}"
        )
        self.assertEqual(closed, 1)
        again = yield self.vss.request_number(2)
        self.assertEqual(again.image_path, "long.png")
        self.assertEqual(dispatcher.broker.reconnects, 1)
        self.assertEqual(len(self.observer.lost), 1)

        self.client.publish(self.priority, {"image_path": "after.png", "duration": 0})
        third = yield self.vss.request_number(3)
        self.assertEqual(third.image_path, "after.png")
        # The long job was sent again before the priority job came, so it is
        # shown again after it, and stays unacknowledged until it ends.
        fourth = yield self.vss.request_number(4)
        self.assertEqual(fourth.image_path, "long.png")
        yield dispatcher.stopService()
        self.assertEqual(self.client.count(self.normal), 1)
        self.assertEqual(self.client.count(self.priority), 0)

    @inlineCallbacks
    def test_refused_login_is_retried_with_the_brokers_reason(self) -> Any:
        """
        A login the broker refuses is retried with backoff, the log gives
        the broker's reason, and nothing unhandled is left behind.
        """
        from twisted.logger import globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        dispatcher = DispatcherService(
            self.settings(rabbitmq_password="wrong", rabbitmq_heartbeat=0), reactor
        )
        dispatcher.startService()
        self.addCleanup(self.stop, dispatcher)
        yield wait_for(lambda: dispatcher.broker._client.failures >= 2)

        reasons = [e.get("reason", "") for e in events if "reason" in e]
        self.assertTrue(any("ACCESS_REFUSED" in str(r) for r in reasons), reasons)
        self.assertEqual(dispatcher.broker.state, "connecting")
        yield dispatcher.stopService()
        self.assertEqual(dispatcher.broker.state, "stopped")

    @inlineCallbacks
    def test_deleted_queue_is_declared_again(self) -> Any:
        """
        When a consumed queue is deleted, the broker cancels the consumer;
        the dispatcher handles it like a lost connection and consumes the
        declared-again queue.
        """
        dispatcher = yield self.start()
        self.client.delete(self.priority)
        yield wait_for(lambda: self.observer.consuming == 2)
        self.assertEqual(dispatcher.broker.reconnects, 1)
        self.client.publish(self.priority, {"image_path": "back.png", "duration": 0})
        first = yield self.vss.request_number(1)
        self.assertEqual(first.image_path, "back.png")


class _Process(ProcessProtocol):
    """
    A dispatcher run as its own process, with what it writes and how it
    ended.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(
            reason.value.exitCode
            if reason.value.exitCode is not None
            else -reason.value.signal
        )


class ProcessTests(DispatcherTestCase):
    """
    The dispatcher as users run it, with twistd, and what happens to the job
    on screen when the process stops or dies.
    """

    def spawn(self) -> _Process:
        process = _Process()
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        environment = dict(
            os.environ,
            RABBITMQ_HOST="127.0.0.1",
            RABBITMQ_NORMAL_QUEUE=self.normal,
            RABBITMQ_PRIORITY_QUEUE=self.priority,
            RABBITMQ_DEAD_LETTER_QUEUE=self.dead,
            VSS_BASE_URL=f"http://127.0.0.1:{self.port.getHost().port}",
            STATUS_ENDPOINT="",
            PYTHONUNBUFFERED="1",
        )
        transport = reactor.spawnProcess(
            process,
            twistd,
            [twistd, "--pidfile=", "-n", "vss-dispatcher"],
            env=environment,
        )
        process.transport = transport

        def kill_if_running() -> Any:
            if not process.ended.called:
                transport.signalProcess("KILL")
                return process.ended

        self.addCleanup(kill_if_running)
        return process

    @inlineCallbacks
    def test_sigterm_leaves_the_job_on_screen_on_its_queue(self) -> Any:
        """
        SIGTERM during a display makes the process exit with status 0 and
        leaves the job on its queue, not acknowledged.
        """
        process = self.spawn()
        self.client.publish(self.normal, {"image_path": "long.png", "duration": 300})
        yield self.vss.request_number(1)

        process.transport.signalProcess(signal.SIGTERM)
        status = yield process.ended
        self.assertEqual(status, 0, process.output.decode())
        self.assertEqual(self.client.count(self.normal), 1)
        self.assertIn(b"Stopped", process.output)

    @inlineCallbacks
    def test_killed_process_job_is_shown_again(self) -> Any:
        """
        A job on screen when the process is killed is shown again by the next
        dispatcher.
        """
        first = self.spawn()
        self.client.publish(self.normal, {"image_path": "long.png", "duration": 300})
        yield self.vss.request_number(1)
        first.transport.signalProcess(signal.SIGKILL)
        yield first.ended

        self.spawn()
        again = yield self.vss.request_number(2)
        self.assertEqual(again.image_path, "long.png")

    @inlineCallbacks
    def test_invalid_setting_stops_start_up_with_one_sentence(self) -> Any:
        """
        A bad environment value ends twistd with a non-zero status and a
        sentence naming the variable, without a traceback.
        """
        process = _Process()
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        reactor.spawnProcess(
            process,
            twistd,
            [twistd, "--pidfile=", "-n", "vss-dispatcher"],
            env=dict(os.environ, VSS_TIMEOUT="-1"),
        )
        status = yield process.ended
        self.assertNotEqual(status, 0)
        self.assertIn(b"VSS_TIMEOUT is '-1'", process.output)
        self.assertNotIn(b"Traceback", process.output)
        yield deferLater(reactor, 0, lambda: None)
