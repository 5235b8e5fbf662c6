"""
The dispatcher as one Twisted service: settings in, broker, scheduler and
VSS client wired together, and an orderly stop.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.defer import inlineCallbacks
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from . import __version__
from .aftersend import AfterSend
from .config import ConfigurationError, Settings, load_settings
from .http import make_http_client
from .logs import bridge_pika_logging, install_on_application, make_observer
from .scheduler import Delivery, Interrupted, Scheduler
from .vss import DisplayAPI, DisplayBackend, RetryingDisplay

__all__ = ["DispatcherService", "freeze_start_up", "make_service"]

# The reactor's poll counts whole milliseconds and so wakes up to one late;
# display timers fire this much early and the scheduler waits out the rest
# (scheduler.sleep_precisely).
DISPLAY_TIMER_LEAD = 0.002


class DispatcherService(MultiService):
    """
    Consumes both queues and shows their jobs through VSS.

    @ivar settings: The settings it runs with.
    @ivar scheduler: Decides what is on screen.
    @ivar display: Talks to VSS, with retries.
    @ivar broker: The RabbitMQ connection.
    @ivar started: When it started (seconds since the epoch), or C{None}.
    @ivar version: The dispatcher's version.
    """

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        clock: Any,
        backend: DisplayBackend | None = None,
        log_observer: ILogObserver | None = None,
        after_send: AfterSend | None = None,
    ) -> None:
        """
        @param settings: The settings.
        @param clock: The reactor.
        @param backend: How to reach VSS; built from the settings when not
            given.
        @param log_observer: Where twistd should send the log, when this
            service becomes the root of a twistd application.
        @param after_send: Runs the scheduler's observers once the reactor
            has sent what it was given; made for C{clock} when not given.
        """
        super().__init__()
        self.settings = settings
        self.clock = clock
        self.version = __version__
        self.started: float | None = None
        self._log_observer = log_observer
        self._pool: Any = None

        if backend is None:
            backend = self._make_backend()
        self.display = RetryingDisplay(
            backend,
            clock,
            retry_delay=settings.vss_retry_delay,
            retry_count=settings.vss_retry_count,
        )
        self.scheduler = Scheduler(
            clock,
            self.display.show,
            settle=self._settle,
            reject=self._reject,
            interrupted=Interrupted(settings.interrupted_jobs),
            ack_after=settings.ack_after,
            wake_early=DISPLAY_TIMER_LEAD,
            after_send=AfterSend(clock) if after_send is None else after_send,
        )
        from .amqp import Broker

        self.broker = Broker(
            settings,
            deliver=self.scheduler.enqueue,
            lost=self.scheduler.forget_unsettled,
            clock=clock,
        )
        self.broker.setServiceParent(self)

    def _make_backend(self) -> DisplayBackend:
        settings = self.settings
        client, self._pool = make_http_client(self.clock, settings.vss_timeout)
        if settings.vss_mode == "visionect":
            from .visionect import make_visionect_backend

            return make_visionect_backend(settings, client, self.clock, self.clock)
        return DisplayAPI(
            client, settings.vss_base_url, settings.vss_timeout, self.clock
        )

    def _settle(self, delivery: Delivery) -> None:
        self.broker.settle(delivery)

    def _reject(self, delivery: Delivery, reason: str) -> None:
        self.broker.reject(delivery, reason)

    def setServiceParent(self, parent: Any) -> Any:
        # Under twistd the parent is the application, which tells twistd
        # where to log.
        if self._log_observer is not None and isinstance(parent, Componentized):
            install_on_application(parent, self._log_observer)
        return super().setServiceParent(IServiceCollection(parent, parent))

    def startService(self) -> None:
        self.started = time.time()
        settings = self.settings
        self.log.info(
            "vss-dispatcher {version} starting: queues {normal} and {priority}"
            " on {host}:{port}, VSS at {vss} ({mode} mode), interrupted jobs:"
            " {interrupted}",
            version=self.version,
            normal=settings.rabbitmq_normal_queue,
            priority=settings.rabbitmq_priority_queue,
            host=settings.rabbitmq_host,
            port=settings.rabbitmq_port,
            vss=settings.vss_base_url,
            mode=settings.vss_mode,
            interrupted=settings.interrupted_jobs,
        )
        super().startService()

    @inlineCallbacks
    def stopService(self) -> Any:
        """
        Stop consuming, abandon the display under way without acknowledging
        it, close AMQP, then close the connections to VSS.
        """
        self.log.info("Stopping: unfinished jobs stay on their queues")
        yield self.broker.stop_consuming()
        self.scheduler.stop()
        yield super().stopService()
        if self._pool is not None:
            yield self._pool.closeCachedConnections()
        self.log.info("Stopped")

        # twistd ends a process stopped by a signal by sending itself that
        # signal again, so it would not exit with status 0.  This stop was
        # orderly and complete, which service managers should see as success.
        if getattr(self.clock, "_exitSignal", None) is not None:
            self.clock._exitSignal = None


def freeze_start_up() -> None:
    """
    Collect what start-up left behind and set aside everything that is left
    for the garbage collector never to look at again.

    Start-up makes thousands of objects (modules, classes, functions) that
    live as long as the process.  Left to the collector, they are scanned
    again and again as they age, and one such pass takes a millisecond or
    more, enough to make a display end visibly late.  What is frozen is
    still freed when nothing refers to it any more; only reference cycles
    among those objects would stay, and start-up's objects are kept for the
    life of the process anyway.
    """
    gc.collect()
    gc.freeze()


def make_service(
    options: Any, environ: dict[str, str] | None = None
) -> DispatcherService:
    """
    Build the dispatcher from twistd's options and the environment.  A bad
    setting ends the program with one sentence and a non-zero exit status.
    """
    from twisted.internet import reactor

    try:
        settings = load_settings(
            os.environ if environ is None else environ, options.overrides()
        )
    except ConfigurationError as error:
        raise SystemExit(f"vss-dispatcher cannot start: {error}") from None

    from .monitoring import attach_monitoring

    bridge_pika_logging(settings.log_level)
    # The log and the scheduler's observers wait for the same rounds.
    after_send = AfterSend(reactor)
    observer = make_observer(settings.log_level, settings.log_format, None, after_send)
    service = DispatcherService(
        settings, reactor, log_observer=observer, after_send=after_send
    )
    try:
        attach_monitoring(service, reactor)
    except ConfigurationError as error:
        raise SystemExit(f"vss-dispatcher cannot start: {error}") from None
    reactor.callWhenRunning(freeze_start_up)
    return service
