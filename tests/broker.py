"""
Test support for talking to the real RabbitMQ on 127.0.0.1:5672: unique
queue names, publishing with confirms, reading queues back, and cleanup.

These helpers use pika's blocking connection.  They block the reactor for
the few milliseconds a publish or a read takes, which keeps the tests
simple and changes nothing for the dispatcher under test.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import pika

HOST = "127.0.0.1"
PORT = 5672


def unique_queues(prefix: str = "test") -> tuple[str, str, str]:
    """
    Names of a normal, a priority and a dead-letter queue no other test uses.
    """
    tag = uuid.uuid4().hex[:10]
    return (
        f"{prefix}.{tag}.normal",
        f"{prefix}.{tag}.priority",
        f"{prefix}.{tag}.dead",
    )


class BrokerClient:
    """
    A blocking connection for the test's own use.
    """

    def __init__(self) -> None:
        self.connection = pika.BlockingConnection(
            pika.ConnectionParameters(host=HOST, port=PORT)
        )
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def declare(self, *queues: str) -> None:
        for queue in queues:
            self.channel.queue_declare(queue=queue, durable=True)

    def publish(self, queue: str, body: Any, **properties: Any) -> None:
        """
        Publish C{body} (a dict becomes JSON) and wait for the broker's
        confirmation.
        """
        if not isinstance(body, bytes):
            body = json.dumps(body).encode("utf-8")
        self.channel.queue_declare(queue=queue, durable=True)
        self.channel.basic_publish(
            exchange="",
            routing_key=queue,
            body=body,
            properties=pika.BasicProperties(delivery_mode=2, **properties),
        )

    def get(self, queue: str) -> tuple[Any, Any, bytes] | None:
        """
        Take one message off C{queue} (acknowledged), or C{None}.
        """
        method, properties, body = self.channel.basic_get(queue=queue, auto_ack=True)
        if method is None:
            return None
        return method, properties, body

    def count(self, queue: str) -> int:
        """
        Messages ready on C{queue}.
        """
        frame = self.channel.queue_declare(queue=queue, durable=True, passive=True)
        return int(frame.method.message_count)

    def consumers(self, queue: str) -> int:
        frame = self.channel.queue_declare(queue=queue, durable=True, passive=True)
        return int(frame.method.consumer_count)

    def delete(self, *queues: str) -> None:
        for queue in queues:
            self.channel.queue_delete(queue=queue)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


def close_connections_named(name: str) -> int:
    """
    Make the broker close every client connection called C{name}, as it
    would on an operator's command or a broker-side fault.

    @return: How many connections were closed.
    """
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    closed = 0
    for line in listing.splitlines():
        if f'"{name}"' in line or f'<<"{name}">>' in line:
            pid = line.split()[0]
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", pid, "closed by a test"],
                capture_output=True,
                check=True,
            )
            closed += 1
    return closed
