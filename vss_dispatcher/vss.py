"""
Putting a job on screen through VSS, whatever protocol VSS speaks.

A backend (L{DisplayAPI} here, or the Visionect backend) makes one attempt
and says how it went: accepted, a transient failure, a configuration fault,
or a refusal of the job itself.  L{RetryingDisplay} turns attempts into the
scheduler's C{display} call: it retries everything but a refusal, with
exponential backoff and for as long as it takes, until it is cancelled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from .http import REQUEST_OPTIONS, prepared_url
from .message import Job
from .scheduler import JobRejected

__all__ = [
    "MAX_RETRY_DELAY",
    "ConfigurationFault",
    "DisplayAPI",
    "DisplayBackend",
    "RetryingDisplay",
    "TransientFailure",
    "VSSObserver",
    "classify_status",
    "connection_problem",
    "read_answer",
]

MAX_RETRY_DELAY = 30.0

# After the first error report, repeat it at most this often while VSS keeps
# failing, so an outage is visible in the log without flooding it.
REPORT_INTERVAL = 300.0


class TransientFailure(Exception):
    """
    VSS could not take the job now but may later: unreachable, too slow,
    overloaded.
    """


class ConfigurationFault(Exception):
    """
    VSS refused the request for a reason that lies with our configuration
    (credentials, address, device), not with the job.  Retried, and reported
    loudly.
    """


class DisplayBackend(Protocol):
    """
    One way of talking to VSS.
    """

    def attempt(self, job: Job, priority: bool) -> Deferred[float]:
        """
        Ask VSS once to show C{job}.

        @return: A L{Deferred} that fires when VSS accepted the job, with
            the time VSS's answer arrived (on the backend's clock), or fails
            with L{TransientFailure}, L{ConfigurationFault} or
            L{JobRejected}.  Cancelling it abandons the request.
        """


class VSSObserver(Protocol):
    """
    Something that wants to know how requests to VSS go (metrics, health).
    """

    def vss_answered(self, seconds: float, result: str) -> None:
        """
        One attempt ended after C{seconds}; C{result} is C{"accepted"},
        C{"transient"}, C{"configuration"} or C{"rejected"}.
        """

    def vss_retrying(self, failures: int, delay: float, reason: str) -> None:
        """
        A job will be retried after C{delay} seconds; it failed C{failures}
        times in a row.
        """


def classify_status(status: int, excerpt: str) -> Exception | None:
    """
    Map an HTTP status of the JSON protocol to what it means for the job.

    @return: C{None} for success, or the exception describing the failure.
    """
    if 200 <= status < 300:
        return None
    described = (
        f"VSS answered {status}: {excerpt}" if excerpt else f"VSS answered {status}"
    )
    if status in (400, 413, 415, 422):
        return JobRejected(described)
    if status in (408, 429) or 500 <= status < 600:
        return TransientFailure(described)
    return ConfigurationFault(described)


def excerpt_of(body: bytes, limit: int = 200) -> str:
    """
    A short printable excerpt of an answer body, for logs and dead letters.
    """
    text = body.decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


class DisplayAPI:
    """
    The JSON protocol: C{POST {VSS_BASE_URL}/display} with the job as JSON.
    """

    def __init__(
        self, client: Any, base_url: str, timeout: float, clock: IReactorTime
    ) -> None:
        """
        @param client: A L{treq.client.HTTPClient} (or L{treq.testing.StubTreq}).
        @param base_url: VSS's base URL, without a trailing slash.
        @param timeout: Seconds to wait for the whole answer.
        @param clock: Used for the timeout.
        """
        self._client = client
        self._url = prepared_url(base_url.rstrip("/") + "/display")
        # treq uses a Headers object as given, and the agents below it copy
        # it before adding anything, so one serves every request.
        self._headers = Headers({b"Content-Type": [b"application/json"]})
        self._timeout = timeout
        self._clock = clock

    def attempt(self, job: Job, priority: bool) -> Deferred[float]:
        body = json.dumps(
            {
                "image_path": job.image_path,
                "duration": job.duration,
                "message_id": job.message_id,
                "priority": priority,
            }
        ).encode("utf-8")
        request = self._client.post(
            self._url, data=body, headers=self._headers, **REQUEST_OPTIONS
        )
        return with_timeout(
            request,
            self._timeout,
            self._clock,
            lambda response: read_answer(response, classify_status, self._clock),
        )


def read_answer(
    response: Any,
    classify: Callable[[int, str], Exception | None],
    clock: IReactorTime,
) -> Deferred[float]:
    """
    Read VSS's answer to the end and judge it.

    @param response: The answer, its status line and headers just received.
    @param classify: Says what a status and an excerpt of the body mean:
        C{None} for success, or the exception to fail with.
    @param clock: Tells when the answer arrived.
    @return: A L{Deferred} that fires with the time the answer arrived, or
        fails with what C{classify} said.
    """
    # The moment VSS answered is the moment the image is on screen; reading
    # the body and passing the answer on must not shorten the display.
    arrived = clock.seconds()
    # The body is read even on success, so the connection can be reused.
    reading: Deferred[bytes] = response.content()

    def judge(body: bytes) -> float:
        problem = classify(response.code, excerpt_of(body))
        if problem is not None:
            raise problem
        return arrived

    return reading.addCallback(judge)


def with_timeout(
    request: Deferred[Any],
    timeout: float,
    clock: IReactorTime,
    then: Callable[[Any], Deferred[float]],
) -> Deferred[float]:
    """
    Chain C{then} to an HTTP request and turn connection errors and a
    timeout of the whole exchange into L{TransientFailure}.  Cancelling the
    result cancels the request.
    """
    timed_out = []
    cancelled = []

    def expire() -> None:
        timed_out.append(True)
        request.cancel()

    def cancel(result: Deferred[float]) -> None:
        cancelled.append(True)
        request.cancel()

    timer = clock.callLater(timeout, expire)

    def stop_timer(result: object) -> object:
        if timer.active():
            timer.cancel()
        return result

    def translate(failure: Failure) -> Failure:
        if failure.check(JobRejected, TransientFailure, ConfigurationFault):
            return failure
        if timed_out:
            raise TransientFailure(f"VSS did not answer within {timeout:g} s")
        # The agent reports a cancelled request as a failed one; the caller
        # who cancelled must see a cancellation, not an unreachable VSS.
        if cancelled or failure.check(CancelledError):
            raise CancelledError()
        raise connection_problem(failure)

    request.addCallback(then)
    request.addBoth(stop_timer)
    request.addErrback(translate)
    result: Deferred[float] = Deferred(cancel)
    request.chainDeferred(result)
    return result


def connection_problem(failure: Failure) -> Exception:
    """
    Say in plain words why a request got no answer.

    @param failure: What the HTTP client failed with; failures of a request
        under way carry the underlying reasons in a list.
    @return: A L{ConfigurationFault} when VSS's TLS certificate was refused
        (no retry will change that until the configuration does), otherwise
        a L{TransientFailure}.
    """
    from OpenSSL.SSL import Error as TLSError
    from service_identity.exceptions import VerificationError

    reasons = getattr(failure.value, "reasons", None) or [failure]
    messages = []
    for reason in reasons:
        value = reason.value if isinstance(reason, Failure) else reason
        if isinstance(value, VerificationError):
            return ConfigurationFault(
                "the TLS certificate VSS presented does not name the host in"
                " VSS_BASE_URL"
            )
        if isinstance(value, TLSError) and "certificate verify failed" in str(value):
            return ConfigurationFault(
                "the TLS certificate VSS presented is not signed by a trusted"
                " certificate authority (set SSL_CERT_FILE to a file of the"
                " authorities to trust)"
            )
        if isinstance(value, TLSError):
            messages.append(f"TLS failed: {_tls_reasons(value)}")
        elif isinstance(reason, Failure):
            messages.append(reason.getErrorMessage())
        else:
            messages.append(str(reason))
    return TransientFailure(f"cannot reach VSS: {'; '.join(messages)}")


def _tls_reasons(error: Exception) -> str:
    """
    The reasons OpenSSL gave, without the library and function names.
    """
    parts = error.args[0] if error.args else None
    if isinstance(parts, list):
        reasons = [part[-1] for part in parts if isinstance(part, tuple) and part]
        if reasons:
            return ", ".join(str(reason) for reason in reasons)
    return str(error)


class RetryingDisplay:
    """
    Shows jobs through a backend, retrying until VSS accepts or refuses them.

    @ivar failures: Failed attempts in a row, across jobs.
    @ivar last_error: The last failure in plain words, or C{None} if the
        last attempt succeeded or none was made.
    """

    log = Logger()

    def __init__(
        self,
        backend: DisplayBackend,
        clock: IReactorTime,
        retry_delay: float = 1.0,
        retry_count: int = 3,
        max_delay: float = MAX_RETRY_DELAY,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._retry_delay = retry_delay
        self._retry_count = retry_count
        self._max_delay = max_delay
        self._reported_at: float | None = None
        self.failures = 0
        self.last_error: str | None = None
        self.observers: list[VSSObserver] = []

    def delay_after(self, failures: int) -> float:
        """
        Seconds to wait after C{failures} failed attempts in a row.
        """
        # The exponent is bounded because an outage may last for thousands of
        # attempts, and 2.0 ** 1024 no longer fits in a float.
        exponent = min(max(failures - 1, 0), 1000)
        return float(min(self._retry_delay * 2.0**exponent, self._max_delay))

    def show(self, job: Job, priority: bool) -> Deferred[float | None]:
        """
        Put C{job} on screen, retrying as long as needed.

        @return: A L{Deferred} that fires once VSS accepted the job, with
            the time its answer arrived if the backend knows it, fails
            with L{JobRejected} if VSS refuses it, and stops all work on the
            job when cancelled.
        """
        return _Attempts(self, job, priority).start()

    def _succeeded(self, seconds: float) -> None:
        if self.failures >= self._retry_count:
            self.log.info(
                "VSS accepts requests again after {failures} failures",
                failures=self.failures,
            )
        self.failures = 0
        self.last_error = None
        self._reported_at = None
        for observer in self.observers:
            observer.vss_answered(seconds, "accepted")

    def _rejected(self, job: Job, seconds: float, reason: str) -> None:
        # VSS answered, so it is reachable: the next outage is reported anew.
        self.failures = 0
        self.last_error = None
        self._reported_at = None
        for observer in self.observers:
            observer.vss_answered(seconds, "rejected")

    def _failed(self, job: Job, seconds: float, failure: Failure) -> float:
        """
        Record a failed attempt, log it as loudly as it deserves, and return
        the delay before the next one.
        """
        self.failures += 1
        configuration = failure.check(ConfigurationFault) is not None
        reason = failure.getErrorMessage()
        self.last_error = reason
        delay = self.delay_after(self.failures)
        for observer in self.observers:
            observer.vss_answered(
                seconds, "configuration" if configuration else "transient"
            )
            observer.vss_retrying(self.failures, delay, reason)

        now = self._clock.seconds()
        due = self._reported_at is None or now - self._reported_at >= REPORT_INTERVAL
        if configuration and due:
            self._reported_at = now
            self.log.error(
                "VSS refuses our requests ({reason}); check VSS_BASE_URL and the"
                " credentials. Keeping {image} and retrying in {delay:g} s",
                reason=reason,
                image=job.image_path,
                delay=delay,
            )
        elif self.failures >= self._retry_count and due:
            self._reported_at = now
            self.log.error(
                "VSS failed {failures} times in a row ({reason}); keeping {image}"
                " and retrying every {max_delay:g} s at most",
                failures=self.failures,
                reason=reason,
                image=job.image_path,
                max_delay=self._max_delay,
            )
        else:
            self.log.info(
                "VSS request for {image} failed ({reason}); retrying in {delay:g} s",
                image=job.image_path,
                reason=reason,
                delay=delay,
            )
        return delay


class _Attempts:
    """
    The attempts made for one job: at most one request or one wait at a
    time, both abandoned when the caller cancels.
    """

    def __init__(self, owner: RetryingDisplay, job: Job, priority: bool) -> None:
        self._owner = owner
        self._job = job
        self._priority = priority
        self._request: Deferred[float] | None = None
        self._wait: IDelayedCall | None = None
        self._cancelled = False
        self._result: Deferred[float | None] = Deferred(lambda _: self._cancel())

    def start(self) -> Deferred[float | None]:
        self._attempt()
        return self._result

    def _cancel(self) -> None:
        self._cancelled = True
        wait, self._wait = self._wait, None
        if wait is not None and wait.active():
            wait.cancel()
        request, self._request = self._request, None
        if request is not None:
            request.cancel()

    def _attempt(self) -> None:
        self._wait = None
        started = time.perf_counter()
        # A backend that raises instead of failing its Deferred is treated
        # like any other failed attempt, so the retries go on.
        request = maybeDeferred(self._owner._backend.attempt, self._job, self._priority)
        self._request = request
        request.addCallbacks(
            lambda arrived: self._answered(started, arrived),
            lambda failure: self._failed(started, failure),
        )

    def _answered(self, started: float, arrived: float) -> None:
        self._request = None
        if self._cancelled:
            return
        self._owner._succeeded(time.perf_counter() - started)
        self._result.callback(arrived)

    def _failed(self, started: float, failure: Failure) -> None:
        self._request = None
        if self._cancelled:
            return
        seconds = time.perf_counter() - started
        if failure.check(JobRejected):
            self._owner._rejected(self._job, seconds, failure.getErrorMessage())
            self._result.errback(failure)
            return
        if not failure.check(TransientFailure, ConfigurationFault):
            # A bug in a backend must not stop the display for good.
            self._owner.log.failure(
                "Unexpected error while sending {image}",
                failure,
                image=self._job.image_path,
            )
            failure = Failure(
                TransientFailure(f"unexpected error: {failure.getErrorMessage()}")
            )
        delay = self._owner._failed(self._job, seconds, failure)
        self._wait = self._owner._clock.callLater(delay, self._attempt)
