"""Metric lines: valid CloudWatch embedded metric format, aggregated, none lost."""

from __future__ import annotations

import io
import json
import threading
import time
from typing import TYPE_CHECKING

import pytest

from serving.recommender_service.metrics import MAX_VALUES, EmfMetrics

if TYPE_CHECKING:
    from serving_helpers import StartApp

# The units CloudWatch accepts (MetricDatum.Unit).
CLOUDWATCH_UNITS = {
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
}
MODEL = {"ModelName": "title-recommender", "ModelVersion": "7"}


def assert_valid_emf(line: str, namespace: str) -> dict:
    """Check one line against the EMF specification and return the parsed document."""
    document = json.loads(line)
    metadata = document["_aws"]
    timestamp = metadata["Timestamp"]
    assert isinstance(timestamp, int)
    assert abs(timestamp - time.time() * 1000) < 600_000
    [directive] = metadata["CloudWatchMetrics"]
    assert directive["Namespace"] == namespace
    for dimension_set in directive["Dimensions"]:
        assert 1 <= len(dimension_set) <= 30
        for name in dimension_set:
            assert isinstance(document[name], str)
            assert document[name]
    assert directive["Metrics"]
    for metric in directive["Metrics"]:
        assert set(metric) == {"Name", "Unit"}
        assert metric["Unit"] in CLOUDWATCH_UNITS
        value = document[metric["Name"]]
        values = value if isinstance(value, list) else [value]
        assert 1 <= len(values) <= MAX_VALUES
        assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    return document


class FakeClock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


def test_observations_are_written_in_lines_of_at_most_100_values() -> None:
    stream = io.StringIO()
    metrics = EmfMetrics(namespace="Test", stream=stream, flush_seconds=3600)
    for value in range(250):
        metrics.observe(MODEL, "Latency", float(value), "Milliseconds")
    assert len(stream.getvalue().splitlines()) == 2
    metrics.flush()
    documents = [assert_valid_emf(line, "Test") for line in stream.getvalue().splitlines()]
    assert [len(document["Latency"]) for document in documents] == [100, 100, 50]
    assert [v for document in documents for v in document["Latency"]] == list(range(250))
    assert documents[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [
        {"Name": "Latency", "Unit": "Milliseconds"}
    ]


def test_counts_are_summed_per_set_of_dimension_values() -> None:
    stream = io.StringIO()
    metrics = EmfMetrics(namespace="Test", stream=stream, flush_seconds=3600)
    for reason in ("popularity", "store_timeout", "popularity"):
        metrics.count({**MODEL, "Reason": reason}, "Fallback")
    metrics.count(MODEL, "PredictionWriteDropped", 3)
    metrics.flush()
    documents = [assert_valid_emf(line, "Test") for line in stream.getvalue().splitlines()]
    summary = {
        (document.get("Reason"), name): document[name]
        for document in documents
        for name in ("Fallback", "PredictionWriteDropped")
        if name in document
    }
    assert summary == {
        ("popularity", "Fallback"): 2,
        ("store_timeout", "Fallback"): 1,
        (None, "PredictionWriteDropped"): 3,
    }
    reasons = [d for d in documents if "Reason" in d]
    assert all(
        d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["ModelName", "ModelVersion", "Reason"]]
        for d in reasons
    )


def test_pending_figures_are_written_once_the_interval_has_passed() -> None:
    stream, clock = io.StringIO(), FakeClock()
    metrics = EmfMetrics(namespace="Test", stream=stream, flush_seconds=1.0, clock=clock)
    metrics.observe(MODEL, "TopScore", 0.5)
    metrics.flush_if_due()
    assert stream.getvalue() == ""
    clock.now += 1.0
    metrics.flush_if_due()
    [line] = stream.getvalue().splitlines()
    document = assert_valid_emf(line, "Test")
    assert (document["TopScore"], document["_aws"]["Timestamp"]) == ([0.5], clock.now * 1000)
    clock.now += 1.0
    metrics.observe(MODEL, "TopScore", 0.25)
    assert len(stream.getvalue().splitlines()) == 2
    metrics.flush()
    assert len(stream.getvalue().splitlines()) == 2


def test_no_figure_is_lost_between_threads() -> None:
    stream = io.StringIO()
    metrics = EmfMetrics(namespace="Test", stream=stream, flush_seconds=0.001)

    def record() -> None:
        for _ in range(1000):
            metrics.observe(MODEL, "Latency", 1.0, "Milliseconds")
            metrics.count(MODEL, "Fallback")

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    metrics.flush()
    documents = [assert_valid_emf(line, "Test") for line in stream.getvalue().splitlines()]
    assert sum(len(d.get("Latency", [])) for d in documents) == 4000
    assert sum(d.get("Fallback", 0) for d in documents) == 4000


def test_the_apps_lines_are_valid_emf_in_the_configured_namespace(start_app: StartApp) -> None:
    running = start_app(env={"METRICS_NAMESPACE": "Team/Recs"})
    running.recommend("m0")
    running.recommend("stranger", k=3)
    running.drain()
    lines = running.metrics_output.getvalue().splitlines()
    documents = [assert_valid_emf(line, "Team/Recs") for line in lines]
    metric_names = {
        metric["Name"]
        for document in documents
        for metric in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    }
    assert metric_names == {"Latency", "TopScore", "Fallback"}
    for document in documents:
        assert {key: document[key] for key in MODEL} == MODEL
    # m0's best unseen title scores 0.7; popularity counts stay out of the score distribution.
    assert running.metric_values("TopScore", **MODEL) == pytest.approx([0.7])
