"""
The HTTP client that talks to VSS: treq over one pool of kept-alive
connections, with TLS host names verified through service-identity.

The dispatcher sends every request to the same one or two URLs, so the work
that treq and Twisted's agent would otherwise repeat for each request
(turning the host name into its IDNA form, building an endpoint for it) is
done once here.  VSS does not use cookies, so none are kept or sent, which
spares the standard library's cookie handling on every request.  A request's
body, already in memory, is written with its headers rather than handed to a
cooperative task that writes it a turn later.  On a busy queue each of these
is a noticeable share of the time spent per job.
"""

from __future__ import annotations

from typing import Any

from hyperlink import EncodedURL
from treq.cookies import IndexableCookieJar
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IConsumer, IStreamClientEndpoint
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from .reconnect import client_endpoint

__all__ = [
    "REQUEST_OPTIONS",
    "BytesBody",
    "CachedEndpoints",
    "NoCookies",
    "make_http_client",
    "prepared_url",
]


class NoCookies(IndexableCookieJar):
    """
    A cookie jar that stays empty: nothing is stored from answers and no
    cookie is sent.
    """

    def add_cookie_header(self, request: Any) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


# What every request to VSS passes to treq: no redirects (a display must go
# where it was configured to go), the empty jar instead of a new one per
# request, and the answer handed over unbuffered, since it is read at once.
REQUEST_OPTIONS: dict[str, Any] = {
    "allow_redirects": False,
    "cookies": NoCookies(),
    "unbuffered": True,
}


class _SendableURL(EncodedURL):
    """
    A URL already in the form that goes on the wire, so that treq does not
    encode it again, nor write it out again as text, for every request.
    """

    def to_uri(self) -> _SendableURL:
        return self

    def to_text(self, with_password: bool = False) -> str:
        key = "_text_with_password" if with_password else "_text"
        text: str | None = self.__dict__.get(key)
        if text is None:
            text = self.__dict__[key] = super().to_text(with_password)
        return text


def prepared_url(text: str) -> EncodedURL:
    """
    Parse and encode C{text} once, for use in many requests.
    """
    sendable = EncodedURL.from_text(text).to_uri().to_text()
    return _SendableURL.from_text(sendable)


@implementer(IAgentEndpointFactory)
class CachedEndpoints:
    """
    Builds the endpoint for each VSS address once and reuses it.
    """

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._policy = BrowserLikePolicyForHTTPS()
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = self._build(uri)
        return endpoint

    def _build(self, uri: Any) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        endpoint = client_endpoint(self._reactor, host, uri.port, self._connect_timeout)
        if uri.scheme == b"https":
            creator = self._policy.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        elif uri.scheme != b"http":
            raise ValueError(f"VSS_BASE_URL must be http or https, not {uri.scheme!r}")
        return endpoint


@implementer(IBodyProducer)
class BytesBody:
    """
    A request body that is already in memory, written in one piece as soon
    as the request is: the same bytes go out with the headers, in the same
    system call.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def body_producer(data: Any) -> IBodyProducer:
    """
    The producer treq is to send C{data} with: L{BytesBody} for bytes, and
    what treq would use otherwise.
    """
    if isinstance(data, bytes):
        return BytesBody(data)
    return IBodyProducer(data)


class _QuietFactory(_HTTP11ClientFactory):
    # One "starting factory" line per connection to VSS is noise.
    noisy = False


def make_http_client(reactor: Any, timeout: float) -> tuple[Any, HTTPConnectionPool]:
    """
    A treq client for VSS and the pool of its connections (close the pool's
    connections when stopping).

    @param timeout: Seconds allowed for a TCP connection to be made.
    """
    from treq.client import HTTPClient

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietFactory
    pool.maxPersistentPerHost = 2
    # Requests are retried by the dispatcher, which knows when a retry is
    # still wanted; the pool must not repeat a display on its own.
    pool.retryAutomatically = False
    agent = Agent.usingEndpointFactory(
        reactor, CachedEndpoints(reactor, timeout), pool=pool
    )
    client = HTTPClient(
        agent, cookiejar=NoCookies(), data_to_body_producer=body_producer
    )
    return client, pool
