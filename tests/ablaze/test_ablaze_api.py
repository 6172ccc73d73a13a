"""The HTTP API (ablaze/api.py) over moto's DynamoDB: every route, its errors and the pages."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from ablaze_helpers import (
    END,
    KNOWN_VERSIONS,
    RESULTS_TABLE,
    SETTINGS,
    START,
    Clock,
    spec,
    write_observations,
)
from fastapi.testclient import TestClient

from ablaze.api import create_app
from ablaze.results import CellObservations
from ablaze.statistics import Sample
from ablaze.store import ExperimentStore, ResultStore

EXPERIMENT = "/experiments/homepage-ranker"


def created(client: TestClient, **overrides: Any) -> dict:
    response = client.post("/experiments", json=spec(**overrides))
    assert response.status_code == 201, response.text
    return response.json()


def error(response, status: int) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert "\n" not in detail
    return detail


def write_result(results: ResultStore, *, treatment_members: int, cell_conflicts: int = 0) -> None:
    def cell(members: int, plays: int) -> CellObservations:
        return CellObservations(
            members=members,
            metrics={
                "play_rate": Sample.of_counts(n=members, successes=plays),
                "completion_rate": Sample.of_counts(n=members, successes=members // 5),
                "plays_per_member": Sample(n=members, mean=2.0, variance=3.0),
            },
        )

    cells = {"control": cell(10_000, 2_000), "treatment": cell(treatment_members, 2_500)}
    write_observations(results, cells, cell_conflicts=cell_conflicts)


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_an_experiment_is_created_as_a_draft(client: TestClient) -> None:
    body = created(client)
    assert body["id"] == "homepage-ranker"
    assert body["state"] == "draft"
    assert body["version"] == 1
    assert len(body["salt"]) == 32
    assert [cell["buckets"] for cell in body["cells"]] == [[[0, 1000]], [[1000, 2000]]]
    assert body["start"] == "2030-01-01T00:00:00Z"
    assert client.get(EXPERIMENT).json() == body


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        (
            {
                "cells": [
                    {"name": "control", "percent": 60, "model_version": "7", "control": True},
                    {"name": "treatment", "percent": 50, "model_version": "8"},
                ]
            },
            "cells: percentages add up to 110%, at most 100% is allowed (members beyond the "
            "total are not enrolled)",
        ),
        (
            {
                "cells": [
                    {"name": "control", "percent": 10, "model_version": "7", "control": True},
                    {"name": "treatment", "percent": -1, "model_version": "8"},
                ]
            },
            "cells[1].percent: must be above 0 and at most 100, got -1",
        ),
        ({"primary_metric": "watch_time"}, "primary_metric: unknown metric 'watch_time'"),
        ({"end": "2029-01-01T00:00:00Z"}, "end: must be after start"),
        ({"salt": "0" * 32}, "salt: Extra inputs are not permitted"),
    ],
)
def test_invalid_experiments_get_422_naming_the_field(
    client: TestClient, overrides, detail
) -> None:
    assert detail in error(client.post("/experiments", json=spec(**overrides)), 422)


def test_unknown_model_versions_get_422(client: TestClient) -> None:
    cells = [
        {"name": "control", "percent": 10, "model_version": "7", "control": True},
        {"name": "treatment", "percent": 10, "model_version": "12"},
    ]
    assert error(client.post("/experiments", json=spec(cells=cells)), 422) == (
        "cells[1].model_version: unknown model version '12' (known versions: 7, 8, 9)"
    )


def test_malformed_json_gets_422(client: TestClient) -> None:
    response = client.post(
        "/experiments", content=b"{", headers={"content-type": "application/json"}
    )
    assert "JSON decode error" in error(response, 422)


def test_an_id_is_taken_once(client: TestClient) -> None:
    created(client)
    assert error(client.post("/experiments", json=spec()), 409) == (
        "experiment 'homepage-ranker' exists already"
    )


def test_experiments_are_listed_and_filtered(client: TestClient) -> None:
    created(client)
    created(client, id="search-ranker", surface="search-row")
    client.post("/experiments/search-ranker/start")
    ids = lambda query: [e["id"] for e in client.get(f"/experiments{query}").json()]  # noqa: E731
    assert ids("") == ["homepage-ranker", "search-ranker"]
    assert ids("?surface=search-row") == ["search-ranker"]
    assert ids("?state=draft") == ["homepage-ranker"]
    assert ids("?surface=search-row&state=draft") == []
    assert error(client.get("/experiments?state=paused"), 422).startswith("state: Input should be")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", EXPERIMENT),
        ("post", f"{EXPERIMENT}/start"),
        ("post", f"{EXPERIMENT}/stop"),
        ("get", f"{EXPERIMENT}/results"),
        ("get", f"{EXPERIMENT}/page"),
    ],
)
def test_unknown_experiments_get_404(client: TestClient, method: str, path: str) -> None:
    assert error(getattr(client, method)(path), 404) == "no experiment 'homepage-ranker'"


def test_unknown_experiments_get_404_on_allocation_changes(client: TestClient) -> None:
    response = client.patch(f"{EXPERIMENT}/allocation", json={"percent": {"treatment": 20}})
    assert error(response, 404) == "no experiment 'homepage-ranker'"


def test_draft_runs_then_stops(client: TestClient, clock: Clock) -> None:
    created(client)
    running = client.post(f"{EXPERIMENT}/start").json()
    assert (running["state"], running["version"]) == ("running", 2)
    assert running["started_at"] == clock.now.isoformat().replace("+00:00", "Z")
    assert "is running; only a draft" in error(client.post(f"{EXPERIMENT}/start"), 409)
    clock.now = START + timedelta(days=7)
    assert client.post(f"{EXPERIMENT}/stop").json()["state"] == "stopped"
    assert "is stopped; only a running" in error(client.post(f"{EXPERIMENT}/stop"), 409)


def test_a_draft_cannot_stop(client: TestClient) -> None:
    created(client)
    assert error(client.post(f"{EXPERIMENT}/stop"), 409) == (
        "experiment 'homepage-ranker' is draft; only a running experiment can stop "
        "(draft -> running -> stopped)"
    )


def test_a_surface_runs_one_experiment(client: TestClient) -> None:
    created(client)
    created(client, id="row-order")
    client.post(f"{EXPERIMENT}/start")
    assert "surface 'homepage-row' runs experiment 'homepage-ranker'; stop it first" in error(
        client.post("/experiments/row-order/start"), 409
    )


def test_an_ended_window_cannot_start(client: TestClient, clock: Clock) -> None:
    created(client)
    clock.now = END
    assert error(client.post(f"{EXPERIMENT}/start"), 409).startswith(
        "end: the window of 'homepage-ranker' ended at 2030-01-15T00:00:00+00:00"
    )


def test_a_version_withdrawn_since_creation_blocks_the_start(
    experiments: ExperimentStore, results: ResultStore, clock: Clock
) -> None:
    known = set(KNOWN_VERSIONS)
    app = create_app(
        SETTINGS,
        experiments=experiments,
        results=results,
        known_model_versions=lambda: known,
        clock=clock,
    )
    client = TestClient(app)
    created(client)
    known.discard("8")
    assert error(client.post(f"{EXPERIMENT}/start"), 422).startswith(
        "cells[1].model_version: unknown model version '8'"
    )


def test_a_running_experiment_ramps_up_without_moving_anyone(client: TestClient) -> None:
    created(client)
    client.post(f"{EXPERIMENT}/start")
    response = client.patch(f"{EXPERIMENT}/allocation", json={"percent": {"treatment": 20}})
    assert response.status_code == 200, response.text
    cells = response.json()["cells"]
    assert [(cell["percent"], cell["buckets"]) for cell in cells] == [
        (10, [[0, 1000]]),
        (20, [[1000, 3000]]),
    ]


def test_a_running_experiment_cannot_shrink(client: TestClient) -> None:
    created(client)
    client.post(f"{EXPERIMENT}/start")
    response = client.patch(f"{EXPERIMENT}/allocation", json={"percent": {"treatment": 5}})
    assert "shrinking a cell would move its members out (treatment 10% -> 5%)" in error(
        response, 409
    )


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            {"percent": {"bold": 5}},
            "percent: no cell named 'bold'; the cells are control, treatment",
        ),
        ({"percent": {"treatment": 95}}, "cells: percentages add up to 105%"),
        (
            {"percent": {"treatment": 0}},
            "percent.treatment: must be above 0 and at most 100, got 0",
        ),
        (
            {"percent": {}},
            "percent: Dictionary should have at least 1 item after validation, not 0",
        ),
        ({"percent": {"treatment": 20}, "salt": "x"}, "salt: Extra inputs are not permitted"),
    ],
)
def test_invalid_allocation_changes_get_422(client: TestClient, body: dict, detail: str) -> None:
    created(client)
    assert detail in error(client.patch(f"{EXPERIMENT}/allocation", json=body), 422)


def test_a_stopped_experiment_keeps_its_allocation(client: TestClient) -> None:
    created(client)
    client.post(f"{EXPERIMENT}/start")
    client.post(f"{EXPERIMENT}/stop")
    response = client.patch(f"{EXPERIMENT}/allocation", json={"percent": {"treatment": 20}})
    assert error(response, 409) == (
        "experiment 'homepage-ranker' is stopped; its allocation cannot change"
    )


def test_results_are_the_latest_the_job_wrote(client: TestClient, results: ResultStore) -> None:
    created(client)
    assert error(client.get(f"{EXPERIMENT}/results"), 404) == (
        "no results for 'homepage-ranker' yet: the analysis job has written none"
    )
    write_result(results, treatment_members=10_100)
    body = client.get(f"{EXPERIMENT}/results").json()
    assert body["computed_at"] == "2030-01-04T00:00:00Z"
    assert body["window"] == {"start": "2030-01-01T00:00:00Z", "end": "2030-01-04T00:00:00Z"}
    assert body["cell_conflicts"] == 0
    assert body["trustworthy"] is True
    comparison = body["metrics"][0]["comparisons"][0]
    assert set(comparison) == {
        "treatment",
        "control",
        "effect",
        "fixed",
        "sequential",
        "srm_p_value",
        "trustworthy",
        "problems",
    }
    assert set(comparison["fixed"]) == {"low", "high", "p_value"}


def put_unreadable_item(dynamodb: Any) -> None:
    dynamodb.put_item(
        TableName=RESULTS_TABLE,
        Item={
            "experiment_id": {"S": "homepage-ranker"},
            "computed_at": {"S": "2030-01-04T00:00:00.000000Z"},
            "observations": {"S": '{"format": 2}'},
        },
    )


def test_an_unreadable_result_is_a_404_that_says_why(client: TestClient, dynamodb: Any) -> None:
    created(client)
    put_unreadable_item(dynamodb)
    assert error(client.get(f"{EXPERIMENT}/results"), 404) == (
        "no usable result for 'homepage-ranker' yet: the observations computed at "
        "2030-01-04T00:00:00.000000Z cannot be analysed: format 2 is not the one this "
        "version reads (1)"
    )


def test_every_route_is_under_the_url_prefix(
    experiments: ExperimentStore, results: ResultStore, clock: Clock
) -> None:
    settings = SETTINGS.model_copy(update={"url_prefix": "/ablaze"})
    client = TestClient(
        create_app(
            settings,
            experiments=experiments,
            results=results,
            known_model_versions=lambda: KNOWN_VERSIONS,
            clock=clock,
        )
    )
    assert client.get("/ablaze/health").status_code == 200
    assert client.post("/ablaze/experiments", json=spec()).status_code == 201
    assert client.post(f"/ablaze{EXPERIMENT}/start").status_code == 200
    assert 'href="/ablaze/experiments/homepage-ranker/page"' in client.get("/ablaze/").text
    assert client.get(f"/ablaze{EXPERIMENT}/page").status_code == 200
    assert client.get("/health").status_code == 404
    schema = client.get("/ablaze/openapi.json").json()
    assert set(schema["paths"]) == {
        "/ablaze/health",
        "/ablaze/experiments",
        "/ablaze/experiments/{experiment_id}",
        "/ablaze/experiments/{experiment_id}/start",
        "/ablaze/experiments/{experiment_id}/stop",
        "/ablaze/experiments/{experiment_id}/allocation",
        "/ablaze/experiments/{experiment_id}/results",
    }


# --- pages ----------------------------------------------------------------------------------


def test_the_list_page_links_every_experiment(client: TestClient) -> None:
    assert "No experiments yet" in client.get("/").text
    created(client)
    created(client, id="row-order", description="<script>alert(1)</script>")
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert 'href="/experiments/homepage-ranker/page"' in page.text
    assert 'href="/experiments/row-order/page"' in page.text
    assert "control 10%, treatment 10%" in page.text
    assert "<script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_the_page_says_when_there_are_no_results(client: TestClient) -> None:
    created(client)
    page = client.get(f"{EXPERIMENT}/page").text
    assert "No results yet" in page
    assert "<svg" not in page
    assert "20% of members are enrolled; the others are in no cell" in page


def test_the_page_shows_effects_intervals_and_the_srm_verdict(
    client: TestClient, results: ResultStore
) -> None:
    created(client)
    write_result(results, treatment_members=10_100)
    page = client.get(f"{EXPERIMENT}/page").text
    assert "Sample ratio OK" in page
    assert page.count('<svg class="intervals"') == 3
    assert page.count('class="interval excludes-zero"') >= 2
    assert "+4.75 pp" in page
    assert page.count('<span class="badge trustworthy">') == 3
    assert '<span class="badge untrustworthy"' not in page
    assert 'id="cell-conflicts"' not in page


def test_the_page_says_why_a_result_is_unusable(client: TestClient, dynamodb: Any) -> None:
    created(client)
    put_unreadable_item(dynamodb)
    page = client.get(f"{EXPERIMENT}/page")
    assert page.status_code == 200
    assert (
        "No usable result yet: the latest observations cannot be analysed (format 2 is not "
        "the one this version reads (1))."
    ) in page.text
    assert "<svg" not in page.text


def test_the_page_shows_the_window_and_members_seen_in_two_cells(
    client: TestClient, results: ResultStore
) -> None:
    created(client)
    write_result(results, treatment_members=10_100, cell_conflicts=3)
    page = client.get(f"{EXPERIMENT}/page").text
    assert "between 2030-01-01 00:00 and 2030-01-04 00:00 UTC" in page
    assert "<strong>3 members were seen in more than one cell</strong>" in page


def test_the_page_marks_untrustworthy_results(client: TestClient, results: ResultStore) -> None:
    created(client)
    write_result(results, treatment_members=9_000)
    page = client.get(f"{EXPERIMENT}/page").text
    assert "verdict verdict-mismatch" in page
    assert "Sample ratio mismatch" in page
    assert "These results are untrustworthy" in page
    assert page.count('<span class="badge untrustworthy"') == 3
