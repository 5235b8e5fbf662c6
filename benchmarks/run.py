"""
The benchmark of vss-dispatcher, against a minimal reference consumer.

Both run as separate processes, started the way users start them and
configured only through environment variables, against the local RabbitMQ
at 127.0.0.1:5672 and a stand-in for VSS that this process serves
(L{vss_standin}).  Publishing and the stand-in share this process, so the
time a job was published and the time its request reached VSS come from one
clock.  Every run uses queues of its own and deletes them at the end.

What is measured:

  1. preemption latency: with a long normal job on screen, the time from
     the broker confirming a priority job to its request reaching VSS;
  2. display timing: the gap between the requests of back-to-back normal
     jobs, less the duration they asked for;
  3. throughput: jobs of duration 0 already waiting, shown per second;
  4. memory: resident size after start-up, at its peak, and its growth
     across many jobs;
  5. start-up: from starting the process to consuming both queues.

The reference knows no preemption and no durations; what it offers as a
comparison is the floor under each figure: its own publish-to-VSS latency,
its own gap between consecutive requests.

Results go to C{benchmarks/results/}: C{latest.json}, C{latest.md} (also
printed) and C{latency.png}.  C{--smoke} runs a few rounds of everything
and only checks that every figure was produced.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pika

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from report import Measurements, figures, markdown, plot  # noqa: E402
from vss_standin import StandIn  # noqa: E402

from vss_dispatcher.config import SETTINGS  # noqa: E402

BROKER_HOST = "127.0.0.1"
BROKER_PORT = 5672

# Transient messages: the broker confirms them once they are on the queue.
# A persistent message would be confirmed only after it reached the disk,
# possibly after the dispatcher had already sent it to VSS.
TRANSIENT = pika.BasicProperties(
    content_type="application/json", delivery_mode=pika.DeliveryMode.Transient
)

# Long enough never to end on its own during a preemption round.
LONG_DURATION = 60.0
TIMING_DURATION = 0.2

# Time for the dispatcher to read VSS's answer and start the display timer
# before a priority job is published, and for acknowledgements to reach the
# broker between rounds.
ON_SCREEN_PAUSE = 0.02
SETTLE_PAUSE = 0.01


@dataclass(frozen=True)
class Sizes:
    """
    How much work each measurement does.
    """

    preemptions: int
    timing_jobs: int
    throughput_jobs: int
    memory_jobs: int
    extra_startups: int
    client_requests: int
    repetitions: int


FULL = Sizes(
    preemptions=200,
    timing_jobs=50,
    throughput_jobs=5000,
    memory_jobs=20000,
    extra_startups=4,
    client_requests=5000,
    repetitions=3,
)
SMOKE = Sizes(
    preemptions=5,
    timing_jobs=5,
    throughput_jobs=200,
    memory_jobs=500,
    extra_startups=0,
    client_requests=200,
    repetitions=1,
)


def progress(text: str) -> None:
    """
    Say what the benchmark is doing, on standard error.
    """
    print(f"[bench] {text}", file=sys.stderr, flush=True)


class Publisher:
    """
    The producer side: one blocking pika connection with a channel that
    waits for publisher confirms and one that does not.
    """

    def __init__(self) -> None:
        # No heartbeats: this connection sits idle while the benchmark waits
        # on the stand-in, and nothing would answer them then.
        self.connection = pika.BlockingConnection(
            pika.ConnectionParameters(
                host=BROKER_HOST,
                port=BROKER_PORT,
                credentials=pika.PlainCredentials("guest", "guest"),
                heartbeat=0,
            )
        )
        self.confirming = self.connection.channel()
        self.confirming.confirm_delivery()
        self.plain = self.connection.channel()
        self.declared: list[str] = []
        version = self.connection._impl.server_properties.get("version", b"?")
        self.broker_version = (
            version.decode() if isinstance(version, bytes) else str(version)
        )

    def declare(self, *queues: str) -> None:
        """
        Declare queues the way the dispatcher does, remembering them for
        L{delete_declared}.
        """
        for queue in queues:
            self.plain.queue_declare(queue=queue, durable=True)
            self.declared.append(queue)

    def publish(self, queue: str, job: dict[str, Any]) -> tuple[int, int]:
        """
        Publish one job and wait for the broker to confirm it.

        @return: When the publish started and when it was confirmed, in
            L{time.perf_counter_ns}.
        """
        body = json.dumps(job).encode()
        started = time.perf_counter_ns()
        self.confirming.basic_publish("", queue, body, properties=TRANSIENT)
        return started, time.perf_counter_ns()

    def publish_many(self, queue: str, jobs: list[dict[str, Any]]) -> None:
        """
        Publish many jobs without waiting for each confirm, then wait until
        the broker has taken them all.
        """
        for job in jobs:
            self.plain.basic_publish(
                "", queue, json.dumps(job).encode(), properties=TRANSIENT
            )
        # The broker answers a declaration on a channel only after it has
        # handled what came before it on that channel.
        self.plain.queue_declare(queue=queue, passive=True)

    def delete_declared(self) -> None:
        """
        Delete every queue this run declared.
        """
        for queue in self.declared:
            try:
                self.plain.queue_delete(queue=queue)
            except pika.exceptions.AMQPError as error:
                progress(f"could not delete the queue {queue}: {error}")
        self.declared = []

    def close(self) -> None:
        """
        Close the connection.
        """
        if self.connection.is_open:
            self.connection.close()


@dataclass
class Queues:
    """
    The queue names one process under test uses.
    """

    normal: str
    priority: str
    dead: str

    @classmethod
    def unique(cls, label: str) -> Queues:
        prefix = f"vss-bench-{uuid.uuid4().hex[:8]}-{label}"
        return cls(f"{prefix}.normal", f"{prefix}.priority", f"{prefix}.dead")


class Subject:
    """
    One process under test: the dispatcher or the reference.

    @ivar name: How reports call it.
    @ivar startups: Seconds from each start to consuming its queues.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        environ: dict[str, str],
        ready_text: str,
        logs: Path,
    ) -> None:
        self.name = name
        self.argv = argv
        self.environ = environ
        self.ready_text = ready_text.encode()
        self.logs = logs
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.startups: list[float] = []
        self.cpu_per_job_us: list[float] = []
        self._runs = 0

    def start(self, timeout: float = 30.0) -> float:
        """
        Start the process and wait for it to say it consumes.

        @return: Seconds from starting the process to the line saying so.
        """
        self._runs += 1
        self.log_path = self.logs / f"{self.name}-{self._runs}.log"
        with open(self.log_path, "wb") as log:
            started = time.perf_counter()
            self.process = subprocess.Popen(
                self.argv,
                env=self.environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        seen = b""
        with open(self.log_path, "rb") as reading:
            while True:
                seen += reading.read()
                if self.ready_text in seen:
                    elapsed = time.perf_counter() - started
                    self.startups.append(elapsed)
                    return elapsed
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with status {self.process.returncode}"
                        f" before consuming; its output:\n{seen.decode()[-2000:]}"
                    )
                if time.perf_counter() - started > timeout:
                    raise RuntimeError(
                        f"{self.name} did not consume within {timeout:g} s; its"
                        f" output:\n{seen.decode()[-2000:]}"
                    )
                time.sleep(0.0005)

    def status(self) -> dict[str, int]:
        """
        The C{Vm*} lines of C{/proc/PID/status}, in kB.
        """
        assert self.process is not None
        values = {}
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("Vm"):
                    name, value = line.split(":", 1)
                    values[name] = int(value.split()[0])
        return values

    def cpu_seconds(self) -> float:
        """
        Processor time the process used so far, user and system.
        """
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/stat") as stat:
            # The command name, in parentheses, may hold spaces.
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        """
        Resident memory now, in MB (10^6 bytes).
        """
        return self.status()["VmRSS"] * 1024 / 1e6

    def peak_rss_mb(self) -> float:
        """
        The highest resident memory so far, in MB.
        """
        return self.status()["VmHWM"] * 1024 / 1e6

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """
        Stop the process the way an operator would, with SIGTERM.
        """
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            progress(f"{self.name} did not stop within 15 s; killing it")
            process.kill()
            process.wait()

    def problems(self) -> list[str]:
        """
        Lines of its logs that report errors.
        """
        found = []
        for path in sorted(self.logs.glob(f"{self.name}-*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if "#error]" in line or "#critical]" in line or "Traceback" in line:
                    found.append(f"{path.name}: {line}")
        return found


def base_environment() -> dict[str, str]:
    """
    This process's environment without any of the dispatcher's settings, so
    that only what the benchmark sets applies.
    """
    names = {setting.variable for setting in SETTINGS}
    return {name: value for name, value in os.environ.items() if name not in names}


def dispatcher_subject(
    label: str, queues: Queues, prefetch: int, standin: StandIn, logs: Path
) -> Subject:
    """
    The dispatcher as users start it, with default settings except where
    the queues, the broker and VSS are.
    """
    environ = base_environment()
    environ.update(
        RABBITMQ_HOST=BROKER_HOST,
        RABBITMQ_PORT=str(BROKER_PORT),
        RABBITMQ_NORMAL_QUEUE=queues.normal,
        RABBITMQ_PRIORITY_QUEUE=queues.priority,
        RABBITMQ_DEAD_LETTER_QUEUE=queues.dead,
        RABBITMQ_PREFETCH_COUNT=str(prefetch),
        VSS_BASE_URL=standin.url,
        # The status server runs, as it does by default, on a free port.
        STATUS_ENDPOINT="tcp:0:interface=127.0.0.1",
    )
    if image_root is not None:
        environ["IMAGE_ROOT"] = image_root
    twistd = str(Path(sys.executable).parent / "twistd")
    return Subject(
        label,
        [twistd, "--pidfile=", "-n", "vss-dispatcher"],
        environ,
        f"Consuming {queues.normal} and {queues.priority}",
        logs,
    )


def reference_subject(
    label: str, queues: Queues, prefetch: int, standin: StandIn, logs: Path
) -> Subject:
    """
    The reference consumer, configured the same way on its one queue.
    """
    environ = base_environment()
    environ.update(
        RABBITMQ_HOST=BROKER_HOST,
        RABBITMQ_PORT=str(BROKER_PORT),
        RABBITMQ_NORMAL_QUEUE=queues.normal,
        RABBITMQ_PREFETCH_COUNT=str(prefetch),
        VSS_BASE_URL=standin.url,
    )
    return Subject(
        label,
        [sys.executable, str(HERE / "reference.py")],
        environ,
        f"Consuming {queues.normal}",
        logs,
    )


# With --image-root: the directory the dispatcher checks each job's image
# in, as it does in production with IMAGE_ROOT set.
image_root: str | None = None


def job(message_id: str, duration: float) -> dict[str, Any]:
    """
    A job for C{message_id}; with an image root, its (empty) image file is
    made there so that the dispatcher's check finds it.
    """
    image_path = f"/images/{message_id}.png"
    if image_root is not None:
        image_path = f"{message_id}.png"
        with open(os.path.join(image_root, image_path), "wb"):
            pass
    return {"image_path": image_path, "duration": duration, "message_id": message_id}


def idle_latencies(
    publisher: Publisher, standin: StandIn, queue: str, rounds: int, prefix: str
) -> dict[str, list[float]]:
    """
    Publish jobs of duration 0 one at a time to an idle consumer.

    @return: Milliseconds from the confirm (C{"confirmed"}) and from the
        start of the publish (C{"published"}) to the request reaching VSS.
    """
    confirmed, published = [], []
    for number in range(rounds):
        message_id = f"{prefix}-{number}"
        started, acknowledged = publisher.publish(queue, job(message_id, 0))
        arrival = standin.wait_for_id(message_id)
        confirmed.append((arrival.at - acknowledged) / 1e6)
        published.append((arrival.at - started) / 1e6)
        time.sleep(SETTLE_PAUSE)
    return {"confirmed": confirmed, "published": published}


def preemption_latencies(
    publisher: Publisher, standin: StandIn, queues: Queues, rounds: int, prefix: str
) -> dict[str, list[float]]:
    """
    Put a long normal job on screen, then publish a priority job, for each
    round.  With the default C{INTERRUPTED_JOBS=drop} the normal job is
    finished by the preemption, so every round starts from a fresh one.

    @return: Milliseconds as for L{idle_latencies}.
    """
    confirmed, published = [], []
    for number in range(rounds):
        normal_id = f"{prefix}-normal-{number}"
        publisher.publish(queues.normal, job(normal_id, LONG_DURATION))
        standin.wait_for_id(normal_id)
        time.sleep(ON_SCREEN_PAUSE)

        priority_id = f"{prefix}-priority-{number}"
        started, acknowledged = publisher.publish(queues.priority, job(priority_id, 0))
        arrival = standin.wait_for_id(priority_id)
        confirmed.append((arrival.at - acknowledged) / 1e6)
        published.append((arrival.at - started) / 1e6)
        time.sleep(SETTLE_PAUSE)
    return {"confirmed": confirmed, "published": published}


def waiting_jobs(
    subject: Subject,
    publisher: Publisher,
    standin: StandIn,
    queue: str,
    count: int,
    duration: float,
    prefix: str,
) -> tuple[list[int], int]:
    """
    Publish C{count} jobs while the subject is paused with SIGSTOP, resume
    it, and wait until every job reached VSS.

    @return: The arrival times of the jobs, in order, and when the subject
        was resumed, in L{time.perf_counter_ns}.
    """
    subject.pause()
    mark = standin.count()
    publisher.publish_many(
        queue, [job(f"{prefix}-{number}", duration) for number in range(count)]
    )
    resumed = time.perf_counter_ns()
    subject.resume()
    standin.wait_for_count(mark + count, timeout=max(120.0, count * (duration + 0.05)))
    arrivals = standin.arrivals[mark : mark + count]
    expected = [f"{prefix}-{number}" for number in range(count)]
    if [arrival.message_id for arrival in arrivals] != expected:
        raise RuntimeError(f"{subject.name} sent the {prefix} jobs out of order")
    # Let the last display end and its acknowledgement reach the broker.
    time.sleep(duration + 0.3)
    return [arrival.at for arrival in arrivals], resumed


def gaps_ms(times: list[int], duration: float) -> list[float]:
    """
    Milliseconds between consecutive arrivals, less C{duration}.
    """
    return [
        (later - earlier) / 1e6 - duration * 1000
        for earlier, later in zip(times, times[1:], strict=False)
    ]


def throughput(
    subject: Subject,
    publisher: Publisher,
    standin: StandIn,
    queue: str,
    count: int,
    prefix: str,
) -> float:
    """
    Jobs per second from resuming the subject to the last request reaching
    VSS.
    """
    cpu_before = subject.cpu_seconds()
    times, resumed = waiting_jobs(subject, publisher, standin, queue, count, 0, prefix)
    subject.cpu_per_job_us.append((subject.cpu_seconds() - cpu_before) / count * 1e6)
    return count / ((times[-1] - resumed) / 1e9)


@dataclass
class Side:
    """
    The dispatcher or the reference, with the process under test now.
    """

    name: str
    make: Callable[[str, Queues, int, StandIn, Path], Subject]
    found: Measurements = field(default_factory=Measurements)
    subject: Subject | None = None
    queues: Queues | None = None


def measure(
    publisher: Publisher,
    standin: StandIn,
    sizes: Sizes,
    logs: Path,
    running: list[Subject],
) -> tuple[Measurements, Measurements]:
    """
    Run every measurement on the dispatcher and on the reference.  The two
    take turns, measurement by measurement, so that a busy moment of the
    machine does not fall on one side only.
    """
    dispatcher = Side("dispatcher", dispatcher_subject)
    reference = Side("reference", reference_subject)
    sides = (dispatcher, reference)

    def launch(side: Side, label: str, prefetch: int) -> tuple[Subject, Queues]:
        queues = Queues.unique(f"{side.name}-{label}")
        publisher.declare(queues.normal, queues.priority, queues.dead)
        subject = side.make(f"{side.name}-{label}", queues, prefetch, standin, logs)
        running.append(subject)
        side.found.startup_s.append(subject.start())
        side.subject, side.queues = subject, queues
        return subject, queues

    def stop(side: Side) -> None:
        assert side.subject is not None
        side.subject.stop()
        side.subject = side.queues = None

    def timing(prefetch: int) -> None:
        progress(f"prefetch {prefetch}: {sizes.timing_jobs} back-to-back jobs")
        for side in sides:
            assert side.subject is not None and side.queues is not None
            duration = TIMING_DURATION if side is dispatcher else 0.0
            times, _ = waiting_jobs(
                side.subject,
                publisher,
                standin,
                side.queues.normal,
                sizes.timing_jobs,
                duration,
                f"{side.name}-timing-{prefetch}",
            )
            side.found.timing[prefetch] = gaps_ms(times, duration)

    def throughputs(prefetch: int) -> None:
        for repetition in range(sizes.repetitions):
            progress(
                f"prefetch {prefetch}: throughput of {sizes.throughput_jobs} jobs,"
                f" {repetition + 1} of {sizes.repetitions}"
            )
            for side in sides:
                assert side.subject is not None and side.queues is not None
                rate = throughput(
                    side.subject,
                    publisher,
                    standin,
                    side.queues.normal,
                    sizes.throughput_jobs,
                    f"{side.name}-throughput-{prefetch}-{repetition}",
                )
                side.found.throughput.setdefault(prefetch, []).append(rate)
                side.found.cpu_per_job_us.setdefault(prefetch, []).append(
                    side.subject.cpu_per_job_us[-1]
                )

    progress("prefetch 1: start-up")
    for side in sides:
        subject, _ = launch(side, "prefetch-1", 1)
        side.found.rss_after_startup_mb = subject.rss_mb()

    progress(f"{sizes.preemptions} jobs published to each while idle")
    for number in range(sizes.preemptions):
        for side in sides:
            assert side.queues is not None
            latencies = idle_latencies(
                publisher, standin, side.queues.normal, 1, f"{side.name}-idle-{number}"
            )
            for start, values in latencies.items():
                side.found.idle[start] += values

    progress(f"{sizes.preemptions} preemptions")
    assert dispatcher.queues is not None
    dispatcher.found.preemption = preemption_latencies(
        publisher, standin, dispatcher.queues, sizes.preemptions, "preempt"
    )

    timing(1)
    throughputs(1)

    for side in sides:
        progress(f"{side.name}: memory across {sizes.memory_jobs} jobs")
        assert side.subject is not None and side.queues is not None
        found = side.found
        found.rss_before_memory_run_mb = side.subject.rss_mb()
        found.memory_run_jobs_per_s = throughput(
            side.subject,
            publisher,
            standin,
            side.queues.normal,
            sizes.memory_jobs,
            f"{side.name}-memory",
        )
        found.rss_after_memory_run_mb = side.subject.rss_mb()
        found.peak_rss_mb = side.subject.peak_rss_mb()
        stop(side)

    progress("prefetch 20: start-up")
    for side in sides:
        launch(side, "prefetch-20", 20)
    timing(20)
    throughputs(20)
    for side in sides:
        stop(side)

    for number in range(sizes.extra_startups):
        progress(f"extra start-up {number + 1} of {sizes.extra_startups}")
        for side in sides:
            launch(side, f"startup-{number + 1}", 1)
            stop(side)

    return dispatcher.found, reference.found


def measure_standin(standin: StandIn, requests: int) -> dict[str, float]:
    """
    How fast the stand-in answers a simple sequential client in another
    process.
    """
    finished = subprocess.run(
        [
            sys.executable,
            str(HERE / "vss_standin.py"),
            "--client",
            str(standin.port),
            str(requests),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(finished.stdout)
    return result


def machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "versions": {
            name: metadata.version(name) for name in ("Twisted", "pika", "treq")
        },
    }


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few rounds of everything, checking only that each figure is produced",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=HERE / "results",
        help="where to write latest.json, latest.md and latency.png",
    )
    parser.add_argument(
        "--image-root",
        action="store_true",
        help="set IMAGE_ROOT for the dispatcher, so that it checks every"
        " job's image file (in a worker thread) as in production",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the output of the processes under test after a good run",
    )
    options = parser.parse_args(arguments)
    sizes = SMOKE if options.smoke else FULL
    options.results.mkdir(parents=True, exist_ok=True)
    # Keep this process's threads handing the interpreter over promptly.
    sys.setswitchinterval(0.001)

    standin = StandIn()
    standin.start()
    publisher = Publisher()
    running: list[Subject] = []
    logs = Path(tempfile.mkdtemp(prefix="vss-bench-"))
    global image_root
    if options.image_root:
        image_root = os.path.realpath(tempfile.mkdtemp(prefix="vss-bench-images-"))
    started = time.time()
    try:
        progress(f"the stand-in alone, {sizes.client_requests} requests")
        standin_figures = measure_standin(standin, sizes.client_requests)
        dispatcher, reference = measure(publisher, standin, sizes, logs, running)
    except BaseException:
        progress(f"the output of the processes under test is in {logs}")
        raise
    finally:
        for subject in running:
            subject.stop()
        publisher.delete_declared()
        publisher.close()
        standin.stop()
        if image_root is not None:
            shutil.rmtree(image_root, ignore_errors=True)

    context = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started)),
        "mode": "smoke" if options.smoke else "full",
        "image_root": options.image_root,
        "machine": machine(),
        "broker": publisher.broker_version,
        "seconds": round(time.time() - started, 1),
        "sizes": sizes.__dict__,
        "stand_in": standin_figures,
    }
    rows = figures(dispatcher, reference)
    table = markdown(rows, context)
    problems = [line for subject in running for line in subject.problems()]
    results = {
        **context,
        "figures": {
            row.key: {
                "label": row.label,
                "unit": row.unit,
                "dispatcher": row.dispatcher,
                "reference": row.reference,
                "ratio": row.ratio,
                "target": row.target,
                "met": row.met,
            }
            for row in rows
        },
        "samples": {
            "dispatcher": dispatcher.__dict__,
            "reference": reference.__dict__,
        },
        "log_problems": sorted(set(problems)),
    }
    (options.results / "latest.json").write_text(json.dumps(results, indent=1))
    (options.results / "latest.md").write_text(table)
    plot(dispatcher, reference, options.results / "latency.png")
    print(table)
    for line in results["log_problems"]:
        progress(f"error in a log: {line}")

    missing = [
        row.key
        for row in rows
        if row.dispatcher is None
        or row.reference is None
        or not math.isfinite(row.dispatcher)
        or not math.isfinite(row.reference)
    ]
    if not (options.results / "latency.png").stat().st_size:
        missing.append("latency.png")
    if missing:
        progress(f"figures missing: {', '.join(missing)}")
        return 1
    if options.keep_logs:
        progress(f"the output of the processes under test is in {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)
    progress(f"done in {context['seconds']:g} s; results in {options.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
