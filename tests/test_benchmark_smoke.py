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
import struct
import sys
from pathlib import Path
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


class ImageRootJobTests(TestCase):
    """
    With C{--image-root}, jobs name files that exist in that directory.
    """

    def test_job_file_made_in_the_image_root(self) -> None:
        """
        A job's image path is relative to the image root, and its file is
        there; without an image root the path is absolute and nothing is
        made.
        """
        run = _benchmark_module("run")
        root = self.mktemp()
        os.makedirs(root)

        self.assertEqual(run.job("one", 0)["image_path"], "/images/one.png")
        self.patch(run, "image_root", root)
        made = run.job("two", 0.5)

        self.assertEqual(made["image_path"], "two.png")
        self.assertEqual(made["duration"], 0.5)
        self.assertTrue(os.path.isfile(os.path.join(root, "two.png")))
        self.assertEqual(os.listdir(root), ["two.png"])


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


def _pcap(packets: list[tuple[float, int, int, bytes]]) -> bytes:
    """
    A nanosecond pcap file of Ethernet frames carrying IPv4 TCP segments
    with the given time, ports and data.
    """
    out = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)]
    for at, source, destination, payload in packets:
        tcp = struct.pack(
            ">HHIIBBHHH", source, destination, 0, 0, 5 << 4, 0x18, 0, 0, 0
        )
        ip = struct.pack(
            ">BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(tcp) + len(payload),
            0,
            0,
            64,
            6,
            0,
            b"\x7f\x00\x00\x01",
            b"\x7f\x00\x00\x01",
        )
        frame = b"\x00" * 12 + b"\x08\x00" + ip + tcp + payload
        seconds = int(at)
        nanoseconds = round((at - seconds) * 1e9)
        out.append(struct.pack("<IIII", seconds, nanoseconds, len(frame), len(frame)))
        out.append(frame)
    return b"".join(out)


class SplitTests(TestCase):
    """
    The packet capture reader and the split of the display timing gap.
    """

    def test_gap_split_into_its_steps(self) -> None:
        """
        Between two requests, the time to VSS's answer, from the answer to
        the acknowledgement less the duration, from the acknowledgement to
        the next delivery and from there to the next request are told apart,
        and other connections to the broker are left out.
        """
        split = _benchmark_module("split")
        vss, consumer, publisher = 8080, 40000, 40001
        deliver = (
            b"\x01\x00\x01\x00\x00\x00\x20"
            + split.DELIVER
            + b'rest {"message_id": "job-2"}'
        )
        ack = b"\x01\x00\x01\x00\x00\x00\x0d" + split.ACK + b"tag"
        capture = _pcap(
            [
                (10.0000, consumer, vss, _request("job-1")),
                (10.0002, vss, consumer, b"HTTP/1.1 200 OK\r\n"),
                (10.1000, publisher, 5672, ack),
                (10.2007, consumer, 5672, ack),
                (10.2010, 5672, consumer, deliver),
                (10.2020, consumer, vss, _request("job-2")),
            ]
        )
        path = self.mktemp()
        with open(path, "wb") as file:
            file.write(capture)
        packets = list(split.read_capture(Path(path)))
        self.assertEqual(len(packets), 6)
        steps = split.split_gaps(packets, vss, 0.2)
        rounded = {
            name: [round(value, 3) for value in values]
            for name, values in steps.items()
        }
        self.assertEqual(
            rounded,
            {
                "VSS": [0.2],
                "display end": [0.5],
                "broker": [0.3],
                "next job": [1.0],
                "whole gap, less the duration": [2.0],
            },
        )

    def test_no_delivery_between_means_job_in_hand(self) -> None:
        """
        When the next job was already delivered, the gap after the answer
        is one step.
        """
        split = _benchmark_module("split")
        packets = [
            split.Packet(0.0, 1, 80, _request("job-1")),
            split.Packet(0.001, 80, 1, b"HTTP/1.1 200 OK"),
            split.Packet(0.2015, 1, 80, _request("job-2")),
        ]
        steps = split.split_gaps(packets, 80, 0.2)
        self.assertEqual(round(steps["answer to next request"][0], 3), 0.5)
        self.assertNotIn("broker", steps)

    def test_later_job_delivered_between_means_job_in_hand(self) -> None:
        """
        With several jobs in hand, the acknowledgement makes the broker send
        a later job, not the next one: the gap is still one step after the
        answer.
        """
        split = _benchmark_module("split")
        early = b"\x01\x00\x01\x00\x00\x00\x20" + split.DELIVER
        consumer = 40000
        packets = [
            split.Packet(0.0, 5672, consumer, early + b'{"message_id": "job-2"}'),
            split.Packet(0.0001, consumer, 80, _request("job-1")),
            split.Packet(0.001, 80, consumer, b"HTTP/1.1 200 OK"),
            split.Packet(
                0.2012, consumer, 5672, b"\x01\x00\x01\x00\x00\x00\x0d" + split.ACK
            ),
            split.Packet(0.2013, 5672, consumer, early + b'{"message_id": "job-22"}'),
            split.Packet(0.2015, consumer, 80, _request("job-2")),
        ]
        steps = split.split_gaps(packets, 80, 0.2)
        self.assertEqual(round(steps["answer to next request"][0], 3), 0.5)
        self.assertNotIn("broker", steps)


def _request(message_id: str) -> bytes:
    """
    The start of a request to VSS carrying the job C{message_id}.
    """
    return (
        b"POST /display HTTP/1.1\r\n\r\n"
        + b'{"image_path": "/images/a.png", "message_id": "%s"}' % message_id.encode()
    )
