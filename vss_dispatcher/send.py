"""
C{vss-send}: put one display job on the dispatcher's queue, to try the
dispatcher out or to show an image from a shell script.

    vss-send IMAGE [--duration SECONDS] [--priority] [--id MESSAGE_ID]

The broker's address, credentials and queue names come from the same
environment variables as the dispatcher's (C{RABBITMQ_HOST},
C{RABBITMQ_PORT}, C{RABBITMQ_NORMAL_QUEUE}, ...); C{--host} and C{--port}
override the first two.  The message is persistent and the broker confirms
it, so a zero exit status means the job is safely queued.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from .config import ConfigurationError, Settings, load_settings

__all__ = ["PublishError", "build_job", "main", "publish"]


class PublishError(Exception):
    """
    The job could not be put on the queue.  The message is one sentence for
    the person at the shell.
    """


def _duration(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds of at least 0"
        )
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vss-send",
        description="Put one display job on the dispatcher's queue. The broker"
        " and the queue names are read from the RABBITMQ_* environment"
        " variables, like the dispatcher's.",
    )
    parser.add_argument(
        "image",
        metavar="IMAGE",
        help="Image to show. A path that names a file here is sent as its"
        " absolute path, so that it is found whatever IMAGE_ROOT is; any other"
        " path is sent as written, for the dispatcher to find inside its"
        " IMAGE_ROOT.",
    )
    parser.add_argument(
        "--duration",
        type=_duration,
        metavar="SECONDS",
        help="Seconds on screen (default: the dispatcher's DEFAULT_DURATION).",
    )
    parser.add_argument(
        "--priority",
        action="store_true",
        help="Send to the priority queue: the image interrupts a normal one.",
    )
    parser.add_argument("--id", dest="message_id", help="Your id for the job.")
    parser.add_argument(
        "--as-written",
        action="store_true",
        help="Send IMAGE exactly as written, even if it names a file here.",
    )
    parser.add_argument("--host", help="RabbitMQ host, instead of RABBITMQ_HOST.")
    parser.add_argument("--port", help="RabbitMQ port, instead of RABBITMQ_PORT.")
    return parser


def build_job(
    image: str, duration: float | None, message_id: str | None, as_written: bool
) -> dict[str, Any]:
    """
    The job as the dispatcher reads it.  Fields not given are left out, so
    the dispatcher's defaults apply.
    """
    image_path = image
    if not as_written and os.path.isfile(image):
        image_path = os.path.abspath(image)
    job: dict[str, Any] = {"image_path": image_path}
    if duration is not None:
        job["duration"] = duration
    if message_id is not None:
        job["message_id"] = message_id
    return job


def _reason(error: BaseException) -> str:
    """
    The system's words for a failed connection: "connection refused", "timed
    out", ...; pika wraps them one or two levels deep.
    """
    pending: list[object] = [error]
    while pending:
        candidate = pending.pop(0)
        if isinstance(candidate, socket.gaierror):
            return "host name not found"
        if isinstance(candidate, (socket.timeout, TimeoutError)):
            return "timed out"
        if isinstance(candidate, pika.exceptions.StreamLostError):
            return "the connection was closed before RabbitMQ answered"
        if isinstance(candidate, OSError) and candidate.strerror:
            return candidate.strerror.lower()
        if isinstance(candidate, BaseException):
            pending.extend(candidate.args)
            # pika's connector errors keep the socket error here.
            pending.append(getattr(candidate, "exception", None))
    return str(error) or type(error).__name__


def _declare(connection: pika.BlockingConnection, queue: str) -> BlockingChannel:
    """
    Make sure the queue exists, and return a channel to publish on.
    """
    channel = connection.channel()
    try:
        channel.queue_declare(queue=queue, durable=True)
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code != 406:
            raise
        # The queue exists with other settings (arguments, for instance);
        # the broker closed the channel, so check on a new one that it is
        # there and publish to it as it is.
        channel = connection.channel()
        channel.queue_declare(queue=queue, passive=True)
    return channel


def publish(
    settings: Settings, queue: str, body: bytes, message_id: str | None
) -> None:
    """
    Publish C{body} persistently to C{queue} and wait for the broker to
    confirm it.

    @raise PublishError: When the broker cannot be reached, refuses the
        connection, or does not take the message.
    """
    where = f"{settings.rabbitmq_host}:{settings.rabbitmq_port}"
    parameters = pika.ConnectionParameters(
        host=settings.rabbitmq_host,
        port=settings.rabbitmq_port,
        virtual_host=settings.rabbitmq_vhost,
        credentials=pika.PlainCredentials(
            settings.rabbitmq_username, settings.rabbitmq_password
        ),
        connection_attempts=1,
        socket_timeout=10,
        # A broker short of memory or disk blocks publishers; say so rather
        # than wait for ever.
        blocked_connection_timeout=30,
    )
    try:
        connection = pika.BlockingConnection(parameters)
    except pika.exceptions.ProbableAuthenticationError:
        raise PublishError(
            f"RabbitMQ at {where} refused the user {settings.rabbitmq_username!r};"
            " check RABBITMQ_USERNAME and RABBITMQ_PASSWORD."
        ) from None
    except pika.exceptions.ProbableAccessDeniedError:
        raise PublishError(
            f"RabbitMQ at {where} refused the user {settings.rabbitmq_username!r}"
            f" access to the virtual host {settings.rabbitmq_vhost!r}; check"
            " RABBITMQ_VHOST."
        ) from None
    except (pika.exceptions.AMQPError, OSError) as error:
        raise PublishError(
            f"Cannot reach RabbitMQ at {where} ({_reason(error)}); check"
            " RABBITMQ_HOST and RABBITMQ_PORT, and that RabbitMQ is running."
        ) from None

    try:
        channel = _declare(connection, queue)
        channel.confirm_delivery()
        channel.basic_publish(
            exchange="",
            routing_key=queue,
            body=body,
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=message_id,
            ),
            mandatory=True,
        )
    except pika.exceptions.ChannelClosedByBroker as error:
        raise PublishError(
            f"RabbitMQ at {where} refused to use the queue {queue!r}:"
            f" {error.reply_text}."
        ) from None
    except pika.exceptions.UnroutableError:
        raise PublishError(
            f"RabbitMQ at {where} has no queue {queue!r} to take the job."
        ) from None
    except pika.exceptions.NackError:
        raise PublishError(
            f"RabbitMQ at {where} did not take the job on queue {queue!r}"
            " (the queue may be full)."
        ) from None
    except pika.exceptions.ConnectionBlockedTimeout:
        raise PublishError(
            f"RabbitMQ at {where} blocks publishers, which happens when it is"
            " short of memory or disk space."
        ) from None
    except (pika.exceptions.AMQPError, OSError) as error:
        raise PublishError(
            f"Lost the connection to RabbitMQ at {where} ({_reason(error)})."
        ) from None
    finally:
        if connection.is_open:
            try:
                connection.close()
            except (pika.exceptions.AMQPError, OSError):
                # The job is confirmed or the error is reported already.
                pass


def main(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> int:
    """
    Run C{vss-send}.

    @param argv: The arguments, without the program name; C{sys.argv[1:]}
        when C{None}.
    @param environ: The environment; C{os.environ} when C{None}.
    @return: The exit status: 0 when the job is queued, 1 when it is not,
        2 for a wrong command line.
    """
    try:
        arguments = _parser().parse_args(argv)
    except SystemExit as leaving:
        # --help and command-line errors; argparse has printed its text.
        return leaving.code if isinstance(leaving.code, int) else 2

    # pika reports a failed connection through logging as well as by the
    # exception handled below; without a handler Python would print it.
    logging.getLogger("pika").addHandler(logging.NullHandler())

    environ = os.environ if environ is None else environ
    # Only the broker settings matter here: a VSS setting that is wrong for
    # this machine must not stop a job from being queued.
    broker_environ = {
        name: value for name, value in environ.items() if name.startswith("RABBITMQ_")
    }
    try:
        settings = load_settings(
            broker_environ,
            {"RABBITMQ_HOST": arguments.host, "RABBITMQ_PORT": arguments.port},
        )
    except ConfigurationError as error:
        print(f"vss-send: {error}", file=sys.stderr)
        return 1

    job = build_job(
        arguments.image, arguments.duration, arguments.message_id, arguments.as_written
    )
    queue = (
        settings.rabbitmq_priority_queue
        if arguments.priority
        else settings.rabbitmq_normal_queue
    )
    body = json.dumps(job).encode("utf-8")
    try:
        publish(settings, queue, body, arguments.message_id)
    except PublishError as error:
        print(f"vss-send: {error}", file=sys.stderr)
        return 1
    print(
        f"Queued {json.dumps(job)} on {queue!r} at"
        f" {settings.rabbitmq_host}:{settings.rabbitmq_port}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
