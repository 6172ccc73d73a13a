"""The recommender job's parts on hand-made inputs: split, metrics and negative sampling."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from training.recommender import data, evaluation
from training.recommender.model import (
    MatrixFactorization,
    NegativeSampler,
    bpr_loss,
    make_optimizer,
)


def _write_events(root: Path, rows: list[tuple[str, str, str, str]]) -> None:
    events = pd.DataFrame(rows, columns=["member_id", "title_id", "event_type", "event_time"])
    events["event_time"] = pd.to_datetime(events["event_time"], utc=True)
    events["event_id"] = [f"e{index}" for index in range(len(events))]
    events["watch_seconds"] = pd.array([None] * len(events), dtype="Int32")
    for day, group in events.groupby(events["event_time"].dt.date):
        folder = root / f"event_date={day.isoformat()}"
        folder.mkdir(parents=True)
        group.to_parquet(folder / "part-00000.parquet", index=False)


def test_split_dedups_positives_and_holds_out_each_members_latest_title(tmp_path: Path) -> None:
    _write_events(
        tmp_path,
        [
            # m1: t1 first liked on day 1 (the COMPLETE on day 4 repeats it), t2 on day 2 and
            # t3 on day 3, so t3 is held out; the impression and thumbs-down are not positives.
            ("m1", "t1", "PLAY", "2024-05-01T08:00:00"),
            ("m1", "t2", "THUMBS_UP", "2024-05-02T08:00:00"),
            ("m1", "t3", "ADD_TO_LIST", "2024-05-03T08:00:00"),
            ("m1", "t1", "COMPLETE", "2024-05-04T08:00:00"),
            ("m1", "t9", "IMPRESSION", "2024-05-05T08:00:00"),
            ("m1", "t8", "THUMBS_DOWN", "2024-05-06T08:00:00"),
            # m2 has one positive: it trains but has no holdout.
            ("m2", "t1", "PLAY", "2024-05-01T09:00:00"),
            ("m2", "t1", "PLAY", "2024-05-03T09:00:00"),
            # m3: two titles liked at the same moment; the larger id is held out.
            ("m3", "t5", "PLAY", "2024-05-02T10:00:00"),
            ("m3", "t2", "PLAY", "2024-05-02T10:00:00"),
            # m4's latest title t7 nobody liked in training: held out as unrankable (-1).
            ("m4", "t1", "PLAY", "2024-05-01T11:00:00"),
            ("m4", "t7", "PLAY", "2024-05-02T11:00:00"),
            # m5 puts t3 and t5 into training.
            ("m5", "t3", "PLAY", "2024-05-01T12:00:00"),
            ("m5", "t5", "PLAY", "2024-05-01T13:00:00"),
            ("m5", "t6", "PLAY", "2024-05-02T12:00:00"),
        ],
    )
    # Spark's markers and hidden or temporary files are not part of the table.
    (tmp_path / "_SUCCESS").touch()
    (tmp_path / "event_date=2024-05-01" / ".part-00001.parquet").write_bytes(b"partial")
    (tmp_path / "_temporary" / "0").mkdir(parents=True)
    (tmp_path / "_temporary" / "0" / "part-00002.parquet").write_bytes(b"partial")

    interactions = data.read_interactions(tmp_path)
    assert (interactions.files, interactions.rows) == (6, 15)
    assert len(interactions.positives) == 13

    split = data.split_leave_last_out(interactions.positives)
    assert split.member_ids == ["m1", "m2", "m3", "m4", "m5"]
    assert split.title_ids == ["t1", "t2", "t3", "t5"]
    train_pairs = {
        (split.member_ids[m], split.title_ids[t])
        for m, t in zip(split.train_members, split.train_titles, strict=True)
    }
    assert train_pairs == {
        ("m1", "t1"),
        ("m1", "t2"),
        ("m2", "t1"),
        ("m3", "t2"),
        ("m4", "t1"),
        ("m5", "t3"),
        ("m5", "t5"),
    }
    holdout = {
        split.member_ids[m]: (split.title_ids[t] if t >= 0 else None)
        for m, t in zip(split.holdout_members, split.holdout_titles, strict=True)
    }
    assert holdout == {"m1": "t3", "m3": "t5", "m4": None, "m5": None}


def test_split_fingerprint_follows_the_training_pairs() -> None:
    def split(rows: list[tuple[str, str, str]]) -> data.TrainingSplit:
        members, titles, times = zip(*rows, strict=True)
        table = pa.table(
            {
                "member_id": members,
                "title_id": titles,
                "event_time": pa.array(pd.to_datetime(times, utc=True), pa.timestamp("us")),
            }
        )
        return data.split_leave_last_out(data.encode_positives(table))

    base = [("m1", "t1", "2024-05-01"), ("m1", "t2", "2024-05-02")]
    assert split(base).fingerprint() == split(list(reversed(base))).fingerprint()
    changed = [*base, ("m2", "t1", "2024-05-01")]
    assert split(changed).fingerprint() != split(base).fingerprint()


def test_metrics_exclude_training_titles_and_discount_by_rank() -> None:
    # Three holdout members over five titles, one shared score vector: title 0 ranks first,
    # then 1, 2, 3, 4.
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    result = evaluation.evaluate(
        lambda members: scores.expand(len(members), 5).clone(),
        train_members=np.array([0, 0, 1]),
        train_titles=np.array([0, 1, 0]),
        holdout_members=np.array([0, 1, 2]),
        holdout_titles=np.array([2, 3, -1]),
        num_titles=5,
        k=2,
        device=torch.device("cpu"),
    )
    # Member 0's titles 0 and 1 are excluded, so its holdout title 2 ranks first; member 1's
    # title 0 is excluded, so its title 3 ranks third, outside the top 2; member 2's title is
    # unrankable.
    assert result.recall_at_k == pytest.approx(1 / 3)
    assert result.ndcg_at_k == pytest.approx(1 / 3)

    at_three = evaluation.evaluate(
        lambda members: scores.expand(len(members), 5).clone(),
        np.array([0, 0, 1]),
        np.array([0, 1, 0]),
        np.array([0, 1, 2]),
        np.array([2, 3, -1]),
        5,
        3,
        torch.device("cpu"),
    )
    assert at_three.recall_at_k == pytest.approx(2 / 3)
    assert at_three.ndcg_at_k == pytest.approx((1 + 1 / math.log2(4)) / 3)


def test_popularity_ranks_by_training_count_with_ties_to_the_lower_index() -> None:
    score = evaluation.popularity_scorer(np.array([3, 3, 1, 2, 2, 0]), 5, torch.device("cpu"))
    ranking = torch.argsort(score(torch.tensor([0]))[0], descending=True).tolist()
    assert ranking == [2, 3, 0, 1, 4]


def test_negative_sampler_avoids_each_members_positives_deterministically() -> None:
    members = np.repeat(np.arange(50), 4)
    titles = np.tile(np.arange(4), 50) + np.repeat(np.arange(50) % 3, 4)
    sampler = NegativeSampler(members, titles, num_titles=8)
    batch = torch.from_numpy(np.repeat(members, 20))

    first = sampler.sample(batch, torch.Generator().manual_seed(3))
    again = sampler.sample(batch, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    liked = set(zip(members.tolist(), titles.tolist(), strict=True))
    assert not any((m, t) in liked for m, t in zip(batch.tolist(), first.tolist(), strict=True))
    # Every member likes titles 2 and 3; all the others turn up as negatives.
    assert set(first.tolist()) == {0, 1, 4, 5, 6, 7}


def test_ids_that_are_not_strings_are_indexed_by_their_string_form() -> None:
    table = pa.table(
        {
            "member_id": pa.array([10, 9, 10], pa.int64()),
            "title_id": ["t1", "t2", "t2"],
            "event_time": pa.array([1, 2, 3], pa.timestamp("s")),
        }
    )
    positives = data.encode_positives(table)
    # As strings "10" sorts before "9".
    assert positives.member_ids == ["10", "9"]
    assert positives.members.tolist() == [0, 1, 0]
    assert positives.titles.tolist() == [0, 1, 1]


def test_a_step_moves_only_the_rows_its_batch_touches() -> None:
    model = MatrixFactorization(4, 5, 3, torch.Generator().manual_seed(0))
    optimizer = make_optimizer(model, learning_rate=0.1)

    def step(member: int, positive: int, negative: int) -> dict[str, list[int]]:
        before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        optimizer.zero_grad(set_to_none=True)
        batch = (torch.tensor([member]), torch.tensor([positive]), torch.tensor([negative]))
        bpr_loss(model, *batch, weight_decay=1e-4).backward()
        optimizer.step()
        return {
            name: sorted(set(torch.nonzero(tensor != before[name])[:, 0].tolist()))
            for name, tensor in model.state_dict().items()
        }

    assert step(1, 2, 4) == {
        "member_embedding.weight": [1],
        "title_embedding.weight": [2, 4],
        "title_bias.weight": [2, 4],
    }
    # The first step's rows keep still, where Adam's momentum would move them on.
    assert step(0, 3, 0) == {
        "member_embedding.weight": [0],
        "title_embedding.weight": [0, 3],
        "title_bias.weight": [0, 3],
    }
