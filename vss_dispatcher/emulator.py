"""
A stand-in for VSS: a small web server that accepts what the dispatcher
sends, records it, and shows on a web page what the display would show.

It speaks both of the dispatcher's protocols:

  - C{POST /display} with the job as JSON (C{VSS_MODE=display});
  - C{PUT /backend/{uuids}} with the image as C{multipart/form-data}, the way
    the backend API of the Visionect Software Suite takes it
    (C{VSS_MODE=visionect}).  The emulator does not check the request
    signature; it records the headers, and tests that care about the
    signature verify it themselves.

C{GET /} is a page with the current image and the last ones.  It keeps
itself up to date by polling C{GET /state.json}, which holds the same
information as JSON.

Tests use L{EmulatedVSS} directly: it records every request with the time it
arrived on an injected clock, answers with scripted HTTP statuses and an
optional delay, and hands out Deferreds that fire when a request arrives, so
that a test waits for events rather than for time to pass.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from typing import Any

from twisted.application import strports
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .status import iso_time

__all__ = [
    "BACKEND",
    "DISPLAY",
    "EmulatedVSS",
    "EmulatorSite",
    "MalformedRequest",
    "RecordedRequest",
    "make_service",
    "make_site",
    "parse_backend",
    "parse_display",
]

DISPLAY = "display"
BACKEND = "backend"

# What a render method returns: the body, or NOT_DONE_YET (an int) when the
# answer is sent later.
_Rendered = bytes | int


class MalformedRequest(Exception):
    """
    A request the emulator cannot read; it is answered with 400.

    @ivar field: The field at fault, or C{"body"} when the body as a whole
        cannot be read.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field

    @property
    def reason(self) -> str:
        """
        The problem in one sentence, naming the field and its value.
        """
        return str(self.args[0])


@dataclass(frozen=True)
class RecordedRequest:
    """
    One request received on C{/display} or C{/backend}.

    @ivar number: 1 for the first request received, then 2, and so on.
    @ivar kind: L{DISPLAY} or L{BACKEND}.
    @ivar received: When it arrived, in seconds of the emulator's clock.
    @ivar status: The HTTP status it was answered with.
    @ivar image_path: The C{image_path} field, or the name of the uploaded
        file for the backend API.
    @ivar duration: The C{duration} field (display protocol only).
    @ivar message_id: The C{message_id} field (display protocol only).
    @ivar priority: The C{priority} field (display protocol only).
    @ivar device_uuids: The devices named in the path (backend API only).
    @ivar image: The uploaded bytes (backend API only).  Only the newest
        upload and the one on screen keep them, so that a long run does not
        fill the memory; older records hold C{None}.
    @ivar image_type: The content type given for the upload.
    @ivar image_size: The length of the upload in bytes, kept when the bytes
        are dropped.
    @ivar headers: The request headers, names in lower case, last value
        only; enough for a test to check a signature.
    @ivar path: The request path as sent.
    @ivar error: Why the request was refused as malformed, or C{None}.
    """

    number: int
    kind: str
    received: float
    status: int
    image_path: str = ""
    duration: float | None = None
    message_id: str | None = None
    priority: bool = False
    device_uuids: tuple[str, ...] = ()
    image: bytes | None = None
    image_type: str | None = None
    image_size: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    path: str = ""
    error: str | None = None

    @property
    def accepted(self) -> bool:
        """
        Whether the emulator answered with a 2xx status, which puts the
        image on screen.
        """
        return 200 <= self.status < 300

    def describe(self) -> dict[str, Any]:
        """
        The record as plain JSON values, without the image bytes and headers
        (which may carry credentials).
        """
        return {
            "number": self.number,
            "kind": self.kind,
            "received": iso_time(self.received),
            "received_seconds": self.received,
            "status": self.status,
            "image_path": self.image_path,
            "duration": self.duration,
            "message_id": self.message_id,
            "priority": self.priority,
            "device_uuids": list(self.device_uuids),
            "image_type": self.image_type,
            "image_size": self.image_size,
            "path": self.path,
            "error": self.error,
        }


def _shown(document: Mapping[str, object], name: str) -> str:
    """
    "missing", or "is" and the field's value as JSON, shortened.
    """
    if name not in document:
        return "missing"
    text = json.dumps(document[name])
    return f"is {text if len(text) <= 80 else text[:77] + '...'}"


