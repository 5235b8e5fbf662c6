"""
Tests for L{vss_dispatcher.send}, the C{vss-send} command, against the real
RabbitMQ on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys

import pika
import pika.exceptions
from twisted.trial.unittest import SynchronousTestCase

from vss_dispatcher.send import build_job, main

from .broker import HOST, PORT, BrokerClient, unique_queues


def closed_port() -> int:
    """
    A local TCP port that nothing listens on.
    """
    probe = socket.socket()
    probe.bind((HOST, 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


class BuildJobTests(SynchronousTestCase):
    """
    Tests for L{build_job}.
    """

    def test_fields_left_out(self) -> None:
        """
        A job without duration or id holds only the image path, so the
        dispatcher's defaults apply.
        """
        self.assertEqual(
            build_job("lobby/none-such.png", None, None, False),
            {"image_path": "lobby/none-such.png"},
        )

    def test_local_file_made_absolute(self) -> None:
        """
        A path naming a file here is sent as its absolute path, unless it is
        to be sent as written.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        image = os.path.join(directory, "blue.png")
        with open(image, "wb") as f:
            f.write(b"png")
        self.assertEqual(
            build_job(image, 3, "x", False),
            {"image_path": os.path.abspath(image), "duration": 3, "message_id": "x"},
        )
        self.assertEqual(build_job(image, None, None, True), {"image_path": image})


class SendTests(SynchronousTestCase):
    """
    C{vss-send} publishing to the real broker, each test on its own queues.
    """

    def setUp(self) -> None:
        self.normal, self.priority, _ = unique_queues("test-send")
        self.environ = {
            "RABBITMQ_HOST": HOST,
            "RABBITMQ_PORT": str(PORT),
            "RABBITMQ_NORMAL_QUEUE": self.normal,
            "RABBITMQ_PRIORITY_QUEUE": self.priority,
        }
        self.broker = BrokerClient()
        self.addCleanup(self.broker.close)
        self.addCleanup(self.broker.delete, self.normal, self.priority)
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)

    def send(self, *argv: str) -> int:
        return main(list(argv), self.environ)

    def assert_one_line_error(self, *expected: str) -> str:
        """
        Check that standard error holds exactly one line, with no traceback,
        containing each of C{expected}.
        """
        text = self.err.getvalue()
        self.assertEqual(len(text.strip().splitlines()), 1, text)
        self.assertNotIn("Traceback", text)
        for part in expected:
            self.assertIn(part, text)
        return text.strip()

    def test_normal_job(self) -> None:
        """
        A job is published persistently, as JSON, to the normal queue, which
        is durable.
        """
        status = self.send("lobby/none-such.png", "--duration", "10", "--id", "m-1")
        self.assertEqual(status, 0, self.err.getvalue())

        message = self.broker.get(self.normal)
        assert message is not None
        _, properties, body = message
        self.assertEqual(
            json.loads(body),
            {
                "image_path": "lobby/none-such.png",
                "duration": 10.0,
                "message_id": "m-1",
            },
        )
        self.assertEqual(properties.delivery_mode, 2)
        self.assertEqual(properties.content_type, "application/json")
        self.assertEqual(properties.message_id, "m-1")
        self.assertEqual(self.broker.count(self.normal), 0)
        self.assertIn(self.normal, self.out.getvalue())

        # Declaring the queue again as transient fails only if it is durable.
        with self.assertRaises(pika.exceptions.ChannelClosedByBroker) as caught:
            self.broker.channel.queue_declare(queue=self.normal, durable=False)
        self.assertEqual(caught.exception.reply_code, 406)
        self.broker.channel = self.broker.connection.channel()

    def test_priority_job(self) -> None:
        """
        --priority sends the job to the priority queue only.
        """
        self.broker.declare(self.normal, self.priority)
        self.assertEqual(self.send("alert.png", "--priority"), 0, self.err.getvalue())
        message = self.broker.get(self.priority)
        assert message is not None
        self.assertEqual(json.loads(message[2]), {"image_path": "alert.png"})
        self.assertEqual(self.broker.count(self.normal), 0)

    def test_existing_queue_with_arguments(self) -> None:
        """
        A queue declared already with other arguments is published to as it
        is.
        """
        self.broker.channel.queue_declare(
            queue=self.normal, durable=True, arguments={"x-max-length": 100}
        )
        self.assertEqual(self.send("a.png"), 0, self.err.getvalue())
        self.assertEqual(self.broker.count(self.normal), 1)

    def test_broker_settings_only(self) -> None:
        """
        A VSS setting that would stop the dispatcher does not stop a job from
        being queued.
        """
        self.environ["VSS_MODE"] = "visionect"
        self.environ["IMAGE_ROOT"] = "/none-such-directory"
        self.assertEqual(self.send("a.png"), 0, self.err.getvalue())
        self.assertEqual(self.broker.count(self.normal), 1)

    def test_host_and_port_options(self) -> None:
        """
        --host and --port win over the environment.
        """
        self.environ["RABBITMQ_HOST"] = "none-such-host.invalid"
        self.environ["RABBITMQ_PORT"] = "1"
        status = self.send("a.png", "--host", HOST, "--port", str(PORT))
        self.assertEqual(status, 0, self.err.getvalue())
        self.assertEqual(self.broker.count(self.normal), 1)

    def test_unreachable(self) -> None:
        """
        A closed port gives one line naming host and port, and status 1.
        """
        port = closed_port()
        self.environ["RABBITMQ_PORT"] = str(port)
        self.assertEqual(self.send("a.png"), 1)
        line = self.assert_one_line_error(f"{HOST}:{port}", "connection refused")
        self.assertTrue(line.startswith("vss-send: Cannot reach RabbitMQ"), line)
        self.assertEqual(self.out.getvalue(), "")

    def test_refused_login(self) -> None:
        """
        A wrong password gives one line saying the broker refused the user.
        """
        self.environ["RABBITMQ_PASSWORD"] = "not-the-password"
        self.assertEqual(self.send("a.png"), 1)
        self.assert_one_line_error(
            f"RabbitMQ at {HOST}:{PORT} refused the user 'guest'", "RABBITMQ_PASSWORD"
        )
        self.assertNotIn("not-the-password", self.err.getvalue())

    def test_unknown_virtual_host(self) -> None:
        """
        A virtual host the broker does not have gives one line naming it.
        """
        self.environ["RABBITMQ_VHOST"] = "none-such-vhost"
        self.assertEqual(self.send("a.png"), 1)
        self.assert_one_line_error("'none-such-vhost'", "RABBITMQ_VHOST")

    def test_invalid_setting(self) -> None:
        """
        An unusable setting prints the configuration sentence and gives
        status 1.
        """
        self.environ["RABBITMQ_PORT"] = "amqp"
        self.assertEqual(self.send("a.png"), 1)
        self.assertEqual(
            self.assert_one_line_error(),
            "vss-send: RABBITMQ_PORT is 'amqp'; expected a TCP port number from 1"
            " to 65535.",
        )

    def test_bad_duration(self) -> None:
        """
        A duration that is not a number of seconds is a command-line error,
        status 2, and nothing is published.
        """
        for duration in ("soon", "-1", "nan"):
            self.assertEqual(self.send("a.png", "--duration", duration), 2)
            self.assertIn("--duration", self.err.getvalue())
        self.assertNotIn("Traceback", self.err.getvalue())
