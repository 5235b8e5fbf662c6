"""
Tests for L{vss_dispatcher.emulator}: the VSS emulator over real HTTP on
127.0.0.1, and its request parsing.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from vss_dispatcher.emulator import (
    BACKEND,
    DISPLAY,
    EmulatedVSS,
    EmulatorSite,
    MalformedRequest,
    make_service,
    make_site,
    parse_backend,
    parse_display,
)
from vss_dispatcher.options import EmulatorOptions

JOB = {
    "image_path": "lobby/blue.png",
    "duration": 5,
    "message_id": "m-1",
    "priority": True,
}


class ParseDisplayTests(SynchronousTestCase):
    """
    Tests for L{parse_display}.
    """

    def refusal(self, body: bytes) -> MalformedRequest:
        with self.assertRaises(MalformedRequest) as caught:
            parse_display(body)
        return caught.exception

    def test_full_job(self) -> None:
        """
        A body with all four fields gives them back, the duration as a float.
        """
        self.assertEqual(
            parse_display(json.dumps(JOB).encode()),
            {
                "image_path": "lobby/blue.png",
                "duration": 5.0,
                "message_id": "m-1",
                "priority": True,
            },
        )

    def test_optional_fields(self) -> None:
        """
        A missing message_id reads as None and a missing priority as False.
        """
        fields = parse_display(b'{"image_path": "a.png", "duration": 0}')
        self.assertEqual((fields["message_id"], fields["priority"]), (None, False))

    def test_each_bad_field_is_named(self) -> None:
        """
        Each kind of bad value is refused with the field it is in.
        """
        cases = [
            (b"not json", "body"),
            (b"\xff", "body"),
            (b"[1, 2]", "body"),
            (b'{"duration": 5}', "image_path"),
            (b'{"image_path": "", "duration": 5}', "image_path"),
            (b'{"image_path": 3, "duration": 5}', "image_path"),
            (b'{"image_path": "a.png"}', "duration"),
            (b'{"image_path": "a.png", "duration": "5"}', "duration"),
            (b'{"image_path": "a.png", "duration": true}', "duration"),
            (b'{"image_path": "a.png", "duration": -1}', "duration"),
            (b'{"image_path": "a.png", "duration": NaN}', "duration"),
            (b'{"image_path": "a.png", "duration": 1, "message_id": 7}', "message_id"),
            (b'{"image_path": "a.png", "duration": 1, "priority": "yes"}', "priority"),
        ]
        for body, field in cases:
            problem = self.refusal(body)
            self.assertEqual(problem.field, field, body)
            if field != "body":
                self.assertIn(f"field '{field}'", problem.reason)

    def test_reason_shows_value(self) -> None:
        """
        The reason quotes the bad value and says what is expected.
        """
        problem = self.refusal(b'{"image_path": "a.png", "duration": "soon"}')
        self.assertEqual(
            problem.reason,
            "field 'duration' is \"soon\"; expected a number of seconds of at least 0",
        )


def multipart(fields: list[tuple[str, str, str, bytes]]) -> tuple[bytes, bytes]:
    """
    Build a multipart/form-data body by hand from (name, file name, content
    type, data) tuples; return the content type and the body.
    """
    boundary = b"emulator-test-boundary"
    body = b""
    for name, filename, content_type, data in fields:
        body += (
            b"--" + boundary + b"\r\n"
            b'Content-Disposition: form-data; name="' + name.encode() + b'"; '
            b'filename="' + filename.encode() + b'"\r\n'
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + data + b"\r\n"
        )
    body += b"--" + boundary + b"--\r\n"
    return b"multipart/form-data; boundary=" + boundary, body


class ParseBackendTests(SynchronousTestCase):
    """
    Tests for L{parse_backend}.
    """

    def test_image_bytes_survive(self) -> None:
        """
        Arbitrary binary data, line breaks included, comes out unchanged.
        """
        data = bytes(range(256)) * 4 + b"\r\n\r\n--\r\n" + os.urandom(2000)
        content_type, body = multipart([("image", "x.png", "image/png", data)])
        fields = parse_backend("u-1,u-2", content_type, body)
        self.assertEqual(fields["image"], data)
        self.assertEqual(fields["image_size"], len(data))
        self.assertEqual(fields["image_type"], "image/png")
        self.assertEqual(fields["image_path"], "x.png")
        self.assertEqual(fields["device_uuids"], ("u-1", "u-2"))

    def test_other_fields_ignored(self) -> None:
        """
        The image is found among other form fields.
        """
        content_type, body = multipart(
            [
                ("note", "n.txt", "text/plain", b"hi"),
                ("image", "i.png", "image/png", b"I"),
            ]
        )
        self.assertEqual(parse_backend("u", content_type, body)["image"], b"I")

    def test_refusals(self) -> None:
        """
        No device, no multipart body, no image field and an empty image are
        refused, naming the field at fault.
        """
        content_type, body = multipart([("image", "i.png", "image/png", b"I")])
        _, without_image = multipart([("other", "i.png", "image/png", b"I")])
        _, empty_image = multipart([("image", "i.png", "image/png", b"")])
        cases = [
            (",", content_type, body, "uuids"),
            ("u", None, body, "image"),
            ("u", b"application/json", b"{}", "image"),
            ("u", content_type, without_image, "image"),
            ("u", content_type, empty_image, "image"),
        ]
        for uuids, given_type, given_body, field in cases:
            with self.assertRaises(MalformedRequest) as caught:
                parse_backend(uuids, given_type, given_body)
            self.assertEqual(caught.exception.field, field)


class EmulatorOptionsTests(SynchronousTestCase):
    """
    Tests for L{EmulatorOptions} and L{make_service}.
    """

    def test_numbers_converted(self) -> None:
        """
        --status, --delay and --history become numbers.
        """
        options = EmulatorOptions()
        options.parseOptions(["--status", "503", "--delay", "0.5", "--history", "3"])
        self.assertEqual(
            (options["status"], options["delay"], options["history"]), (503, 0.5, 3)
        )

    def test_bad_numbers_refused(self) -> None:
        """
        A value that is not usable is refused with one sentence naming it.
        """
        for arguments, message in [
            (
                ["--status", "ok"],
                "--status is 'ok'; expected a whole number from 100 to 599.",
            ),
            (
                ["--status", "99"],
                "--status is '99'; expected a whole number from 100 to 599.",
            ),
            (
                ["--delay", "-1"],
                "--delay is '-1'; expected a number of seconds of at least 0.",
            ),
            (
                ["--delay", "inf"],
                "--delay is 'inf'; expected a number of seconds of at least 0.",
            ),
            (
                ["--history", "0"],
                "--history is '0'; expected a whole number of at least 1.",
            ),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                EmulatorOptions().parseOptions(arguments)
            self.assertEqual(str(caught.exception), message)

    def test_service_serves_emulator(self) -> None:
        """
        make_service gives a service listening on the endpoint with the
        emulator's site, answering as the options say.
        """
        options = EmulatorOptions()
        options.parseOptions(
            ["--endpoint", "tcp:0:interface=127.0.0.1", "--status", "502"]
        )
        service: Any = make_service(options)
        self.assertIsInstance(service.factory, EmulatorSite)
        display = service.factory.resource.getStaticEntity(b"display")
        self.assertEqual(display._vss.status, 502)

    def test_bad_endpoint(self) -> None:
        """
        An endpoint description Twisted cannot read stops start-up with one
        sentence naming it.
        """
        options = EmulatorOptions()
        options.parseOptions(["--endpoint", "carrier-pigeon:8080"])
        with self.assertRaises(SystemExit) as caught:
            make_service(options)
        message = str(caught.exception.code)
        self.assertTrue(
            message.startswith(
                "vss-emulator cannot start: --endpoint is 'carrier-pigeon:8080',"
                " which is not usable"
            ),
            message,
        )


class EmulatorHTTPTests(TestCase):
    """
    The emulator over real HTTP on 127.0.0.1, with an emulated clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.vss = EmulatedVSS(clock=self.clock)
        self.port = reactor.listenTCP(0, make_site(self.vss), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return treq.request(method, self.base + path, pool=self.pool, **kwargs)

    def post_job(self, job: object) -> Any:
        body = job if isinstance(job, bytes) else json.dumps(job).encode()
        return self.request(
            "POST", "/display", data=body, headers={"Content-Type": "application/json"}
        )

    def put_image(self, uuids: str, data: bytes, name: str = "shot.png") -> Any:
        return self.request(
            "PUT",
            "/backend/" + uuids,
            files={"image": (name, "image/png", io.BytesIO(data))},
            headers={"Date": "Thu, 03 Dec 2026 10:00:00 GMT", "Authorization": "k:sig"},
        )

    @inlineCallbacks
    def test_display_recorded(self) -> Any:
        """
        A display request is answered 200 with a JSON body and recorded with
        its fields and the time it arrived.
        """
        response = yield self.post_job(JOB)
        self.assertEqual(response.code, 200)
        answer = yield response.json()
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(answer["message_id"], "m-1")

        [recorded] = self.vss.requests
        self.assertEqual(recorded.kind, DISPLAY)
        self.assertEqual(recorded.number, 1)
        self.assertEqual(recorded.received, 1000.0)
        self.assertEqual(
            (
                recorded.image_path,
                recorded.duration,
                recorded.message_id,
                recorded.priority,
            ),
            ("lobby/blue.png", 5.0, "m-1", True),
        )
        self.assertEqual(recorded.headers["content-type"], "application/json")
        self.assertIs(self.vss.current, recorded)

    @inlineCallbacks
    def test_next_request_fires_on_arrival(self) -> Any:
        """
        next_request fires with the next request once it arrives, and not
        before.
        """
        arrival = self.vss.next_request()
        self.assertNoResult(arrival)
        response = yield self.post_job(JOB)
        yield response.content()
        recorded = self.successResultOf(arrival)
        self.assertEqual(recorded.image_path, "lobby/blue.png")

    @inlineCallbacks
    def test_request_number_already_received(self) -> Any:
        """
        Asking for a request that already arrived gives it at once; asking
        for one forgotten fails with LookupError.
        """
        self.vss.history = 1
        for name in ("a.png", "b.png"):
            response = yield self.post_job({"image_path": name, "duration": 1})
            yield response.content()
        self.assertEqual(
            self.successResultOf(self.vss.request_number(2)).image_path, "b.png"
        )
        self.failureResultOf(self.vss.request_number(1), LookupError)
        self.assertEqual([r.number for r in self.vss.requests], [2])

    @inlineCallbacks
    def test_waiting_cancelled(self) -> Any:
        """
        A cancelled wait is forgotten: the request it waited for is answered
        normally, and a later wait still fires.
        """
        abandoned = self.vss.next_request()
        abandoned.cancel()
        self.failureResultOf(abandoned)
        kept = self.vss.next_request()

        response = yield self.post_job(JOB)
        self.assertEqual(response.code, 200)
        yield response.content()
        self.assertEqual(self.successResultOf(kept).number, 1)

    @inlineCallbacks
    def test_malformed_display(self) -> Any:
        """
        A malformed body is answered 400 with a JSON error naming the field,
        recorded as refused, and does not change what is on screen.
        """
        response = yield self.post_job({"image_path": "a.png", "duration": "long"})
        self.assertEqual(response.code, 400)
        answer = yield response.json()
        self.assertEqual(answer["field"], "duration")
        self.assertIn("'duration'", answer["error"])
        [recorded] = self.vss.requests
        self.assertEqual((recorded.status, recorded.error), (400, answer["error"]))
        self.assertIsNone(self.vss.current)

    @inlineCallbacks
    def test_scripted_statuses(self) -> Any:
        """
        Scripted statuses answer the next requests in order, then the
        default status applies; only accepted images go on screen.
        """
        self.vss.answer_with(503, 500)
        codes = []
        for name in ("a.png", "b.png", "c.png"):
            response = yield self.post_job({"image_path": name, "duration": 1})
            yield response.content()
            codes.append(response.code)
        self.assertEqual(codes, [503, 500, 200])
        self.assertEqual([r.status for r in self.vss.requests], [503, 500, 200])
        self.assertEqual(
            self.vss.current.image_path if self.vss.current else None, "c.png"
        )

    @inlineCallbacks
    def test_default_status(self) -> Any:
        """
        The default status answers every request when nothing is scripted.
        """
        self.vss.status = 502
        response = yield self.post_job(JOB)
        self.assertEqual(response.code, 502)
        answer = yield response.json()
        self.assertEqual(answer["status"], "error")
        self.assertIsNone(self.vss.current)

    @inlineCallbacks
    def test_delay(self) -> Any:
        """
        With a delay, the answer is sent only once the clock has moved on by
        that much.
        """
        self.vss.delay = 5
        answered = self.post_job(JOB)
        yield self.vss.next_request()
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 1005.0)
        self.assertNoResult(answered)
        self.clock.advance(5)
        response = yield answered
        self.assertEqual(response.code, 200)
        answer = yield response.json()
        self.assertEqual(answer["status"], "ok")

    @inlineCallbacks
    def test_backend_upload(self) -> Any:
        """
        A backend API upload is answered 200 and recorded with its devices,
        headers and image, which GET /image then serves.
        """
        data = b"\x89PNG\r\n\x1a\n" + os.urandom(500)
        response = yield self.put_image("uuid-1,uuid-2", data)
        self.assertEqual(response.code, 200)
        yield response.content()

        [recorded] = self.vss.requests
        self.assertEqual(recorded.kind, BACKEND)
        self.assertEqual(recorded.device_uuids, ("uuid-1", "uuid-2"))
        self.assertEqual(recorded.image, data)
        self.assertEqual(recorded.image_path, "shot.png")
        self.assertEqual(recorded.headers["authorization"], "k:sig")
        self.assertEqual(recorded.path, "/backend/uuid-1,uuid-2")

        image = yield self.request("GET", "/image")
        self.assertEqual(image.headers.getRawHeaders("content-type"), ["image/png"])
        served = yield image.content()
        self.assertEqual(served, data)

    @inlineCallbacks
    def test_only_recent_images_kept(self) -> Any:
        """
        Older uploads lose their bytes once a newer one arrives, while the
        image on screen keeps its own.
        """
        for data in (b"first", b"second"):
            response = yield self.put_image("u", data)
            yield response.content()
        self.vss.answer_with(503)
        response = yield self.put_image("u", b"third")
        yield response.content()

        self.assertEqual([r.image for r in self.vss.requests], [None, None, b"third"])
        self.assertEqual([r.image_size for r in self.vss.requests], [5, 6, 5])
        self.assertEqual(
            self.vss.current.image if self.vss.current else None, b"second"
        )

    @inlineCallbacks
    def test_backend_without_image(self) -> Any:
        """
        An upload without an image field is answered 400 naming the field.
        """
        response = yield self.request(
            "PUT",
            "/backend/u",
            files={"picture": ("a.png", "image/png", io.BytesIO(b"x"))},
        )
        self.assertEqual(response.code, 400)
        answer = yield response.json()
        self.assertEqual(answer["field"], "image")

    @inlineCallbacks
    def test_no_image_to_serve(self) -> Any:
        """
        GET /image answers 404 while no uploaded image is on screen.
        """
        response = yield self.post_job(JOB)
        yield response.content()
        image = yield self.request("GET", "/image")
        self.assertEqual(image.code, 404)
        yield image.content()

    @inlineCallbacks
    def test_page_shows_current_image(self) -> Any:
        """
        The page shows the current image, escaped, and the earlier ones, and
        loads nothing from elsewhere.
        """
        for name, message_id in (("lobby/old.png", "old"), ("lobby/<new>.png", "n-2")):
            response = yield self.post_job(
                {"image_path": name, "duration": 7, "message_id": message_id}
            )
            yield response.content()
        page = yield self.request("GET", "/")
        self.assertEqual(
            page.headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"]
        )
        text = yield page.text()
        on_screen = text.split("<h2>Last requests")[0]
        self.assertIn('<div class="screen">lobby/&lt;new&gt;.png</div>', on_screen)
        self.assertIn("id n-2", on_screen)
        self.assertNotIn("old.png", on_screen)
        self.assertIn("lobby/old.png", text)
        self.assertIn("state.json", text)
        self.assertNotIn("<script src", text)
        self.assertNotIn("<link", text)

    @inlineCallbacks
    def test_state_json(self) -> Any:
        """
        GET /state.json holds the current image and the requests, newest
        first.
        """
        for name in ("a.png", "b.png"):
            response = yield self.post_job({"image_path": name, "duration": 2})
            yield response.content()
        response = yield self.request("GET", "/state.json")
        state = yield response.json()
        self.assertEqual(state["current"]["image_path"], "b.png")
        self.assertEqual(state["current"]["received"], "1970-01-01T00:16:40.000Z")
        self.assertEqual(
            [r["image_path"] for r in state["requests"]], ["b.png", "a.png"]
        )
        self.assertEqual(state["received"], 2)
        self.assertEqual(state, json.loads(json.dumps(self.vss.state())))

    @inlineCallbacks
    def test_wrong_method(self) -> Any:
        """
        GET /display is not a display request: it is answered 405 and not
        recorded.
        """
        response = yield self.request("GET", "/display")
        self.assertEqual(response.code, 405)
        yield response.content()
        self.assertEqual(self.vss.received, 0)
