"""
Work that waits until what the reactor is doing now has been sent.

A reactor sends what its transports were given only when it next polls its
sockets, and it runs the timed calls that are due before each poll.  Work put
off with C{callLater(0, ...)} from a network event therefore still runs
before the acknowledgement or request that event produced leaves.
L{AfterSend} waits one more round, so that the work runs once that poll has
sent them: the dispatcher's bookkeeping (log lines, metrics, the status
timeline) then never delays a message to the broker or a request to VSS.
The dispatcher's own connections send most writes at once
(L{vss_dispatcher.promptwrite}); waiting for the poll still covers what
they could not send at once and any transport that waits for the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall

__all__ = ["AfterSend"]


class AfterSend:
    """
    Runs pieces of work after the reactor's next poll, in the order they
    were first asked for, each once however often it was asked for.  Work
    asked for while the pieces run (a log line written by an observer, say)
    runs in the same round: what had to be sent is gone by then.
    """

    def __init__(self, clock: Any) -> None:
        """
        @param clock: The reactor.
        """
        self._clock = clock
        self._work: dict[Callable[[], None], None] = {}
        self._due: IDelayedCall | None = None
        self._running = False

    def call(self, work: Callable[[], None]) -> bool:
        """
        Run C{work} after the next poll, unless it is due already.

        @return: C{False}, and nothing is scheduled, when the reactor is not
            running: no poll would come, so the caller should do the work
            at once.
        """
        if not getattr(self._clock, "running", True):
            return False
        self._work.setdefault(work, None)
        if self._due is None and not self._running:
            self._due = self._clock.callLater(0, self._polled)
        return True

    def discard(self, work: Callable[[], None]) -> None:
        """
        Forget C{work} if it is due: its caller did it already.
        """
        self._work.pop(work, None)
        if not self._work:
            self._cancel()

    def _polled(self) -> None:
        # Timed calls run before the poll; this one runs after it.
        self._due = self._clock.callLater(0, self._run)

    def _run(self) -> None:
        self._due = None
        self._running = True
        try:
            while self._work:
                work = next(iter(self._work))
                del self._work[work]
                work()
        finally:
            self._running = False
            if self._work:
                # A piece failed; the rest still runs, in a later round.
                self._due = self._clock.callLater(0, self._polled)

    def _cancel(self) -> None:
        due, self._due = self._due, None
        if due is not None and due.active():
            due.cancel()
