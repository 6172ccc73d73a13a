"""The HTTP API of the serving app: every endpoint, every bad input, and the fallbacks."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
from serving_helpers import (
    POPULARITY_RANKING,
    PRIMARY_METRICS,
    PRIMARY_RANKING,
    TITLES,
    FixedAssigner,
    GatedStore,
    SlowStore,
)

from serving.recommender_service import service as service_module
from serving.recommender_service.experiments import Assignment
from serving.recommender_service.store import InMemoryStore

if TYPE_CHECKING:
    from serving_helpers import StartApp

DIMENSIONS = {"ModelName": "title-recommender", "ModelVersion": "7"}


def titles(body: dict) -> list[str]:
    return [item["title_id"] for item in body["items"]]


def test_health_model_and_openapi(start_app: StartApp) -> None:
    running = start_app(
        env={"MODEL_METRICS": '{"recall@10": 0.31, "ndcg@10": 0.2}', "SHADOW_FRACTION": ""}
    )
    client = running.client
    assert client.get("/health/live").json() == {"status": "live", "reason": None}
    ready = client.get("/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "reason": None})
    assert client.get("/model").json() == {
        "name": "title-recommender",
        "version": "7",
        "training_date": "2024-05-10",
        "package_arn": None,
        "metrics": {"recall@10": 0.31, "ndcg@10": 0.2},
        "candidate_version": None,
        "candidate_loaded": False,
        "shadow_fraction": 0.0,
    }
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/health/live", "/health/ready", "/model", "/recommendations"}
    request = schema["components"]["schemas"]["RecommendationRequest"]
    assert request["additionalProperties"] is False
    assert request["required"] == ["member_id"]
    k = request["properties"]["k"]
    assert (k["minimum"], k["maximum"], k["default"]) == (1, 100, 10)
    member_id = request["properties"]["member_id"]
    assert (member_id["minLength"], member_id["maxLength"]) == (1, 128)
    fallback = schema["components"]["schemas"]["RecommendationResponse"]["properties"]["fallback"]
    assert {"enum": ["popularity", "store_timeout", "store_unavailable"], "type": "string"} in (
        fallback["anyOf"]
    )


def test_model_metrics_default_to_the_artifacts(start_app: StartApp) -> None:
    assert start_app().client.get("/model").json()["metrics"] == PRIMARY_METRICS


def test_every_route_is_under_the_url_prefix(start_app: StartApp) -> None:
    arn = "arn:aws:sagemaker:us-east-1:123456789012:model-package/title-recommender/7"
    running = start_app(env={"URL_PREFIX": "/title-recommender", "MODEL_PACKAGE_ARN": arn})
    client = running.client
    prefix = "/title-recommender"
    assert client.get(f"{prefix}/health/live").status_code == 200
    assert client.get(f"{prefix}/health/ready").status_code == 200
    assert client.get(f"{prefix}/model").json()["package_arn"] == arn
    answer = client.post(f"{prefix}/recommendations", json={"member_id": "m1", "k": 1})
    assert answer.json()["items"][0]["title_id"] == "t2"
    schema = client.get(f"{prefix}/openapi.json").json()
    assert set(schema["paths"]) == {
        f"{prefix}/health/live",
        f"{prefix}/health/ready",
        f"{prefix}/model",
        f"{prefix}/recommendations",
    }
    for path in ("/health/ready", "/recommendations", "/openapi.json"):
        assert client.get(path).status_code == 404


def test_known_member_is_ranked_by_the_model_without_seen_titles(start_app: StartApp) -> None:
    running = start_app()
    body = running.recommend("m0", k=3)
    assert body == {
        "member_id": "m0",
        "model_name": "title-recommender",
        "model_version": "7",
        "items": [
            {"title_id": "t4", "score": pytest.approx(0.7)},
            {"title_id": "t1", "score": pytest.approx(0.5)},
            {"title_id": "t5", "score": pytest.approx(0.2)},
        ],
        "fallback": None,
        "experiment": None,
        "cell": None,
    }
    # k defaults to 10, more than the catalog holds: every title not seen, best first.
    assert titles(running.recommend("m0")) == PRIMARY_RANKING["m0"][1:]
    assert titles(running.recommend("m1", k=100)) == PRIMARY_RANKING["m1"]


def test_each_answer_is_written_as_a_prediction_record(start_app: StartApp) -> None:
    running = start_app()
    body = running.recommend("m0", k=2)
    running.drain()
    assert running.store is not None
    [record] = running.store.predictions
    assert (record.member_id, record.model_name, record.model_version) == (
        "m0",
        "title-recommender",
        "7",
    )
    assert list(record.title_ids) == titles(body)
    assert list(record.scores) == [item["score"] for item in body["items"]]
    assert (record.experiment, record.cell) == (None, None)
    assert record.generated_at.tzinfo is not None


def test_unknown_member_gets_the_popularity_baseline(start_app: StartApp) -> None:
    running = start_app()
    body = running.recommend("newcomer", k=3)
    # The newcomer saw t1, the most popular title, and one the catalog no longer has.
    assert titles(body) == ["t3", "t0", "t5"]
    assert [item["score"] for item in body["items"]] == [9.0, 5.0, 4.0]
    assert body["fallback"] == "popularity"
    assert titles(running.recommend("stranger", k=100)) == POPULARITY_RANKING
    assert running.metric_values("Fallback", **DIMENSIONS, Reason="popularity") == [2.0]


def test_a_slow_store_is_cut_off_at_the_timeout(start_app: StartApp) -> None:
    running = start_app(env={"STORE_TIMEOUT_MS": "50"}, store=SlowStore(delay=5.0))
    started = time.perf_counter()
    body = running.recommend("m0", k=2)
    assert time.perf_counter() - started < 1.0
    # Without the history, the seen title t0 is ranked again.
    assert titles(body) == ["t0", "t4"]
    assert body["fallback"] == "store_timeout"
    assert running.metric_values("Fallback", **DIMENSIONS, Reason="store_timeout") == [1.0]
    latency = running.metric_values("Latency", **DIMENSIONS)
    assert len(latency) == 1
    assert 45 <= latency[0] < 1000


def test_unknown_member_and_a_slow_store_count_both_fallbacks(start_app: StartApp) -> None:
    running = start_app(env={"STORE_TIMEOUT_MS": "20"}, store=SlowStore(delay=5.0))
    assert running.recommend("newcomer", k=1)["fallback"] == "popularity"
    assert running.metric_values("Fallback", **DIMENSIONS, Reason="popularity") == [1.0]
    assert running.metric_values("Fallback", **DIMENSIONS, Reason="store_timeout") == [1.0]


@pytest.mark.parametrize(
    "store",
    [
        pytest.param(SlowStore(error=ConnectionError("no host available")), id="failing"),
        pytest.param(None, id="not-configured"),
    ],
)
def test_without_a_store_the_model_still_answers(
    start_app: StartApp, store: InMemoryStore | None
) -> None:
    running = start_app(store=store)
    body = running.recommend("m0", k=2)
    assert (titles(body), body["fallback"]) == (["t0", "t4"], "store_unavailable")
    assert running.client.get("/health/ready").status_code == 200
    assert running.metric_values("Fallback", **DIMENSIONS, Reason="store_unavailable") == [1.0]


def test_a_store_down_at_start_is_connected_later(
    start_app: StartApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "STORE_RETRY_SECONDS", (0.01,))
    store = InMemoryStore(histories={"m0": ["t0"]})
    attempts: list[int] = []

    def connect(settings: object) -> InMemoryStore:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("NoHostAvailable: cassandra.us-east-1.amazonaws.com:9142")
        return store

    running = start_app(store_factory=connect)
    assert running.recommend("m0", k=1)["fallback"] == "store_unavailable"
    deadline = time.monotonic() + 5
    while running.service.store is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(attempts) == 3
    assert running.recommend("m0", k=1) | {"items": None} == {
        "member_id": "m0",
        "model_name": "title-recommender",
        "model_version": "7",
        "items": None,
        "fallback": None,
        "experiment": None,
        "cell": None,
    }


def test_a_full_write_queue_drops_records_without_blocking(
    start_app: StartApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "QUEUE_CAPACITY", 1)
    store = GatedStore()
    running = start_app(store=store)
    for _ in range(5):
        assert running.recommend("m1", k=1)["items"][0]["title_id"] == "t2"
    dropped = sum(running.metric_values("PredictionWriteDropped", **DIMENSIONS))
    store.release.set()
    running.drain()
    # One write blocked on the writer's thread and one in the queue at most; the rest dropped.
    assert 1 <= len(store.predictions) <= 2
    assert dropped == 5 - len(store.predictions)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"member_id": "m0", "k": 0}, "k", "greater than or equal to 1"),
        ({"member_id": "m0", "k": 101}, "k", "less than or equal to 100"),
        ({"member_id": "m0", "k": "5"}, "k", "valid integer"),
        ({"member_id": "m0", "k": 2.5}, "k", "valid integer"),
        ({"member_id": "m0", "k": True}, "k", "valid integer"),
        ({"member_id": ""}, "member_id", "at least 1 character"),
        ({"member_id": "m" * 129}, "member_id", "at most 128 characters"),
        ({"member_id": 12}, "member_id", "valid string"),
        ({"k": 3}, "member_id", "Field required"),
        ({"member_id": "m0", "model": "8"}, "model", "Extra inputs are not permitted"),
    ],
)
def test_invalid_fields_get_422_naming_the_field(
    start_app: StartApp, body: dict, field: str, message: str
) -> None:
    running = start_app()
    response = running.client.post("/recommendations", json=body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", field]
    assert message in error["msg"]


@pytest.mark.parametrize(
    ("content", "content_type", "message"),
    [
        (b'{"member_id": "m0",', "application/json", "JSON decode error"),
        (b"", "application/json", "Field required"),
        (b"null", "application/json", "valid dictionary"),
        (b'["m0"]', "application/json", "valid dictionary"),
        (b'"m0"', "application/json", "valid dictionary"),
        (b'{"member_id": "m0"}', "text/plain", "valid dictionary"),
        (b"\xff\xfe", "application/json", "JSON decode error"),
    ],
)
def test_malformed_bodies_get_422(
    start_app: StartApp, content: bytes, content_type: str, message: str
) -> None:
    running = start_app()
    response = running.client.post(
        "/recommendations", content=content, headers={"content-type": content_type}
    )
    assert response.status_code == 422
    assert message in response.json()["detail"][0]["msg"]
    assert running.metric_values("Error", **DIMENSIONS) == []


def test_k_at_its_bounds_is_accepted(start_app: StartApp) -> None:
    running = start_app()
    assert len(running.recommend("m1", k=1)["items"]) == 1
    assert len(running.recommend("m1", k=100)["items"]) == len(TITLES)
    assert len(running.recommend("m" * 128, k=100)["items"]) == len(TITLES)


def test_an_assigned_cell_is_answered_and_recorded(start_app: StartApp) -> None:
    assigner = FixedAssigner(
        {"m0": Assignment(experiment="exp-1", cell="control", model_version="7")}
    )
    running = start_app(cell_assigner=assigner)
    body = running.recommend("m0", k=1)
    assert (body["experiment"], body["cell"], body["model_version"]) == ("exp-1", "control", "7")
    assert running.recommend("m1", k=1)["experiment"] is None
    running.drain()
    assert running.store is not None
    assert [(r.member_id, r.experiment, r.cell) for r in running.store.predictions] == [
        ("m0", "exp-1", "control"),
        ("m1", None, None),
    ]


def test_a_cell_served_by_the_candidate_is_answered_by_it(
    start_app: StartApp, candidate_dir
) -> None:
    assigner = FixedAssigner(
        {"m0": Assignment(experiment="exp-2", cell="treatment", model_version="8")}
    )
    running = start_app(
        env={"CANDIDATE_MODEL_VERSION": "8", "CANDIDATE_MODEL_ARTIFACT_URI": str(candidate_dir)},
        cell_assigner=assigner,
    )
    body = running.recommend("m0", k=2)
    # The candidate gives m0 the vector m1 has in the primary model.
    assert (body["model_version"], titles(body)) == ("8", ["t2", "t5"])
    assert (body["experiment"], body["cell"]) == ("exp-2", "treatment")


def test_a_cell_this_task_cannot_serve_gets_the_primary_and_is_counted(
    start_app: StartApp,
) -> None:
    assigner = FixedAssigner({"m0": Assignment(experiment="exp-3", cell="b", model_version="99")})
    running = start_app(cell_assigner=assigner)
    body = running.recommend("m0", k=1)
    # Still in the cell, answered by the version that actually ranked.
    assert (body["model_version"], body["experiment"], body["cell"]) == ("7", "exp-3", "b")
    assert titles(body) == PRIMARY_RANKING["m0"][1:2]
    running.recommend("m1", k=1)
    assert running.metric_values("ExperimentVersionUnavailable", **DIMENSIONS) == [1.0]
    running.drain()
    assert running.store is not None
    [record, _] = running.store.predictions
    assert (record.model_version, record.experiment, record.cell) == ("7", "exp-3", "b")


def test_a_cell_of_a_candidate_that_did_not_load_gets_the_primary(
    start_app: StartApp, tmp_path
) -> None:
    assigner = FixedAssigner({"m0": Assignment(experiment="exp-4", cell="t", model_version="8")})
    running = start_app(
        env={
            "CANDIDATE_MODEL_VERSION": "8",
            "CANDIDATE_MODEL_ARTIFACT_URI": str(tmp_path / "missing"),
        },
        cell_assigner=assigner,
    )
    assert running.service.candidate is None
    body = running.recommend("m0", k=1)
    assert (body["model_version"], body["experiment"], body["cell"]) == ("7", "exp-4", "t")
    assert running.metric_values("ExperimentVersionUnavailable", **DIMENSIONS) == [1.0]


def test_exposures_are_counted_per_cell_under_the_version_that_ranked(
    start_app: StartApp, candidate_dir
) -> None:
    assigner = FixedAssigner(
        {
            "m0": Assignment(experiment="exp-5", cell="control", model_version="7"),
            "m1": Assignment(experiment="exp-5", cell="treatment", model_version="8"),
            "m2": Assignment(experiment="exp-5", cell="treatment", model_version="8"),
        }
    )
    running = start_app(
        env={"CANDIDATE_MODEL_VERSION": "8", "CANDIDATE_MODEL_ARTIFACT_URI": str(candidate_dir)},
        cell_assigner=assigner,
    )
    for member in ("m0", "m1", "m2", "m3", "m0"):
        running.recommend(member, k=1)
    assert running.metric_values("Exposure", **DIMENSIONS, Experiment="exp-5", Cell="control") == [
        2.0
    ]
    assert running.metric_values(
        "Exposure",
        ModelName="title-recommender",
        ModelVersion="8",
        Experiment="exp-5",
        Cell="treatment",
    ) == [2.0]
    # m3 is in no cell: nothing else was exposed.
    exposures = [d for d in running.emf_documents() if "Exposure" in d]
    assert sum(d["Exposure"] for d in exposures) == 4


def test_the_service_starts_and_stops_its_assigner(start_app: StartApp) -> None:
    assigner = FixedAssigner()
    running = start_app(cell_assigner=assigner)
    assert (assigner.starts, assigner.stops) == (1, 0)
    running.drain()
    assert (assigner.starts, assigner.stops) == (1, 1)


def test_a_failing_assigner_does_not_fail_the_request(start_app: StartApp) -> None:
    class BrokenAssigner(FixedAssigner):
        def assign(self, member_id: str) -> Assignment | None:
            raise RuntimeError("allocator unreachable")

    running = start_app(cell_assigner=BrokenAssigner())
    assert titles(running.recommend("m1", k=1)) == ["t2"]
    assert running.metric_values("AssignmentError", **DIMENSIONS) == [1.0]


def test_a_fault_of_the_service_is_a_counted_500(start_app: StartApp, model_dir) -> None:
    from serving.recommender_service.model_source import load_ranker

    def load_broken(uri: str):
        ranker = load_ranker(uri)
        ranker.rank = lambda member_id, k, exclude: 1 / 0
        return ranker

    running = start_app(load_model=load_broken, raise_server_exceptions=False)
    response = running.client.post("/recommendations", json={"member_id": "m0"})
    assert (response.status_code, response.json()) == (500, {"detail": "internal error"})
    assert running.metric_values("Error", **DIMENSIONS) == [1.0]


def test_failed_writes_are_counted(start_app: StartApp) -> None:
    class FailingWrites(InMemoryStore):
        def write_predictions(self, records):
            if any(record.member_id == "m1" for record in records):
                raise ConnectionError("NoHostAvailable")
            return list(records)

    running = start_app(store=FailingWrites())
    running.recommend("m0", k=1)
    running.drain()
    assert running.metric_values("PredictionWriteError", **DIMENSIONS) == [1.0]
    raising = start_app(store=FailingWrites())
    raising.recommend("m1", k=1)
    raising.drain()
    assert raising.metric_values("PredictionWriteError", **DIMENSIONS) == [1.0]
