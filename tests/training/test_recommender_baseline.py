"""The drift baseline training writes with each model: its histograms on hand-made values, the
histories and top scores it summarises, and the file of the shared training run, read with
the monitor's own reader and binning."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.monitoring import statistics
from jobs.monitoring.baseline import parse_baseline
from serving.recommender_service.ranker import Ranker
from training.recommender import artifact, baseline, data
from training.recommender.inputs import HISTORY_LENGTH, HISTORY_POPULARITY, INPUT_FEATURES
from training.recommender.model import MatrixFactorization

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import JobRun, RunJob


def split_of(rows: list[tuple[str, str, str]]) -> data.TrainingSplit:
    """The split of (member, title, day) positives."""
    members, titles, days = zip(*rows, strict=True)
    table = pa.table(
        {
            "member_id": members,
            "title_id": titles,
            "event_time": pa.array(pd.to_datetime(days, utc=True), pa.timestamp("us")),
        }
    )
    return data.split_leave_last_out(data.encode_positives(table))


def untrained_model(split: data.TrainingSplit) -> MatrixFactorization:
    return MatrixFactorization(
        split.num_members, split.num_titles, 4, torch.Generator().manual_seed(0)
    ).eval()


# --- histograms -----------------------------------------------------------------------------


def test_edges_are_the_deciles_of_the_sample():
    edges = baseline.quantile_edges(np.arange(1.0, 101.0))

    assert edges.tolist() == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0]


def test_repeated_quantiles_and_one_at_the_minimum_give_no_edge():
    values = np.array([1.0] * 50 + [2.0] * 30 + [3.0] * 20)

    assert baseline.histogram(values) == {"edges": [2.0, 3.0], "proportions": [0.5, 0.3, 0.2]}


def test_a_constant_has_one_bin():
    assert baseline.histogram(np.full(7, 4.0)) == {"edges": [], "proportions": [1.0]}


def test_a_sample_needs_values():
    with pytest.raises(ValueError, match=r"^no values to take quantiles of$"):
        baseline.quantile_edges(np.array([]))


def test_histograms_bin_as_the_monitor_bins_serving_values():
    # Integers repeat, so many values sit exactly on an edge.
    values = np.random.default_rng(3).integers(0, 25, size=1000).astype(np.float64)

    summary = baseline.histogram(values)

    assert len(summary["edges"]) == 9
    assert summary["proportions"] == statistics.proportions(values.tolist(), summary["edges"])
    assert sum(summary["proportions"]) == pytest.approx(1.0)
    assert min(summary["proportions"]) > 0


# --- histories and top scores ---------------------------------------------------------------


HISTORY_ROWS = [
    # m1 likes t3, t1, t2 and then t4, which is held out: the history runs oldest first.
    ("m1", "t3", "2024-05-01"),
    ("m1", "t1", "2024-05-02"),
    ("m1", "t2", "2024-05-03"),
    ("m1", "t4", "2024-05-04"),
    ("m2", "t2", "2024-05-01"),
    ("m3", "t4", "2024-05-01"),
    ("m3", "t1", "2024-05-02"),
]


def test_histories_are_each_members_training_titles_oldest_first():
    histories = list(baseline.member_histories(split_of(HISTORY_ROWS)))

    assert histories == [["t3", "t1", "t2"], ["t2"], ["t4"]]


def test_histories_keep_the_latest_titles_up_to_the_cap():
    histories = list(baseline.member_histories(split_of(HISTORY_ROWS), history_cap=2))

    assert histories == [["t1", "t2"], ["t2"], ["t4"]]


def test_the_document_summarises_every_members_inputs_and_top_score():
    split = split_of(HISTORY_ROWS)
    model = untrained_model(split)
    positives = np.bincount(split.train_titles, minlength=split.num_titles)

    document = baseline.build(
        model=model, split=split, title_positives=positives, device=torch.device("cpu")
    )

    # Histories [t3, t1, t2], [t2] and [t4]; t2 has 2 training positives, the others 1.
    assert document["features"][HISTORY_LENGTH] == {
        "edges": [3.0],
        "proportions": [2 / 3, 1 / 3],
        "missing_share": 0.0,
    }
    one, two = math.log1p(1), math.log1p(2)
    assert document["features"][HISTORY_POPULARITY] == {
        "edges": pytest.approx([(2 * one + two) / 3, two]),
        "proportions": pytest.approx([1 / 3, 1 / 3, 1 / 3]),
        "missing_share": 0.0,
    }
    assert document["sample_size"] == {HISTORY_LENGTH: 3, HISTORY_POPULARITY: 3, "top_score": 2}
    assert document["format"] == 1
    assert parse_baseline(document).top_score.proportions == (0.5, 0.5)


def test_top_scores_leave_out_the_members_training_titles():
    split = split_of(HISTORY_ROWS)
    model = untrained_model(split)
    all_scores = model.score_all_titles(torch.from_numpy(split.holdout_members)).numpy()

    best = baseline.top_scores(model, split, torch.device("cpu"))

    # m1 (row 0) trained on t1, t2, t3 (rows 0, 1, 2): only t4 (row 3) is left.
    # m3 (row 2) trained on t4 (row 3): the best of t1, t2, t3.
    assert split.holdout_members.tolist() == [0, 2]
    assert best.tolist() == pytest.approx([all_scores[0, 3], all_scores[1, :3].max()])


# Each member trains on t1, the one title with a training positive, and holds out t2.
EVERY_TITLE_SEEN = [
    ("m1", "t1", "2024-05-01"),
    ("m1", "t2", "2024-05-02"),
    ("m2", "t1", "2024-05-01"),
    ("m2", "t2", "2024-05-02"),
]


def test_a_member_with_every_title_in_training_has_no_top_score():
    split = split_of(EVERY_TITLE_SEEN)
    model = untrained_model(split)

    assert baseline.top_scores(model, split, torch.device("cpu")).tolist() == []


def test_no_top_score_at_all_gives_no_baseline():
    split = split_of(EVERY_TITLE_SEEN)
    positives = np.bincount(split.train_titles, minlength=split.num_titles)

    with pytest.raises(baseline.BaselineError, match=r"^every holdout member has a training "):
        baseline.build(
            model=untrained_model(split),
            split=split,
            title_positives=positives,
            device=torch.device("cpu"),
        )


def test_a_model_without_a_baseline_is_still_written(run_job: RunJob, tmp_path: Path) -> None:
    channel = tmp_path / "channel"
    channel.mkdir()
    members, titles, days = zip(*EVERY_TITLE_SEEN, strict=True)
    events = pa.table(
        {
            "member_id": members,
            "title_id": titles,
            "event_type": ["PLAY"] * len(members),
            "event_time": pa.array(pd.to_datetime(days, utc=True), pa.timestamp("us", "UTC")),
        }
    )
    pq.write_table(events, channel / "part-00000.parquet")

    result = run_job("--epochs", "1", "--embedding-dim", "4", channel=channel)

    assert result.exit_code == 0, result.stderr
    assert "no baseline.json: every holdout member has a training positive for every title" in (
        result.stdout
    )
    assert "wrote model.pt, id_maps.json, popularity.json, metrics.json to " in result.stdout
    assert sorted(path.name for path in result.model_dir.iterdir()) == sorted(
        artifact.ARTIFACT_FILES
    )
    assert artifact.load(result.model_dir).title_ids == ["t1"]


# --- the shared training run ------------------------------------------------------------------


def test_the_model_folder_holds_a_baseline_the_monitor_reads(trained: JobRun) -> None:
    assert trained.exit_code == 0, trained.stderr
    document = json.loads((trained.model_dir / baseline.BASELINE_FILE).read_text())
    metrics = json.loads((trained.model_dir / "metrics.json").read_text())

    parsed = parse_baseline(document)

    assert tuple(parsed.features) == tuple(sorted(INPUT_FEATURES))
    assert parsed.sample_size == {
        HISTORY_LENGTH: metrics["members"],
        HISTORY_POPULARITY: metrics["members"],
        "top_score": metrics["holdout_members"],
    }
    # Every history title is one the model knows.
    assert [feature.missing_share for feature in parsed.features.values()] == [0.0, 0.0]
    assert len(parsed.top_score.edges) == 9
    assert "wrote model.pt, id_maps.json, popularity.json, metrics.json, baseline.json" in (
        trained.stdout
    )


def test_history_lengths_are_the_members_training_positives(
    trained: JobRun, planted_channel: Path
) -> None:
    events = pq.read_table(planted_channel).to_pandas()
    pairs = events[events["event_type"].isin(data.POSITIVE_EVENT_TYPES)][
        ["member_id", "title_id"]
    ].drop_duplicates()
    per_member = pairs.groupby("member_id").size()
    # Every planted member has two or more positives, one of them held out; none reaches
    # the cap.
    lengths = (per_member - 1).to_numpy(dtype=np.float64)
    assert lengths.max() < baseline.HISTORY_CAP

    document = json.loads((trained.model_dir / baseline.BASELINE_FILE).read_text())

    assert document["features"][HISTORY_LENGTH] == {
        **baseline.histogram(lengths),
        "missing_share": 0.0,
    }


def test_top_scores_are_what_serving_ranks_first(trained: JobRun, planted_channel: Path) -> None:
    loaded = artifact.load(trained.model_dir)
    split = data.split_leave_last_out(data.read_interactions(planted_channel).positives)
    ranker = Ranker(loaded)
    seen: dict[str, list[str]] = {}
    for member, title in zip(split.train_members, split.train_titles, strict=True):
        seen.setdefault(split.member_ids[member], []).append(split.title_ids[title])

    best = baseline.top_scores(loaded.model, split, torch.device("cpu"))

    served = [
        ranker.rank(split.member_ids[member], 1, seen[split.member_ids[member]]).scores[0]
        for member in split.holdout_members
    ]
    assert best.tolist() == pytest.approx(served, rel=1e-5)
    document = json.loads((trained.model_dir / baseline.BASELINE_FILE).read_text())
    assert document["top_score"] == baseline.histogram(best)