def parse_display(body: bytes) -> dict[str, Any]:
    """
    Read the JSON body of C{POST /display}.

    C{image_path} and C{duration} are required; C{message_id} (a string or
    null) and C{priority} (true or false) may be left out.

    @return: The fields as keyword arguments of L{RecordedRequest}.
    @raise MalformedRequest: Naming the first field that is wrong.
    """
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedRequest(
            "body",
            "the body is not UTF-8 JSON; expected a JSON object with the fields"
            " image_path, duration, message_id and priority",
        ) from None
    if not isinstance(document, dict):
        raise MalformedRequest(
            "body", f"the body is {json.dumps(document)[:80]}; expected a JSON object"
        )

    image_path = document.get("image_path")
    if not isinstance(image_path, str) or not image_path:
        raise MalformedRequest(
            "image_path",
            f"field 'image_path' {_shown(document, 'image_path')}; expected a"
            " non-empty string",
        )
    duration = document.get("duration")
    # bool is an int in Python, but true is not a number of seconds.
    if (
        isinstance(duration, bool)
        or not isinstance(duration, (int, float))
        or not math.isfinite(duration)
        or duration < 0
    ):
        raise MalformedRequest(
            "duration",
            f"field 'duration' {_shown(document, 'duration')}; expected a number"
            " of seconds of at least 0",
        )
    message_id = document.get("message_id")
    if message_id is not None and not isinstance(message_id, str):
        raise MalformedRequest(
            "message_id",
            f"field 'message_id' {_shown(document, 'message_id')}; expected a"
            " string or null",
        )
    priority = document.get("priority", False)
    if not isinstance(priority, bool):
        raise MalformedRequest(
            "priority",
            f"field 'priority' {_shown(document, 'priority')}; expected true or"
            " false",
        )
    return {
        "image_path": image_path,
        "duration": float(duration),
        "message_id": message_id,
        "priority": priority,
    }


def parse_backend(
    device_uuids: str, content_type: bytes | None, body: bytes
) -> dict[str, Any]:
    """
    Read a C{PUT /backend/{uuids}} request of the Visionect backend API.

    @param device_uuids: The last path segment, UUIDs separated by commas.
    @param content_type: The C{Content-Type} header, if any.
    @param body: The request body.
    @return: The fields as keyword arguments of L{RecordedRequest}.
    @raise MalformedRequest: When no device is named or the body holds no
        C{image} file.
    """
    uuids = tuple(part.strip() for part in device_uuids.split(",") if part.strip())
    if not uuids:
        raise MalformedRequest(
            "uuids",
            f"the path names no device ({device_uuids!r}); expected"
            " /backend/ followed by device UUIDs separated by commas",
        )
    expected = "expected a multipart/form-data body with an 'image' file"
    if not content_type or not content_type.lower().startswith(b"multipart/"):
        shown = content_type.decode("latin-1") if content_type else "missing"
        raise MalformedRequest("image", f"the content type is {shown!r}; {expected}")

    # The email parser reads MIME multipart bodies, form data included; it
    # only needs the content type in front to find the boundary.
    head = b"MIME-Version: 1.0\r\nContent-Type: " + content_type + b"\r\n\r\n"
    message = BytesParser(policy=compat32).parsebytes(head + body)
    parts = message.get_payload() if message.is_multipart() else []
    for part in parts:
        if not isinstance(part, Message):
            continue
        if part.get_param("name", header="content-disposition") != "image":
            continue
        image = part.get_payload(decode=True)
        if not isinstance(image, bytes) or not image:
            raise MalformedRequest("image", f"the 'image' file is empty; {expected}")
        return {
            "image_path": part.get_filename() or "",
            "device_uuids": uuids,
            "image": image,
            "image_type": part.get_content_type(),
            "image_size": len(image),
        }
    raise MalformedRequest("image", f"the body has no 'image' field; {expected}")


