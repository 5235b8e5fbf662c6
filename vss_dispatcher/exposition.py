"""
Prometheus' text format (version 0.0.4), written without a client library:
counters and histograms kept as plain numbers, and the lines a scrape reads.

Everything here runs on the reactor thread, so the values are updated without
locks.  An update costs a dictionary lookup and an addition (and, for a
histogram, a search among its bounds); the text is built only when
Prometheus scrapes.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

__all__ = [
    "CONTENT_TYPE",
    "ByLabel",
    "Counter",
    "Histogram",
    "family",
    "gauge",
    "label_text",
    "number",
    "sample",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
_HELP_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n"})


def number(value: float) -> str:
    """
    C{value} as Prometheus reads a sample value or a bucket bound.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """
    The inside of a sample's braces, such as C{queue="vss.normal"}.
    """
    return ",".join(
        f'{name}="{value.translate(_LABEL_ESCAPES)}"'
        for name, value in zip(names, values, strict=True)
    )


def sample(name: str, labels: str, value: float) -> str:
    """
    One sample line; C{labels} is the text L{label_text} gives.
    """
    if labels:
        return f"{name}{{{labels}}} {number(value)}"
    return f"{name} {number(value)}"


def family(name: str, kind: str, text: str) -> Iterator[str]:
    """
    The C{# HELP} and C{# TYPE} lines that start a metric.
    """
    yield f"# HELP {name} {text.translate(_HELP_ESCAPES)}"
    yield f"# TYPE {name} {kind}"


def gauge(name: str, text: str, samples: Iterable[tuple[str, float]]) -> Iterator[str]:
    """
    A gauge read at scrape time, from C{(labels, value)} pairs.
    """
    yield from family(name, "gauge", text)
    for labels, value in samples:
        yield sample(name, labels, value)


class _Count:
    """
    The value of a counter for one combination of label values.

    @ivar labels: The label text of its samples.
    @ivar value: How many times it was counted.
    """

    __slots__ = ("labels", "value")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.value = 0.0

    def inc(self) -> None:
        """
        Count one more.
        """
        self.value += 1.0


class _Distribution:
    """
    The observations of a histogram for one combination of label values.

    @ivar labels: The label text of its samples.
    @ivar bounds: The upper bounds of the buckets, without C{+Inf}.
    @ivar counts: Observations in each bucket alone (not cumulative), the
        last one for the values above every bound.
    @ivar sum: The sum of every value observed.
    """

    __slots__ = ("labels", "bounds", "counts", "sum")

    def __init__(self, labels: str, bounds: tuple[float, ...]) -> None:
        self.labels = labels
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """
        Add C{value} to the first bucket whose bound is at least C{value}.
        """
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


_Child = TypeVar("_Child", _Count, _Distribution)


class _Metric(Generic[_Child]):
    """
    What counters and histograms share: a name, a help text and a value
    per combination of label values, kept in the order they first appeared.

    @ivar name: The metric's name.
    @ivar text: The help text.
    @ivar label_names: The names of its labels, in the order their values
        are given to L{child}.
    """

    def __init__(self, name: str, text: str, label_names: tuple[str, ...]) -> None:
        self.name = name
        self.text = text
        self.label_names = label_names
        self._children: dict[tuple[str, ...], _Child] = {}
        if not label_names:
            self.child()

    def _new_child(self, labels: str) -> _Child:
        raise NotImplementedError()

    def child(self, *values: str) -> _Child:
        """
        The value for these label values, created at zero the first time.

        Keep what this returns to update it without looking it up again.

        @raise ValueError: When the number of values is not the number of
            labels.
        """
        try:
            return self._children[values]
        except KeyError:
            pass
        if len(values) != len(self.label_names):
            raise ValueError(
                f"{self.name} has the labels {self.label_names!r};"
                f" got the values {values!r}."
            )
        found = self._children[values] = self._new_child(
            label_text(self.label_names, values)
        )
        return found


class Counter(_Metric[_Count]):
    """
    A count that only goes up, exposed as C{<name>_total}.
    """

    def _new_child(self, labels: str) -> _Count:
        return _Count(labels)

    def lines(self) -> Iterator[str]:
        """
        The counter in Prometheus' text format, one line at a time.
        """
        name = f"{self.name}_total"
        yield from family(name, "counter", self.text)
        for count in self._children.values():
            yield sample(name, count.labels, count.value)


class Histogram(_Metric[_Distribution]):
    """
    Observations sorted into buckets, exposed as cumulative
    C{<name>_bucket} samples (the last one C{le="+Inf"}), C{<name>_sum} and
    C{<name>_count}.
    """

    def __init__(
        self,
        name: str,
        text: str,
        label_names: tuple[str, ...],
        buckets: tuple[float, ...],
    ) -> None:
        """
        @param buckets: The upper bounds of the buckets, increasing and
            finite; the C{+Inf} bucket is added.
        @raise ValueError: When C{buckets} are not so.
        """
        if not all(math.isfinite(bound) for bound in buckets) or any(
            low >= high for low, high in zip(buckets, buckets[1:], strict=False)
        ):
            raise ValueError(
                f"The buckets of {name} are {buckets!r}; expected increasing,"
                " finite bounds (+Inf is added)."
            )
        self.buckets = buckets
        self._bounds = [f'le="{number(bound)}"' for bound in buckets] + ['le="+Inf"']
        super().__init__(name, text, label_names)

    def _new_child(self, labels: str) -> _Distribution:
        return _Distribution(labels, self.buckets)

    def lines(self) -> Iterator[str]:
        """
        The histogram in Prometheus' text format, one line at a time.
        """
        name = self.name
        yield from family(name, "histogram", self.text)
        for distribution in self._children.values():
            labels = distribution.labels
            seen = 0
            for bound, count in zip(self._bounds, distribution.counts, strict=True):
                seen += count
                bucket = f"{labels},{bound}" if labels else bound
                yield sample(f"{name}_bucket", bucket, seen)
            yield sample(f"{name}_sum", labels, distribution.sum)
            yield sample(f"{name}_count", labels, seen)


class ByLabel(dict[str, _Child]):
    """
    The values of a metric with one label, by that label's value: one
    lookup per update, and a value created the first time a label value
    appears.
    """

    def __init__(self, metric: _Metric[_Child], values: Iterable[str] = ()) -> None:
        """
        @param values: Label values whose series exist from the start.
        """
        super().__init__()
        self._metric: _Metric[_Child] = metric
        for value in values:
            self[value] = metric.child(value)

    def __missing__(self, key: str) -> _Child:
        found = self[key] = self._metric.child(key)
        return found
