"""
The benchmark's report: the figures side by side with the reference's, as a
Markdown table, and the latency distributions as a plot.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Figure", "Measurements", "figures", "markdown", "plot"]


@dataclass
class Measurements:
    """
    Everything one side, dispatcher or reference, produced.

    @ivar idle: Milliseconds from publish to VSS for jobs sent to it idle,
        keyed by where the time starts (C{"confirmed"}, C{"published"}).
    @ivar preemption: The same for priority jobs preempting a normal one.
    @ivar timing: Gaps between back-to-back requests less the duration, in
        milliseconds, by prefetch count.
    @ivar throughput: Jobs per second of each repetition, by prefetch count.
    @ivar cpu_per_job_us: Processor time per job in each throughput
        repetition, in microseconds, by prefetch count.
    """

    startup_s: list[float] = field(default_factory=list)
    rss_after_startup_mb: float | None = None
    rss_before_memory_run_mb: float | None = None
    rss_after_memory_run_mb: float | None = None
    peak_rss_mb: float | None = None
    memory_run_jobs_per_s: float | None = None
    idle: dict[str, list[float]] = field(
        default_factory=lambda: {"confirmed": [], "published": []}
    )
    preemption: dict[str, list[float]] = field(default_factory=dict)
    timing: dict[int, list[float]] = field(default_factory=dict)
    throughput: dict[int, list[float]] = field(default_factory=dict)
    cpu_per_job_us: dict[int, list[float]] = field(default_factory=dict)


def percentile(samples: list[float], fraction: float) -> float:
    """
    The nearest-rank percentile of C{samples}.
    """
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50": statistics.median(samples),
        "p99": percentile(samples, 0.99),
        "max": max(samples),
        "count": len(samples),
    }


@dataclass
class Figure:
    """
    One line of the results table.
    """

    key: str
    label: str
    unit: str
    dispatcher: float | None
    reference: float | None
    target: str | None = None
    met: bool | None = None
    comparable: bool = True

    @property
    def ratio(self) -> float | None:
        """
        The dispatcher's figure over the reference's, when a ratio means
        something: not for differences that may be zero or negative.
        """
        if not self.comparable or self.dispatcher is None or not self.reference:
            return None
        return self.dispatcher / self.reference


def figures(dispatcher: Measurements, reference: Measurements) -> list[Figure]:
    """
    The results table, each dispatcher figure beside its reference.
    """
    rows: list[Figure] = []

    def distribution(
        key: str,
        label: str,
        ours: list[float],
        theirs: list[float],
        limit_p99: float | None = None,
    ) -> None:
        mine, other = summary(ours), summary(theirs)
        for statistic in ("p50", "p99", "max"):
            target = met = None
            if statistic == "p99" and limit_p99 is not None:
                target = f"≤ {limit_p99:g} ms"
                met = mine["p99"] <= limit_p99
            rows.append(
                Figure(
                    f"{key}_{statistic}_ms",
                    f"{label}, {statistic}",
                    "ms",
                    mine[statistic],
                    other[statistic],
                    target,
                    met,
                )
            )

    distribution(
        "preemption_latency",
        "Preemption latency, confirm → VSS (reference: idle latency)",
        dispatcher.preemption["confirmed"],
        reference.idle["confirmed"],
        5.0,
    )
    distribution(
        "idle_latency",
        "Idle latency, confirm → VSS",
        dispatcher.idle["confirmed"],
        reference.idle["confirmed"],
    )
    for prefetch in (1, 20):
        distribution(
            f"timing_error_prefetch_{prefetch}",
            f"Display timing error, prefetch {prefetch}"
            " (reference: gap between requests)",
            dispatcher.timing[prefetch],
            reference.timing[prefetch],
            3.0,
        )
    for prefetch, share in ((1, 0.9), (20, 1.0)):
        ours = statistics.median(dispatcher.throughput[prefetch])
        theirs = statistics.median(reference.throughput[prefetch])
        rows.append(
            Figure(
                f"throughput_prefetch_{prefetch}_jobs_per_s",
                f"Throughput, prefetch {prefetch} (median of"
                f" {len(dispatcher.throughput[prefetch])})",
                "jobs/s",
                ours,
                theirs,
                f"≥ {share:g} × reference",
                ours >= share * theirs,
            )
        )
    for prefetch in (1, 20):
        rows.append(
            Figure(
                f"cpu_per_job_prefetch_{prefetch}_us",
                f"Processor time per job, prefetch {prefetch} (median)",
                "µs",
                statistics.median(dispatcher.cpu_per_job_us[prefetch]),
                statistics.median(reference.cpu_per_job_us[prefetch]),
            )
        )
    assert dispatcher.peak_rss_mb is not None and reference.peak_rss_mb is not None
    rows.append(
        Figure(
            "rss_after_startup_mb",
            "RSS after start-up",
            "MB",
            dispatcher.rss_after_startup_mb,
            reference.rss_after_startup_mb,
        )
    )
    rows.append(
        Figure(
            "rss_peak_mb",
            "Peak RSS (VmHWM)",
            "MB",
            dispatcher.peak_rss_mb,
            reference.peak_rss_mb,
            "≤ 60 MB",
            dispatcher.peak_rss_mb <= 60,
        )
    )
    growth = [
        side.rss_after_memory_run_mb - side.rss_before_memory_run_mb
        for side in (dispatcher, reference)
        if side.rss_after_memory_run_mb is not None
        and side.rss_before_memory_run_mb is not None
    ]
    rows.append(
        Figure(
            "rss_growth_mb",
            "RSS growth across the memory run",
            "MB",
            growth[0],
            growth[1],
            "≤ 5 MB",
            growth[0] <= 5,
            comparable=False,
        )
    )
    rows.append(
        Figure(
            "startup_median_s",
            "Start-up to consuming, median",
            "s",
            statistics.median(dispatcher.startup_s),
            statistics.median(reference.startup_s),
            "≤ 1.5 s",
            statistics.median(dispatcher.startup_s) <= 1.5,
        )
    )
    rows.append(
        Figure(
            "startup_max_s",
            "Start-up to consuming, slowest",
            "s",
            max(dispatcher.startup_s),
            max(reference.startup_s),
            "≤ 1.5 s",
            max(dispatcher.startup_s) <= 1.5,
        )
    )
    return rows


def markdown(rows: list[Figure], context: dict[str, Any]) -> str:
    """
    The results as a Markdown table, with what it was measured on.
    """

    def number(value: float | None, unit: str = "") -> str:
        if value is None or not math.isfinite(value):
            return "missing"
        if abs(value) >= 100:
            text = f"{value:,.0f}"
        elif abs(value) >= 10:
            text = f"{value:.1f}"
        else:
            text = f"{value:.2f}"
        return f"{text} {unit}".strip()

    lines = [
        f"Measured {context['date']} on {context['machine']['cpu']}"
        f" ({context['machine']['cores']} cores), Python"
        f" {context['machine']['python']}, RabbitMQ {context['broker']},"
        f" {context['mode']} run"
        + (", IMAGE_ROOT set" if context.get("image_root") else "")
        + ".",
        "",
        "| figure | dispatcher | reference | ratio | target | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.label} | {number(row.dispatcher, row.unit)}"
            f" | {number(row.reference, row.unit)}"
            f" | {number(row.ratio) if row.comparable else '–'}"
            f" | {row.target or ''} | {met} |"
        )
    standin = context["stand_in"]
    lines += [
        "",
        f"The VSS stand-in alone answers {standin['requests_per_second']:,.0f}"
        f" requests/s to a sequential keep-alive client (round trip p50"
        f" {standin['round_trip_ms_p50']:.3f} ms, p99"
        f" {standin['round_trip_ms_p99']:.3f} ms).",
    ]
    return "\n".join(lines) + "\n"


def plot(dispatcher: Measurements, reference: Measurements, path: Path) -> None:
    """
    Draw the latency and timing-error distributions as cumulative curves.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    def curve(axes: Any, samples: list[float], label: str) -> None:
        ordered = sorted(samples)
        shares = [(rank + 1) / len(ordered) for rank in range(len(ordered))]
        axes.step(ordered, shares, where="post", label=label)

    figure, (latency, timing) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    curve(latency, dispatcher.preemption["confirmed"], "dispatcher, preemption")
    curve(latency, dispatcher.idle["confirmed"], "dispatcher, idle")
    curve(latency, reference.idle["confirmed"], "reference, idle")
    latency.set_title("Broker confirm → request at VSS")
    latency.set_xlabel("milliseconds")
    latency.set_ylabel("share of jobs")
    for prefetch in (1, 20):
        curve(timing, dispatcher.timing[prefetch], f"dispatcher, prefetch {prefetch}")
        curve(
            timing,
            reference.timing[prefetch],
            f"reference gap, prefetch {prefetch}",
        )
    timing.set_title("Gap between requests less the duration")
    timing.set_xlabel("milliseconds")
    for axes in (latency, timing):
        axes.grid(True, alpha=0.3)
        axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
