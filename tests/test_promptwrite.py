"""
Tests for L{vss_dispatcher.promptwrite}, over real loopback connections.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from vss_dispatcher.promptwrite import send_promptly
from vss_dispatcher.reconnect import client_endpoint


class _Collector(Protocol):
    """
    Keeps what it receives and fires C{closed} with it when the connection
    ends.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(self.received)


@implementer(IPullProducer)
class _Chunks:
    """
    A pull producer that writes C{count} chunks, one each time it is asked,
    then closes the connection.
    """

    def __init__(self, transport: Any, count: int) -> None:
        self._transport = transport
        self._left = count

    def resumeProducing(self) -> None:
        if self._left == 0:
            self._transport.unregisterProducer()
            self._transport.loseConnection()
            return
        self._left -= 1
        self._transport.write(b"%d;" % self._left)

    def stopProducing(self) -> None:
        self._left = 0


class PromptWriteTests(TestCase):
    """
    A connection made through L{client_endpoint} sends what it is given
    before the reactor runs again, and otherwise behaves as Twisted's own
    transport does.
    """

    timeout = 30

    @inlineCallbacks
    def connect_to_socket(self) -> Any:
        """
        Connect through the endpoint to a plain listening socket.

        @return: A L{Deferred} firing with the connected protocol and the
            peer's socket, which the test reads without the reactor.
        """
        from twisted.internet import reactor

        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        endpoint = client_endpoint(reactor, "127.0.0.1", listener.getsockname()[1], 5)
        protocol = yield endpoint.connect(Factory.forProtocol(Protocol))
        self.addCleanup(protocol.transport.abortConnection)
        peer, _ = listener.accept()
        self.addCleanup(peer.close)
        peer.settimeout(2.0)
        return protocol, peer

    @inlineCallbacks
    def connect_to_collector(self) -> Any:
        """
        Connect through the endpoint to a Twisted server that collects what
        it receives.

        @return: A L{Deferred} firing with the connected protocol and the
            server's L{_Collector}.
        """
        from twisted.internet import reactor

        collectors: list[_Collector] = []

        def collector() -> _Collector:
            made = _Collector()
            collectors.append(made)
            return made

        factory = Factory()
        factory.buildProtocol = lambda address: collector()  # type: ignore[method-assign]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = client_endpoint(reactor, "127.0.0.1", port.getHost().port, 5)
        protocol = yield endpoint.connect(Factory.forProtocol(Protocol))
        while not collectors:
            yield _turn()
        return protocol, collectors[0]

    @inlineCallbacks
    def test_write_leaves_before_the_reactor_runs(self) -> Any:
        """
        A write on an idle connection is on its way to the peer when
        C{write} returns, without the reactor polling in between.
        """
        protocol, peer = yield self.connect_to_socket()

        protocol.transport.write(b"ack")

        self.assertEqual(_read(peer, 3), b"ack")

    @inlineCallbacks
    def test_waiting_data_goes_first(self) -> Any:
        """
        Data written with C{writeSequence}, which waits for the reactor, is
        sent together with the next write and ahead of it.
        """
        protocol, peer = yield self.connect_to_socket()

        protocol.transport.writeSequence([b"POST / HTTP/1.1\r\n", b"\r\n"])
        protocol.transport.write(b"body")

        self.assertEqual(_read(peer, 23), b"POST / HTTP/1.1\r\n\r\nbody")

    @inlineCallbacks
    def test_what_the_socket_does_not_take_follows_in_order(self) -> Any:
        """
        A write larger than the socket takes at once is sent whole by the
        reactor, and a later write arrives after it.
        """
        protocol, collector = yield self.connect_to_collector()
        large = bytes(range(256)) * (64 * 1024)

        protocol.transport.write(large)
        protocol.transport.write(b"end")
        protocol.transport.loseConnection()
        received = yield collector.closed

        self.assertEqual(len(received), len(large) + 3)
        self.assertTrue(received == large + b"end")

    @inlineCallbacks
    def test_closing_connection_sends_its_last_writes(self) -> Any:
        """
        Data written after C{loseConnection} is still sent before the
        connection closes, as Twisted's transports do.
        """
        protocol, collector = yield self.connect_to_collector()

        protocol.transport.write(b"first;")
        protocol.transport.loseConnection()
        protocol.transport.write(b"last")
        received = yield collector.closed

        self.assertEqual(received, b"first;last")

    @inlineCallbacks
    def test_pull_producer_is_asked_for_more(self) -> Any:
        """
        A pull producer is asked for its next chunk once the previous one
        was sent, so it runs to the end.
        """
        protocol, collector = yield self.connect_to_collector()
        producer = _Chunks(protocol.transport, 50)

        protocol.transport.registerProducer(producer, False)
        received = yield collector.closed

        expected = b"".join(b"%d;" % left for left in reversed(range(50)))
        self.assertEqual(received, expected)


class OtherTransportTests(SynchronousTestCase):
    """
    Transports that are not Twisted's own socket transports are left alone.
    """

    def test_test_transport_unchanged(self) -> None:
        """
        A L{StringTransport} is not changed and keeps its own C{write}.
        """
        transport = StringTransport()

        self.assertFalse(send_promptly(transport))
        transport.write(b"data")

        self.assertEqual(transport.value(), b"data")


def _turn() -> Deferred[None]:
    """
    A L{Deferred} that fires on the reactor's next turn.
    """
    from twisted.internet import reactor

    turned: Deferred[None] = Deferred()
    reactor.callLater(0, turned.callback, None)
    return turned


def _read(peer: socket.socket, size: int) -> bytes:
    """
    Read C{size} bytes from C{peer}, blocking (up to its timeout).
    """
    received = b""
    while len(received) < size:
        chunk = peer.recv(size - len(received))
        if not chunk:
            break
        received += chunk
    return received
