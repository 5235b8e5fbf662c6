"""
Tests for L{vss_dispatcher.vss}: the JSON protocol of L{DisplayAPI} against
treq's in-memory HTTP, and the retries of L{RetryingDisplay} on a
L{task.Clock}.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet import reactor
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, ResponseNeverReceived
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from vss_dispatcher.http import (
    BytesBody,
    make_http_client,
    prepared_url,
)
from vss_dispatcher.message import Job
from vss_dispatcher.scheduler import JobRejected
from vss_dispatcher.vss import (
    ConfigurationFault,
    DisplayAPI,
    RetryingDisplay,
    TransientFailure,
    connection_problem,
)

# An answer that never comes: the request hangs until it is cancelled.
HANG = None

Answer = tuple[int, bytes] | None

JOB = Job("lobby/welcome.png", 12.5, "welcome-1")

# The JSON body that shows JOB as a priority job.
JOB_SENT_AS_PRIORITY = {
    "image_path": "lobby/welcome.png",
    "duration": 12.5,
    "message_id": "welcome-1",
    "priority": True,
}


class ScriptedVSS(Resource):
    """
    An in-memory VSS that answers requests from a script and records them.

    @ivar answers: The answers still to give, in order.
    @ivar requests: The method, path, content type and body of every
        request, in order.
    """

    isLeaf = True

    def __init__(self, answers: Sequence[Answer], then: Answer = (200, b"ok")) -> None:
        """
        @param answers: The answers to give, in order: a status and a body,
            or L{HANG}.
        @param then: The answer to every request after the script ran out.
        """
        super().__init__()
        self.answers = list(answers)
        self._then = then
        self.requests: list[tuple[bytes, bytes, bytes | None, bytes]] = []

    def render(self, request: Request) -> Any:
        content_type = request.requestHeaders.getRawHeaders(b"content-type", [None])[0]
        self.requests.append(
            (request.method, request.path, content_type, request.content.read())
        )
        answer = self.answers.pop(0) if self.answers else self._then
        if answer is HANG:
            return NOT_DONE_YET
        status, body = answer
        request.setResponseCode(status)
        return body


class SlowBodyVSS(Resource):
    """
    Answers 200 with the first part of the body at once and the rest only
    when told to.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Request] = []

    def render(self, request: Request) -> Any:
        request.setResponseCode(200)
        request.write(b"accepted, ")
        self.pending.append(request)
        return NOT_DONE_YET

    def finish(self) -> None:
        for request in self.pending:
            request.write(b"on screen")
            request.finish()


@implementer(IAgent)
class UnreachableAgent:
    """
    An agent that fails the first requests as a network would, then hands
    the rest to another agent.
    """

    def __init__(self, errors: Sequence[Exception], then: Any) -> None:
        self._errors = list(errors)
        self._then = then

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        if self._errors:
            return fail(self._errors.pop(0))
        return self._then.request(method, uri, headers, bodyProducer)


class RaisingBackend:
    """
    A backend with a bug: its first attempts raise or fail with an error no
    backend should produce; later ones are accepted.
    """

    def __init__(self, errors: Sequence[Callable[[], Deferred[None]]]) -> None:
        self._errors = list(errors)
        self.attempts = 0

    def attempt(self, job: Job, priority: bool) -> Deferred[None]:
        self.attempts += 1
        if self._errors:
            return self._errors.pop(0)()
        return succeed(None)


class RecordingVSSObserver:
    """
    Records what L{RetryingDisplay} tells its observers.
    """

    def __init__(self) -> None:
        self.answers: list[str] = []
        self.retries: list[tuple[int, float, str]] = []

    def vss_answered(self, seconds: float, result: str) -> None:
        self.answers.append(result)

    def vss_retrying(self, failures: int, delay: float, reason: str) -> None:
        self.retries.append((failures, delay, reason))


def errors_of(events: Sequence[LogEvent]) -> list[str]:
    """
    The text of the error-level events logged by the dispatcher.
    """
    return [
        formatEvent(event)
        for event in events
        if event.get("log_level") == LogLevel.error
        and str(event.get("log_namespace", "")).startswith("vss_dispatcher")
    ]


