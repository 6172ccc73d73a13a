"""The model folder format (training/recommender/artifact.py) and the ranker built on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from serving_helpers import (
    MEMBER_VECTORS,
    MEMBERS,
    POPULARITY_RANKING,
    PRIMARY_METRICS,
    PRIMARY_RANKING,
    TITLE_POSITIVES,
    TITLES,
    tiny_model,
)

from serving.recommender_service.ranker import Ranker
from training.recommender import artifact, evaluation, train
from training.recommender.model import MatrixFactorization

REPO_ROOT = Path(__file__).resolve().parents[2]


def copy_of(model_dir: Path, target: Path) -> Path:
    target.mkdir()
    for path in model_dir.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_save_then_load_gives_back_the_model(model_dir: Path) -> None:
    assert sorted(path.name for path in model_dir.iterdir()) == sorted(artifact.ARTIFACT_FILES)
    loaded = artifact.load(model_dir)
    assert (loaded.member_ids, loaded.title_ids) == (MEMBERS, TITLES)
    assert loaded.title_positives.tolist() == TITLE_POSITIVES
    assert loaded.metrics == PRIMARY_METRICS
    expected = tiny_model(MEMBER_VECTORS).state_dict()
    state = loaded.model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[name], expected[name]) for name in state)
    assert not loaded.model.training


def test_the_files_keep_the_format_training_documents(model_dir: Path) -> None:
    id_maps = json.loads((model_dir / "id_maps.json").read_text())
    assert id_maps == {
        "member_index": {member: row for row, member in enumerate(MEMBERS)},
        "title_index": {title: row for row, title in enumerate(TITLES)},
    }
    popularity = json.loads((model_dir / "popularity.json").read_text())
    assert popularity == {"title_positives": dict(zip(TITLES, TITLE_POSITIVES, strict=True))}
    assert json.loads((model_dir / "metrics.json").read_text()) == PRIMARY_METRICS
    state = torch.load(model_dir / "model.pt", weights_only=True)
    assert {name: tuple(t.shape) for name, t in state.items()} == {
        "member_embedding.weight": (4, 2),
        "title_embedding.weight": (6, 2),
        "title_bias.weight": (6, 1),
    }


def test_save_refuses_counts_that_do_not_fit_the_titles(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="5 title positive counts for 6 titles"):
        artifact.save(
            tmp_path,
            model=tiny_model(MEMBER_VECTORS),
            member_ids=MEMBERS,
            title_ids=TITLES,
            title_positives=TITLE_POSITIVES[:5],
            metrics={},
        )


def _write_json(name: str, value: object) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(json.dumps(value))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "popularity.json").unlink(), r"lacks popularity.json$"),
        (lambda d: (d / "metrics.json").write_text("[1"), r"cannot read metrics.json: "),
        (_write_json("id_maps.json", []), r"id_maps.json is not a JSON object"),
        (
            _write_json("id_maps.json", {"member_index": {"m0": 0}}),
            r"id_maps.json has no non-empty 'title_index' object",
        ),
        (
            _write_json("id_maps.json", {"member_index": {"m0": 1}, "title_index": {"t0": 0}}),
            r"id_maps.json: the rows of 'member_index' are not 0..0",
        ),
        (
            _write_json(
                "id_maps.json",
                {
                    "member_index": {"m0": 0, "m1": 1, "m2": 2},
                    "title_index": {t: i for i, t in enumerate(TITLES)},
                },
            ),
            r"model.pt does not fit 3 members and 6 titles of id_maps.json: ",
        ),
        (
            _write_json("popularity.json", {"title_positives": dict.fromkeys(TITLES, -1)}),
            r"popularity.json: title positives must be integers >= 0",
        ),
        (
            _write_json("metrics.json", {"recall_at_k": "high"}),
            r"metrics.json is not a JSON object of finite numbers",
        ),
        (lambda d: torch.save({"weights": torch.zeros(1)}, d / "model.pt"), r"holds no 2-D"),
        (lambda d: (d / "model.pt").write_bytes(b"\x80\x04junk"), r"cannot read model.pt: "),
    ],
)
def test_load_names_what_is_wrong(model_dir: Path, tmp_path: Path, damage, message: str) -> None:
    broken = copy_of(model_dir, tmp_path / "model")
    damage(broken)
    with pytest.raises(artifact.ArtifactError, match=message) as error:
        artifact.load(broken)
    assert "\n" not in str(error.value)


def test_artifact_imports_in_script_mode_beside_train_py(model_dir: Path) -> None:
    # SageMaker runs train.py from the source folder with no package around it.
    code = (
        "import pathlib, artifact\n"
        f"print(artifact.load(pathlib.Path({str(model_dir)!r})).member_ids)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT / "training" / "recommender",
        env={**os.environ, "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(MEMBERS)


# The ranker.


def test_rankings_follow_the_models_scores(model_dir: Path) -> None:
    ranker = Ranker(artifact.load(model_dir))
    for member, expected in PRIMARY_RANKING.items():
        ranking = ranker.rank(member, 100, exclude=())
        assert ranking.title_ids == expected
        assert not ranking.popularity
    ranking = ranker.rank("m0", 2, exclude=["t0", "t1", "t-unknown"])
    assert ranking.title_ids == ["t4", "t5"]
    assert ranking.scores == pytest.approx([0.7, 0.2])
    assert ranker.rank("m0", 10, exclude=TITLES).title_ids == []


def test_rankings_match_the_torch_model_on_a_larger_random_model(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    model = MatrixFactorization(50, 300, 8, generator=generator)
    with torch.no_grad():
        model.title_bias.weight.normal_(std=0.1, generator=generator)
    titles = [f"t{index:03d}" for index in range(300)]
    artifact.save(
        tmp_path,
        model=model,
        member_ids=[f"m{index}" for index in range(50)],
        title_ids=titles,
        title_positives=np.arange(300),
        metrics={},
    )
    ranker = Ranker(artifact.load(tmp_path))
    scores = model.score_all_titles(torch.arange(50))
    for member in range(50):
        expected = torch.topk(scores[member], 20).indices.tolist()
        ranking = ranker.rank(f"m{member}", 20, exclude=())
        assert ranking.title_ids == [titles[index] for index in expected]
        assert ranking.scores == pytest.approx(scores[member, expected].tolist(), rel=1e-5)


def test_popularity_is_the_baseline_training_evaluates(model_dir: Path) -> None:
    ranker = Ranker(artifact.load(model_dir))
    ranking = ranker.rank("stranger", 100, exclude=())
    assert ranking.popularity
    assert ranking.title_ids == POPULARITY_RANKING
    assert ranking.scores == [9.0, 9.0, 5.0, 4.0, 2.0, 0.0]
    # The same order as evaluation.popularity_scorer on the training positives behind the counts.
    train_titles = np.repeat(np.arange(len(TITLES)), TITLE_POSITIVES)
    scorer = evaluation.popularity_scorer(train_titles, len(TITLES), torch.device("cpu"))
    order = torch.argsort(scorer(torch.zeros(1, dtype=torch.long))[0], descending=True)
    assert [TITLES[index] for index in order.tolist()] == POPULARITY_RANKING
    assert ranker.rank("stranger", 2, exclude=["t1", "t0"]).title_ids == ["t3", "t5"]


def test_the_training_job_writes_a_folder_the_ranker_serves(tmp_path: Path, capsys) -> None:
    events = [
        ("m0", "t0", "PLAY", 1),
        ("m0", "t1", "COMPLETE", 2),
        ("m0", "t2", "PLAY", 3),
        ("m1", "t1", "THUMBS_UP", 1),
        ("m1", "t2", "PLAY", 2),
        ("m2", "t0", "PLAY", 1),
        ("m2", "t1", "ADD_TO_LIST", 2),
        ("m2", "t2", "IMPRESSION", 3),
    ]
    channel = tmp_path / "interactions"
    channel.mkdir()
    table = pa.table(
        {
            "member_id": [e[0] for e in events],
            "title_id": [e[1] for e in events],
            "event_type": [e[2] for e in events],
            "event_time": pa.array(
                [datetime(2024, 5, 1, hour, tzinfo=UTC) for *_, hour in events],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    pq.write_table(table, channel / "part-00000.parquet")
    model_dir = tmp_path / "model"
    argv = ["--interactions", channel, "--model-dir", model_dir, "--num-gpus", "0"]
    argv += ["--output-data-dir", tmp_path / "output", "--checkpoint-dir", tmp_path / "ckpt"]
    argv += ["--failure-file", tmp_path / "failure", "--epochs", "2", "--embedding-dim", "4"]
    assert train.main([str(arg) for arg in argv]) == 0, capsys.readouterr().err
    loaded = artifact.load(model_dir)
    # Each member's latest positive is held out (t2, t2, t1), so t2 has no training positive
    # and is not in the model; t0 and t1 have two each.
    assert loaded.title_ids == ["t0", "t1"]
    assert loaded.title_positives.tolist() == [2, 2]
    ranker = Ranker(loaded)
    assert ranker.rank("m1", 5, exclude=["t1"]).title_ids == ["t0"]
    assert ranker.rank("stranger", 5, exclude=()).title_ids == ["t0", "t1"]
