"""Shadow mode: a sampled share of members is also scored by the candidate, off the path."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from serving_helpers import LOAD_TIMEOUT_SECONDS

from serving.recommender_service import service as service_module
from serving.recommender_service.model_source import load_ranker
from serving.recommender_service.ranker import Ranker, Ranking

if TYPE_CHECKING:
    from serving_helpers import StartApp

PRIMARY = {"ModelName": "title-recommender", "ModelVersion": "7"}
CANDIDATE = {"ModelName": "title-recommender", "ModelVersion": "8"}
MEMBERS = ["m0", "m1", "m2", "m3", "stranger"]


def shadow_env(candidate_dir: Path, fraction: str) -> dict[str, str]:
    return {
        "CANDIDATE_MODEL_VERSION": "8",
        "CANDIDATE_MODEL_ARTIFACT_URI": str(candidate_dir),
        "SHADOW_FRACTION": fraction,
    }


def test_shadow_scoring_never_changes_the_response(
    start_app: StartApp, candidate_dir: Path
) -> None:
    plain = start_app()
    shadowed = start_app(env=shadow_env(candidate_dir, "1"))
    for member in MEMBERS:
        for k in (1, 3, 10):
            assert shadowed.recommend(member, k) == plain.recommend(member, k)


def test_both_rankings_are_recorded(start_app: StartApp, candidate_dir: Path) -> None:
    running = start_app(env=shadow_env(candidate_dir, "1"))
    body = running.recommend("m0", k=2)
    running.drain()
    assert running.store is not None
    records = {record.model_version: record for record in running.store.predictions}
    assert set(records) == {"7", "8"}
    served, shadow = records["7"], records["8"]
    assert (served.model_name, list(served.title_ids)) == (
        "title-recommender",
        [item["title_id"] for item in body["items"]],
    )
    # The candidate gives m0 the vector m1 has in the primary model; the same seen title (t0)
    # is left out of both rankings.
    assert (shadow.model_name, list(shadow.title_ids)) == ("title-recommender:shadow", ["t2", "t5"])
    assert shadow.member_id == "m0"
    assert (shadow.experiment, shadow.cell) == (None, None)
    # t4, t1 against t2, t5: no title in common.
    assert running.metric_values("ShadowOverlapAtK", **CANDIDATE) == [0.0]
    assert running.metric_values("TopScore", **CANDIDATE) == [pytest.approx(0.9)]
    assert running.metric_values("ShadowOverlapAtK", **PRIMARY) == []


def test_the_same_rankings_overlap_fully(start_app: StartApp, model_dir: Path) -> None:
    running = start_app(env=shadow_env(model_dir, "1"))
    running.recommend("m1", k=3)
    running.recommend("stranger", k=3)
    running.drain()
    assert running.metric_values("ShadowOverlapAtK", **CANDIDATE) == [1.0, 1.0]
    assert running.metric_values("Fallback", **CANDIDATE, Reason="popularity") == [1.0]


def test_the_sample_is_a_fixed_share_of_members_chosen_by_id(
    start_app: StartApp, candidate_dir: Path
) -> None:
    running = start_app(env=shadow_env(candidate_dir, "0.3"))
    members = [f"member-{index}" for index in range(2000)]
    sampled = {member for member in members if running.service.in_shadow_sample(member)}
    assert 0.27 < len(sampled) / len(members) < 0.33
    again = start_app(env=shadow_env(candidate_dir, "0.3"))
    assert {member for member in members if again.service.in_shadow_sample(member)} == sampled
    # A larger fraction keeps every member of the smaller one.
    wider = start_app(env=shadow_env(candidate_dir, "0.6"))
    assert sampled <= {member for member in members if wider.service.in_shadow_sample(member)}


def test_only_sampled_members_are_scored_by_the_candidate(
    start_app: StartApp, candidate_dir: Path
) -> None:
    running = start_app(env=shadow_env(candidate_dir, "0.5"))
    members = [f"member-{index}" for index in range(40)]
    for member in members:
        running.recommend(member, k=1)
    running.drain()
    assert running.store is not None
    shadowed = {r.member_id for r in running.store.predictions if r.model_version == "8"}
    expected = {member for member in members if running.service.in_shadow_sample(member)}
    assert shadowed == expected
    assert 0 < len(expected) < len(members)


def test_without_a_fraction_the_candidate_scores_nothing(
    start_app: StartApp, candidate_dir: Path
) -> None:
    running = start_app(env=shadow_env(candidate_dir, "0"))
    running.recommend("m0", k=1)
    running.drain()
    assert running.store is not None
    assert [r.model_version for r in running.store.predictions] == ["7"]


def test_a_full_shadow_queue_drops_and_counts(
    start_app: StartApp, candidate_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "QUEUE_CAPACITY", 1)
    release = threading.Event()

    def load_with_a_slow_candidate(uri: str) -> Ranker:
        ranker = load_ranker(uri)
        if uri == str(candidate_dir):
            rank = ranker.rank

            def slow_rank(*args: object) -> Ranking:
                release.wait(LOAD_TIMEOUT_SECONDS)
                return rank(*args)

            ranker.rank = slow_rank
        return ranker

    running = start_app(env=shadow_env(candidate_dir, "1"), load_model=load_with_a_slow_candidate)
    for _ in range(4):
        assert running.recommend("m1", k=1)["items"][0]["title_id"] == "t2"
    dropped = sum(running.metric_values("ShadowDropped", **PRIMARY))
    release.set()
    running.drain()
    scored = len(running.metric_values("TopScore", **CANDIDATE))
    # One job on the blocked thread and one in the queue at most; the others were dropped.
    assert 1 <= scored <= 2
    assert dropped == 4 - scored
