"""Prometheus metrics: a registry per app, served over HTTP on their own port, not the API's."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import FixedAssigner, SlowStore

from serving.recommender_service.experiments import Assignment
from serving.recommender_service.model_source import load_ranker
from serving.recommender_service.prometheus import LATENCY_BUCKETS, PrometheusMetrics
from serving.recommender_service.ranker import Ranker

if TYPE_CHECKING:
    from serving_helpers import RunningApp, StartApp

PRIMARY = {"model": "title-recommender", "model_version": "7"}
CANDIDATE = {"model": "title-recommender", "model_version": "8"}
EMF_PRIMARY = {"ModelName": "title-recommender", "ModelVersion": "7"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(running: RunningApp) -> str:
    """The metrics page, fetched over HTTP from the app's metrics port."""
    port = running.app.state.metrics_server.port
    assert port != 8080
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def scrape(running: RunningApp) -> Samples:
    """Every sample of the metrics page, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(scrape_text(running))
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_requests_latency_scores_and_shadow_overlap_are_served(
    start_app: StartApp, candidate_dir: Path
) -> None:
    running = start_app(
        env={
            "CANDIDATE_MODEL_VERSION": "8",
            "CANDIDATE_MODEL_ARTIFACT_URI": str(candidate_dir),
            "SHADOW_FRACTION": "1",
        }
    )
    running.recommend("m0", k=2)
    running.recommend("m1", k=2)
    running.recommend("stranger", k=2)
    running.drain()
    samples = scrape(running)
    requests = "recommender_requests_total"
    assert value(samples, requests, **PRIMARY, outcome="ok") == 2
    assert value(samples, requests, **PRIMARY, outcome="popularity") == 1
    assert value(samples, requests, **PRIMARY, outcome="error") is None
    latency = "recommender_request_latency_seconds"
    assert value(samples, f"{latency}_count", **PRIMARY) == 3
    assert value(samples, f"{latency}_bucket", **PRIMARY, le="+Inf") == 3
    assert {
        dict(labels)["le"]
        for name, labels in samples
        if name == f"{latency}_bucket" and dict(labels)["model_version"] == "7"
    } == {*(str(bound) for bound in LATENCY_BUCKETS), "+Inf"}
    # m0's best unseen title scores 0.7, m1's 0.9; popularity counts stay out.
    assert value(samples, "recommender_top_score_count", **PRIMARY) == 2
    assert value(samples, "recommender_top_score_sum", **PRIMARY) == pytest.approx(1.6)
    assert value(samples, "recommender_top_score_bucket", **PRIMARY, le="0.5") == 0
    assert value(samples, "recommender_top_score_bucket", **PRIMARY, le="1.0") == 2
    # The candidate swaps m0 and m1 (no title in common), and ranks strangers the same way.
    overlap = "recommender_shadow_overlap_at_k"
    assert value(samples, f"{overlap}_count", **CANDIDATE) == 3
    assert value(samples, f"{overlap}_sum", **CANDIDATE) == 1.0
    assert value(samples, f"{overlap}_count", **PRIMARY) is None
    assert value(samples, "recommender_model_info", **PRIMARY, candidate_version="8") == 1


def test_no_label_names_a_member(start_app: StartApp) -> None:
    assigner = FixedAssigner({"m0": Assignment(experiment="exp-1", cell="a", model_version="7")})
    running = start_app(cell_assigner=assigner)
    running.recommend("m0", k=1)
    running.recommend("stranger", k=1)
    samples = scrape(running)
    labels = {name for _, sample_labels in samples for name, _ in sample_labels}
    assert labels <= {
        "model",
        "model_version",
        "outcome",
        "le",
        "candidate_version",
        "experiment",
        "cell",
    }
    values = {label_value for _, sample_labels in samples for _, label_value in sample_labels}
    assert not values & {"m0", "stranger"}
    assert {"exp-1", "a"} <= values
    assert not any(name.startswith(("python_", "process_")) for name, _ in samples)


def test_store_fallbacks_and_errors_are_outcomes(start_app: StartApp) -> None:
    def load_broken_for_m1(uri: str) -> Ranker:
        ranker = load_ranker(uri)
        rank = ranker.rank
        ranker.rank = lambda member_id, k, exclude: (
            1 / 0 if member_id == "m1" else rank(member_id, k, exclude)
        )
        return ranker

    running = start_app(
        env={"STORE_TIMEOUT_MS": "20"},
        store=SlowStore(delay=5.0),
        load_model=load_broken_for_m1,
        raise_server_exceptions=False,
    )
    assert running.recommend("m0", k=1)["fallback"] == "store_timeout"
    assert running.client.post("/recommendations", json={"member_id": "m1"}).status_code == 500
    samples = scrape(running)
    requests = "recommender_requests_total"
    assert value(samples, requests, **PRIMARY, outcome="store_timeout") == 1
    assert value(samples, requests, **PRIMARY, outcome="error") == 1
    assert value(samples, "recommender_request_latency_seconds_count", **PRIMARY) == 1


def test_model_info_has_an_empty_candidate_without_one(start_app: StartApp) -> None:
    samples = scrape(start_app())
    assert value(samples, "recommender_model_info", **PRIMARY, candidate_version="") == 1


def test_each_app_has_a_registry_of_its_own(start_app: StartApp) -> None:
    busy, idle = start_app(), start_app()
    busy.recommend("m0", k=1)
    assert busy.app.state.metrics_server.port != idle.app.state.metrics_server.port
    requests = "recommender_requests_total"
    assert value(scrape(busy), requests, **PRIMARY, outcome="ok") == 1
    assert value(scrape(idle), requests, **PRIMARY, outcome="ok") is None


def test_the_api_port_does_not_serve_metrics(start_app: StartApp) -> None:
    running = start_app(env={"URL_PREFIX": "/title-recommender"})
    for path in ("/metrics", "/title-recommender/metrics"):
        assert running.client.get(path).status_code == 404
    assert "recommender_model_info" in scrape_text(running)


def test_a_busy_metrics_port_is_logged_and_the_service_still_serves(
    start_app: StartApp, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        running = start_app(metrics_port=port)
        assert running.app.state.metrics_server is None
        assert running.recommend("m0", k=1)["items"][0]["title_id"] == "t4"
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.startswith(f"Prometheus metrics not served: cannot listen on 127.0.0.1:{port}: ")
    assert "\n" not in line


@pytest.mark.parametrize(
    ("name", "sample", "labels"),
    [
        ("Error", "recommender_requests_total", {"outcome": "error"}),
        (
            "PredictionWriteDropped",
            "recommender_background_dropped_total",
            {"queue": "predictions"},
        ),
        ("ShadowDropped", "recommender_background_dropped_total", {"queue": "shadow"}),
        ("FeatureReadDropped", "recommender_background_dropped_total", {"queue": "features"}),
        (
            "PredictionLogDropped",
            "recommender_background_dropped_total",
            {"queue": "prediction_log"},
        ),
        ("PredictionWriteError", "recommender_prediction_write_errors_total", {}),
        ("PredictionLogWriteError", "recommender_prediction_log_write_errors_total", {}),
    ],
)
def test_emf_counts_feed_their_prometheus_counters(
    name: str, sample: str, labels: dict[str, str]
) -> None:
    metrics = PrometheusMetrics(
        model_name="title-recommender", model_version="7", candidate_version=None
    )
    metrics.count(EMF_PRIMARY, name)
    metrics.count(EMF_PRIMARY, name, 3)
    assert metrics.registry.get_sample_value(sample, {**PRIMARY, **labels}) == 4


def test_exposures_and_unavailable_versions_are_counted(
    start_app: StartApp, candidate_dir: Path
) -> None:
    assigner = FixedAssigner(
        {
            "m0": Assignment(experiment="exp-1", cell="control", model_version="7"),
            "m1": Assignment(experiment="exp-1", cell="treatment", model_version="8"),
            "m2": Assignment(experiment="exp-1", cell="other", model_version="99"),
        }
    )
    running = start_app(
        env={"CANDIDATE_MODEL_VERSION": "8", "CANDIDATE_MODEL_ARTIFACT_URI": str(candidate_dir)},
        cell_assigner=assigner,
    )
    for member in ("m0", "m1", "m1", "m2", "m3"):
        running.recommend(member, k=1)
    samples = scrape(running)
    exposures = "recommender_experiment_exposures_total"
    assert value(samples, exposures, **PRIMARY, experiment="exp-1", cell="control") == 1
    assert value(samples, exposures, **CANDIDATE, experiment="exp-1", cell="treatment") == 2
    # The cell whose version is not served here: exposed under the version that ranked.
    assert value(samples, exposures, **PRIMARY, experiment="exp-1", cell="other") == 1
    assert sum(v for (name, _), v in samples.items() if name == exposures) == 4
    unavailable = "recommender_experiment_version_unavailable_total"
    assert value(samples, unavailable, **PRIMARY) == 1
    assert value(samples, unavailable, **CANDIDATE) is None


def test_emf_figures_without_a_prometheus_counterpart_stay_cloudwatch_only() -> None:
    metrics = PrometheusMetrics(
        model_name="title-recommender", model_version="7", candidate_version=None
    )
    before = {
        (s.name, tuple(s.labels.items())) for f in metrics.registry.collect() for s in f.samples
    }
    metrics.count({**EMF_PRIMARY, "Reason": "popularity"}, "Fallback")
    metrics.count(EMF_PRIMARY, "AssignmentError")
    metrics.observe(EMF_PRIMARY, "FeatureAge", 12.0)
    after = {
        (s.name, tuple(s.labels.items())) for f in metrics.registry.collect() for s in f.samples
    }
    assert after == before
