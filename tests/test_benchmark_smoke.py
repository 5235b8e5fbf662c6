"""
Tests of the benchmark's own arithmetic and of its VSS stand-in.  The whole
benchmark runs in CI as C{make bench-smoke}; these pin down the parts whose
mistakes would not show there, because they would still produce a figure.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
from typing import Any

from twisted.trial.unittest import TestCase

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")


def _benchmark_module(name: str) -> Any:
    """
    Import one of the benchmark's modules, which live outside the package.
    """
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    return importlib.import_module(name)


class ArithmeticTests(TestCase):
    """
    The statistics the report is made of.
    """

    def test_percentile_is_nearest_rank(self) -> None:
        """
        The 99th percentile of a hundred samples is the 99th smallest, and of
        fewer samples it is the largest.
        """
        report = _benchmark_module("report")
        samples = [float(value) for value in range(100, 0, -1)]
        self.assertEqual(report.percentile(samples, 0.99), 99.0)
        self.assertEqual(report.percentile([3.0, 1.0, 2.0], 0.99), 3.0)
        self.assertEqual(report.percentile([3.0, 1.0, 2.0], 0.5), 2.0)

    def test_gaps_subtract_the_duration(self) -> None:
        """
        The timing error of back-to-back jobs is each gap between arrivals,
        in milliseconds, less the duration the jobs asked for.
        """
        run = _benchmark_module("run")
        arrivals = [0, 201_500_000, 403_000_000]
        self.assertEqual(run.gaps_ms(arrivals, 0.2), [1.5, 1.5])

    def test_missing_figure_is_shown_as_missing(self) -> None:
        """
        A figure without a value reads "missing" in the table, and a figure
        that is not comparable has no ratio.
        """
        report = _benchmark_module("report")
        rows = [
            report.Figure("a", "Absent", "ms", None, 1.0),
            report.Figure("b", "Growth", "MB", 0.5, 0.2, comparable=False),
        ]
        context = {
            "date": "today",
            "machine": {"cpu": "a CPU", "cores": 2, "python": "3.11"},
            "broker": "3.10",
            "mode": "smoke",
            "stand_in": {
                "requests_per_second": 1000.0,
                "round_trip_ms_p50": 0.1,
                "round_trip_ms_p99": 0.2,
            },
        }
        table = report.markdown(rows, context)
        self.assertIn("| Absent | missing | 1.00 ms | missing |", table)
        self.assertIn("| Growth | 0.50 MB | 0.20 MB | – |", table)


class StandInTests(TestCase):
    """
    The stand-in for VSS that the benchmark times requests with.
    """

    def test_answers_and_records_each_request(self) -> None:
        """
        Two requests sent over one kept-alive connection, the second split
        across writes, are both answered with 200 and recorded with their
        JSON bodies in order.
        """
        standin_module = _benchmark_module("vss_standin")
        standin = standin_module.StandIn()
        standin.start()
        self.addCleanup(standin.stop)

        def request(message_id: str) -> bytes:
            body = json.dumps({"image_path": "a.png", "message_id": message_id})
            return (
                b"POST /display HTTP/1.1\r\nHost: x\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body.encode()
            )

        with socket.create_connection(
            ("127.0.0.1", standin.port), timeout=10
        ) as client:
            first, second = request("one"), request("two")
            client.sendall(first + second[:20])
            client.sendall(second[20:])
            standin.wait_for_count(2, timeout=10)
            answers = b""
            while answers.count(b"HTTP/1.1 200 OK") < 2:
                answers += client.recv(4096)

        self.assertEqual(
            [arrival.message_id for arrival in standin.arrivals], ["one", "two"]
        )
        self.assertLessEqual(standin.arrivals[0].at, standin.arrivals[1].at)
        self.assertIs(standin.wait_for_id("two", timeout=1), standin.arrivals[1])
