"""
Telling systemd how the dispatcher is doing, over the socket systemd names in
C{NOTIFY_SOCKET}, without libsystemd.

With C{Type=notify} in the unit, systemd considers the dispatcher started
once it consumes both queues (C{READY=1}); C{systemctl status} shows what
it is doing (C{STATUS=...}).  With C{WatchdogSec=} set, the dispatcher
sends C{WATCHDOG=1} twice per period, but only while it is healthy, so
systemd restarts a dispatcher that stays unhealthy for a whole period.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .scheduler import Delivery, Outcome

__all__ = ["SystemdNotifier", "notify_address", "watchdog_interval"]


def notify_address(environ: Mapping[str, str]) -> str | None:
    """
    The address of systemd's notification socket, with the leading C{@} of
    an abstract socket turned into the NUL byte the kernel expects, or
    C{None} when there is none this process can use.
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """
    Seconds between watchdog messages: half the period systemd gives in
    C{WATCHDOG_USEC}, or C{None} when systemd watches no process, or
    another one (C{WATCHDOG_PID}).
    """
    watched = environ.get("WATCHDOG_PID", "")
    if watched and watched != str(pid):
        return None
    try:
        microseconds = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if microseconds <= 0:
        return None
    return microseconds / 2 / 1_000_000


class SystemdNotifier(Service):
    """
    Sends systemd the dispatcher's readiness, status and watchdog messages,
    as an observer of the broker, the scheduler and the VSS display.
    """

    log = Logger()

    def __init__(
        self,
        address: str,
        clock: IReactorTime,
        problems: Callable[[], list[str]],
        describe: Callable[[], str],
        interval: float | None = None,
        ready: Callable[[], bool] = lambda: False,
    ) -> None:
        """
        @param address: The socket address, as from L{notify_address}.
        @param clock: Runs the watchdog.
        @param problems: Why the dispatcher is unhealthy; empty when it is
            healthy.
        @param describe: What the dispatcher does now, in one line.
        @param interval: Seconds between watchdog messages, or C{None} for
            no watchdog.
        @param ready: Whether the dispatcher consumes already, for a
            notifier started after that happened.
        """
        self.address = address
        self.interval = interval
        self._problems = problems
        self._describe = describe
        self._ready = ready
        self._socket: socket.socket | None = None
        self._failing = False
        self._status: str | None = None
        self._watchdog = LoopingCall(self._watch)
        self._watchdog.clock = clock

    def send(self, *assignments: str) -> None:
        """
        Send one message made of C{NAME=value} lines.  A failure is logged
        once and never stops the dispatcher.
        """
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        message = "\n".join(assignments).encode("utf-8")
        try:
            self._socket.sendto(message, self.address)
        except OSError as error:
            if not self._failing:
                self.log.warn(
                    "Cannot notify systemd at {address} ({error})",
                    address=self.address.replace("\0", "@"),
                    error=error.strerror or str(error),
                )
            self._failing = True
            return
        self._failing = False

    def update_status(self) -> None:
        """
        Send the status line if it changed since the last one sent.
        """
        if not self.running:
            return
        status = self._describe()
        if status != self._status:
            self._status = status
            self.send(f"STATUS={status}")

    def startService(self) -> None:
        """
        Say READY=1 if the dispatcher consumes already, send the status
        line, and start feeding the watchdog.
        """
        super().startService()
        if self._ready():
            self.send("READY=1")
        self.update_status()
        if self.interval is not None:
            self._watchdog.start(self.interval, now=True)

    def stopService(self) -> None:
        """
        Stop feeding the watchdog and say STOPPING=1.
        """
        if self._watchdog.running:
            self._watchdog.stop()
        self.send("STOPPING=1", "STATUS=Stopping")
        super().stopService()
        sender, self._socket = self._socket, None
        if sender is not None:
            sender.close()

    def _watch(self) -> None:
        """
        Feed the watchdog if healthy, and refresh the status line.
        """
        if not self._problems():
            self.send("WATCHDOG=1")
        self.update_status()

    def broker_connected(self) -> None:
        """
        Refresh the status line.
        """
        self.update_status()

    def broker_consuming(self) -> None:
        """
        Say READY=1: the dispatcher does its work.
        """
        if self.running:
            self.send("READY=1")
        self.update_status()

    def broker_lost(self, reason: str) -> None:
        """
        Refresh the status line.
        """
        self.update_status()

    def message_dead_lettered(self, queue: str, category: str, reason: str) -> None:
        """
        Nothing to tell systemd.
        """
        pass

    def display_sending(self, delivery: Delivery) -> None:
        """
        Refresh the status line.
        """
        self.update_status()

    def display_started(self, delivery: Delivery) -> None:
        """
        Refresh the status line.
        """
        self.update_status()

    def display_ended(
        self, delivery: Delivery, outcome: Outcome, planned: float, actual: float
    ) -> None:
        """
        Refresh the status line.
        """
        self.update_status()

    def vss_answered(self, seconds: float, result: str) -> None:
        """
        Refresh the status line: VSS may fail, or answer again.
        """
        self.update_status()

    def vss_retrying(self, failures: int, delay: float, reason: str) -> None:
        """
        Already told by L{vss_answered}.
        """
        pass
