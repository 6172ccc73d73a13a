"""Publishing the monitor's figures to CloudWatch, or printing them for a dry run.

boto3 is imported only where a client is made, so this module imports without it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobs.monitoring.names import UNITS

# PutMetricData takes at most 1000 data points per call; the datums here are far below its
# 1 MB payload limit at that count.
MAX_DATUMS_PER_CALL = 1000


class PublishError(RuntimeError):
    """CloudWatch refused or could not be reached; the message is one line."""


@dataclass(frozen=True)
class Metric:
    """One figure: a metric name of :mod:`jobs.monitoring.names`, its value and dimensions.

    Raises ``ValueError`` for an unknown name or a value CloudWatch does not store (NaN and
    infinities).
    """

    name: str
    value: float
    dimensions: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if self.name not in UNITS:
            raise ValueError(f"unknown metric name {self.name!r}")
        if not math.isfinite(self.value):
            raise ValueError(f"{self.name}: {self.value!r} is not a finite number")

    def datum(self, timestamp: datetime) -> dict[str, Any]:
        """The metric as an entry of PutMetricData's ``MetricData``."""
        return {
            "MetricName": self.name,
            "Dimensions": [{"Name": name, "Value": value} for name, value in self.dimensions],
            "Timestamp": timestamp,
            "Value": self.value,
            "Unit": UNITS[self.name],
        }

    def json_line(self, *, namespace: str, timestamp: datetime) -> str:
        """The metric as one JSON line, as a dry run prints it (dimensions in their order)."""
        return json.dumps(
            {
                "namespace": namespace,
                "name": self.name,
                "dimensions": dict(self.dimensions),
                "value": self.value,
                "unit": UNITS[self.name],
                "timestamp": timestamp.isoformat(),
            }
        )


def publish(metrics: Sequence[Metric], *, client: Any, namespace: str, timestamp: datetime) -> int:
    """Put ``metrics`` into ``namespace`` at ``timestamp`` in as few calls as the API allows;
    return the number of calls. Raises :class:`PublishError` when a call fails (the calls
    before it stay published)."""
    from botocore.exceptions import BotoCoreError, ClientError

    calls = 0
    for batch in _batches(metrics, MAX_DATUMS_PER_CALL):
        try:
            client.put_metric_data(
                Namespace=namespace, MetricData=[metric.datum(timestamp) for metric in batch]
            )
        except (BotoCoreError, ClientError) as exc:
            raise PublishError(
                f"PutMetricData into {namespace} failed after {calls} of "
                f"{-(-len(metrics) // MAX_DATUMS_PER_CALL)} calls: {_one_line(exc)}"
            ) from None
        calls += 1
    return calls


def cloudwatch_client(region: str) -> Any:
    """A CloudWatch client for ``region`` that retries throttling and server errors."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "cloudwatch", region_name=region, config=Config(retries={"mode": "standard"})
    )


def _batches(metrics: Sequence[Metric], size: int) -> Iterator[Sequence[Metric]]:
    for start in range(0, len(metrics), size):
        yield metrics[start : start + size]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
