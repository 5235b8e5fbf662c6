"""
What operators and their tools see of a running dispatcher: a small web
server on STATUS_ENDPOINT (health check, status, Prometheus metrics and a
page for people), the proof-of-play records, and systemd's readiness and
watchdog messages.

L{attach_monitoring} adds all of it to a dispatcher service according to its
settings.  The web server serves only what it builds itself, the files of
its page, and the image on screen when that image lies inside IMAGE_ROOT.
"""

from __future__ import annotations

import json
import mimetypes
import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import NoResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .config import ConfigurationError
from .message import Job
from .metrics import CONTENT_TYPE, Metrics
from .playlog import PlayLog
from .sdnotify import SystemdNotifier, notify_address, watchdog_interval
from .status import (
    Dispatcher,
    QueueCounts,
    Timeline,
    health_problems,
    image_file_in,
    may_preview,
    status_document,
    status_line,
)
from .threads import RunInThread, thread_runner

__all__ = [
    "STATUS_SERVER",
    "StatusServer",
    "attach_monitoring",
    "build_site",
    "status_port",
]

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

# The page shows the image on screen as a preview; a file larger than this
# is not sent to it.
MAX_PREVIEW_BYTES = 32 * 1024 * 1024

# The name of the web server among the dispatcher's child services.
STATUS_SERVER = "status-server"

# The page loads nothing from elsewhere, and nothing here may be framed.
SECURITY_HEADERS = {
    b"Content-Security-Policy": b"default-src 'self'; img-src 'self' data:;"
    b" frame-ancestors 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"Cache-Control": b"no-store",
}


def _secure(request: Request) -> None:
    """
    Add the headers every answer of the site carries.
    """
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)