class VSSTestCase(SynchronousTestCase):
    """
    Builds a L{DisplayAPI} on in-memory HTTP and a L{Clock}, and checks after
    every test that no DelayedCall is left.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def api(
        self, vss: Resource, base_url: str = "http://vss.example:8080"
    ) -> DisplayAPI:
        """
        A L{DisplayAPI} talking to C{vss} through L{StubTreq}.
        """
        return DisplayAPI(StubTreq(vss), base_url, 30, self.clock)

    def retrying(
        self, backend: Any, retry_delay: float = 1.0, retry_count: int = 3
    ) -> RetryingDisplay:
        """
        A L{RetryingDisplay} over C{backend} on the test's clock.
        """
        return RetryingDisplay(
            backend, self.clock, retry_delay=retry_delay, retry_count=retry_count
        )

    def advance_to(self, moment: float) -> None:
        """
        Run the clock to C{moment}, firing each DelayedCall at its own time.
        """
        while True:
            due = [
                call.getTime()
                for call in self.clock.getDelayedCalls()
                if call.getTime() <= moment
            ]
            if not due:
                break
            self.clock.advance(min(due) - self.clock.seconds())
        self.clock.advance(moment - self.clock.seconds())

    def waits(self) -> Iterator[float]:
        """
        Run the clock through each retry wait in turn, yielding its length,
        until no retry is pending.
        """
        while self.clock.getDelayedCalls():
            [call] = self.clock.getDelayedCalls()
            delay = call.getTime() - self.clock.seconds()
            yield delay
            self.clock.advance(delay)


class DisplayAPITests(VSSTestCase):
    """
    One request of the JSON protocol.
    """

    def test_posts_job_as_json(self) -> None:
        """
        A job is posted to C{{base}/display} as a JSON object with exactly
        the image path, duration, message id and priority.
        """
        vss = ScriptedVSS([(200, b"ok")])
        self.successResultOf(
            self.api(vss, "http://vss.example:8080/").attempt(JOB, True)
        )

        [(method, path, content_type, body)] = vss.requests
        self.assertEqual(
            (method, path, content_type), (b"POST", b"/display", b"application/json")
        )
        self.assertEqual(json.loads(body), JOB_SENT_AS_PRIORITY)

    def test_posts_under_base_path(self) -> None:
        """
        A base URL with a path gets C{/display} appended to that path; a job
        without id is sent with a null id.
        """
        vss = ScriptedVSS([(204, b"")])
        self.successResultOf(
            self.api(vss, "http://vss.example/api/v1").attempt(Job("a.png", 0.0), False)
        )
        [(_, path, _, body)] = vss.requests
        self.assertEqual(path, b"/api/v1/display")
        self.assertEqual(
            json.loads(body),
            {
                "image_path": "a.png",
                "duration": 0.0,
                "message_id": None,
                "priority": False,
            },
        )

    def test_success_statuses(self) -> None:
        """
        Every 2xx answer means VSS accepted the job, and the attempt gives
        the time the answer arrived.
        """
        self.clock.advance(1000)
        for status in (200, 201, 202, 204, 299):
            vss = ScriptedVSS([(status, b"")])
            self.assertEqual(
                self.successResultOf(self.api(vss).attempt(JOB, False)), 1000.0
            )

    def test_answer_time_is_its_arrival(self) -> None:
        """
        The time given is when the status line and headers arrived, not
        when the rest of the body did.
        """
        vss = SlowBodyVSS()
        stub = StubTreq(vss)
        attempt = DisplayAPI(stub, "http://vss.example", 30, self.clock).attempt(
            JOB, False
        )
        stub.flush()
        self.assertNoResult(attempt)

        self.clock.advance(3)
        vss.finish()
        stub.flush()
        self.assertEqual(self.successResultOf(attempt), 0.0)

    def test_refusal_statuses(self) -> None:
        """
        400, 413, 415 and 422 mean VSS will never show this job: the reason
        gives the status and VSS's answer.
        """
        for status in (400, 413, 415, 422):
            vss = ScriptedVSS([(status, b'{"error": "unknown image"}\n')])
            failure = self.failureResultOf(
                self.api(vss).attempt(JOB, False), JobRejected
            )
            self.assertEqual(
                failure.value.reason,
                f'VSS answered {status}: {{"error": "unknown image"}}',
            )

    def test_refusal_reason_is_short(self) -> None:
        """
        A long answer is cut down to a short excerpt on one line.
        """
        vss = ScriptedVSS([(422, b"bad\n\n   image " + b"x" * 5000)])
        failure = self.failureResultOf(self.api(vss).attempt(JOB, False), JobRejected)
        reason = failure.value.reason
        self.assertTrue(reason.startswith("VSS answered 422: bad image xxx"))
        self.assertTrue(reason.endswith("..."))
        self.assertLess(len(reason), 250)

    def test_transient_statuses(self) -> None:
        """
        408, 429 and 5xx answers are transient failures.
        """
        for status in (408, 429, 500, 502, 503, 504):
            vss = ScriptedVSS([(status, b"busy")])
            failure = self.failureResultOf(
                self.api(vss).attempt(JOB, False), TransientFailure
            )
            self.assertEqual(failure.getErrorMessage(), f"VSS answered {status}: busy")

    def test_configuration_statuses(self) -> None:
        """
        401, 403 and other answers point at our configuration.
        """
        for status in (401, 403, 404, 405, 418):
            vss = ScriptedVSS([(status, b"")])
            failure = self.failureResultOf(
                self.api(vss).attempt(JOB, False), ConfigurationFault
            )
            self.assertEqual(failure.getErrorMessage(), f"VSS answered {status}")

    def test_redirect_not_followed(self) -> None:
        """
        A redirect is not followed: it is reported as a configuration fault
        after a single request.
        """
        vss = ScriptedVSS([(302, b"moved")])
        self.failureResultOf(self.api(vss).attempt(JOB, False), ConfigurationFault)
        self.assertEqual(len(vss.requests), 1)

    def test_timeout(self) -> None:
        """
        A request VSS never answers fails as transient once the timeout has
        passed on the clock.
        """
        vss = ScriptedVSS([HANG])
        attempt = self.api(vss).attempt(JOB, False)
        self.clock.advance(29.9)
        self.assertNoResult(attempt)
        self.clock.advance(0.1)
        failure = self.failureResultOf(attempt, TransientFailure)
        self.assertEqual(failure.getErrorMessage(), "VSS did not answer within 30 s")

    def test_cancel(self) -> None:
        """
        Cancelling an attempt abandons the request and its timeout.
        """
        vss = ScriptedVSS([HANG])
        attempt = self.api(vss).attempt(JOB, False)
        attempt.cancel()
        self.failureResultOf(attempt, CancelledError)

    def test_connection_errors(self) -> None:
        """
        Network errors are transient failures saying VSS cannot be reached.
        """
        errors = [
            ConnectionRefusedError(),
            DNSLookupError("vss.example"),
            ConnectionLost(),
            ResponseNeverReceived([]),
        ]
        for error in errors:
            client = HTTPClient(UnreachableAgent([error], None))
            api = DisplayAPI(client, "http://vss.example:8080", 30, self.clock)
            failure = self.failureResultOf(api.attempt(JOB, False), TransientFailure)
            self.assertTrue(failure.getErrorMessage().startswith("cannot reach VSS: "))


class RealSocketTests(TestCase):
    """
    L{DisplayAPI} with treq's real HTTP client on the loopback interface.
    """

    def api_for(self, vss: Resource, path: str = "") -> DisplayAPI:
        """
        Serve C{vss} on a free loopback port and make a L{DisplayAPI} with
        the dispatcher's own HTTP client whose base URL is there plus
        C{path}.
        """
        site = Site(vss)
        site.noisy = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client, pool = make_http_client(reactor, 5)
        self.addCleanup(pool.closeCachedConnections)
        base = f"http://127.0.0.1:{port.getHost().port}{path}"
        return DisplayAPI(client, base, 5, reactor)

    async def test_connection_refused(self) -> None:
        """
        A port where nothing listens gives a transient failure.
        """
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        await maybeDeferred(port.stopListening)

        clock = Clock()
        client = HTTPClient(Agent(reactor))
        api = DisplayAPI(client, f"http://127.0.0.1:{number}", 30, clock)
        with self.assertRaises(TransientFailure) as caught:
            await api.attempt(JOB, False)
        self.assertIn("cannot reach VSS", str(caught.exception))
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_kept_alive_without_cookies(self) -> None:
        """
        The dispatcher's own client reuses one connection for consecutive
        requests, reads each answer, and neither keeps nor sends the
        cookies VSS sets.
        """

        class CookieSettingVSS(Resource):
            isLeaf = True

            def __init__(self) -> None:
                super().__init__()
                self.seen: list[tuple[int, list[bytes] | None]] = []

            def render(self, request: Request) -> bytes:
                self.seen.append(
                    (
                        request.getClientAddress().port,
                        request.requestHeaders.getRawHeaders(b"cookie"),
                    )
                )
                request.addCookie(b"session", b"abc", path=b"/")
                return b"accepted"

        vss = CookieSettingVSS()
        api = self.api_for(vss)

        await api.attempt(JOB, False)
        await api.attempt(JOB, True)

        [(first_port, first_cookie), (second_port, second_cookie)] = vss.seen
        self.assertEqual(first_port, second_port)
        self.assertIsNone(first_cookie)
        self.assertIsNone(second_cookie)

    async def test_body_sent_whole(self) -> None:
        """
        The dispatcher's own client sends the job's JSON with its length,
        to the display path under the base URL.
        """
        vss = BodyEchoVSS()
        api = self.api_for(vss, "/vss")

        await api.attempt(JOB, True)

        [(path, length, body)] = vss.seen
        self.assertEqual(path, b"/vss/display")
        self.assertEqual(length, [str(len(body)).encode()])
        self.assertEqual(json.loads(body), JOB_SENT_AS_PRIORITY)


class BodyEchoVSS(Resource):
    """
    Records the path, declared length and body of each request.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, list[bytes] | None, bytes]] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        self.seen.append(
            (
                request.path,
                request.requestHeaders.getRawHeaders(b"content-length"),
                request.content.read(),
            )
        )
        return b"accepted"


