"""
The RabbitMQ side: one connection, kept open for as long as the dispatcher
runs, that consumes both queues, acknowledges finished jobs and sets bad
messages aside on the dead-letter queue.

Reconnection uses a capped, jittered backoff.
A connection counts as established only once AMQP is open, the queues are
declared and both consumers are registered, so the backoff is reset only
then.  A channel closed by the broker or a consumer cancelled by it is
treated like a lost connection: the connection is dropped and made again,
and the broker delivers every unacknowledged job once more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pika
from pika.adapters.twisted_connection import (
    ClosableDeferredQueue,
    ReceivedMessage,
    TwistedChannel,
    TwistedProtocolConnection,
)
from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from .config import Settings
from .message import InvalidMessage, parse_job
from .reconnect import ReconnectingClient, backoff, client_endpoint
from .scheduler import Delivery

__all__ = ["Broker", "BrokerObserver", "MessageSource"]

# Seconds between connection attempts grow from the first to the last.
FIRST_RECONNECT_DELAY = 1.0
LONGEST_RECONNECT_DELAY = 30.0

# A dead letter the broker would not take is handed back to its queue after
# this many seconds, so it is tried again without spinning.
DEAD_LETTER_RETRY_DELAY = 5.0

REASON_HEADER = "x-vss-reason"
SOURCE_QUEUE_HEADER = "x-vss-source-queue"
DEAD_LETTERED_AT_HEADER = "x-vss-dead-lettered-at"


class BrokerObserver(Protocol):
    """
    Something that wants to know how the broker connection is doing.
    """

    def broker_connected(self) -> None:
        """
        AMQP is open.
        """

    def broker_consuming(self) -> None:
        """
        Both queues are being consumed on the current connection.
        """

    def broker_lost(self, reason: str) -> None:
        """
        The connection is gone; a new one is being made.
        """

    def message_dead_lettered(self, queue: str, category: str, reason: str) -> None:
        """
        A message from C{queue} was set aside: C{category} is
        C{"invalid_message"} or C{"rejected_by_vss"}.
        """


@dataclass(slots=True)
class MessageSource:
    """
    What is needed to settle one message: the channel it came on and its
    delivery tag there, plus the original message for dead-lettering.
    """

    channel: TwistedChannel
    delivery_tag: int
    properties: pika.BasicProperties
    body: bytes
    redelivered: bool


class _Connection(TwistedProtocolConnection):  # type: ignore[misc]
    """
    pika's Twisted protocol, telling its owner when the TCP connection ends.
    """

    def __init__(self, parameters: pika.ConnectionParameters, owner: Broker) -> None:
        super().__init__(parameters, custom_reactor=owner.clock)
        self._owner = owner
        self.refusal: str | None = None
        # pika reports only "connection failed" to whoever waits for the
        # connection; keep the broker's own reason (a refused login, an
        # unknown virtual host) so the log can say it.
        self._impl.callbacks.add(0, pika.spec.Connection.Close, self._remember_close)

    def _remember_close(self, frame: Any) -> None:
        self.refusal = f"{frame.method.reply_code} {frame.method.reply_text}"

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        self._owner._connection_lost(self, reason)


class Broker(Service):
    """
    Keeps a connection to RabbitMQ and turns its messages into deliveries.

    @ivar state: C{"connecting"}, C{"open"}, C{"stopping"} or C{"stopped"}.
    @ivar consuming: Whether both queues are consumed on the current
        connection.
    @ivar reconnects: How many times a connection was opened again after
        the first.
    """

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        deliver: Callable[[Delivery], None],
        lost: Callable[[], None],
        clock: Any,
    ) -> None:
        """
        @param settings: Where the broker is, and the queue names.
        @param deliver: Receives each well-formed job.
        @param lost: Called when the connection is gone, so that every
            unsettled delivery can be forgotten; the broker delivers them
            again on the next connection.
        @param clock: The reactor.
        """
        self.settings = settings
        self.clock = clock
        self._deliver = deliver
        self._lost = lost
        self._queues = {
            settings.rabbitmq_normal_queue: False,
            settings.rabbitmq_priority_queue: True,
        }
        self._connection: _Connection | None = None
        self._channel: TwistedChannel | None = None
        self._publisher: TwistedChannel | None = None
        self._consumer_tags: list[str] = []
        self._opened_once = False
        self.state = "stopped"
        self.consuming = False
        self.reconnects = 0
        self.observers: list[BrokerObserver] = []

        parameters = pika.ConnectionParameters(
            virtual_host=settings.rabbitmq_vhost,
            credentials=pika.PlainCredentials(
                settings.rabbitmq_username, settings.rabbitmq_password
            ),
            heartbeat=settings.rabbitmq_heartbeat,
            # Named after its queue, so an operator can tell dispatchers
            # apart in the management UI.
            client_properties={
                "connection_name": f"vss-dispatcher {settings.rabbitmq_normal_queue}"
            },
        )
        endpoint = client_endpoint(
            clock, settings.rabbitmq_host, settings.rabbitmq_port, timeout=10
        )
        factory = Factory.forProtocol(lambda: _Connection(parameters, self))
        factory.noisy = False
        self._client = ReconnectingClient(
            endpoint,
            factory,
            self._prepare,
            backoff(FIRST_RECONNECT_DELAY, LONGEST_RECONNECT_DELAY),
            clock,
            name=f"RabbitMQ at {self.address}",
        )

    @property
    def address(self) -> str:
        return f"{self.settings.rabbitmq_host}:{self.settings.rabbitmq_port}"

    def startService(self) -> None:
        super().startService()
        self.state = "connecting"
        self.log.info("Connecting to RabbitMQ at {address}", address=self.address)
        self._client.startService()

    @inlineCallbacks
    def _prepare(self, connection: _Connection) -> Any:
        """
        Open AMQP on a new TCP connection, declare the queues and start
        consuming.  Any failure closes the connection, and a new one is
        tried after the backoff.
        """
        try:
            yield connection.ready
            channel = yield connection.channel()
            yield channel.basic_qos(
                prefetch_count=self.settings.rabbitmq_prefetch_count
            )
            publisher = yield connection.channel()
            yield publisher.confirm_delivery()
            for queue in self._declared_queues():
                yield channel.queue_declare(queue=queue, durable=True)
        except Exception as error:
            raise ConnectionError(_describe(connection.refusal or error)) from None

        self._connection = connection
        self._channel = channel
        self._publisher = publisher
        self.state = "open"
        if self._opened_once:
            self.reconnects += 1
        self._opened_once = True
        channel.on_closed.addCallback(self._channel_closed, connection)
        publisher.on_closed.addCallback(self._channel_closed, connection)
        self.log.info(
            "Connected to RabbitMQ at {address} (vhost {vhost})",
            address=self.address,
            vhost=self.settings.rabbitmq_vhost,
        )
        for observer in self.observers:
            observer.broker_connected()

        try:
            # Priority first, so a waiting priority job is in hand as early
            # as possible.
            for queue, priority in sorted(self._queues.items(), key=lambda q: not q[1]):
                messages, tag = yield channel.basic_consume(queue=queue)
                self._consumer_tags.append(tag)
                self._listen(messages, queue, priority, connection)
        except Exception as error:
            self._drop(connection, f"could not start consuming: {_describe(error)}")
            raise
        self.consuming = True
        self.log.info(
            "Consuming {normal} and {priority}",
            normal=self.settings.rabbitmq_normal_queue,
            priority=self.settings.rabbitmq_priority_queue,
        )
        for observer in self.observers:
            observer.broker_consuming()

    def _declared_queues(self) -> list[str]:
        queues = list(self._queues)
        if self.settings.rabbitmq_dead_letter_queue:
            queues.append(self.settings.rabbitmq_dead_letter_queue)
        return queues

    def _listen(
        self,
        messages: ClosableDeferredQueue,
        queue: str,
        priority: bool,
        connection: _Connection,
    ) -> None:
        """
        Take messages from a consumer's queue as they come.  Messages already
        waiting are handled in a loop rather than by recursion.
        """
        while True:
            next_message: Deferred[ReceivedMessage] = messages.get()
            if not next_message.called:
                next_message.addCallbacks(
                    self._received_later,
                    self._consumer_ended,
                    callbackArgs=(messages, queue, priority, connection),
                    errbackArgs=(queue, connection),
                )
                return
            ready: list[ReceivedMessage] = []
            next_message.addCallbacks(
                ready.append,
                self._consumer_ended,
                errbackArgs=(queue, connection),
            )
            if not ready:
                return
            self._received(ready[0], queue, priority)

    def _received_later(
        self,
        message: ReceivedMessage,
        messages: ClosableDeferredQueue,
        queue: str,
        priority: bool,
        connection: _Connection,
    ) -> None:
        self._received(message, queue, priority)
        self._listen(messages, queue, priority, connection)

    def _received(self, message: ReceivedMessage, queue: str, priority: bool) -> None:
        source = MessageSource(
            channel=message.channel,
            delivery_tag=message.method.delivery_tag,
            properties=message.properties,
            body=message.body,
            redelivered=bool(message.method.redelivered),
        )
        settings = self.settings
        try:
            job = parse_job(
                message.body,
                settings.default_duration,
                settings.max_duration,
                settings.image_root,
            )
        except InvalidMessage as invalid:
            self.dead_letter(source, queue, invalid.reason, "invalid_message")
            return
        if source.redelivered:
            self.log.info(
                "{queue} delivered {image} again; it was not finished before",
                queue=queue,
                image=job.image_path,
            )
        self._deliver(
            Delivery(
                job=job,
                priority=priority,
                queue=queue,
                token=source,
                received=self.clock.seconds(),
            )
        )

    def _consumer_ended(
        self, failure: Failure, queue: str, connection: _Connection
    ) -> None:
        if not self._is_current(connection):
            return None
        self._drop(connection, f"consumer of {queue} ended: {_describe(failure.value)}")
        return None

    def _channel_closed(self, reason: object, connection: _Connection) -> None:
        if not self._is_current(connection):
            return
        self._drop(connection, f"channel closed: {_describe(reason)}")

    def _is_current(self, connection: _Connection) -> bool:
        """
        Whether C{connection} is the one in use and nobody is closing it: a
        closing connection closes its channels and consumers too, and that
        is no news.
        """
        return (
            self.state == "open"
            and connection is self._connection
            and connection.is_open
        )

    def _drop(self, connection: _Connection, reason: str) -> None:
        """
        Give up on a connection that can no longer do its work; losing it
        starts a new one.
        """
        self.log.warn("Dropping the RabbitMQ connection: {reason}", reason=reason)
        if connection.transport is not None:
            connection.transport.abortConnection()

    def _connection_lost(self, connection: _Connection, reason: Failure) -> None:
        if connection is self._connection:
            self._forget_connection(reason)
        # Told last: when stopping, this is what lets the stop finish.
        self._client.connection_lost(connection)

    def _forget_connection(self, reason: Failure) -> None:
        self._connection = None
        self._channel = None
        self._publisher = None
        self._consumer_tags = []
        self.consuming = False
        if self.state != "open":
            return
        self.state = "connecting"
        described = _describe(reason.value if reason is not None else None)
        self.log.warn(
            "Lost the RabbitMQ connection ({reason}); reconnecting. Unfinished"
            " jobs will be delivered again",
            reason=described,
        )
        for observer in self.observers:
            observer.broker_lost(described)
        self._lost()

    def _is_open_channel(self, channel: TwistedChannel) -> bool:
        """
        Whether C{channel} is the consuming channel of the current connection
        and still open, so its delivery tags are still valid.
        """
        current = self._channel
        return current is not None and channel is current and bool(current.is_open)

    def settle(self, delivery: Delivery) -> None:
        """
        Acknowledge a finished delivery.  A delivery from a connection that
        is gone cannot be acknowledged: the broker delivers it again.
        """
        source: MessageSource = delivery.token  # type: ignore[assignment]
        self._ack(source, delivery.job.image_path)

    def _ack(self, source: MessageSource, what: str) -> None:
        channel = source.channel
        if self._is_open_channel(channel):
            channel.basic_ack(delivery_tag=source.delivery_tag)
        else:
            self.log.info(
                "Could not acknowledge {what}: its connection is gone, so the"
                " broker will deliver it again",
                what=what,
            )

    def reject(self, delivery: Delivery, reason: str) -> None:
        """
        Set aside a job that VSS refused.
        """
        source: MessageSource = delivery.token  # type: ignore[assignment]
        self.dead_letter(source, delivery.queue, reason, "rejected_by_vss")

    def dead_letter(
        self, source: MessageSource, queue: str, reason: str, category: str
    ) -> Deferred[None]:
        """
        Move a message, unchanged, to the dead-letter queue with its reason,
        and acknowledge it on its own queue once the broker confirmed the
        copy.  Without a dead-letter queue the message is rejected.
        """
        self.log.warn(
            "Setting aside a message from {queue}: {reason}", queue=queue, reason=reason
        )
        for observer in self.observers:
            observer.message_dead_lettered(queue, category, reason)

        dead_letter_queue = self.settings.rabbitmq_dead_letter_queue
        channel = source.channel
        if not dead_letter_queue:
            if self._is_open_channel(channel):
                channel.basic_reject(delivery_tag=source.delivery_tag, requeue=False)
            return succeed(None)

        publisher = self._publisher
        if publisher is None or channel is not self._channel:
            # The connection it came on is gone; it will be delivered again.
            return succeed(None)
        headers = dict(source.properties.headers or {})
        headers[REASON_HEADER] = reason
        headers[SOURCE_QUEUE_HEADER] = queue
        headers[DEAD_LETTERED_AT_HEADER] = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()
        )
        properties = pika.BasicProperties(
            content_type=source.properties.content_type,
            content_encoding=source.properties.content_encoding,
            headers=headers,
            delivery_mode=pika.DeliveryMode.Persistent,
            correlation_id=source.properties.correlation_id,
            message_id=source.properties.message_id,
            timestamp=source.properties.timestamp,
            type=source.properties.type,
            app_id=source.properties.app_id,
        )
        publishing = publisher.basic_publish(
            exchange="",
            routing_key=dead_letter_queue,
            body=source.body,
            properties=properties,
            mandatory=True,
        )

        def confirmed(_: object) -> None:
            self._ack(source, f"the message set aside from {queue}")

        def refused(failure: Failure) -> None:
            if not self._is_open_channel(channel):
                return
            self.log.error(
                "RabbitMQ did not take the message set aside from {queue} onto"
                " {dead_letter_queue} ({error}); it goes back to {queue} and is"
                " tried again in {delay:g} s",
                queue=queue,
                dead_letter_queue=dead_letter_queue,
                error=_describe(failure.value),
                delay=DEAD_LETTER_RETRY_DELAY,
            )

            def give_back() -> None:
                if self._is_open_channel(source.channel):
                    source.channel.basic_nack(
                        delivery_tag=source.delivery_tag, requeue=True
                    )

            self.clock.callLater(DEAD_LETTER_RETRY_DELAY, give_back)

        publishing.addCallbacks(confirmed, refused)
        return publishing  # type: ignore[no-any-return]

    def queue_counts(self) -> Deferred[dict[str, int]]:
        """
        How many messages wait on each queue, as the broker counts them (not
        including those handed to the dispatcher and not yet acknowledged).
        """
        publisher = self._publisher
        if publisher is None:
            return Deferred.fromCoroutine(_not_connected())
        counts: dict[str, int] = {}

        @inlineCallbacks
        def count() -> Any:
            for queue in self._declared_queues():
                frame = yield publisher.queue_declare(queue=queue, passive=True)
                counts[queue] = frame.method.message_count
            return counts

        return count()

    @inlineCallbacks
    def stop_consuming(self) -> Any:
        """
        Ask the broker to send no more messages; those already received and
        not acknowledged stay with the broker.
        """
        self.state = "stopping"
        channel, tags = self._channel, self._consumer_tags
        self._consumer_tags = []
        self.consuming = False
        if channel is None or not channel.is_open:
            return
        for tag in tags:
            try:
                yield _within(self.clock, 2.0, channel.basic_cancel(tag))
            except Exception as error:
                self.log.info(
                    "Could not cancel a consumer: {error}", error=_describe(error)
                )

    @inlineCallbacks
    def stopService(self) -> Any:
        """
        Close AMQP properly, then stop reconnecting.
        """
        self.state = "stopping"
        connection = self._connection
        if connection is not None and connection.is_open:
            closed = connection.close()
            if closed is not None:
                try:
                    yield _within(self.clock, 3.0, closed)
                except Exception as error:
                    self.log.info(
                        "Closing AMQP did not finish: {error}", error=_describe(error)
                    )
        yield self._client.stopService()
        self.state = "stopped"
        self.log.info("Disconnected from RabbitMQ")
        yield super().stopService()


async def _not_connected() -> dict[str, int]:
    raise ConnectionError("not connected to RabbitMQ")


def _within(clock: Any, seconds: float, waiting: Deferred[Any]) -> Deferred[Any]:
    """
    Give up on C{waiting} after C{seconds}.
    """
    return waiting.addTimeout(seconds, clock)


def _describe(error: object) -> str:
    """
    A short description of an error from pika or Twisted.
    """
    if error is None:
        return "closed"
    if isinstance(error, Failure):
        error = error.value
    if isinstance(error, pika.exceptions.ChannelClosed):
        return f"{error.reply_code} {error.reply_text}"
    if isinstance(error, pika.exceptions.ConnectionClosed):
        return f"{error.reply_code} {error.reply_text}"
    text = str(error) or type(error).__name__
    return text
