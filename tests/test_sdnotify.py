"""
Tests of the messages to systemd, received on a real AF_UNIX datagram socket
as systemd would receive them.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid

from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from tests.test_status import MonitoredDispatcher
from vss_dispatcher.monitoring import attach_monitoring
from vss_dispatcher.sdnotify import SystemdNotifier, notify_address, watchdog_interval
from vss_dispatcher.status import health_problems, status_line


class NotifySocket:
    """
    A datagram socket standing where systemd's notification socket would.
    """

    def __init__(self, test: SynchronousTestCase, abstract: bool = False) -> None:
        self.receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        test.addCleanup(self.receiver.close)
        if abstract:
            name = f"vss-dispatcher-test-{uuid.uuid4().hex}"
            self.receiver.bind("\0" + name)
            self.environment = "@" + name
        else:
            # Short, because socket paths are limited to about 100 bytes.
            folder = tempfile.mkdtemp(prefix="notify-")
            test.addCleanup(shutil.rmtree, folder)
            path = os.path.join(folder, "notify")
            self.receiver.bind(path)
            self.environment = path
        self.receiver.setblocking(False)

    def messages(self) -> list[str]:
        """
        The messages that arrived since the last call.
        """
        received = []
        while True:
            try:
                received.append(self.receiver.recv(4096).decode("utf-8"))
            except BlockingIOError:
                return received


class AddressTests(SynchronousTestCase):
    """
    Reading C{NOTIFY_SOCKET}, C{WATCHDOG_USEC} and C{WATCHDOG_PID}.
    """

    def test_addresses(self) -> None:
        """
        A path is used as it is, an abstract name loses its C{@} for a NUL
        byte, and anything else means no notifications.
        """
        self.assertEqual(
            [
                notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}),
                notify_address({"NOTIFY_SOCKET": "@/org/freedesktop/notify"}),
                notify_address({"NOTIFY_SOCKET": ""}),
                notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}),
                notify_address({}),
            ],
            ["/run/systemd/notify", "\0/org/freedesktop/notify", None, None, None],
        )

    def test_watchdog_interval(self) -> None:
        """
        The watchdog is fed every half period, only when it watches this
        process.
        """
        self.assertEqual(
            [
                watchdog_interval({"WATCHDOG_USEC": "20000000"}, 42),
                watchdog_interval(
                    {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "42"}, 42
                ),
                watchdog_interval(
                    {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "7"}, 42
                ),
                watchdog_interval({"WATCHDOG_USEC": "soon"}, 42),
                watchdog_interval({"WATCHDOG_USEC": "0"}, 42),
                watchdog_interval({}, 42),
            ],
            [10.0, 1.5, None, None, None, None],
        )


class NotifierTests(SynchronousTestCase):
    """
    L{SystemdNotifier} tells systemd when the dispatcher is ready, what it
    does, that it is alive while healthy, and that it stops.
    """

    def setUp(self) -> None:
        self.dispatcher = MonitoredDispatcher()
        self.socket = NotifySocket(self)

    def notifier(self, interval: float | None = None) -> SystemdNotifier:
        dispatcher = self.dispatcher
        notifier = SystemdNotifier(
            notify_address({"NOTIFY_SOCKET": self.socket.environment}) or "",
            dispatcher.clock,
            problems=lambda: health_problems(dispatcher),
            describe=lambda: status_line(dispatcher),
            interval=interval,
            ready=lambda: dispatcher.broker.consuming,
        )
        for parts in (dispatcher.scheduler, dispatcher.display, dispatcher.broker):
            parts.observers.append(notifier)
        self.addCleanup(lambda: notifier.running and notifier.stopService())
        return notifier

    def test_ready_once_consuming(self) -> None:
        """
        READY=1 is sent when the broker reports that both queues are
        consumed, not before.
        """
        self.dispatcher.broker.state = "connecting"
        self.dispatcher.broker.consuming = False
        self.notifier().startService()
        self.assertEqual(
            self.socket.messages(),
            [
                "STATUS=RabbitMQ connection connecting (rabbitmq:5672, 0"
                " reconnections so far)"
            ],
        )

        self.dispatcher.broker.consume()

        messages = self.socket.messages()
        self.assertIn("READY=1", messages)
        self.assertEqual(
            messages[-1], "STATUS=Waiting for jobs on vss.normal and vss.priority"
        )

    def test_ready_at_start_when_consuming_already(self) -> None:
        """
        A notifier started after the broker began consuming says READY=1 at
        once.
        """
        self.notifier().startService()
        self.assertEqual(self.socket.messages()[0], "READY=1")

    def test_status_follows_the_dispatcher(self) -> None:
        """
        The status line changes as jobs are sent and shown, and is not
        repeated when nothing changed.
        """
        self.notifier().startService()
        self.socket.messages()

        self.dispatcher.deliver("a.png")
        self.dispatcher.vss.accept()
        self.dispatcher.deliver("b.png")
        self.dispatcher.broker.set_aside("vss.normal", "invalid_message", "not JSON")

        self.assertEqual(
            self.socket.messages(),
            [
                "STATUS=Sending a.png from vss.normal; 0 waiting",
                "STATUS=Showing a.png from vss.normal; 0 waiting",
            ],
        )

    def test_watchdog_only_while_healthy(self) -> None:
        """
        WATCHDOG=1 goes out every interval while the dispatcher is healthy,
        stops while VSS fails, and resumes once VSS answers again.
        """
        self.notifier(interval=5).startService()
        self.assertIn("WATCHDOG=1", self.socket.messages())

        self.dispatcher.clock.advance(5)
        self.assertEqual(self.socket.messages(), ["WATCHDOG=1"])

        self.dispatcher.deliver("a.png")
        self.dispatcher.vss.fail("VSS answered 503")
        self.socket.messages()
        for _ in range(3):
            # The retry is sent after a second and stays unanswered.
            self.dispatcher.clock.advance(5)
        self.assertNotIn("WATCHDOG=1", self.socket.messages())

        self.dispatcher.vss.accept()
        self.dispatcher.clock.advance(5)
        self.assertIn("WATCHDOG=1", self.socket.messages())

    def test_unhealthy_status_is_told(self) -> None:
        """
        As soon as VSS fails, the status line says so.
        """
        self.notifier(interval=5).startService()
        self.dispatcher.deliver("a.png")
        self.socket.messages()

        self.dispatcher.vss.fail("VSS answered 503")

        self.assertEqual(
            self.socket.messages(),
            ["STATUS=VSS failed 1 requests in a row, retrying: VSS answered 503"],
        )

    def test_stopping(self) -> None:
        """
        Stopping sends STOPPING=1 and leaves no timer behind.
        """
        notifier = self.notifier(interval=5)
        notifier.startService()
        self.socket.messages()

        notifier.stopService()

        self.assertEqual(self.socket.messages(), ["STOPPING=1\nSTATUS=Stopping"])
        self.assertEqual(self.dispatcher.clock.getDelayedCalls(), [])

    def test_abstract_socket(self) -> None:
        """
        A socket in the abstract namespace, named with a leading C{@}, gets
        the messages too.
        """
        self.socket = NotifySocket(self, abstract=True)
        self.notifier().startService()
        self.assertEqual(self.socket.messages()[0], "READY=1")

    def test_unreachable_socket_is_reported_once(self) -> None:
        """
        A socket nobody listens on is reported once in the log and never
        stops the dispatcher.
        """
        events: list[dict[str, object]] = []
        folder = tempfile.mkdtemp(prefix="notify-")
        self.addCleanup(shutil.rmtree, folder)
        notifier = SystemdNotifier(
            os.path.join(folder, "nobody"),
            self.dispatcher.clock,
            problems=lambda: [],
            describe=lambda: "busy",
            interval=1,
        )
        notifier.log = Logger(observer=events.append)
        notifier.startService()
        self.dispatcher.clock.advance(3)
        notifier.stopService()

        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["error"], "No such file or directory")


class AttachTests(SynchronousTestCase):
    """
    L{attach_monitoring} adds systemd notifications when systemd asks for
    them.
    """

    def test_notifications_from_the_environment(self) -> None:
        """
        With NOTIFY_SOCKET and WATCHDOG_USEC set, starting the dispatcher
        sends READY=1 (it consumes already) and feeds the watchdog; without
        them nothing is sent.
        """
        listening = NotifySocket(self)
        dispatcher = MonitoredDispatcher()
        attach_monitoring(
            dispatcher,
            dispatcher.clock,
            environ={
                "NOTIFY_SOCKET": listening.environment,
                "WATCHDOG_USEC": "4000000",
            },
        )
        dispatcher.startService()
        self.assertEqual(listening.messages()[0], "READY=1")
        dispatcher.clock.advance(2)
        self.assertEqual(listening.messages(), ["WATCHDOG=1"])
        dispatcher.stopService()
        self.assertEqual(listening.messages(), ["STOPPING=1\nSTATUS=Stopping"])

        quiet = MonitoredDispatcher()
        attach_monitoring(quiet, quiet.clock, environ={})
        self.assertEqual([service.__class__.__name__ for service in quiet], ["PlayLog"])
