"""Metrics as CloudWatch embedded metric format (EMF) lines on stdout, and for Prometheus.

The service records each figure once, on :class:`Metrics`, which hands it to both: the EMF
lines feed the CloudWatch alarms that roll a deployment back, the Prometheus registry of
:mod:`serving.recommender_service.prometheus` feeds the dashboards.

Printing a line per request would cost more than the request, so figures are aggregated per
set of dimension values and written as one line per set at least every ``flush_seconds`` or
when a metric has collected ``MAX_VALUES`` values (EMF's limit per metric and line). An
observed metric is written as the list of its values, so CloudWatch still computes
percentiles; a counted metric as the sum of its counts.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO

from serving.recommender_service.prometheus import PrometheusMetrics

MAX_VALUES = 100
Dimensions = tuple[tuple[str, str], ...]


@dataclass
class _Metric:
    unit: str
    summed: bool
    values: list[float] = field(default_factory=list)
    total: float = 0.0


class EmfMetrics:
    """Thread-safe aggregator that writes EMF lines to a text stream."""

    def __init__(
        self,
        *,
        namespace: str,
        stream: TextIO,
        flush_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._namespace = namespace
        self._stream = stream
        self._flush_seconds = flush_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[Dimensions, dict[str, _Metric]] = {}
        self._last_flush = clock()

    def observe(
        self, dimensions: Mapping[str, str], name: str, value: float, unit: str = "None"
    ) -> None:
        """Record one value, e.g. a latency, to be written with the others of its line."""
        with self._lock:
            metric = self._metric(dimensions, name, unit, summed=False)
            metric.values.append(value)
            full = len(metric.values) >= MAX_VALUES
        if full or self._due():
            self.flush()

    def count(self, dimensions: Mapping[str, str], name: str, amount: float = 1) -> None:
        """Add to a count, e.g. of fallbacks, written as one sum per line."""
        with self._lock:
            self._metric(dimensions, name, "Count", summed=True).total += amount
        if self._due():
            self.flush()

    def flush(self) -> None:
        """Write every pending line now."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last_flush = self._clock()
            lines = [self._line(dims, metrics) for dims, metrics in pending.items()]
            if lines:
                self._stream.write("".join(lines))
                self._stream.flush()

    def flush_if_due(self) -> None:
        """Write the pending lines when the flush interval has passed."""
        if self._due():
            self.flush()

    def _due(self) -> bool:
        return self._clock() - self._last_flush >= self._flush_seconds

    def _metric(
        self, dimensions: Mapping[str, str], name: str, unit: str, *, summed: bool
    ) -> _Metric:
        metrics = self._pending.setdefault(tuple(sorted(dimensions.items())), {})
        metric = metrics.get(name)
        if metric is None:
            metric = metrics[name] = _Metric(unit, summed)
        return metric

    def _line(self, dimensions: Dimensions, metrics: dict[str, _Metric]) -> str:
        document: dict = {
            "_aws": {
                "Timestamp": int(self._clock() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": self._namespace,
                        "Dimensions": [[name for name, _ in dimensions]],
                        "Metrics": [
                            {"Name": name, "Unit": metric.unit} for name, metric in metrics.items()
                        ],
                    }
                ],
            },
            **dict(dimensions),
        }
        for name, metric in metrics.items():
            document[name] = metric.total if metric.summed else metric.values
        return json.dumps(document, separators=(",", ":")) + "\n"


class Metrics:
    """Hands each figure to the EMF writer and to the Prometheus metrics."""

    def __init__(self, *, emf: EmfMetrics, prometheus: PrometheusMetrics) -> None:
        self.emf = emf
        self.prometheus = prometheus

    def observe(
        self, dimensions: Mapping[str, str], name: str, value: float, unit: str = "None"
    ) -> None:
        """Record one value, e.g. a score."""
        self.emf.observe(dimensions, name, value, unit)
        self.prometheus.observe(dimensions, name, value)

    def count(self, dimensions: Mapping[str, str], name: str, amount: float = 1) -> None:
        """Add to a count, e.g. of dropped jobs."""
        self.emf.count(dimensions, name, amount)
        self.prometheus.count(dimensions, name, amount)

    def answered(self, dimensions: Mapping[str, str], *, outcome: str, milliseconds: float) -> None:
        """Record an answered request: ``Latency`` for EMF, latency and outcome for Prometheus.

        The outcome is no EMF dimension: the alarms read ``Latency`` by model and version.
        """
        self.emf.observe(dimensions, "Latency", milliseconds, "Milliseconds")
        self.prometheus.answered(dimensions, outcome=outcome, seconds=milliseconds / 1000)

    def exposed(self, dimensions: Mapping[str, str], *, experiment: str, cell: str) -> None:
        """Count an answer to a member in ``cell`` of ``experiment``: EMF ``Exposure`` with
        the dimensions ``Experiment`` and ``Cell`` besides the model's, and for Prometheus.

        Experiments and cells are few, so they make good dimensions; members never are.
        """
        self.emf.count({**dimensions, "Experiment": experiment, "Cell": cell}, "Exposure")
        self.prometheus.exposed(dimensions, experiment=experiment, cell=cell)

    def flush(self) -> None:
        """Write every pending EMF line now (Prometheus is read when scraped)."""
        self.emf.flush()

    def flush_if_due(self) -> None:
        """Write the pending EMF lines when their flush interval has passed."""
        self.emf.flush_if_due()
