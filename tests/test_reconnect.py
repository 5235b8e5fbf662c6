"""
Tests for L{vss_dispatcher.reconnect.ReconnectingClient}, driven by a fake
endpoint and L{task.Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from vss_dispatcher.reconnect import ReconnectingClient, backoff


class _Transport(StringTransport):
    def __init__(self, client: ReconnectingClient, protocol: Any) -> None:
        super().__init__()
        self._client = client
        self._protocol = protocol
        self.closed = False

    def loseConnection(self) -> None:
        self.closed = True

    abortConnection = loseConnection

    def lose(self) -> None:
        """
        End the connection as the network would.
        """
        self._client.connection_lost(self._protocol)


class _Endpoint:
    """
    Hands out the results the test queues: a protocol for a connection made,
    an exception for a connection refused.
    """

    def __init__(self) -> None:
        self.client: ReconnectingClient
        self.results: list[object] = []
        self.connects = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        self.connects += 1
        result = self.results.pop(0) if self.results else ConnectionRefusedError("no")
        if isinstance(result, Exception):
            return fail(result)
        protocol = Protocol()
        protocol.transport = _Transport(self.client, protocol)
        return succeed(protocol)


class BackoffTests(SynchronousTestCase):
    """
    The delays between reconnection attempts.
    """

    def test_doubles_up_to_the_longest(self) -> None:
        """
        Without jitter the delays double from the first to the longest and
        stay there, however many attempts failed.
        """
        delay = backoff(1.0, 30.0, jitter=lambda: 0.0)
        self.assertEqual(
            [delay(attempt) for attempt in range(7)],
            [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0],
        )
        self.assertEqual(delay(10_000), 30.0)

    def test_jitter_added(self) -> None:
        """
        The jitter is added to every delay, the longest included.
        """
        delay = backoff(1.0, 30.0, jitter=lambda: 0.25)
        self.assertEqual((delay(0), delay(100)), (1.25, 30.25))


class ReconnectingClientTests(SynchronousTestCase):
    """
    Connections are made again after failures and losses, with the backoff
    reset only by a connection that was fully set up.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = _Endpoint()
        self.prepared: list[Deferred[None]] = []
        self.cancelled = 0

        def cancel(_: object) -> None:
            self.cancelled += 1

        def prepare(protocol: Any) -> Deferred[None]:
            self.protocol = protocol
            waiting: Deferred[None] = Deferred(cancel)
            self.prepared.append(waiting)
            return waiting

        self.client = ReconnectingClient(
            self.endpoint,  # type: ignore[arg-type]
            object(),  # type: ignore[arg-type]
            prepare,
            lambda attempt: float(attempt),
            self.clock,
        )
        self.endpoint.client = self.client
        self.addCleanup(self.assert_no_delayed_calls)

    def assert_no_delayed_calls(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refused_connections_are_retried_with_growing_delays(self) -> None:
        """
        Each refused attempt is followed by another after the delay for the
        number of failures so far.
        """
        self.client.startService()
        self.assertEqual(self.endpoint.connects, 1)
        self.clock.advance(1)
        self.assertEqual(self.endpoint.connects, 2)
        self.clock.advance(1.5)
        self.assertEqual(self.endpoint.connects, 2)
        self.clock.advance(0.5)
        self.assertEqual(self.endpoint.connects, 3)
        self.assertEqual(self.client.failures, 3)
        self.client.stopService()

    def test_failed_set_up_closes_the_connection_and_retries(self) -> None:
        """
        A connection whose set-up fails is closed and counts as a failed
        attempt.
        """
        self.endpoint.results = [None]
        self.client.startService()
        self.prepared[0].errback(ConnectionError("login refused"))
        self.assertTrue(self.protocol.transport.closed)
        self.assertEqual(self.client.failures, 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.protocol.transport.lose()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.client.stopService()

    def test_success_resets_the_backoff_and_a_loss_reconnects(self) -> None:
        """
        After a fully set-up connection the failure count is zero, and when
        that connection is lost a new one follows after the first delay.
        """
        self.endpoint.results = [ConnectionRefusedError("no"), None, None]
        self.client.startService()
        self.clock.advance(1)
        self.prepared[0].callback(None)
        self.assertEqual(self.client.failures, 0)

        self.protocol.transport.lose()
        self.assertEqual(self.client.failures, 1)
        self.clock.advance(1)
        self.assertEqual(self.endpoint.connects, 3)
        self.prepared[1].callback(None)
        self.client.stopService()
        self.protocol.transport.lose()

    def test_stop_while_waiting_cancels_the_retry(self) -> None:
        """
        Stopping between attempts cancels the next attempt.
        """
        self.client.startService()
        stopped = self.client.stopService()
        self.assertIsNone(self.successResultOf(stopped))
        self.clock.advance(100)
        self.assertEqual(self.endpoint.connects, 1)

    def test_stop_during_set_up_abandons_it(self) -> None:
        """
        Stopping while a connection is being set up cancels the set-up,
        closes the connection and tries no more.
        """
        self.endpoint.results = [None]
        self.client.startService()
        stopped = self.client.stopService()
        self.assertEqual(self.cancelled, 1)
        self.assertTrue(self.protocol.transport.closed)
        self.assertNoResult(stopped)
        self.protocol.transport.lose()
        self.successResultOf(stopped)

    def test_stop_when_connected_waits_for_the_connection_to_end(self) -> None:
        """
        Stopping with a working connection closes it and fires once it is
        gone, without reconnecting.
        """
        self.endpoint.results = [None]
        self.client.startService()
        self.prepared[0].callback(None)
        stopped = self.client.stopService()
        self.assertTrue(self.protocol.transport.closed)
        self.assertNoResult(stopped)
        self.protocol.transport.lose()
        self.successResultOf(stopped)
        self.assertEqual(self.endpoint.connects, 1)


class ClientEndpointTests(SynchronousTestCase):
    """
    IP addresses are connected to directly, names are looked up, and every
    connection has Nagle's algorithm turned off.
    """

    def test_kinds_of_host(self) -> None:
        """
        An IPv4 or IPv6 address gets a plain TCP endpoint, which needs no
        name lookup, and a host name gets a L{HostnameEndpoint}.
        """
        from twisted.internet.endpoints import (
            HostnameEndpoint,
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
        )

        from vss_dispatcher.reconnect import client_endpoint

        clock = Clock()
        for host, kind in (
            ("127.0.0.1", TCP4ClientEndpoint),
            ("::1", TCP6ClientEndpoint),
            ("rabbitmq", HostnameEndpoint),
        ):
            endpoint = client_endpoint(clock, host, 5672, 10)
            self.assertIsInstance(endpoint._endpoint, kind)  # type: ignore[attr-defined]


class NoDelayTests(TestCase):
    """
    Connections made through L{client_endpoint} send small writes at once.
    """

    @inlineCallbacks
    def test_connection_has_tcp_nodelay(self) -> Any:
        """
        A real loopback connection made through the endpoint has
        TCP_NODELAY set on its socket.
        """
        import socket

        from twisted.internet import reactor

        from vss_dispatcher.reconnect import client_endpoint

        port = reactor.listenTCP(
            0, Factory.forProtocol(Protocol), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        endpoint = client_endpoint(reactor, "127.0.0.1", port.getHost().port, 5)
        protocol = yield endpoint.connect(Factory.forProtocol(Protocol))
        self.addCleanup(protocol.transport.loseConnection)
        handle = protocol.transport.getHandle()
        self.assertTrue(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
