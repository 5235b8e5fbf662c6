"""
Blocking work run off the reactor's thread.

Reading an image file for the status page (IMAGE_ROOT is often a network
share) and converting images can take long; done on the reactor's thread
they would hold up every display, acknowledgement and heartbeat.  They run
in the reactor's thread pool instead, and their results come back to the
reactor's thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

__all__ = ["RunInThread", "thread_runner"]

# Runs a function with arguments in a worker thread; the Deferred fires, on
# the reactor's thread, with its result or failure.
RunInThread = Callable[..., Deferred[Any]]


def thread_runner(reactor: Any) -> RunInThread:
    """
    A L{RunInThread} that uses C{reactor}'s thread pool.
    """

    def run_in_thread(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        # Asked each time: the reactor makes a new pool if the old one was
        # stopped.
        return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    return run_in_thread
