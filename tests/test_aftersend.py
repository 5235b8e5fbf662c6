"""
Tests for L{vss_dispatcher.aftersend}: work that runs once the reactor has
sent what a network event produced.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from vss_dispatcher.aftersend import AfterSend


class Replier(Protocol):
    """
    Answers every read with C{reply}, then asks for the work to be done
    later, both with L{AfterSend} and with a plain C{callLater(0)}.
    """

    def __init__(self, test: AfterSendTests) -> None:
        self.test = test

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"reply")
        reactor.callLater(0, self.test.seen_by_call_later)
        AfterSend(reactor).call(self.test.seen_after_send)


class AfterSendTests(TestCase):
    """
    With the real reactor: the work runs after the reply left.
    """

    def setUp(self) -> None:
        factory = Factory.forProtocol(lambda: Replier(self))
        factory.noisy = False
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(self.client.close)
        self.seen: dict[str, bytes] = {}
        self.done: Deferred[None] = Deferred()

    def _peek(self) -> bytes:
        try:
            return self.client.recv(100, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return b""

    def seen_by_call_later(self) -> None:
        self.seen["call_later"] = self._peek()

    def seen_after_send(self) -> None:
        self.seen["after_send"] = self._peek()
        self.done.callback(None)

    async def test_runs_after_the_reply_was_sent(self) -> None:
        """
        Work put off with C{callLater(0)} runs before the reply to a read
        is sent; work put off with L{AfterSend} finds it sent.
        """
        self.client.sendall(b"x")
        await self.done
        self.assertEqual(self.seen, {"call_later": b"", "after_send": b"reply"})


class RunningClock(Clock):
    """
    A clock standing in for a running reactor.
    """

    running = True


class RoundTests(SynchronousTestCase):
    """
    Which work runs, in which order, and when.
    """

    def setUp(self) -> None:
        self.clock = RunningClock()
        self.after_send = AfterSend(self.clock)
        self.done: list[str] = []

    def first(self) -> None:
        self.done.append("first")

    def second(self) -> None:
        self.done.append("second")

    def test_each_piece_once_in_order(self) -> None:
        """
        Work asked for several times runs once, in the order it was first
        asked for, and nothing stays scheduled.
        """
        for work in (self.first, self.second, self.first):
            self.assertTrue(self.after_send.call(work))
        self.assertEqual(self.done, [])
        self.clock.advance(0)
        self.assertEqual(self.done, ["first", "second"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_work_asked_for_while_running_runs_in_the_same_round(self) -> None:
        """
        Work asked for by a piece that runs runs right after it, without
        another round.
        """

        def asks_for_more() -> None:
            self.done.append("asks")
            self.after_send.call(self.second)

        self.after_send.call(asks_for_more)
        self.clock.advance(0)
        self.assertEqual(self.done, ["asks", "second"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_discard(self) -> None:
        """
        Discarded work does not run; with nothing left, nothing stays
        scheduled.
        """
        self.after_send.call(self.first)
        self.after_send.call(self.second)
        self.after_send.discard(self.first)
        self.clock.advance(0)
        self.assertEqual(self.done, ["second"])
        self.after_send.call(self.first)
        self.after_send.discard(self.first)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refused_when_the_reactor_is_not_running(self) -> None:
        """
        With the reactor stopped no round would come: the work is refused,
        for its caller to do at once.
        """
        self.clock.running = False
        self.assertFalse(self.after_send.call(self.first))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failing_piece_does_not_lose_the_rest(self) -> None:
        """
        When a piece raises, the pieces after it still run, in a later
        round.
        """

        def fails() -> None:
            raise ZeroDivisionError()

        self.after_send.call(fails)
        self.after_send.call(self.first)
        self.assertRaises(ZeroDivisionError, self.clock.advance, 0)
        self.clock.advance(0)
        self.assertEqual(self.done, ["first"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
