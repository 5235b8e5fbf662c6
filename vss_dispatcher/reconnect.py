"""
A client connection that is made again whenever it is lost, with a capped,
jittered backoff that starts over only once the connection is fully set up.

Twisted's own L{ClientService} is the model, but it cannot be told that a
connection lost while it is still being set up is a failed attempt: it then
reports an unhandled state-machine error.  Setting up AMQP involves several
round trips after TCP connects, and a broker that refuses the login or the
virtual host closes the connection in the middle of them, so this service
treats "connected and set up" as the only success.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .promptwrite import send_promptly

__all__ = ["ReconnectingClient", "backoff", "client_endpoint"]


def backoff(
    first: float,
    longest: float,
    factor: float = 2.0,
    jitter: Callable[[], float] = random.random,
) -> Callable[[int], float]:
    """
    Delays that grow by C{factor} from C{first} up to C{longest}, each with
    up to a second of jitter added, so that dispatchers cut off together
    do not all reconnect at the same instant.

    @return: The delay in seconds after a given number of failed attempts
        in a row.
    """

    def delay_for_attempt(attempt: int) -> float:
        # Past about 64 doublings every delay is the longest anyway.
        return min(first * factor ** min(attempt, 64), longest) + jitter()

    return delay_for_attempt


def client_endpoint(
    reactor: Any, host: str, port: int, timeout: float
) -> IStreamClientEndpoint:
    """
    The endpoint for a TCP connection to C{host}: a direct one for an IP
    address, which needs no name lookup (and so no lookup thread), and a
    L{HostnameEndpoint} for a name, which tries every address it resolves to.
    """
    endpoint: IStreamClientEndpoint
    if isIPAddress(host):
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    elif isIPv6Address(host):
        endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    else:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    return _Prompt(endpoint)


@implementer(IStreamClientEndpoint)
class _Prompt:
    """
    Connects through another endpoint, turns off Nagle's algorithm on the
    connection and makes its writes leave at once (L{send_promptly}).  Both
    AMQP and HTTP here send small messages and wait for the answer: with
    Nagle's algorithm a small write can wait for the acknowledgement of the
    previous one, which the peer may delay by tens of milliseconds.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        def no_delay(protocol: Any) -> Any:
            set_no_delay = getattr(protocol.transport, "setTcpNoDelay", None)
            if set_no_delay is not None:
                set_no_delay(True)
            send_promptly(protocol.transport)
            return protocol

        return self._endpoint.connect(factory).addCallback(no_delay)


class ReconnectingClient(Service):
    """
    Keeps one connection made through an endpoint.

    The protocol must call L{connection_lost} when its connection ends.

    @ivar failures: Failed attempts since the last connection that was fully
        set up.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        factory: IProtocolFactory,
        prepare: Callable[[Any], Deferred[Any]],
        delay_for_attempt: Callable[[int], float],
        clock: Any,
        name: str = "the server",
    ) -> None:
        """
        @param endpoint: Where to connect.
        @param factory: Builds the protocol.
        @param prepare: Sets up a new connection; the attempt succeeds when
            its L{Deferred} fires and fails when it fails.  Cancelling it
            must abandon the set-up.
        @param delay_for_attempt: Seconds to wait after the given number of
            failed attempts in a row, for example from L{backoff}.
        @param clock: The reactor.
        @param name: What is being connected to, for the log.
        """
        self._endpoint = endpoint
        self._factory = factory
        self._prepare = prepare
        self._delay_for_attempt = delay_for_attempt
        self._clock = clock
        self._name = name
        self._attempt: Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        self._protocol: Any = None
        self._gone: list[Deferred[None]] = []
        self.failures = 0

    def startService(self) -> None:
        super().startService()
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        self._protocol = None
        attempt: Deferred[Any] = self._endpoint.connect(self._factory)
        self._attempt = attempt
        attempt.addCallback(self._set_up)
        attempt.addCallbacks(self._succeeded, self._failed)

    def _set_up(self, protocol: Any) -> Deferred[Any]:
        self._protocol = protocol
        return self._prepare(protocol)

    def _succeeded(self, _: object) -> None:
        self._attempt = None
        self.failures = 0

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abortConnection()
        if self.running:
            self._wait_and_retry(failure.getErrorMessage())

    def _wait_and_retry(self, reason: str) -> None:
        self.failures += 1
        delay = self._delay_for_attempt(self.failures)
        self.log.warn(
            "Cannot connect to {name} ({reason}); trying again in {delay:.1f} s"
            " (attempt {attempt})",
            name=self._name,
            delay=delay,
            attempt=self.failures,
            reason=reason,
        )
        self._retry = self._clock.callLater(delay, self._connect)

    def connection_lost(self, protocol: Any) -> None:
        """
        The connection of C{protocol} ended.  If it was the working
        connection, make a new one; a connection lost while being set up is
        handled by the failure of its set-up.
        """
        if protocol is not self._protocol:
            return
        self._protocol = None
        gone, self._gone = self._gone, []
        for waiter in gone:
            waiter.callback(None)
        if self.running and self._attempt is None and self._retry is None:
            self._wait_and_retry("the connection was lost")

    def stopService(self) -> Deferred[None]:
        """
        Stop reconnecting and close the connection.

        @return: A L{Deferred} that fires once the connection is gone.
        """
        super().stopService()
        retry, self._retry = self._retry, None
        if retry is not None and retry.active():
            retry.cancel()
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            return succeed(None)
        gone: Deferred[None] = Deferred()
        self._gone.append(gone)
        protocol.transport.loseConnection()
        return gone
