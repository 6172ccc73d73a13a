"""Tests for jobs.monitoring.publish: CloudWatch datums in batches, read back from moto."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from jobs.monitoring import names
from jobs.monitoring.publish import (
    MAX_DATUMS_PER_CALL,
    Metric,
    PublishError,
    cloudwatch_client,
    publish,
)

REGION = "eu-west-1"
NAMESPACE = names.NAMESPACE
# Recent, since CloudWatch keeps data points for the past two weeks.
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
DRIFT = Metric(
    names.FEATURE_DRIFT,
    0.31,
    (
        (names.MODEL_DIMENSION, "title-recommender"),
        (names.MODEL_VERSION_DIMENSION, "3"),
        (names.FEATURE_DIMENSION, "history_length"),
    ),
)


@pytest.fixture
def cloudwatch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A mocked CloudWatch, reached with the client the job uses."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield cloudwatch_client(REGION)


class RecordingClient:
    """Passes calls to a client and keeps the size of every PutMetricData batch."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.batch_sizes: list[int] = []

    def put_metric_data(self, **kwargs: Any) -> dict:
        self.batch_sizes.append(len(kwargs["MetricData"]))
        return self._client.put_metric_data(**kwargs)


def all_metrics(client: Any) -> list[dict]:
    pages = client.get_paginator("list_metrics").paginate(Namespace=NAMESPACE)
    return [metric for page in pages for metric in page["Metrics"]]


def value_of(client: Any, metric: Metric) -> list[float]:
    result = client.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "m",
                "MetricStat": {
                    "Metric": {
                        "Namespace": NAMESPACE,
                        "MetricName": metric.name,
                        "Dimensions": [{"Name": n, "Value": v} for n, v in metric.dimensions],
                    },
                    "Period": 3600,
                    "Stat": "Maximum",
                },
            }
        ],
        StartTime=NOW - timedelta(hours=1),
        EndTime=NOW + timedelta(hours=1),
    )
    return result["MetricDataResults"][0]["Values"]


def test_publishes_a_metric_with_its_dimensions_and_unit(cloudwatch: Any):
    calls = publish([DRIFT], client=cloudwatch, namespace=NAMESPACE, timestamp=NOW)

    assert calls == 1
    assert all_metrics(cloudwatch) == [
        {
            "Namespace": NAMESPACE,
            "MetricName": "FeatureDrift",
            "Dimensions": [
                {"Name": "Model", "Value": "title-recommender"},
                {"Name": "ModelVersion", "Value": "3"},
                {"Name": "Feature", "Value": "history_length"},
            ],
        }
    ]
    assert value_of(cloudwatch, DRIFT) == [0.31]


def test_splits_the_metrics_into_calls_of_at_most_1000_datums(cloudwatch: Any):
    metrics = [
        Metric(names.PREDICTIONS, index, ((names.MODEL_DIMENSION, f"model-{index:04d}"),))
        for index in range(2 * MAX_DATUMS_PER_CALL + 1)
    ]
    client = RecordingClient(cloudwatch)

    calls = publish(metrics, client=client, namespace=NAMESPACE, timestamp=NOW)

    assert MAX_DATUMS_PER_CALL == 1000
    assert (calls, client.batch_sizes) == (3, [1000, 1000, 1])
    assert len(all_metrics(cloudwatch)) == 2001
    assert value_of(cloudwatch, metrics[1500]) == [1500.0]


def test_publishes_nothing_for_no_metrics(cloudwatch: Any):
    assert publish([], client=cloudwatch, namespace=NAMESPACE, timestamp=NOW) == 0
    assert all_metrics(cloudwatch) == []


def test_a_refused_call_is_a_one_line_publish_error():
    class RefusingClient:
        def put_metric_data(self, **_: Any) -> dict:
            raise ClientError(
                {"Error": {"Code": "AccessDenied", "Message": "not\nallowed"}}, "PutMetricData"
            )

    with pytest.raises(PublishError) as error:
        publish([DRIFT], client=RefusingClient(), namespace=NAMESPACE, timestamp=NOW)

    assert str(error.value) == (
        "PutMetricData into MLPlatform/ModelMonitoring failed after 0 of 1 calls: An error "
        "occurred (AccessDenied) when calling the PutMetricData operation: not allowed"
    )


def test_counts_are_published_in_the_count_unit():
    datum = Metric(names.PREDICTIONS, 12, ((names.MODEL_DIMENSION, "m"),)).datum(NOW)

    assert datum == {
        "MetricName": "Predictions",
        "Dimensions": [{"Name": "Model", "Value": "m"}],
        "Timestamp": NOW,
        "Value": 12,
        "Unit": "Count",
    }


def test_a_dry_run_line_holds_everything_that_would_be_published():
    line = DRIFT.json_line(namespace=NAMESPACE, timestamp=datetime(2026, 12, 2, 17, tzinfo=UTC))

    assert json.loads(line) == {
        "namespace": NAMESPACE,
        "name": "FeatureDrift",
        "dimensions": {
            "Model": "title-recommender",
            "ModelVersion": "3",
            "Feature": "history_length",
        },
        "value": 0.31,
        "unit": "None",
        "timestamp": "2026-12-02T17:00:00+00:00",
    }


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("Drift", 1.0, "unknown metric name 'Drift'"),
        (names.FEATURE_DRIFT, math.nan, "FeatureDrift: nan is not a finite number"),
        (names.HIT_RATE_AT_K, math.inf, "HitRateAtK: inf is not a finite number"),
    ],
)
def test_refuses_metrics_cloudwatch_cannot_take(name, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        Metric(name, value, ())