def _json(request: Request, document: object, code: int = 200) -> bytes:
    """
    Answer C{document} as JSON with C{code}.
    """
    request.setResponseCode(code)
    _secure(request)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    return (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _later(
    request: Request, waiting: Deferred[Any], render: Callable[[Any], bytes]
) -> object:
    """
    Answer C{request} once C{waiting} fires, unless the client left first.
    """
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def answer(result: Any) -> None:
        if gone:
            return
        request.write(render(result))
        request.finish()

    waiting.addCallback(answer)
    waiting.addErrback(_log_render_failure, request)
    return NOT_DONE_YET


def _log_render_failure(failure: Failure, request: Request) -> None:
    """
    Log a bug met while answering, and end the request with 500.
    """
    StatusServer.log.failure("Could not answer {uri}", failure, uri=request.uri)
    if not request.finished and not request._disconnected:
        request.setResponseCode(500)
        request.finish()


class _File(Resource):
    """
    One file, with the same protective headers as the rest of the site.

    Twisted's static-file resource (ranges, conditional requests, streaming)
    is loaded on the first request only: most dispatchers never serve a
    file, and it is not small.
    """

    isLeaf = True

    def __init__(self, path: str, defaultType: str = "text/html") -> None:
        super().__init__()
        self._path = path
        self._default_type = defaultType

    def render(self, request: Request) -> object:
        from twisted.web.static import File

        _secure(request)
        return File(self._path, defaultType=self._default_type).render(request)


class _Health(Resource):
    """
    C{/healthz}: 200 when healthy, 503 with the reasons otherwise.
    """

    isLeaf = True

    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__()
        self._dispatcher = dispatcher

    def render_GET(self, request: Request) -> bytes:
        problems = health_problems(self._dispatcher)
        if problems:
            return _json(request, {"status": "unhealthy", "problems": problems}, 503)
        return _json(request, {"status": "ok"})


class _Status(Resource):
    """
    C{/status}: the status document, with the broker's counts.
    """

    isLeaf = True

    def __init__(self, dispatcher: Dispatcher, counts: QueueCounts) -> None:
        super().__init__()
        self._dispatcher = dispatcher
        self._counts = counts

    def render_GET(self, request: Request) -> object:
        return _later(
            request,
            self._counts.get(),
            lambda counts: _json(request, status_document(self._dispatcher, counts)),
        )


class _Metrics(Resource):
    """
    C{/metrics}: Prometheus' text format.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics, counts: QueueCounts) -> None:
        super().__init__()
        self._metrics = metrics
        self._counts = counts

    def _render(self, request: Request, counts: dict[str, int] | None) -> bytes:
        _secure(request)
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
        return self._metrics.render(counts)

    def render_GET(self, request: Request) -> object:
        return _later(
            request, self._counts.get(), lambda counts: self._render(request, counts)
        )


class _Timeline(Resource):
    """
    C{/timeline}: the displays and failures of the last hours.
    """

    isLeaf = True

    def __init__(self, timeline: Timeline) -> None:
        super().__init__()
        self._timeline = timeline

    def render_GET(self, request: Request) -> bytes:
        return _json(request, self._timeline.as_json())


class _Images(Resource):
    """
    C{/image/current}: the file of the image on screen, when it lies inside
    IMAGE_ROOT.
    """

    def __init__(self, dispatcher: Dispatcher, run_in_thread: RunInThread) -> None:
        super().__init__()
        self._dispatcher = dispatcher
        self._run_in_thread = run_in_thread

    def getChild(self, path: bytes, request: Request) -> Resource:
        """
        The image on screen for C{current}, else 404.
        """
        if path != b"current":
            return NoResource()
        delivery = self._dispatcher.scheduler.current
        if delivery is None or not may_preview(self._dispatcher, delivery):
            return NoResource("No image on screen that lies inside IMAGE_ROOT.")
        return _CurrentImage(
            self._dispatcher.settings.image_root, delivery.job, self._run_in_thread
        )


class _CurrentImage(Resource):
    """
    One image file, found and read in a worker thread: IMAGE_ROOT is often a
    network share, and a slow or hung share must not hold up the reactor,
    which keeps the displays on time.
    """

    isLeaf = True

    def __init__(self, root: str, job: Job, run_in_thread: RunInThread) -> None:
        super().__init__()
        self._root = root
        self._job = job
        self._run_in_thread = run_in_thread

    def render_GET(self, request: Request) -> object:
        reading = self._run_in_thread(read_preview, self._root, self._job)

        def render(found: tuple[str, bytes] | None) -> bytes:
            _secure(request)
            if found is None:
                request.setResponseCode(404)
                request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
                return b"The image on screen cannot be read from IMAGE_ROOT.\n"
            content_type, data = found
            request.setHeader(b"Content-Type", content_type.encode("ascii"))
            return data

        return _later(request, reading, render)


def read_preview(root: str, job: Job) -> tuple[str, bytes] | None:
    """
    Find and read C{job}'s image inside C{root}; blocking.

    @return: Its media type and contents, or C{None} when it is not a file
        inside C{root} or is larger than L{MAX_PREVIEW_BYTES}.
    """
    path = image_file_in(root, job)
    if path is None:
        return None
    try:
        with open(path, "rb") as image:
            data = image.read(MAX_PREVIEW_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_PREVIEW_BYTES:
        return None
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return content_type, data


class _Page(Resource):
    """
    C{/}: the page for people.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            return NoResource().render(request)  # type: ignore[no-any-return]
        _secure(request)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        with open(os.path.join(STATIC, "index.html"), "rb") as page:
            return page.read()


def _static_files() -> Resource:
    """
    The page's own files, one child each, so that nothing else in the
    folder (and no folder listing) can be reached.
    """
    folder = Resource()
    for name in sorted(os.listdir(STATIC)):
        path = os.path.join(STATIC, name)
        if name != "index.html" and os.path.isfile(path):
            folder.putChild(name.encode("utf-8"), _File(path))
    return folder


def build_site(
    dispatcher: Dispatcher,
    metrics: Metrics,
    timeline: Timeline,
    counts: QueueCounts,
    run_in_thread: RunInThread | None = None,
) -> Site:
    """
    The web site of the status server.

    @param run_in_thread: Runs a blocking function in a worker thread and
        gives a L{Deferred} of its result; by default, the global reactor's
        thread pool.
    """
    if run_in_thread is None:
        from twisted.internet import reactor

        run_in_thread = thread_runner(reactor)
    root = Resource()
    root.putChild(b"", _Page())
    root.putChild(b"healthz", _Health(dispatcher))
    root.putChild(b"status", _Status(dispatcher, counts))
    root.putChild(b"metrics", _Metrics(metrics, counts))
    root.putChild(b"timeline", _Timeline(timeline))
    root.putChild(b"image", _Images(dispatcher, run_in_thread))
    root.putChild(b"static", _static_files())
    return _QuietSite(root, reactor=dispatcher.clock)


class _QuietSite(Site):
    """
    A site that writes no access log: a line per scrape and per page poll
    would drown the dispatcher's own log.
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


class StatusServer(Service):
    """
    Listens on STATUS_ENDPOINT for the status site.

    @ivar port: The listening port once listening, else C{None}.
    """

    log = Logger()
    name = STATUS_SERVER

    def __init__(self, description: str, reactor: Any, site: Site) -> None:
        """
        @param description: A Twisted server endpoint description.
        @raise ConfigurationError: When C{description} is not one.
        """
        try:
            self._endpoint = serverFromString(reactor, description)
        except (ValueError, TypeError, KeyError) as error:
            raise ConfigurationError(
                f"STATUS_ENDPOINT is {description!r}, which is not usable ({error});"
                " expected a Twisted server endpoint such as"
                " tcp:8089:interface=127.0.0.1, or empty."
            ) from None
        self.description = description
        self.site = site
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort | None] | None = None

    def startService(self) -> None:
        """
        Start listening; a failure is logged, never raised.
        """
        super().startService()
        listening: Deferred[Any] = self._endpoint.listen(self.site)
        listening.addCallbacks(self._listened, self._not_listening)
        self._listening = listening

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        address = port.getHost()
        self.log.info(
            "Status page, health check and metrics at http://{host}:{port}/",
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
        )
        return port

    def _not_listening(self, failure: Failure) -> None:
        # The dispatcher's work does not depend on its status page.
        self.log.error(
            "Cannot listen on STATUS_ENDPOINT {endpoint} ({error}); the"
            " dispatcher runs without its status page, health check and metrics",
            endpoint=self.description,
            error=failure.getErrorMessage(),
        )
        return None

    def when_listening(self) -> Deferred[IListeningPort | None]:
        """
        Fires with the listening port once the server listens, or C{None} if
        it could not.
        """
        result: Deferred[IListeningPort | None] = Deferred()
        if self._listening is None:
            result.callback(None)
            return result

        def hand_over(port: IListeningPort | None) -> IListeningPort | None:
            result.callback(port)
            return port

        self._listening.addCallback(hand_over)
        return result

    def stopService(self) -> Deferred[None]:
        """
        Stop listening.

        @return: Fires once the port is closed.
        """
        super().stopService()
        port, self.port = self.port, None
        self._listening = None
        if port is None:
            return succeed(None)
        stopped = port.stopListening()
        return stopped if stopped is not None else succeed(None)


def _observe(observer: Any, *parts: Any) -> None:
    """
    Register C{observer} with each of the dispatcher's C{parts} (scheduler,
    VSS display, broker).
    """
    for part in parts:
        part.observers.append(observer)


def status_port(dispatcher: MultiService) -> int | None:
    """
    The TCP port the status server of C{dispatcher} listens on, if it does.
    """
    try:
        server = dispatcher.getServiceNamed(STATUS_SERVER)
    except KeyError:
        return None
    port = server.port
    if port is None:
        return None
    return getattr(port.getHost(), "port", None)


def attach_monitoring(
    dispatcher: Any, reactor: Any, environ: dict[str, str] | None = None
) -> None:
    """
    Add the proof-of-play records, the status server (unless STATUS_ENDPOINT
    is empty) and systemd notifications (when systemd asks for them) to
    C{dispatcher}.

    @param dispatcher: A L{vss_dispatcher.app.DispatcherService}, not yet
        started.
    @param reactor: Runs the servers and timers.
    @param environ: Where C{NOTIFY_SOCKET} and C{WATCHDOG_USEC} are read;
        C{os.environ} when not given.
    @raise ConfigurationError: When PLAY_LOG cannot be opened or
        STATUS_ENDPOINT is not an endpoint.
    """
    settings = dispatcher.settings
    environ = dict(os.environ) if environ is None else environ
    parts = (dispatcher.scheduler, dispatcher.display, dispatcher.broker)

    play_log = PlayLog(settings.play_log, dispatcher.clock, dispatcher.scheduler)
    play_log.open()
    play_log.setServiceParent(dispatcher)
    _observe(play_log, dispatcher.scheduler, dispatcher.broker)

    if settings.status_endpoint:
        metrics = Metrics(dispatcher)
        timeline = Timeline(dispatcher.clock, dispatcher.scheduler)
        counts = QueueCounts(dispatcher.broker, dispatcher.clock)
        site = build_site(dispatcher, metrics, timeline, counts)
        StatusServer(settings.status_endpoint, reactor, site).setServiceParent(
            dispatcher
        )
        for observer in (metrics, timeline):
            _observe(observer, *parts)

    address = notify_address(environ)
    if address is not None:
        notifier = SystemdNotifier(
            address,
            dispatcher.clock,
            problems=lambda: health_problems(dispatcher),
            describe=lambda: status_line(dispatcher),
            interval=watchdog_interval(environ, os.getpid()),
            ready=lambda: bool(dispatcher.broker.consuming),
        )
        notifier.setServiceParent(dispatcher)
        _observe(notifier, *parts)
