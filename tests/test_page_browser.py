"""
The status page in a real headless Chromium, while real jobs flow through
RabbitMQ and the VSS emulator.

Chromium is driven over the DevTools protocol on a pipe
(C{--remote-debugging-pipe}): it reads commands from its file descriptor 3
and writes answers to its descriptor 4, each message a JSON object ended by
a NUL byte.  That needs no websocket client and no network port.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageDraw
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.test_status import (
    LiveDispatcher,
    MonitoredDispatcher,
    ServedSite,
    eventually,
    status_port_of,
)
from vss_dispatcher import __version__
from vss_dispatcher.config import Settings

CHROMIUM = "/usr/bin/chromium"

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Flags for a quiet, self-contained headless browser that talks to nothing
# but the pages it is sent to.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
]

# What the page shows, read in the page itself.
READ_PAGE = """
(() => {
  const preview = document.getElementById("preview");
  if (!preview) return null;  // still loading
  return {
    image: document.getElementById("current-image").textContent,
    queue: document.getElementById("current-queue").textContent,
    health: document.getElementById("health").textContent,
    previewShown: !preview.hidden,
    previewWidth: preview.complete ? preview.naturalWidth : 0,
    timeLeft: document.getElementById("time-left").textContent,
    preempted: document.querySelectorAll("#timeline polygon.preempted").length,
    shown: document.querySelectorAll("#timeline rect.normal, #timeline rect.priority")
      .length,
    loadedOnce: window.loadedOnce === true,
    marks: Object.fromEntries(
      ["vss_failure", "broker_lost", "dead_lettered"].map((kind) => [
        kind,
        document.querySelectorAll(`#timeline rect.${kind}`).length,
      ]),
    ),
    waiting: [...document.querySelectorAll("#waiting li")].map(
      (item) => item.firstChild.textContent.trim(),
    ),
    events: document.querySelectorAll("#events li").length,
  };
})()
"""


class DevToolsError(Exception):
    """
    Chromium answered a DevTools command with an error.
    """


class Chromium(ProcessProtocol):
    """
    A headless Chromium and the DevTools commands sent to it.

    @ivar ended: Fires when the process ended.
    @ivar errors: What Chromium wrote on its standard error, for the test's
        failure messages.
    """

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.errors = b""
        self._received = b""
        self._sent = 0
        self._waiting: dict[int, Deferred[dict[str, Any]]] = {}

    def command(
        self, method: str, session: str | None = None, **params: Any
    ) -> Deferred[dict[str, Any]]:
        """
        Send one DevTools command, to the browser or to an attached page's
        C{session}, and fire with its result.
        """
        self._sent += 1
        message: dict[str, Any] = {"id": self._sent, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        answer: Deferred[dict[str, Any]] = Deferred()
        self._waiting[self._sent] = answer
        self.transport.writeToChild(3, json.dumps(message).encode("utf-8") + b"\0")
        return answer

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != 4:
            self.errors += data
            return
        self._received += data
        *messages, self._received = self._received.split(b"\0")
        for raw in messages:
            message = json.loads(raw)
            answer = self._waiting.pop(message.get("id", -1), None)
            if answer is None:
                continue  # an event, which these tests do not follow
            if "error" in message:
                answer.errback(DevToolsError(f"{message['error']}"))
            else:
                answer.callback(message.get("result", {}))

    def processEnded(self, reason: Failure) -> None:
        waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            answer.errback(DevToolsError(f"Chromium ended: {self.errors[-2000:]!r}"))
        self.ended.callback(None)


class Browser:
    """
    Opens Chromium for a test and reads the status page in it.
    """

    def skip_without_chromium(self) -> None:
        if not os.access(CHROMIUM, os.X_OK):
            self.skipTest(  # type: ignore[attr-defined]
                f"Chromium is not installed at {CHROMIUM}; install Debian's"
                " chromium package (apt-get install chromium) to run this test"
            )

    @inlineCallbacks
    def open_browser(self, width: int = 1280, height: int = 900) -> Any:
        """
        Start Chromium with a profile of its own and attach to a new page
        of C{width} by C{height} pixels.

        @return: The browser and the page's DevTools session.
        """
        profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.addCleanup(shutil.rmtree, profile, True)  # type: ignore[attr-defined]
        browser = Chromium()
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": profile,
            "TZ": "UTC",
        }
        reactor.spawnProcess(
            browser,
            CHROMIUM,
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            env=environment,
            childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"},
        )
        self.addCleanup(self.close_browser, browser)  # type: ignore[attr-defined]

        target = yield browser.command("Target.createTarget", url="about:blank")
        attached = yield browser.command(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        session = attached["sessionId"]
        yield browser.command(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return browser, session

    @inlineCallbacks
    def close_browser(self, browser: Chromium) -> Any:
        if browser.ended.called:
            return
        try:
            yield browser.command("Browser.close").addTimeout(10, reactor)
            yield browser.ended.addTimeout(10, reactor)
        except Exception:
            browser.transport.signalProcess("KILL")
            yield browser.ended

    @inlineCallbacks
    def read_page(self, browser: Chromium, session: str) -> Any:
        evaluated = yield browser.command(
            "Runtime.evaluate", session, expression=READ_PAGE, returnByValue=True
        )
        if "exceptionDetails" in evaluated:
            raise DevToolsError(json.dumps(evaluated["exceptionDetails"]))
        return evaluated["result"].get("value")

    def page_where(
        self, browser: Chromium, session: str, condition: Callable[[Any], bool]
    ) -> Deferred[Any]:
        """
        Wait until what the page shows meets C{condition}, and fire with it.
        """
        return eventually(
            lambda: self.read_page(browser, session).addCallback(
                lambda page: page if page is not None and condition(page) else None
            ),
            interval=0.1,
        )

    def showing(
        self, browser: Chromium, session: str, image: str, width: int
    ) -> Deferred[Any]:
        """
        Wait until the page shows C{image} with a preview C{width} pixels
        wide, loaded.
        """
        return self.page_where(
            browser,
            session,
            lambda page: page["image"] == image and page["previewWidth"] == width,
        )

    @inlineCallbacks
    def screenshot(self, browser: Chromium, session: str) -> Any:
        """
        Save a screenshot of the page with the test's output.

        @return: Its path.
        """
        shot = yield browser.command("Page.captureScreenshot", session, format="png")
        picture = base64.b64decode(shot["data"])
        folder = os.path.realpath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(folder)
        path = os.path.join(folder, "status-page.png")
        with open(path, "wb") as f:
            f.write(picture)
        return path


class PageInBrowserTests(LiveDispatcher, Browser):
    """
    The page, loaded once in Chromium, follows the dispatcher by itself.
    """

    timeout = 120

    def setUp(self) -> None:
        self.skip_without_chromium()
        super().setUp()

    @inlineCallbacks
    def test_page_follows_the_jobs(self) -> Any:
        """
        Loaded once, the page shows the normal image on screen with its
        preview, then, without being reloaded, the priority image that
        interrupts it, with the preemption marked on the timeline; a
        screenshot of it is saved with the test's output.
        """
        yield self.start()
        self.publish(self.normal, "wide.png", 300, message_id="wide-1")
        yield self.vss.request_number(1)

        browser, session = yield self.open_browser()
        yield browser.command("Page.enable", session)
        yield browser.command("Page.navigate", session, url=self.base + "/")
        page = yield self.showing(browser, session, "wide.png", 320)
        self.assertEqual(
            (page["queue"], page["health"], page["previewShown"]),
            (self.normal, "healthy", True),
        )
        self.assertIn("left of 5 min 0 s", page["timeLeft"])
        yield browser.command(
            "Runtime.evaluate", session, expression="window.loadedOnce = true"
        )

        self.publish(self.priority, "tall.png", 300, message_id="alert-1")
        yield self.vss.request_number(2)
        page = yield self.showing(browser, session, "tall.png", 180)
        self.assertEqual((page["queue"], page["loadedOnce"]), (self.priority, True))
        page = yield self.page_where(
            browser, session, lambda page: page["preempted"] == 1
        )
        self.assertEqual(page["shown"], 2)

        path = yield self.screenshot(browser, session)
        with Image.open(path) as saved:
            self.assertEqual((saved.format, saved.size), ("PNG", (1280, 900)))


class HistoryInBrowserTests(TestCase, Browser):
    """
    The page draws hours of history: displays, preemptions and failures.
    This is also the screenshot of the README (docs/status-page.png).
    """

    timeout = 120

    def setUp(self) -> None:
        self.skip_without_chromium()
        root = os.path.join(os.path.realpath(self.mktemp()), "images")
        os.makedirs(os.path.join(root, "lobby"))
        poster = Image.new("RGB", (1600, 900), "#f2efe6")
        drawing = ImageDraw.Draw(poster)
        drawing.rectangle((0, 0, 1600, 140), fill="#1d2330")
        drawing.text((80, 300), "Welcome", fill="#1d2330", font_size=220)
        drawing.text(
            (86, 560), "Ground floor · Reception", fill="#5d6678", font_size=72
        )
        poster.save(os.path.join(root, "lobby", "welcome.png"))
        self.dispatcher = MonitoredDispatcher(
            Settings(status_endpoint="", image_root=root)
        )
        self.dispatcher.version = __version__
        self.site = ServedSite(self, self.dispatcher)

    def live_through_three_hours(self) -> None:
        """
        Three hours of a lobby display: normal jobs, a few priority ones
        that interrupt them, a VSS outage, a lost broker connection and a
        message set aside.
        """
        dispatcher = self.dispatcher
        normal = ["lobby/welcome.png", "lobby/menu.png", "lobby/events.png"]
        for step in range(40):
            dispatcher.show(normal[step % 3], duration=180)
            if step in (6, 19, 31):
                dispatcher.clock.advance(70)
                dispatcher.show("alerts/fire-drill.png", priority=True, duration=60)
                dispatcher.clock.advance(60)
            elif step == 13:
                dispatcher.clock.advance(180)
                dispatcher.deliver("lobby/menu.png", duration=180)
                for _ in range(4):
                    dispatcher.vss.fail("cannot reach VSS: Connection refused")
                    dispatcher.clock.advance(
                        dispatcher.display.delay_after(dispatcher.display.failures)
                    )
                dispatcher.vss.accept()
                dispatcher.clock.advance(180)
            elif step == 26:
                dispatcher.clock.advance(40)
                dispatcher.broker.lose("connection reset by peer")
                dispatcher.scheduler.forget_unsettled()
                dispatcher.clock.advance(12)
                dispatcher.broker.reconnects += 1
                dispatcher.broker.consume()
            elif step == 35:
                dispatcher.broker.set_aside(
                    "vss.normal",
                    "invalid_message",
                    "field 'duration' is '30s'; expected a number of seconds",
                )
                dispatcher.clock.advance(180)
            else:
                dispatcher.clock.advance(180)
        dispatcher.show("lobby/welcome.png", duration=300, message_id="welcome-7")
        dispatcher.clock.advance(95)
        dispatcher.deliver("lobby/menu.png", duration=180)
        dispatcher.deliver("lobby/events.png", duration=120)

    @inlineCallbacks
    def test_page_draws_the_last_hours(self) -> Any:
        """
        The timeline draws every display of the span chosen, marks the
        preemptions and failures, and lists them as recent events.
        """
        self.live_through_three_hours()
        yield self.site.server.when_listening()
        browser, session = yield self.open_browser(height=1160)
        yield browser.command("Page.enable", session)
        yield browser.command(
            "Page.navigate",
            session,
            url=f"http://127.0.0.1:{status_port_of(self.site.server)}/",
        )
        yield self.showing(browser, session, "lobby/welcome.png", 1600)
        yield browser.command(
            "Runtime.evaluate",
            session,
            expression="document.querySelector(\"[data-span='10800']\").click()",
        )

        page = yield self.page_where(
            browser, session, lambda page: page["preempted"] == 3
        )
        self.assertEqual(page["shown"], 45)
        self.assertEqual(
            page["marks"], {"vss_failure": 4, "broker_lost": 1, "dead_lettered": 1}
        )
        self.assertEqual(page["waiting"], ["lobby/menu.png", "lobby/events.png"])
        self.assertEqual(page["events"], 9)

        path = yield self.screenshot(browser, session)
        with Image.open(path) as saved:
            self.assertEqual(saved.size, (1280, 1160))
        # How the README's picture is made again after the page changed; a
        # relative path is taken from the checkout, since trial runs
        # elsewhere.
        wanted = os.environ.get("VSS_STATUS_PAGE_SCREENSHOT")
        if wanted:
            shutil.copyfile(path, os.path.join(CHECKOUT, wanted))