class EmulatedVSS:
    """
    The emulator's state: what it was sent and how it is to answer.

    @ivar clock: Gives the time of each request and runs the answer delay.
    @ivar status: The HTTP status to answer with when nothing is scripted.
    @ivar delay: Seconds to wait before each answer.
    @ivar history: How many requests L{requests} remembers.
    @ivar scripted: Statuses to answer the next well-formed requests with,
        first one first, before falling back to L{status}.
    @ivar requests: The last L{history} requests, oldest first.
    @ivar current: The last request answered with a 2xx status: the image
        on screen.
    @ivar received: How many requests arrived in all.
    """

    log = Logger()

    def __init__(
        self,
        status: int = 200,
        delay: float = 0.0,
        history: int = 50,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            # Imported here so that merely importing this module installs no
            # reactor.
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self.clock: IReactorTime = clock
        self.status = status
        self.delay = delay
        self.history = max(1, history)
        self.scripted: list[int] = []
        self.requests: list[RecordedRequest] = []
        self.current: RecordedRequest | None = None
        self.received = 0
        self._waiting: dict[int, list[Deferred[RecordedRequest]]] = {}

    def answer_with(self, *statuses: int) -> None:
        """
        Answer the next well-formed requests with C{statuses}, in order, then
        go back to L{status}.
        """
        self.scripted.extend(statuses)

    def next_request(self) -> Deferred[RecordedRequest]:
        """
        Wait for the next request to arrive.

        @return: A L{Deferred} that fires with the request once it is
            recorded and its answer is decided (and, with a delay, waiting
            on the clock), before the answer is sent.
        """
        return self.request_number(self.received + 1)

    def request_number(self, number: int) -> Deferred[RecordedRequest]:
        """
        Wait for request C{number} (counting from 1), or get it at once if it
        arrived already.

        @raise LookupError: Through the L{Deferred}, when the request arrived
            so long ago that it is no longer remembered.
        """
        if number <= self.received:
            for request in self.requests:
                if request.number == number:
                    return succeed(request)
            return fail(
                LookupError(
                    f"request {number} is no longer remembered; only the last"
                    f" {self.history} are kept"
                )
            )
        waiting = self._waiting.setdefault(number, [])
        arrival: Deferred[RecordedRequest] = Deferred(waiting.remove)
        waiting.append(arrival)
        return arrival

    def receive(self, request: Request, kind: str, fields: dict[str, Any]) -> _Rendered:
        """
        Record a well-formed request and answer it as scripted.
        """
        status = self.scripted.pop(0) if self.scripted else self.status
        recorded = self._record(request, kind, status, fields)
        if recorded.accepted:
            self._log_shown(recorded)
            answer = {
                "status": "ok",
                "request": recorded.number,
                "image_path": recorded.image_path,
                "message_id": recorded.message_id,
                "received": iso_time(recorded.received),
            }
        else:
            self.log.info(
                "Answering {status} to the request for {image_path}, as told",
                status=status,
                image_path=recorded.image_path,
            )
            answer = {
                "status": "error",
                "error": f"the emulator was told to answer {status}",
            }
        rendered = self._answer(request, status, answer)
        self._notify(recorded)
        return rendered

    def refuse(
        self, request: Request, kind: str, problem: MalformedRequest
    ) -> _Rendered:
        """
        Record a request that cannot be read and answer it with 400.
        """
        recorded = self._record(request, kind, 400, {"error": problem.reason})
        self.log.warn(
            "Refusing a request to {path}: {reason}",
            path=request.path.decode("latin-1"),
            reason=problem.reason,
        )
        answer = {"status": "error", "field": problem.field, "error": problem.reason}
        rendered = self._answer(request, 400, answer)
        self._notify(recorded)
        return rendered

    def state(self) -> dict[str, Any]:
        """
        What C{GET /state.json} answers: the image on screen, the last
        requests (newest first) and how the emulator answers.
        """
        return {
            "current": self.current.describe() if self.current else None,
            "requests": [request.describe() for request in reversed(self.requests)],
            "received": self.received,
            "status": self.status,
            "delay": self.delay,
            "scripted": list(self.scripted),
        }

    def _record(
        self, request: Request, kind: str, status: int, fields: dict[str, Any]
    ) -> RecordedRequest:
        self.received += 1
        headers = {
            name.decode("latin-1").lower(): values[-1].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        recorded = RecordedRequest(
            number=self.received,
            kind=kind,
            received=self.clock.seconds(),
            status=status,
            headers=headers,
            path=request.path.decode("latin-1"),
            **fields,
        )

        if recorded.image is not None:
            self.requests = [
                replace(older, image=None) if older.image is not None else older
                for older in self.requests
            ]
        self.requests.append(recorded)
        del self.requests[: -self.history]
        if recorded.accepted:
            self.current = recorded
        return recorded

    def _notify(self, recorded: RecordedRequest) -> None:
        for arrival in self._waiting.pop(recorded.number, []):
            arrival.callback(recorded)

    def _log_shown(self, recorded: RecordedRequest) -> None:
        if recorded.kind == DISPLAY:
            self.log.info(
                "Showing {image_path} for {duration:g} s ({urgency}, id {message_id})",
                image_path=recorded.image_path,
                duration=recorded.duration,
                message_id=recorded.message_id or "none",
                urgency="priority" if recorded.priority else "normal",
            )
        else:
            self.log.info(
                "Showing uploaded {image_path} ({image_size} bytes, {image_type})"
                " on {devices}",
                image_path=recorded.image_path or "image",
                image_size=recorded.image_size,
                image_type=recorded.image_type,
                devices=", ".join(recorded.device_uuids),
            )

    def _answer(self, request: Request, status: int, answer: object) -> _Rendered:
        body = json.dumps(answer).encode("utf-8")
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        if self.delay <= 0:
            return body

        def send() -> None:
            request.write(body)
            request.finish()

        call = self.clock.callLater(self.delay, send)

        def abandoned(failure: Failure) -> None:
            # The client gave up (the dispatcher's timeout, for instance).
            if call.active():
                call.cancel()

        request.notifyFinish().addErrback(abandoned)
        return NOT_DONE_YET


class _Part(Resource):
    """
    One resource of the emulator's site, reading and writing L{EmulatedVSS}.
    """

    isLeaf = True

    def __init__(self, vss: EmulatedVSS) -> None:
        super().__init__()
        self._vss = vss


class _Display(_Part):
    """
    C{POST /display}: the JSON protocol.
    """

    def render_POST(self, request: Request) -> _Rendered:
        """
        Record the job and answer as scripted, or 400 if it is malformed.
        """
        assert request.content is not None
        try:
            fields = parse_display(request.content.read())
        except MalformedRequest as problem:
            return self._vss.refuse(request, DISPLAY, problem)
        return self._vss.receive(request, DISPLAY, fields)


class _Backend(_Part):
    """
    C{PUT /backend/{uuids}}: the backend API of the Visionect Software Suite.
    """

    def render_PUT(self, request: Request) -> _Rendered:
        """
        Record the upload and answer as scripted, or 400 if it is malformed.
        """
        assert request.content is not None
        uuids = b"/".join(request.postpath or []).decode("utf-8", "replace")
        content_type = request.getHeader(b"content-type")
        try:
            fields = parse_backend(uuids, content_type, request.content.read())
        except MalformedRequest as problem:
            return self._vss.refuse(request, BACKEND, problem)
        return self._vss.receive(request, BACKEND, fields)


class _State(_Part):
    """
    C{GET /state.json}: L{EmulatedVSS.state}.
    """

    def render_GET(self, request: Request) -> bytes:
        """
        Answer the state as JSON.
        """
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps(self._vss.state()).encode("utf-8")


class _CurrentImage(_Part):
    """
    C{GET /image}: the uploaded image on screen.
    """

    def render_GET(self, request: Request) -> bytes:
        """
        Answer the image's bytes, or 404 when no upload is on screen.
        """
        current = self._vss.current
        if current is None or current.image is None:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"No uploaded image is on screen.\n"
        # Anything but an image is served as opaque bytes, so that an upload
        # can never run as a page on this origin.
        image_type = current.image_type or ""
        if not image_type.startswith("image/") or "svg" in image_type:
            image_type = "application/octet-stream"
        request.setHeader(b"Content-Type", image_type.encode("ascii", "replace"))
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Cache-Control", b"no-store")
        return current.image


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>VSS emulator</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
.screen {{ border: 8px solid #333; border-radius: 6px; background: #eee;
  min-height: 12em; max-width: 40em; display: flex; align-items: center;
  justify-content: center; padding: 1em; font-size: 1.4em; word-break: break-all; }}
.screen img {{ max-width: 100%; max-height: 24em; }}
.priority {{ background: #c62828; color: white; padding: 0 0.4em; border-radius: 3px; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
td, th {{ border-bottom: 1px solid #ccc; padding: 0.2em 0.8em; text-align: left; }}
.refused {{ color: #c62828; }}
#offline {{ color: #c62828; }}
</style>
</head>
<body>
<h1>VSS emulator</h1>
<p id="offline"></p>
<div id="panel">{panel}</div>
<script>
const panel = document.getElementById("panel");
let seen = panel.firstElementChild.dataset.received;
async function refresh() {{
  try {{
    const state = await (await fetch("state.json", {{cache: "no-store"}})).json();
    if (String(state.received) !== seen) {{
      panel.innerHTML = await (await fetch("panel", {{cache: "no-store"}})).text();
      seen = String(state.received);
    }}
    document.getElementById("offline").textContent = "";
  }} catch (error) {{
    document.getElementById("offline").textContent =
      "The emulator does not answer; is it still running?";
  }}
}}
setInterval(refresh, 1000);
</script>
</body>
</html>
"""


def _clock_time(seconds: float) -> str:
    # The page is read by someone at this machine: local time.
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def render_panel(vss: EmulatedVSS) -> str:
    """
    The part of the page that changes: the image on screen and the table of
    the last requests.
    """
    escape = html.escape
    current = vss.current
    lines = [f'<div data-received="{vss.received}">', "<h2>On screen</h2>"]
    if current is None:
        lines.append('<div class="screen">Nothing yet.</div>')
    else:
        if current.image is not None:
            alt = escape(current.image_path)
            shown = f'<img src="image?n={current.number}" alt="{alt}">'
        else:
            shown = escape(current.image_path)
        lines.append(f'<div class="screen">{shown}</div>')
        details = [
            f"<b>{escape(current.image_path or '(unnamed upload)')}</b>",
            f"id {escape(current.message_id)}" if current.message_id else "no id",
            f"since {_clock_time(current.received)}",
        ]
        if current.duration is not None:
            details.append(f"for {current.duration:g} s")
        if current.device_uuids:
            details.append(f"on {escape(', '.join(current.device_uuids))}")
        if current.priority:
            details.append('<span class="priority">priority</span>')
        lines.append(f"<p>{' &middot; '.join(details)}</p>")

    answers = f"Answers {vss.status}"
    if vss.delay > 0:
        answers += f" after {vss.delay:g} s"
    if vss.scripted:
        answers += f"; next: {', '.join(str(status) for status in vss.scripted)}"
    lines.append(f"<h2>Last requests ({vss.received} received)</h2>")
    lines.append(f"<p>{answers}.</p>")
    lines.append(
        "<table><tr><th>#</th><th>time</th><th>image</th><th>duration</th>"
        "<th>id</th><th>priority</th><th>answer</th></tr>"
    )
    for request in reversed(vss.requests):
        duration = "" if request.duration is None else f"{request.duration:g} s"
        answer = str(request.status)
        if request.error:
            answer += f" ({request.error})"
        row_class = "" if request.accepted else ' class="refused"'
        lines.append(
            f"<tr{row_class}><td>{request.number}</td>"
            f"<td>{_clock_time(request.received)}</td>"
            f"<td>{escape(request.image_path)}</td><td>{duration}</td>"
            f"<td>{escape(str(request.message_id or ''))}</td>"
            f"<td>{'yes' if request.priority else ''}</td>"
            f"<td>{escape(answer)}</td></tr>"
        )
    lines.append("</table></div>")
    return "\n".join(lines)


class _Panel(_Part):
    """
    C{GET /panel}: the part of the page that changes, fetched by the page's
    script when something new arrived.
    """

    def render_GET(self, request: Request) -> bytes:
        """
        Answer L{render_panel} as HTML.
        """
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return render_panel(self._vss).encode("utf-8")


class _Page(_Part):
    """
    C{GET /}: the page.
    """

    def render_GET(self, request: Request) -> bytes:
        """
        Answer the whole page, its panel filled in.
        """
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return _PAGE.format(panel=render_panel(self._vss)).encode("utf-8")


class EmulatorSite(Site):
    """
    The emulator's web site, without an access log.
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        # The page polls every second; access lines would bury the images
        # received, which EmulatedVSS logs itself.
        pass


def make_site(vss: EmulatedVSS) -> Site:
    """
    The web site of the emulator, serving C{vss}.
    """
    root = Resource()
    root.putChild(b"", _Page(vss))
    root.putChild(b"panel", _Panel(vss))
    root.putChild(b"state.json", _State(vss))
    root.putChild(b"image", _CurrentImage(vss))
    root.putChild(b"display", _Display(vss))
    root.putChild(b"backend", _Backend(vss))
    return EmulatorSite(root)


def make_service(options: Mapping[str, Any]) -> Service:
    """
    The service of C{twistd vss-emulator}.

    @param options: A parsed L{vss_dispatcher.options.EmulatorOptions}.
    @raise SystemExit: With one sentence, when the endpoint is not usable.
    """
    vss = EmulatedVSS(
        status=options["status"], delay=options["delay"], history=options["history"]
    )
    try:
        return strports.service(options["endpoint"], make_site(vss))
    except (ValueError, TypeError, KeyError) as error:
        raise SystemExit(
            f"vss-emulator cannot start: --endpoint is {options['endpoint']!r},"
            f" which is not usable ({error}); expected a Twisted server endpoint"
            " such as tcp:8080:interface=127.0.0.1."
        ) from None
