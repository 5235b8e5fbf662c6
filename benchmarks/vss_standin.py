"""
A stand-in for VSS that the benchmark runs inside its own process: a small
HTTP/1.1 server that keeps connections open, answers every request at once
with 200, and records when each request arrived and the job it carried.

Arrival times come from L{time.perf_counter_ns}, the clock the publishing
side of the benchmark reads too, so the two can be subtracted.  Each
connection has a thread blocked in C{recv}, which is the shortest way from
the kernel handing over the last byte of a request to the time stamp.

Run as a program with C{--client PORT COUNT}, it is instead a sequential
keep-alive client that measures how many requests per second the stand-in
answers, to show that the stand-in is not what limits the dispatcher.
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Arrival", "StandIn"]

ANSWER = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 11\r\n"
    b"\r\n"
    b'{"ok":true}'
)


@dataclass(frozen=True)
class Arrival:
    """
    One request as the stand-in saw it.

    @ivar at: When its last byte was read, in L{time.perf_counter_ns}.
    @ivar job: Its JSON body, or C{None} when the body was not JSON.
    """

    at: int
    job: dict[str, Any] | None

    @property
    def message_id(self) -> str | None:
        """
        The C{message_id} field of the job, if any.
        """
        if isinstance(self.job, dict):
            value = self.job.get("message_id")
            return value if isinstance(value, str) else None
        return None


class StandIn:
    """
    The server.  Start it with L{start}, read what arrived from L{arrivals}
    or wait for it with L{wait_for_id} and L{wait_for_count}.

    @ivar arrivals: Every request so far, in the order they arrived.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(16)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self.arrivals: list[Arrival] = []
        self._by_id: dict[str, Arrival] = {}
        self._changed = threading.Condition()
        self._connections: list[socket.socket] = []
        self._stopped = False

    @property
    def url(self) -> str:
        """
        The base URL to give the dispatcher as C{VSS_BASE_URL}.
        """
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """
        Accept connections in a background thread.
        """
        threading.Thread(target=self._accept, name="stand-in", daemon=True).start()

    def stop(self) -> None:
        """
        Close the listening socket and every open connection.
        """
        self._stopped = True
        for connection in [self._listener, *self._connections]:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()

    def count(self) -> int:
        """
        How many requests arrived so far.
        """
        return len(self.arrivals)

    def wait_for_id(self, message_id: str, timeout: float = 30.0) -> Arrival:
        """
        Wait for the request carrying C{message_id}.

        @raise TimeoutError: When it does not come within C{timeout} seconds.
        """
        with self._changed:
            if not self._changed.wait_for(
                lambda: message_id in self._by_id, timeout=timeout
            ):
                raise TimeoutError(
                    f"the job {message_id} did not reach the stand-in within"
                    f" {timeout:g} s"
                )
            return self._by_id[message_id]

    def wait_for_count(self, count: int, timeout: float = 120.0) -> None:
        """
        Wait until C{count} requests arrived in all.

        @raise TimeoutError: When they do not within C{timeout} seconds.
        """
        with self._changed:
            if not self._changed.wait_for(
                lambda: len(self.arrivals) >= count, timeout=timeout
            ):
                raise TimeoutError(
                    f"{len(self.arrivals)} requests reached the stand-in within"
                    f" {timeout:g} s; expected {count}"
                )

    def _accept(self) -> None:
        while not self._stopped:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connections.append(connection)
            threading.Thread(
                target=self._serve, args=(connection,), name="stand-in", daemon=True
            ).start()

    def _serve(self, connection: socket.socket) -> None:
        """
        Answer the requests of one connection until the client closes it.
        """
        buffered = b""
        received_at = time.perf_counter_ns()
        try:
            while True:
                request = _split_request(buffered)
                while request is None:
                    data = connection.recv(65536)
                    received_at = time.perf_counter_ns()
                    if not data:
                        return
                    buffered += data
                    request = _split_request(buffered)
                body, buffered = request
                # Answer first: parsing and bookkeeping are not VSS's time.
                connection.sendall(ANSWER)
                self._record(received_at, body)
        except OSError:
            return
        finally:
            connection.close()

    def _record(self, at: int, body: bytes) -> None:
        try:
            job = json.loads(body)
        except ValueError:
            job = None
        arrival = Arrival(at, job if isinstance(job, dict) else None)
        with self._changed:
            self.arrivals.append(arrival)
            if arrival.message_id is not None:
                self._by_id[arrival.message_id] = arrival
            self._changed.notify_all()


def _split_request(buffered: bytes) -> tuple[bytes, bytes] | None:
    """
    Take one whole request off the front of C{buffered}.

    @return: Its body and what follows it, or C{None} while the request is
        incomplete.
    """
    end_of_head = buffered.find(b"\r\n\r\n")
    if end_of_head < 0:
        return None
    length = 0
    for line in buffered[:end_of_head].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    start = end_of_head + 4
    if len(buffered) < start + length:
        return None
    return buffered[start : start + length], buffered[start + length :]


def measure_client(port: int, count: int) -> dict[str, float]:
    """
    Send C{count} requests one after the other over one kept-alive
    connection, as the dispatcher does, and time them.
    """
    body = json.dumps(
        {"image_path": "/images/a.png", "duration": 0, "message_id": "client"}
    ).encode()
    request = (
        b"POST /display HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    round_trips = []
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        for _ in range(count):
            sent = time.perf_counter()
            connection.sendall(request)
            answer = b""
            while len(answer) < len(ANSWER):
                data = connection.recv(65536)
                if not data:
                    raise ConnectionError("the stand-in closed the connection")
                answer += data
            round_trips.append(time.perf_counter() - sent)
        elapsed = time.perf_counter() - started
    round_trips.sort()
    return {
        "requests": count,
        "requests_per_second": count / elapsed,
        "round_trip_ms_p50": statistics.median(round_trips) * 1000,
        "round_trip_ms_p99": round_trips[int(0.99 * (count - 1))] * 1000,
    }


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--client":
        sys.exit("usage: vss_standin.py --client PORT COUNT")
    print(json.dumps(measure_client(int(sys.argv[2]), int(sys.argv[3]))))
