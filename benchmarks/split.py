"""
Where the display timing error goes: the gap between two back-to-back
requests to VSS, taken apart with a packet capture of the loopback
interface.

The benchmark sees only when requests reach VSS.  The wire also shows when
VSS answered, when the acknowledgement of the job left for the broker and
when the broker delivered the next job, so each gap splits into:

  - VSS: from the request to VSS's answer (the stand-in's round trip);
  - display end: from the answer to the acknowledgement, less the duration
    (how late the display ended, and the acknowledgement being written);
  - broker: from the acknowledgement to the next delivery (at prefetch 1
    the next job is only sent once the previous one is acknowledged);
  - next job: from that delivery to the next request (checking the job,
    scheduling it, building and writing the request).

At prefetch 20 the next job is already in hand, so the gap splits into VSS
and "answer to next request" only.  The same is measured for the reference,
whose jobs have duration 0.

Needs C{tcpdump} and the right to capture (root, or CAP_NET_RAW), and
RabbitMQ on 127.0.0.1:5672.  Not part of C{make bench}: a capture adds a
little work to every packet.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from run import (
    BROKER_PORT,
    TIMING_DURATION,
    Publisher,
    Queues,
    dispatcher_subject,
    progress,
    reference_subject,
    waiting_jobs,
)
from vss_standin import StandIn

# The start of an AMQP method frame (type 1) is followed by the channel, the
# size, then the class and method: Basic.Deliver is 60/60, Basic.Ack 60/80.
DELIVER = b"\x00\x3c\x00\x3c"
ACK = b"\x00\x3c\x00\x50"

MESSAGE_ID = re.compile(rb'"message_id": ?"([^"]+)"')

# Link-layer header lengths of the capture formats tcpdump writes for lo.
LINK_HEADER = {0: 4, 1: 14, 108: 4, 113: 16, 276: 20}


@dataclass(frozen=True)
class Packet:
    """
    One TCP segment with data in it.

    @ivar at: Capture time, in seconds.
    """

    at: float
    source: int
    destination: int
    payload: bytes


def read_capture(path: Path) -> Iterator[Packet]:
    """
    The TCP segments with data in a pcap file, IPv4 only.
    """
    data = path.read_bytes()
    if len(data) < 24:
        return
    magic = struct.unpack("<I", data[:4])[0]
    if magic not in (0xA1B2C3D4, 0xA1B23C4D):
        raise ValueError(f"{path} is not a little-endian pcap file")
    scale = 1e-9 if magic == 0xA1B23C4D else 1e-6
    link = struct.unpack("<I", data[20:24])[0]
    skip = LINK_HEADER.get(link)
    if skip is None:
        raise ValueError(f"{path} has link type {link}, which this reader skips")
    offset = 24
    while offset + 16 <= len(data):
        seconds, fraction, captured, _ = struct.unpack(
            "<IIII", data[offset : offset + 16]
        )
        frame = data[offset + 16 : offset + 16 + captured]
        offset += 16 + captured
        ip = frame[skip:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        tcp = ip[(ip[0] & 15) * 4 :]
        source, destination = struct.unpack(">HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:
            yield Packet(seconds + fraction * scale, source, destination, payload)


def is_method(payload: bytes, method: bytes) -> bool:
    """
    Whether C{payload} starts with an AMQP method frame of C{method}.
    """
    return payload[:1] == b"\x01" and payload[7:11] == method


def message_ids(payload: bytes) -> list[bytes]:
    """
    The C{message_id} values of the jobs in a packet, in order.
    """
    return [found.group(1) for found in MESSAGE_ID.finditer(payload)]


def split_gaps(
    packets: list[Packet], vss_port: int, duration: float
) -> dict[str, list[float]]:
    """
    Milliseconds spent in each step of every gap between requests to VSS.

    A gap is split at the acknowledgement and the next job's delivery only
    when that delivery (found by its C{message_id}) came after the
    acknowledgement; otherwise the job was in hand already, and what
    follows the answer is one step.
    """
    consumer = next(
        (
            packet.destination
            for packet in packets
            if packet.source == BROKER_PORT and is_method(packet.payload, DELIVER)
        ),
        None,
    )
    delivered: dict[bytes, float] = {}
    events: list[tuple[float, str, bytes | None]] = []
    for packet in packets:
        if packet.destination == vss_port and packet.payload.startswith(b"POST"):
            ids = message_ids(packet.payload)
            events.append((packet.at, "request", ids[0] if ids else None))
        elif packet.source == vss_port:
            events.append((packet.at, "answer", None))
        elif packet.source == consumer and is_method(packet.payload, ACK):
            events.append((packet.at, "ack", None))
        elif packet.destination == consumer and is_method(packet.payload, DELIVER):
            for message_id in message_ids(packet.payload):
                delivered.setdefault(message_id, packet.at)

    steps: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        steps.setdefault(name, []).append(seconds * 1000)

    requests = [index for index, (_, kind, _) in enumerate(events) if kind == "request"]
    for first, second in zip(requests, requests[1:], strict=False):
        between = events[first : second + 1]
        sent, (following, _, next_id) = between[0][0], between[-1]
        answer = next((at for at, kind, _ in between if kind == "answer"), None)
        if answer is None:
            continue
        ack = next(
            (at for at, kind, _ in between if kind == "ack" and at > answer), None
        )
        delivery = delivered.get(next_id) if next_id is not None else None
        add("VSS", answer - sent)
        if ack is not None and delivery is not None and ack < delivery < following:
            add("display end", ack - answer - duration)
            add("broker", delivery - ack)
            add("next job", following - delivery)
        else:
            add("answer to next request", following - answer - duration)
        add("whole gap, less the duration", following - sent - duration)
    return steps


def capture(
    side: str, prefetch: int, jobs: int, standin: StandIn, work: Path
) -> dict[str, list[float]]:
    """
    Run one timing measurement of C{side} under tcpdump and split its gaps.
    """
    make = dispatcher_subject if side == "dispatcher" else reference_subject
    duration = TIMING_DURATION if side == "dispatcher" else 0.0
    publisher = Publisher()
    queues = Queues.unique(f"{side}-split")
    publisher.declare(queues.normal, queues.priority, queues.dead)
    subject = make(f"{side}-split-{prefetch}", queues, prefetch, standin, work)
    path = work / f"{side}-{prefetch}.pcap"
    dump = None
    try:
        subject.start()
        dump = subprocess.Popen(
            [
                "tcpdump",
                "-i",
                "lo",
                "-U",
                "--immediate-mode",
                "-w",
                str(path),
                "--time-stamp-precision=nano",
                f"tcp and (port {BROKER_PORT} or port {standin.port})",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # tcpdump says nothing when it is ready; give it time to open lo.
        time.sleep(1.0)
        if dump.poll() is not None:
            raise RuntimeError("tcpdump stopped at once; is capturing allowed?")
        waiting_jobs(
            subject,
            publisher,
            standin,
            queues.normal,
            jobs,
            duration,
            f"{side}-split-{prefetch}",
        )
        # Let the last acknowledgement and the capture reach the file.
        time.sleep(0.5)
    finally:
        if dump is not None:
            dump.send_signal(signal.SIGINT)
            dump.wait(timeout=10)
        subject.stop()
        publisher.delete_declared()
        publisher.close()
    return split_gaps(list(read_capture(path)), standin.port, duration)


def table(found: dict[str, dict[str, list[float]]]) -> str:
    """
    The splits as a Markdown table: p50, with p90 in brackets.
    """
    names = [
        "VSS",
        "display end",
        "broker",
        "next job",
        "answer to next request",
        "whole gap, less the duration",
    ]
    runs = list(found)
    lines = [
        "| step | " + " | ".join(runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    for name in names:
        cells = []
        for run in runs:
            samples = sorted(found[run].get(name, []))
            if samples:
                p90 = samples[min(len(samples) - 1, int(len(samples) * 0.9))]
                cells.append(f"{statistics.median(samples):.2f} ({p90:.2f}) ms")
            else:
                cells.append("–")
        if any(cell != "–" for cell in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50, help="jobs per run")
    options = parser.parse_args(arguments)
    if shutil.which("tcpdump") is None:
        progress("tcpdump is not installed (apt-get install tcpdump)")
        return 1
    standin = StandIn()
    standin.start()
    work = Path(tempfile.mkdtemp(prefix="vss-split-"))
    found: dict[str, dict[str, list[float]]] = {}
    try:
        for side in ("dispatcher", "reference"):
            for prefetch in (1, 20):
                progress(f"{side}, prefetch {prefetch}: {options.jobs} jobs")
                found[f"{side}, prefetch {prefetch}"] = capture(
                    side, prefetch, options.jobs, standin, work
                )
    finally:
        standin.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(table(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
