"""
Tests for L{vss_dispatcher.visionect}: the request signature, the multipart
body, and the backend against a real HTTP server on 127.0.0.1 that checks
requests the way VSS does.  The last test runs the whole dispatcher against
the real RabbitMQ on 127.0.0.1:5672.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import multipart
from PIL import Image
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    inlineCallbacks,
    succeed,
)
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.policies import WrappingFactory
from twisted.python import threadable
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from vss_dispatcher.config import Settings, load_settings
from vss_dispatcher.imaging import Geometry, ImageConverter, convert_image
from vss_dispatcher.message import Job
from vss_dispatcher.scheduler import Delivery, JobRejected, Outcome
from vss_dispatcher.visionect import (
    VisionectBackend,
    encode_multipart,
    make_visionect_backend,
    signature,
)
from vss_dispatcher.vss import ConfigurationFault, TransientFailure

from .broker import BrokerClient, unique_queues

API_KEY = "dispatcher-key"
API_SECRET = "s3cret-for-tests-only"
DEVICES = (
    "47003a00-0c51-4e12-8a2b-1d2c3e4f5a6b",
    "47003a00-0c51-4e12-8a2b-000000000002",
)

# 2023-11-14 22:13:20 UTC.
WHEN = 1_700_000_000
WHEN_HEADER = "Tue, 14 Nov 2023 22:13:20 GMT"

# Computed once, apart from any Python code, with:
#   printf 'PUT\n\nmultipart/form-data; boundary=b0undary\n'\
#   'Tue, 14 Nov 2023 22:13:20 GMT\n/backend/47003a00-0c51-4e12-8a2b-1d2c3e4f5a6b,'\
#   '47003a00-0c51-4e12-8a2b-000000000002' \
#     | openssl dgst -sha256 -hmac 'not-a-real-secret' -binary | base64
REFERENCE_SIGNATURE = "bI7eqx40W4tr2sN6WeBztixm5HRkUGqPz/6LakJqFWk="
REFERENCE_PATH = f"/backend/{DEVICES[0]},{DEVICES[1]}"


def hand_made_hmac_sha256(key: bytes, message: bytes) -> bytes:
    """
    HMAC-SHA256 written out from its definition (inner and outer padded
    keys), so the stand-in VSS does not share the code under test.
    """
    block = 64
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\x00")
    inner = bytes(byte ^ 0x36 for byte in key)
    outer = bytes(byte ^ 0x5C for byte in key)
    return hashlib.sha256(outer + hashlib.sha256(inner + message).digest()).digest()


def expected_signature(
    secret: str, method: str, content_type: str, date: str, path: str
) -> str:
    """
    The signature the stand-in VSS expects, computed with
    L{hand_made_hmac_sha256}.
    """
    message = f"{method}\n\n{content_type}\n{date}\n{path}".encode()
    return b64encode(hand_made_hmac_sha256(secret.encode("utf-8"), message)).decode()


class SignatureTests(SynchronousTestCase):
    """
    Requests are signed exactly as VSS checks them.
    """

    def test_reference_vector(self) -> None:
        """
        The signature of a fixed request equals the one computed with
        openssl.
        """
        self.assertEqual(
            signature(
                "not-a-real-secret",
                "PUT",
                "multipart/form-data; boundary=b0undary",
                WHEN_HEADER,
                REFERENCE_PATH,
            ),
            REFERENCE_SIGNATURE,
        )

    def test_stand_in_agrees_with_reference(self) -> None:
        """
        The stand-in VSS's own HMAC gives the openssl result too, so its
        verdicts can be trusted.
        """
        self.assertEqual(
            expected_signature(
                "not-a-real-secret",
                "PUT",
                "multipart/form-data; boundary=b0undary",
                WHEN_HEADER,
                REFERENCE_PATH,
            ),
            REFERENCE_SIGNATURE,
        )

    def test_every_line_counts(self) -> None:
        """
        Changing the method, content type, date, path or secret changes the
        signature.
        """
        base = (
            "k",
            "PUT",
            "multipart/form-data; boundary=a",
            WHEN_HEADER,
            "/backend/x",
        )
        reference = signature(*base)
        for position, other in enumerate(
            [
                "K",
                "POST",
                "multipart/form-data; boundary=b",
                "Tue, 14 Nov 2023 22:13:21 GMT",
                "/backend/y",
            ]
        ):
            changed = list(base)
            changed[position] = other
            self.assertNotEqual(signature(*changed), reference, other)

    def test_multipart_body(self) -> None:
        """
        The body is valid multipart/form-data with one file field holding
        the content unchanged.
        """
        content = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4 + b"\r\n--"

        content_type, body = encode_multipart(
            "image", "image.png", "image/png", content
        )

        kind, options = multipart.parse_options_header(content_type)
        self.assertEqual(kind, "multipart/form-data")
        parts = list(
            multipart.MultipartParser(
                io.BytesIO(body), options["boundary"], len(body), strict=True
            )
        )
        self.assertEqual(len(parts), 1)
        self.assertEqual(
            (parts[0].name, parts[0].filename, parts[0].content_type),
            ("image", "image.png", "image/png"),
        )
        self.assertEqual(parts[0].raw, content)


@dataclass
class Received:
    """
    One request as the stand-in VSS received it.
    """

    method: str
    path: str
    date: str | None
    content_type: str | None
    authorization: str | None
    image: Image.Image | None = None
    answered: int = 200


@dataclass
class VisionectStandIn(Resource):
    """
    Answers like VSS's backend API: it checks the signature from the headers
    it actually received (401 when wrong), that the devices exist (404),
    and that the body holds a PNG of the panel's size (400).

    @ivar status: When set, the answer to every request that passes the
        checks, with C{body}.
    @ivar hang: When set, requests are never answered.
    """

    api_key: str
    api_secret: str
    devices: tuple[str, ...]
    size: tuple[int, int]
    status: int | None = None
    body: bytes = b""
    hang: bool = False
    received: list[Received] = field(default_factory=list)
    _waiting: list[Deferred[Received]] = field(default_factory=list)

    isLeaf = True

    def __post_init__(self) -> None:
        Resource.__init__(self)

    def __hash__(self) -> int:
        return id(self)

    def next_request(self) -> Deferred[Received]:
        """
        Fires with the next request received.
        """
        waiting: Deferred[Received] = Deferred()
        self._waiting.append(waiting)
        return waiting

    def render(self, request: Request) -> Any:
        """
        Check and record a request, then answer it (or not, when hanging).
        """
        header = request.getHeader
        seen = Received(
            method=request.method.decode(),
            path=request.path.decode(),
            date=header("date"),
            content_type=header("content-type"),
            authorization=header("authorization"),
        )
        status, message = self._judge(request, seen)
        seen.answered = status
        self.received.append(seen)
        waiting, self._waiting = self._waiting, []
        for arrival in waiting:
            arrival.callback(seen)

        if self.hang:
            request.notifyFinish().addErrback(lambda _: None)
            return NOT_DONE_YET
        request.setResponseCode(status)
        return message

    def _judge(self, request: Request, seen: Received) -> tuple[int, bytes]:
        """
        The status and body VSS would answer C{request} with.
        """
        if seen.method != "PUT":
            return 405, b"method not allowed"
        if seen.date is None or not seen.date.endswith(" GMT"):
            return 401, b"missing or non-GMT Date header"
        parsedate_to_datetime(seen.date)

        key, _, signed = (seen.authorization or "").partition(":")
        wanted = expected_signature(
            self.api_secret, seen.method, seen.content_type or "", seen.date, seen.path
        )
        if key != self.api_key or signed != wanted:
            return 401, b"signature mismatch"

        prefix, _, uuids = seen.path.partition("/backend/")
        if prefix or not uuids:
            return 404, b"no such resource"
        unknown = [uuid for uuid in uuids.split(",") if uuid not in self.devices]
        if unknown:
            return 404, f"unknown device {unknown[0]}".encode()

        problem = self._read_image(request, seen)
        if problem:
            return 400, problem.encode()
        if self.status is not None:
            return self.status, self.body
        return 200, b""

    def _read_image(self, request: Request, seen: Received) -> str:
        """
        Find the PNG in the multipart body and check it.

        @return: What is wrong with it, or an empty string.
        """
        kind, options = multipart.parse_options_header(seen.content_type or "")
        if kind != "multipart/form-data" or "boundary" not in options:
            return f"not multipart/form-data: {seen.content_type}"
        body = request.content.read()
        try:
            parts = {
                part.name: part
                for part in multipart.MultipartParser(
                    io.BytesIO(body), options["boundary"], len(body), strict=True
                )
            }
        except multipart.MultipartError as error:
            return f"bad multipart body: {error}"
        if set(parts) != {"image"}:
            return f"expected one field 'image', got {sorted(parts)}"
        image = Image.open(io.BytesIO(parts["image"].raw))
        image.load()
        seen.image = image
        if image.format != "PNG" or image.size != self.size:
            return f"expected a PNG of {self.size}, got {image.format} {image.size}"
        return ""


class ConnectionTracker(WrappingFactory):
    """
    Knows when every connection to the server has closed, so a test ends
    with a clean reactor.
    """

    def __init__(self, factory: Any) -> None:
        super().__init__(factory)
        self._closed: list[Deferred[None]] = []

    def unregisterProtocol(self, protocol: Any) -> None:
        """
        Forget a closed connection, and tell those waiting once none is
        left.
        """
        super().unregisterProtocol(protocol)
        if not self.protocols:
            waiting, self._closed = self._closed, []
            for closed in waiting:
                closed.callback(None)

    def all_closed(self) -> Deferred[None]:
        """
        Fires once no connection to the server is open.
        """
        if not self.protocols:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        self._closed.append(closed)
        return closed


def halves(size: tuple[int, int]) -> Image.Image:
    """
    Left half red, right half blue.
    """
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    return image


def run_in_reactor_threads(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """
    Run C{function} in the reactor's thread pool, as production does.
    """
    return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)


class VisionectServerCase(TestCase):
    """
    A stand-in VSS on 127.0.0.1, a real HTTP client, and a directory of
    images.
    """

    size = (160, 90)

    def setUp(self) -> None:
        self.directory = os.path.realpath(self.mktemp())
        os.makedirs(self.directory)
        self.vss = VisionectStandIn(API_KEY, API_SECRET, DEVICES, self.size)
        tracker = ConnectionTracker(Site(self.vss))
        port = reactor.listenTCP(0, tracker, interface="127.0.0.1")
        self.base_url = f"http://127.0.0.1:{port.getHost().port}"
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.client = HTTPClient(Agent(reactor, pool=pool))
        self.clock = Clock()
        self.clock.advance(WHEN)

        @inlineCallbacks
        def close() -> Any:
            yield pool.closeCachedConnections()
            yield tracker.all_closed()
            yield port.stopListening()

        self.addCleanup(close)

    def settings(self, **changes: Any) -> Settings:
        """
        Visionect settings for the stand-in, with C{changes} applied.
        """
        values: dict[str, Any] = dict(
            vss_mode="visionect",
            vss_base_url=self.base_url,
            vss_api_key=API_KEY,
            vss_api_secret=API_SECRET,
            vss_device_uuids=DEVICES,
            display_width=self.size[0],
            display_height=self.size[1],
            image_root=self.directory,
            vss_timeout=5.0,
        )
        values.update(changes)
        return Settings(**values)

    def backend(self, **changes: Any) -> Any:
        """
        A backend built as the dispatcher builds it.
        """
        return make_visionect_backend(
            self.settings(**changes), self.client, self.clock, reactor
        )

    def backend_converting_with(
        self, convert: Callable[[str, Geometry], bytes]
    ) -> VisionectBackend:
        """
        A backend whose conversions run C{convert} in the reactor's threads.
        """
        converter = ImageConverter(
            Geometry(*self.size), run_in_reactor_threads, convert=convert
        )
        return VisionectBackend(
            self.client,
            self.base_url,
            API_KEY,
            API_SECRET,
            DEVICES,
            converter,
            5.0,
            self.clock,
        )

    def job(self, name: str, image: Image.Image | None = None) -> Job:
        """
        A job for C{name} in the test's directory, saving C{image} there
        when given.
        """
        path = os.path.join(self.directory, name)
        if image is not None:
            image.save(path)
        return Job(name, 5.0, None, path)


class VisionectBackendTests(VisionectServerCase):
    """
    The backend pushes converted images to VSS and reads its answers.
    """

    @inlineCallbacks
    def test_image_pushed_to_every_device(self) -> Any:
        """
        One signed PUT to /backend/{uuid1},{uuid2} carries the PNG of the
        panel's size, and VSS accepting it fires the attempt.
        """
        job = self.job("poster.png", halves((320, 180)))

        yield self.backend().attempt(job, False)

        [seen] = self.vss.received
        self.assertEqual(seen.answered, 200)
        self.assertEqual(seen.method, "PUT")
        self.assertEqual(seen.path, REFERENCE_PATH)
        self.assertEqual(seen.date, WHEN_HEADER)
        self.assertTrue(seen.authorization.startswith(f"{API_KEY}:"))
        assert seen.image is not None
        self.assertEqual(seen.image.size, (160, 90))
        self.assertEqual(seen.image.getpixel((20, 45)), (255, 0, 0))
        self.assertEqual(seen.image.getpixel((140, 45)), (0, 0, 255))

    @inlineCallbacks
    def test_base_url_with_a_path(self) -> Any:
        """
        A base URL with a path prefix is kept in the request path, and the
        signature covers the path as sent.
        """
        job = self.job("poster.png", halves((160, 90)))

        failure = yield self.assertFailure(
            self.backend(vss_base_url=f"{self.base_url}/vss").attempt(job, False),
            ConfigurationFault,
        )

        # The stand-in serves the API at the root only, so the signature
        # passed and the path was refused.
        [seen] = self.vss.received
        self.assertEqual(seen.path, f"/vss{REFERENCE_PATH}")
        self.assertEqual(seen.answered, 404)
        self.assertIn("VSS answered 404", str(failure))

    @inlineCallbacks
    def test_wrong_secret_is_a_configuration_fault(self) -> Any:
        """
        VSS refusing the signature (401) is a configuration fault that names
        the settings to check and never shows either secret.
        """
        job = self.job("poster.png", halves((160, 90)))

        error = yield self.assertFailure(
            self.backend(vss_api_secret="not-the-secret").attempt(job, False),
            ConfigurationFault,
        )

        self.assertEqual(
            str(error),
            "VSS answered 401: signature mismatch; check VSS_API_KEY and"
            " VSS_API_SECRET",
        )
        self.assertNotIn("not-the-secret", str(error))

    @inlineCallbacks
    def test_unknown_device_is_a_configuration_fault(self) -> Any:
        """
        VSS not knowing a device (404) is a configuration fault naming the
        devices.
        """
        job = self.job("poster.png", halves((160, 90)))
        devices = (DEVICES[0], "ffffffff-0000-0000-0000-000000000000")

        error = yield self.assertFailure(
            self.backend(vss_device_uuids=devices).attempt(job, False),
            ConfigurationFault,
        )

        self.assertEqual(
            str(error),
            "VSS answered 404: unknown device ffffffff-0000-0000-0000-000000000000;"
            " check VSS_BASE_URL and that VSS knows the devices"
            f" {DEVICES[0]}, ffffffff-0000-0000-0000-000000000000",
        )

    @inlineCallbacks
    def test_answers_classified(self) -> Any:
        """
        403 and unexpected answers are configuration faults; 408, 429 and
        5xx are transient; 400, 413, 415 and 422 reject the job with the
        status and an excerpt of the answer.
        """
        job = self.job("poster.png", halves((160, 90)))
        backend = self.backend()
        expected = {
            403: ConfigurationFault,
            302: ConfigurationFault,
            418: ConfigurationFault,
            408: TransientFailure,
            429: TransientFailure,
            500: TransientFailure,
            503: TransientFailure,
            400: JobRejected,
            413: JobRejected,
            415: JobRejected,
            422: JobRejected,
        }
        for status, kind in expected.items():
            self.vss.status = status
            self.vss.body = b"  the   device\nsays no  "
            error = yield self.assertFailure(backend.attempt(job, False), kind)
            self.assertIn(f"VSS answered {status}: the device says no", str(error))

    @inlineCallbacks
    def test_unreachable_is_transient(self) -> Any:
        """
        A VSS that cannot be reached is a transient failure.
        """
        closed = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        address = f"http://127.0.0.1:{closed.getHost().port}"
        yield closed.stopListening()
        job = self.job("poster.png", halves((160, 90)))

        error = yield self.assertFailure(
            self.backend(vss_base_url=address).attempt(job, False), TransientFailure
        )

        self.assertIn("cannot reach VSS", str(error))

    @inlineCallbacks
    def test_no_answer_is_transient(self) -> Any:
        """
        A VSS that does not answer within VSS_TIMEOUT is a transient
        failure, and the request is abandoned.
        """
        self.vss.hang = True
        job = self.job("poster.png", halves((160, 90)))
        attempt = self.backend(vss_timeout=7.0).attempt(job, False)
        yield self.vss.next_request()

        self.clock.advance(7.0)

        error = yield self.assertFailure(attempt, TransientFailure)
        self.assertEqual(str(error), "VSS did not answer within 7 s")

    @inlineCallbacks
    def test_unreadable_image_rejected(self) -> Any:
        """
        A file that is not an image rejects the job with the reason, and
        nothing is sent.
        """
        job = self.job("notes.png")
        with open(job.resolved_path or "", "w") as f:
            f.write("not a picture\n")

        error = yield self.assertFailure(
            self.backend().attempt(job, False), JobRejected
        )

        self.assertEqual(
            error.reason,
            "image 'notes.png' cannot be read: it is not in an image format the"
            " dispatcher can read",
        )
        self.assertEqual(self.vss.received, [])

    def test_needs_resolved_path(self) -> None:
        """
        A job without a resolved path (IMAGE_ROOT empty) is a configuration
        fault.
        """
        attempt = self.backend().attempt(Job("poster.png", 5.0), False)

        failure = self.failureResultOf(attempt, ConfigurationFault)
        self.assertIn("IMAGE_ROOT", failure.getErrorMessage())

    def test_secret_not_in_repr(self) -> None:
        """
        The backend's repr shows the URL and the key, never the secret.
        """
        shown = repr(self.backend())

        self.assertIn(API_KEY, shown)
        self.assertNotIn(API_SECRET, shown)

    @inlineCallbacks
    def test_reactor_runs_during_conversion(self) -> Any:
        """
        A large image is converted off the reactor: a timer due 10 ms after
        the conversion starts runs before the conversion ends.
        """
        path = os.path.join(self.directory, "large.png")
        halves((6000, 4000)).save(path, compress_level=1)
        backend = self.backend(display_width=2560, display_height=1440)
        order: list[str] = []
        reactor.callLater(0.01, order.append, "timer")

        png = yield backend.images.png_for(path).addCallback(
            lambda png: order.append("converted") or png
        )

        self.assertEqual(order, ["timer", "converted"])
        self.assertEqual(Image.open(io.BytesIO(png)).size, (2560, 1440))

    @inlineCallbacks
    def test_cancel_during_conversion(self) -> Any:
        """
        Cancelling an attempt while its image is being converted fails it
        with L{CancelledError} at once; the conversion, done in a worker
        thread, ends in the cache and nothing is sent for it.
        """
        started: Deferred[None] = Deferred()
        release = threading.Event()
        self.addCleanup(release.set)
        threads: list[bool] = []

        def slow_convert(path: str, geometry: Geometry) -> bytes:
            threads.append(threadable.isInIOThread())
            reactor.callFromThread(started.callback, None)
            release.wait(60)
            return convert_image(path, geometry)

        backend = self.backend_converting_with(slow_convert)
        job = self.job("poster.png", halves((160, 90)))
        attempt = backend.attempt(job, True)
        yield started

        attempt.cancel()

        self.failureResultOf(attempt, CancelledError)
        release.set()
        # A new attempt joins the running conversion or finds its result.
        yield backend.attempt(job, True)
        self.assertEqual(threads, [False])
        self.assertEqual(len(self.vss.received), 1)

    @inlineCallbacks
    def test_repeated_image_not_converted_again(self) -> Any:
        """
        Showing the same image again sends it again without converting it
        again.
        """
        calls: list[str] = []

        def counting_convert(path: str, geometry: Geometry) -> bytes:
            calls.append(path)
            return convert_image(path, geometry)

        backend = self.backend_converting_with(counting_convert)
        job = self.job("poster.png", halves((160, 90)))

        yield backend.attempt(job, False)
        yield backend.attempt(job, False)

        self.assertEqual(calls, [job.resolved_path])
        self.assertEqual([seen.answered for seen in self.vss.received], [200, 200])


class DisplayEnded:
    """
    A scheduler observer that fires a Deferred when a display ends, on the
    next reactor turn so the scheduler finishes settling first.
    """

    def __init__(self) -> None:
        self.ended: Deferred[Outcome] = Deferred()

    def display_sending(self, delivery: Delivery) -> None:
        pass

    def display_started(self, delivery: Delivery) -> None:
        pass

    def display_ended(
        self, delivery: Delivery, outcome: Outcome, planned: float, actual: float
    ) -> None:
        if not self.ended.called:
            reactor.callLater(0, self.ended.callback, outcome)


class EndToEndTests(VisionectServerCase):
    """
    The dispatcher, in visionect mode, takes a job from the real RabbitMQ
    and pushes its image to VSS.
    """

    size = (2560, 1440)

    @inlineCallbacks
    def test_job_from_queue_reaches_vss(self) -> Any:
        """
        A job published on the normal queue is converted to the panel's
        default size, arrives at VSS as a signed PUT, and is acknowledged
        once its display ends.
        """
        from vss_dispatcher.app import DispatcherService

        normal, priority, dead = unique_queues("visionect")
        broker = BrokerClient()
        self.addCleanup(broker.close)
        self.addCleanup(broker.delete, normal, priority, dead)
        broker.declare(normal, priority, dead)
        halves((1200, 1600)).save(os.path.join(self.directory, "poster.png"))
        secret_file = os.path.join(self.directory, "secret")
        with open(secret_file, "w") as f:
            f.write(API_SECRET + "\n")
        settings = load_settings(
            {
                "RABBITMQ_HOST": "127.0.0.1",
                "RABBITMQ_NORMAL_QUEUE": normal,
                "RABBITMQ_PRIORITY_QUEUE": priority,
                "RABBITMQ_DEAD_LETTER_QUEUE": dead,
                "VSS_MODE": "visionect",
                "VSS_BASE_URL": self.base_url,
                "VSS_API_KEY": API_KEY,
                "VSS_API_SECRET_FILE": secret_file,
                "VSS_DEVICE_UUIDS": ",".join(DEVICES),
                "IMAGE_ROOT": self.directory,
                "STATUS_ENDPOINT": "",
            }
        )
        service = DispatcherService(settings, reactor)
        observer = DisplayEnded()
        service.scheduler.observers.append(observer)
        arrived = self.vss.next_request()
        broker.publish(normal, {"image_path": "poster.png", "duration": 0.1})

        service.startService()
        try:
            seen = yield arrived
            outcome = yield observer.ended
        finally:
            yield service.stopService()

        self.assertEqual(seen.answered, 200)
        self.assertEqual(seen.path, REFERENCE_PATH)
        assert seen.image is not None
        self.assertEqual(seen.image.size, (2560, 1440))
        self.assertEqual(outcome, Outcome.COMPLETED)
        self.assertEqual(broker.count(normal), 0)
        self.assertEqual(broker.count(dead), 0)
