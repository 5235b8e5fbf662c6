"""
The Visionect Software Suite backend: the image itself is pushed to the
devices through VSS's HTTP backend API.

For each job the image is converted to a PNG of the panel's size (see
L{vss_dispatcher.imaging}) in a worker thread, then sent in one request for
all devices::

    PUT {VSS_BASE_URL}/backend/{uuid1},{uuid2}
    Content-Type: multipart/form-data; boundary=...   (one file field, image)
    Date: Tue, 14 Nov 2023 22:13:20 GMT
    Authorization: {VSS_API_KEY}:{signature}

The signature is the base64 of the HMAC-SHA256, keyed with the API secret,
of five lines joined by newlines: the method, an empty content hash, the
Content-Type header exactly as sent, the Date header, and the request path.

VSS accepting the image is as far as the dispatcher can see: the e-paper
panel then takes a few seconds to redraw, and the job's duration counts
from the acceptance.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from .config import Settings
from .http import REQUEST_OPTIONS
from .imaging import Geometry, ImageConverter, ImageUnavailable, UnreadableImage
from .message import Job
from .scheduler import JobRejected
from .threads import thread_runner
from .vss import (
    ConfigurationFault,
    TransientFailure,
    classify_status,
    read_answer,
    with_timeout,
)

__all__ = [
    "VisionectBackend",
    "encode_multipart",
    "make_visionect_backend",
    "signature",
]


def signature(
    secret: str,
    method: str,
    content_type: str,
    date: str,
    path: str,
    content_hash: str = "",
) -> str:
    """
    The signature of one request to VSS's backend API.

    @param secret: The API secret.
    @param method: The HTTP method, for example C{"PUT"}.
    @param content_type: The Content-Type header exactly as sent.
    @param date: The Date header exactly as sent.
    @param path: The request path, for example C{"/backend/uuid1,uuid2"}.
    @param content_hash: Left empty by this client.
    @return: The base64 text that follows C{"key:"} in the Authorization
        header.
    """
    message = "\n".join([method, content_hash, content_type, date, path])
    digest = hmac.new(
        secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def encode_multipart(
    field: str, filename: str, content_type: str, content: bytes
) -> tuple[str, bytes]:
    """
    A C{multipart/form-data} body holding one file.

    @return: The Content-Type header (with its boundary) and the body.
    """
    boundary = secrets.token_hex(16)
    while boundary.encode("ascii") in content:
        boundary = secrets.token_hex(16)
    delimiter = f"--{boundary}".encode("ascii")
    part_headers = (
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n"
    ).encode("ascii")
    body = b"".join(
        [
            delimiter,
            b"\r\n",
            part_headers,
            b"\r\n",
            content,
            b"\r\n",
            delimiter,
            b"--\r\n",
        ]
    )
    return f"multipart/form-data; boundary={boundary}", body


class VisionectBackend:
    """
    Shows jobs by pushing their image to the devices through VSS's backend
    API.  Implements L{vss_dispatcher.vss.DisplayBackend}.

    @ivar images: Converts the images and keeps the results.
    """

    def __init__(
        self,
        client: Any,
        base_url: str,
        api_key: str,
        api_secret: str,
        device_uuids: tuple[str, ...],
        images: ImageConverter,
        timeout: float,
        clock: IReactorTime,
    ) -> None:
        """
        @param client: A L{treq.client.HTTPClient}.
        @param base_url: VSS's base URL, without a trailing slash.
        @param api_key: The API key, sent in every request.
        @param api_secret: The API secret, used only to sign; never shown.
        @param device_uuids: The devices that show every image.
        @param images: Converts images to the panel's PNG.
        @param timeout: Seconds to wait for VSS to answer one request.
        @param clock: Gives the Date of each request and times it out.
        """
        self._client = client
        self._url = f"{base_url.rstrip('/')}/backend/{','.join(device_uuids)}"
        self._path = urlsplit(self._url).path
        self._api_key = api_key
        self._api_secret = api_secret
        self._devices = ", ".join(device_uuids)
        self.images = images
        self._timeout = timeout
        self._clock = clock

    def __repr__(self) -> str:
        return f"VisionectBackend(url={self._url!r}, api_key={self._api_key!r})"

    def attempt(self, job: Job, priority: bool) -> Deferred[float]:
        """
        Convert the job's image and push it to the devices once.

        @return: A L{Deferred} that fires when VSS accepted the image, with
            the time its answer arrived, or fails with L{TransientFailure},
            L{ConfigurationFault} or L{JobRejected}.  Cancelling it abandons
            the conversion (the caller is answered at once) or the request.
        """
        if job.resolved_path is None:
            return fail(
                ConfigurationFault(
                    "the visionect mode needs IMAGE_ROOT to find image files,"
                    " but it is empty"
                )
            )
        converting = self.images.png_for(job.resolved_path)
        converting.addErrback(self._conversion_failed, job)
        sending: Deferred[float] = converting.addCallback(self._send)
        return sending

    def _conversion_failed(self, failure: Failure, job: Job) -> Failure:
        """
        Turn a refused image into a refused job, and a passing file-system
        error into a transient failure.
        """
        error = failure.value
        if isinstance(error, ImageUnavailable):
            raise TransientFailure(
                f"image {job.image_path!r} cannot be read for now: {error.detail}"
            )
        if isinstance(error, UnreadableImage):
            raise JobRejected(
                f"image {job.image_path!r} cannot be read: {error.detail}"
            )
        return failure

    def _send(self, png: bytes) -> Deferred[float]:
        """
        Sign and send one PUT carrying C{png}.
        """
        content_type, body = encode_multipart("image", "image.png", "image/png", png)
        date = formatdate(self._clock.seconds(), usegmt=True)
        signed = signature(self._api_secret, "PUT", content_type, date, self._path)
        headers = Headers(
            {
                b"Content-Type": [content_type.encode("ascii")],
                b"Date": [date.encode("ascii")],
                b"Authorization": [f"{self._api_key}:{signed}".encode()],
            }
        )
        request = self._client.put(
            self._url, data=body, headers=headers, **REQUEST_OPTIONS
        )
        return with_timeout(
            request,
            self._timeout,
            self._clock,
            lambda response: read_answer(response, self._classify, self._clock),
        )

    def _classify(self, status: int, excerpt: str) -> Exception | None:
        """
        What an answer of VSS means for the job, with a pointer to the
        settings to check when our configuration is at fault.

        @return: C{None} for success, or the exception describing the failure.
        """
        answered = (
            f"VSS answered {status}: {excerpt}" if excerpt else f"VSS answered {status}"
        )
        if status in (401, 403):
            return ConfigurationFault(
                f"{answered}; check VSS_API_KEY and VSS_API_SECRET"
            )
        if status == 404:
            return ConfigurationFault(
                f"{answered}; check VSS_BASE_URL and that VSS knows the devices"
                f" {self._devices}"
            )
        return classify_status(status, excerpt)


def make_visionect_backend(
    settings: Settings, client: Any, clock: IReactorTime, reactor: Any
) -> VisionectBackend:
    """
    Build the Visionect backend from the settings.

    @param settings: Checked settings in visionect mode.
    @param client: A L{treq.client.HTTPClient}.
    @param clock: Gives request dates and timeouts.
    @param reactor: Provides the worker threads that convert images.
    """

    run_in_thread = thread_runner(reactor)

    geometry = Geometry(
        settings.display_width, settings.display_height, settings.display_rotate
    )
    return VisionectBackend(
        client,
        settings.vss_base_url,
        settings.vss_api_key,
        settings.vss_api_secret,
        settings.vss_device_uuids,
        ImageConverter(geometry, run_in_thread),
        settings.vss_timeout,
        clock,
    )
