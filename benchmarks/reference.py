"""
The reference the benchmark holds the dispatcher against: the least a
consumer on the same stack must do to pass jobs from one queue to VSS.

It uses what the dispatcher uses (pika's TwistedProtocolConnection, treq over
a kept-alive connection, the default reactor) and nothing more: it takes one
message at a time, posts its body unchanged to C{{VSS_BASE_URL}/display},
reads the answer, acknowledges the message and takes the next one.  No
parsing, no scheduling, no durations, no retries, no logging per message.

It is configured like the dispatcher, through C{RABBITMQ_HOST},
C{RABBITMQ_PORT}, C{RABBITMQ_USERNAME}, C{RABBITMQ_PASSWORD},
C{RABBITMQ_VHOST}, C{RABBITMQ_HEARTBEAT}, C{RABBITMQ_NORMAL_QUEUE},
C{RABBITMQ_PREFETCH_COUNT} and C{VSS_BASE_URL}, and prints
C{Consuming <queue>} once its consumer is registered.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pika
from pika.adapters.twisted_connection import TwistedProtocolConnection
from treq.client import HTTPClient
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import react
from twisted.web.client import Agent, HTTPConnectionPool

HEADERS = {b"Content-Type": [b"application/json"]}


@inlineCallbacks
def consume(reactor: Any, environ: dict[str, str]) -> Any:
    """
    Connect, then pass messages from the queue to VSS until stopped.
    """
    host = environ.get("RABBITMQ_HOST", "127.0.0.1")
    port = int(environ.get("RABBITMQ_PORT", "5672"))
    queue_name = environ["RABBITMQ_NORMAL_QUEUE"]
    parameters = pika.ConnectionParameters(
        virtual_host=environ.get("RABBITMQ_VHOST", "/"),
        credentials=pika.PlainCredentials(
            environ.get("RABBITMQ_USERNAME", "guest"),
            environ.get("RABBITMQ_PASSWORD", "guest"),
        ),
        heartbeat=int(environ.get("RABBITMQ_HEARTBEAT", "30")),
    )
    connection = yield connectProtocol(
        TCP4ClientEndpoint(reactor, host, port),
        TwistedProtocolConnection(parameters),
    )
    yield connection.ready
    channel = yield connection.channel()
    yield channel.basic_qos(
        prefetch_count=int(environ.get("RABBITMQ_PREFETCH_COUNT", "1"))
    )
    yield channel.queue_declare(queue=queue_name, durable=True)
    messages, _ = yield channel.basic_consume(queue=queue_name)
    print(f"Consuming {queue_name}", flush=True)

    pool = HTTPConnectionPool(reactor, persistent=True)
    client = HTTPClient(Agent(reactor, pool=pool))
    url = environ["VSS_BASE_URL"].rstrip("/") + "/display"
    stopping: list[bool] = []
    reactor.addSystemEventTrigger("before", "shutdown", stopping.append, True)
    try:
        while True:
            _, method, _, body = yield messages.get()
            response = yield client.post(url, data=body, headers=HEADERS)
            yield response.content()
            channel.basic_ack(delivery_tag=method.delivery_tag)
    except Exception:
        # Stopping the reactor drops the connection under the loop.
        if not stopping:
            raise


def main(reactor: Any) -> Any:
    """
    Run until SIGTERM or SIGINT stops the reactor.
    """
    return consume(reactor, dict(os.environ))


if __name__ == "__main__":
    sys.exit(react(main))