class BytesBodyTests(SynchronousTestCase):
    """
    L{BytesBody} writes its bytes at once.
    """

    def test_written_when_started(self) -> None:
        """
        Its length is known beforehand, and starting it writes everything
        and finishes at once.
        """
        body = BytesBody(b'{"image_path": "a.png"}')
        self.assertEqual(body.length, 23)
        written: list[bytes] = []

        class Consumer:
            def write(self, data: bytes) -> None:
                written.append(data)

        self.assertIsNone(self.successResultOf(body.startProducing(Consumer())))
        self.assertEqual(written, [b'{"image_path": "a.png"}'])
        body.pauseProducing()
        body.resumeProducing()
        body.stopProducing()


class PreparedURLTests(SynchronousTestCase):
    """
    The VSS URL is encoded and written out once, not for every request.
    """

    def test_encoded_once_and_reused(self) -> None:
        """
        A host name outside ASCII is in its IDNA form, the URL is its own
        wire form, and its text is the same string on every request.
        """
        url = prepared_url("http://b\u00fccher.example:8080/vss/display")
        self.assertIs(url.to_uri(), url)
        text = url.to_text()
        self.assertEqual(text, "http://xn--bcher-kva.example:8080/vss/display")
        self.assertIs(url.to_text(), text)


class RetryTests(VSSTestCase):
    """
    L{RetryingDisplay} over the JSON protocol.
    """

    def test_backoff_until_success(self) -> None:
        """
        Failed requests are retried after waits that start at the retry
        delay and double up to 30 seconds, for as long as it takes.
        """
        vss = ScriptedVSS([(503, b"busy")] * 12)
        display = self.retrying(self.api(vss))
        showing = display.show(JOB, False)

        self.assertEqual(
            list(self.waits()), [1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30, 30]
        )
        self.assertEqual(self.successResultOf(showing), 241.0)
        self.assertEqual(len(vss.requests), 13)

    def test_backoff_starts_at_retry_delay(self) -> None:
        """
        The first wait is the configured retry delay.
        """
        vss = ScriptedVSS([(500, b"")] * 9)
        display = self.retrying(self.api(vss), retry_delay=0.25)
        showing = display.show(JOB, False)
        self.assertEqual(list(self.waits()), [0.25, 0.5, 1, 2, 4, 8, 16, 30, 30])
        self.successResultOf(showing)

    def test_delay_after_many_failures(self) -> None:
        """
        The wait stays at 30 seconds after thousands of failures in a row.
        """
        display = self.retrying(None)
        self.assertEqual(display.delay_after(1), 1.0)
        self.assertEqual(display.delay_after(6), 30.0)
        self.assertEqual(display.delay_after(5000), 30.0)

    def test_retried_statuses(self) -> None:
        """
        408, 429, 5xx, 401, 403 and other answers are all retried.
        """
        for status in (408, 429, 500, 503, 401, 403, 404):
            vss = ScriptedVSS([(status, b"")])
            showing = self.retrying(self.api(vss)).show(JOB, False)
            self.assertNoResult(showing)
            self.clock.advance(1)
            self.successResultOf(showing)
            self.assertEqual(len(vss.requests), 2)

    def test_connection_errors_retried(self) -> None:
        """
        Network errors are retried until VSS can be reached.
        """
        vss = ScriptedVSS([])
        agent = UnreachableAgent(
            [ConnectionRefusedError(), DNSLookupError("vss.example"), ConnectionLost()],
            RequestTraversalAgent(vss),
        )
        client = HTTPClient(agent, data_to_body_producer=BytesBody)
        api = DisplayAPI(client, "http://vss.example:8080", 30, self.clock)
        display = self.retrying(api)
        showing = display.show(JOB, False)
        self.assertIn("cannot reach VSS", display.last_error or "")

        self.assertEqual(list(self.waits()), [1, 2, 4])
        self.successResultOf(showing)
        self.assertEqual(len(vss.requests), 1)

    def test_timeout_retried(self) -> None:
        """
        A request that is never answered is abandoned after the timeout and
        retried.
        """
        vss = ScriptedVSS([HANG])
        display = self.retrying(self.api(vss))
        showing = display.show(JOB, False)

        self.clock.advance(30)
        self.assertEqual(display.last_error, "VSS did not answer within 30 s")
        self.assertEqual(display.failures, 1)
        self.clock.advance(1)
        self.successResultOf(showing)
        self.assertEqual(len(vss.requests), 2)

    def test_refusal_not_retried(self) -> None:
        """
        A job VSS refuses fails at once with the refusal.
        """
        vss = ScriptedVSS([(422, b"unknown image")])
        showing = self.retrying(self.api(vss)).show(JOB, False)
        failure = self.failureResultOf(showing, JobRejected)
        self.assertEqual(failure.value.reason, "VSS answered 422: unknown image")
        self.assertEqual(len(vss.requests), 1)

    def test_success_resets_failures(self) -> None:
        """
        The failure count and last error describe the current run of
        failures and are cleared by a success.
        """
        vss = ScriptedVSS([(503, b"busy"), (503, b"busy")])
        display = self.retrying(self.api(vss))
        showing = display.show(JOB, False)
        self.clock.advance(1)
        self.assertEqual(display.failures, 2)
        self.assertEqual(display.last_error, "VSS answered 503: busy")

        self.clock.advance(2)
        self.successResultOf(showing)
        self.assertEqual(display.failures, 0)
        self.assertIsNone(display.last_error)

    def test_failures_count_across_jobs(self) -> None:
        """
        A job shown after a cancelled one continues the backoff of the
        outage rather than starting it again.
        """
        vss = ScriptedVSS([(503, b"")] * 3)
        display = self.retrying(self.api(vss))
        first = display.show(JOB, False)
        self.clock.advance(1)
        first.cancel()
        self.failureResultOf(first, CancelledError)

        second = display.show(JOB, True)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), 4)
        self.clock.advance(4)
        self.successResultOf(second)

    def test_cancel_while_waiting(self) -> None:
        """
        Cancelling while waiting to retry stops the retries and leaves no
        DelayedCall.
        """
        vss = ScriptedVSS([], then=(503, b""))
        showing = self.retrying(self.api(vss)).show(JOB, False)
        self.clock.advance(1)
        self.assertEqual(len(vss.requests), 2)

        showing.cancel()
        self.failureResultOf(showing, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(len(vss.requests), 2)

    def test_cancel_during_request(self) -> None:
        """
        Cancelling while a request is in flight abandons it and its timeout
        and makes no other request.
        """
        vss = ScriptedVSS([HANG])
        showing = self.retrying(self.api(vss)).show(JOB, False)
        showing.cancel()
        self.failureResultOf(showing, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(vss.requests), 1)

    def test_error_logged_after_retry_count(self) -> None:
        """
        An error is logged once the retry count is reached, then again only
        every few minutes while the outage lasts, and recovery is logged.
        """
        vss = ScriptedVSS([(503, b"busy")] * 20)
        display = self.retrying(self.api(vss), retry_count=3)
        with capturedLogs() as events:
            showing = display.show(JOB, False)
            self.clock.advance(1)
            self.assertEqual(errors_of(events), [])
            self.clock.advance(2)
            [error] = errors_of(events)
            self.assertIn("VSS failed 3 times in a row (VSS answered 503: busy)", error)
            self.assertIn("lobby/welcome.png", error)

            # Attempts follow at 7, 15, 31 and then every 30 seconds; the
            # first one at least 300 seconds after the report is at 331.
            self.advance_to(330)
            self.assertEqual(len(errors_of(events)), 1)
            self.advance_to(331)
            self.assertEqual(len(errors_of(events)), 2)
            self.assertIn("VSS failed 16 times in a row", errors_of(events)[1])

            for _ in self.waits():
                pass
        self.successResultOf(showing)
        self.assertEqual(len(errors_of(events)), 2)
        self.assertTrue(
            any(
                "VSS accepts requests again after 20 failures" in formatEvent(event)
                for event in events
            )
        )

    def test_configuration_fault_logged_as_error(self) -> None:
        """
        An answer that points at our configuration (401, 403 or another
        status) is logged as an error at once, not repeated at every retry,
        and retried.
        """
        for status in (401, 403, 404):
            vss = ScriptedVSS([(status, b"bad key"), (status, b"bad key")])
            display = self.retrying(self.api(vss), retry_count=3)
            with capturedLogs() as events:
                showing = display.show(JOB, False)
                [error] = errors_of(events)
                self.clock.advance(1)
                self.clock.advance(2)
            self.successResultOf(showing)
            self.assertEqual(len(errors_of(events)), 1)
            self.assertIn(f"VSS answered {status}: bad key", error)
            self.assertIn("VSS_BASE_URL", error)
            self.assertEqual(len(vss.requests), 3)

    def test_refusal_ends_the_outage_report(self) -> None:
        """
        After a refusal, which shows VSS is reachable, a new run of failures
        is reported again once it reaches the retry count.
        """
        vss = ScriptedVSS([(503, b""), (503, b""), (422, b"")])
        display = self.retrying(self.api(vss), retry_count=2)
        with capturedLogs() as events:
            first = display.show(JOB, False)
            self.clock.advance(1)
            self.clock.advance(2)
            self.failureResultOf(first, JobRejected)
            self.assertEqual(len(errors_of(events)), 1)

            vss.answers = [(503, b""), (503, b"")]
            second = display.show(JOB, False)
            self.clock.advance(1)
            self.assertEqual(len(errors_of(events)), 2)
            self.clock.advance(2)
        self.successResultOf(second)

    def test_backend_errors_retried(self) -> None:
        """
        A backend that raises, or fails with an unexpected error, is retried
        like a transient failure and the error is logged.
        """

        def raising() -> Deferred[None]:
            raise RuntimeError("backend bug")

        def failing() -> Deferred[None]:
            return fail(ValueError("backend bug"))

        backend = RaisingBackend([raising, failing])
        display = self.retrying(backend)
        showing = display.show(JOB, False)
        self.assertEqual(display.last_error, "unexpected error: backend bug")

        self.assertEqual(list(self.waits()), [1, 2])
        self.successResultOf(showing)
        self.assertEqual(backend.attempts, 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError, ValueError)), 2)

    def test_observers(self) -> None:
        """
        Observers hear how each attempt ended and about every retry.
        """
        vss = ScriptedVSS([(503, b"busy"), (401, b"")])
        display = self.retrying(self.api(vss))
        observer = RecordingVSSObserver()
        display.observers.append(observer)
        showing = display.show(JOB, False)
        list(self.waits())
        self.successResultOf(showing)

        self.assertEqual(observer.answers, ["transient", "configuration", "accepted"])
        self.assertEqual(
            observer.retries,
            [(1, 1.0, "VSS answered 503: busy"), (2, 2.0, "VSS answered 401")],
        )


class ConnectionProblemTests(SynchronousTestCase):
    """
    Failures of a request without an answer are described in plain words.
    """

    def test_wrapped_reasons_written_out(self) -> None:
        """
        The reasons a request under way failed with are written out one
        after the other, not as a list of objects.
        """
        failure = Failure(
            ResponseNeverReceived(
                [Failure(ConnectionDone()), Failure(ConnectionLost())]
            )
        )

        problem = connection_problem(failure)

        self.assertIsInstance(problem, TransientFailure)
        self.assertEqual(
            str(problem),
            "cannot reach VSS: Connection was closed cleanly.; Connection to the"
            " other side was lost in a non-clean fashion.",
        )

    def test_plain_failure(self) -> None:
        """
        A failure of its own, such as a refused connection, gives its
        message.
        """
        problem = connection_problem(Failure(ConnectionRefusedError()))

        self.assertEqual(
            str(problem), "cannot reach VSS: Connection was refused by other side."
        )
