"""End-to-end runs of the recommender training job on planted data, on the CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from training.recommender import data, evaluation, train
from training.recommender.model import MatrixFactorization

if TYPE_CHECKING:
    from conftest import JobRun, RunJob

REPO_ROOT = Path(__file__).resolve().parents[2]

# The regexes of the SageMaker metric definitions, one per printed metric.
METRIC_REGEXES = {name: rf"METRIC {name}=([0-9.eE+-]+)" for name in train.METRIC_NAMES}
METRICS_JSON_KEYS = {
    "k",
    "recall_at_k",
    "ndcg_at_k",
    "popularity_recall_at_k",
    "popularity_ndcg_at_k",
    "train_positives",
    "holdout_members",
    "members",
    "titles",
    "epochs",
}


def load_state(model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(model_dir / "model.pt", weights_only=True)


def assert_same_state(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def test_model_beats_the_popularity_baseline_on_planted_data(trained: JobRun) -> None:
    assert trained.exit_code == 0, trained.stderr
    metrics = json.loads((trained.model_dir / "metrics.json").read_text())
    # Members like titles of their own cluster, which only a model of the members' tastes
    # ranks well; popularity only finds the blockbusters.
    assert metrics["recall_at_k"] >= metrics["popularity_recall_at_k"] + 0.2
    assert metrics["ndcg_at_k"] >= metrics["popularity_ndcg_at_k"] + 0.1
    # The baseline is not a straw man: it finds the blockbusters.
    assert metrics["popularity_recall_at_k"] > 0.2


def test_metric_lines_match_the_metric_definitions_and_metrics_json(
    trained: JobRun, fast_epochs: int
) -> None:
    metric_lines = [line for line in trained.stdout.splitlines() if line.startswith("METRIC ")]
    printed: dict[str, list[float]] = {}
    for name, regex in METRIC_REGEXES.items():
        values = [float(m.group(1)) for line in metric_lines if (m := re.fullmatch(regex, line))]
        printed[name] = values
    assert sum(len(values) for values in printed.values()) == len(metric_lines)
    assert len(printed["train_loss"]) == fast_epochs
    assert printed["train_loss"][-1] < printed["train_loss"][0] / 2

    metrics = json.loads((trained.model_dir / "metrics.json").read_text())
    for name in METRIC_REGEXES.keys() - {"train_loss"}:
        assert printed[name] == [metrics[name]], name
    assert (trained.output_data_dir / "metrics.json").read_text() == (
        trained.model_dir / "metrics.json"
    ).read_text()


def test_artifacts_hold_the_documented_content(
    trained: JobRun, planted_channel: Path, fast_epochs: int
) -> None:
    metrics = json.loads((trained.model_dir / "metrics.json").read_text())
    assert set(metrics) == METRICS_JSON_KEYS
    events = pq.read_table(planted_channel).to_pandas()
    positives = events[events["event_type"].isin(data.POSITIVE_EVENT_TYPES)]
    pairs = positives[["member_id", "title_id"]].drop_duplicates()
    assert metrics["members"] == metrics["holdout_members"] == pairs["member_id"].nunique()
    assert metrics["train_positives"] == len(pairs) - metrics["holdout_members"]
    assert metrics["titles"] == pairs["title_id"].nunique()
    assert (metrics["k"], metrics["epochs"]) == (10, fast_epochs)

    id_maps = json.loads((trained.model_dir / "id_maps.json").read_text())
    assert set(id_maps) == {"member_index", "title_index"}
    assert sorted(id_maps["member_index"]) == sorted(pairs["member_id"].unique())
    assert sorted(id_maps["title_index"].values()) == list(range(metrics["titles"]))

    state = load_state(trained.model_dir)
    assert {name: tuple(tensor.shape) for name, tensor in state.items()} == {
        "member_embedding.weight": (metrics["members"], 16),
        "title_embedding.weight": (metrics["titles"], 16),
        "title_bias.weight": (metrics["titles"], 1),
    }
    assert sorted(path.name for path in trained.checkpoint_dir.iterdir()) == [
        f"epoch-{fast_epochs - 1:04d}.pt",
        f"epoch-{fast_epochs:04d}.pt",
    ]
    assert not trained.failure_file.exists()


def test_saved_model_and_id_maps_reproduce_the_reported_recall(
    trained: JobRun, planted_channel: Path
) -> None:
    id_maps = json.loads((trained.model_dir / "id_maps.json").read_text())
    state = load_state(trained.model_dir)
    model = MatrixFactorization(
        len(id_maps["member_index"]), len(id_maps["title_index"]), 16, torch.Generator()
    )
    model.load_state_dict(state)
    split = data.split_leave_last_out(data.read_interactions(planted_channel).positives)
    assert split.member_ids == list(id_maps["member_index"])
    assert split.title_ids == list(id_maps["title_index"])

    ranking = evaluation.evaluate(
        model.score_all_titles,
        split.train_members,
        split.train_titles,
        split.holdout_members,
        split.holdout_titles,
        split.num_titles,
        10,
        torch.device("cpu"),
    )
    metrics = json.loads((trained.model_dir / "metrics.json").read_text())
    assert (ranking.recall_at_k, ranking.ndcg_at_k) == (
        metrics["recall_at_k"],
        metrics["ndcg_at_k"],
    )


def test_same_seed_gives_the_same_model_and_another_seed_does_not(
    run_job: RunJob, trained: JobRun, fast_args: tuple[str, ...]
) -> None:
    again = run_job(*fast_args)
    assert again.exit_code == 0, again.stderr
    assert_same_state(load_state(again.model_dir), load_state(trained.model_dir))
    assert (again.model_dir / "metrics.json").read_text() == (
        trained.model_dir / "metrics.json"
    ).read_text()

    other = run_job(*fast_args, "--seed", "8", "--epochs", "1")
    assert other.exit_code == 0, other.stderr
    first_epoch = run_job(*fast_args, "--epochs", "1")
    assert not torch.equal(
        load_state(other.model_dir)["title_embedding.weight"],
        load_state(first_epoch.model_dir)["title_embedding.weight"],
    )


def test_resuming_from_a_checkpoint_continues_at_the_next_epoch(
    run_job: RunJob, trained: JobRun, tmp_path: Path, fast_args: tuple[str, ...], fast_epochs: int
) -> None:
    workdir = tmp_path / "spot"
    first = run_job(*fast_args, "--epochs", "1", workdir=workdir)
    assert first.exit_code == 0, first.stderr
    assert [p.name for p in first.checkpoint_dir.iterdir()] == ["epoch-0001.pt"]

    resumed = run_job(*fast_args, workdir=workdir)
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming from the checkpoint of epoch 1" in resumed.stdout
    epochs = re.findall(r"^epoch (\d+)/(\d+)$", resumed.stdout, flags=re.MULTILINE)
    assert epochs == [(str(n), str(fast_epochs)) for n in range(2, fast_epochs + 1)]
    assert len(resumed.metric_lines("train_loss")) == fast_epochs - 1
    # Each epoch's shuffle and negatives depend only on the seed and the epoch, so the
    # interrupted run ends exactly where the uninterrupted one did.
    assert_same_state(load_state(resumed.model_dir), load_state(trained.model_dir))
    assert json.loads((resumed.model_dir / "metrics.json").read_text()) == json.loads(
        (trained.model_dir / "metrics.json").read_text()
    )


def test_checkpoints_of_other_hyperparameters_or_unreadable_ones_are_skipped(
    run_job: RunJob, tmp_path: Path, fast_args: tuple[str, ...]
) -> None:
    workdir = tmp_path / "reused"
    first = run_job(*fast_args, "--epochs", "2", workdir=workdir)
    assert first.exit_code == 0, first.stderr
    (first.checkpoint_dir / "epoch-0002.pt").write_bytes(b"truncated upload")

    resumed = run_job(*fast_args, "--epochs", "3", workdir=workdir)
    assert resumed.exit_code == 0, resumed.stderr
    assert "skipping unreadable checkpoint" in resumed.stdout
    assert "resuming from the checkpoint of epoch 1" in resumed.stdout

    other = run_job(*fast_args, "--epochs", "3", "--embedding-dim", "8", workdir=workdir)
    assert other.exit_code == 0, other.stderr
    skipped = re.findall(r"^skipping checkpoint (\S+): made for other data", other.stdout, re.M)
    assert [Path(path).name for path in skipped] == ["epoch-0003.pt", "epoch-0002.pt"]
    assert "resuming" not in other.stdout
    assert len(other.metric_lines("train_loss")) == 3


def test_min_recall_below_the_bar_fails_without_a_model(
    run_job: RunJob, fast_args: tuple[str, ...]
) -> None:
    result = run_job(*fast_args, "--epochs", "1", "--min-recall", "0.99")
    assert result.exit_code == 1
    recall = result.metric_lines("recall_at_k")
    assert len(recall) == 1
    message = f"recall_at_k {recall[0]} is below --min-recall 0.99; no model written"
    assert result.stderr == f"training failed: {message}\n"
    assert result.failure_file.read_text() == message
    assert not (result.model_dir / "model.pt").exists()
    assert not (result.model_dir / "metrics.json").exists()
    assert not (result.output_data_dir / "metrics.json").exists()


def test_min_recall_that_is_reached_writes_the_model(
    run_job: RunJob, trained: JobRun, fast_args: tuple[str, ...]
) -> None:
    bar = json.loads((trained.model_dir / "metrics.json").read_text())["recall_at_k"]
    result = run_job(*fast_args, "--min-recall", str(bar))
    assert result.exit_code == 0, result.stderr
    assert (result.model_dir / "model.pt").is_file()


def test_diverging_training_fails_without_a_model(
    run_job: RunJob, fast_args: tuple[str, ...]
) -> None:
    result = run_job(*fast_args, "--learning-rate", "1e30")
    message = "training diverged in epoch 1 (loss nan); lower --learning-rate"
    assert result.exit_code == 1
    assert result.stderr == f"training failed: {message}\n"
    assert result.failure_file.read_text() == message
    assert not result.model_dir.exists()
    assert not result.checkpoint_dir.exists()


def test_module_cli_reads_the_sagemaker_environment(planted_channel: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SM_CHANNEL_INTERACTIONS": str(planted_channel),
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "SM_OUTPUT_DATA_DIR": str(tmp_path / "output" / "data"),
        "SM_NUM_GPUS": "0",
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "training.recommender.train",
        "--epochs",
        "3",
        "--embedding-dim",
        "16",
        "--checkpoint-dir",
        str(tmp_path / "checkpoints"),
        "--failure-file",
        str(tmp_path / "output" / "failure"),
    ]
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert len(re.findall(METRIC_REGEXES["train_loss"], result.stdout)) == 3
    metrics = json.loads((tmp_path / "output" / "data" / "metrics.json").read_text())
    for name in METRIC_REGEXES.keys() - {"train_loss"}:
        printed = re.search(METRIC_REGEXES[name], result.stdout)
        assert printed is not None, name
        assert float(printed.group(1)) == metrics[name]
    assert {path.name for path in (tmp_path / "model").iterdir()} == {
        "model.pt",
        "id_maps.json",
        "popularity.json",
        "metrics.json",
        "baseline.json",
    }


def test_script_mode_in_the_source_folder_fails_with_one_line(tmp_path: Path) -> None:
    # SageMaker runs `python train.py` in the source folder, with no package around it.
    failure_file = tmp_path / "failure"
    missing = tmp_path / "no-such-channel"
    result = subprocess.run(
        [sys.executable, "train.py", "--failure-file", str(failure_file)],
        cwd=REPO_ROOT / "training" / "recommender",
        env={**os.environ, "SM_CHANNEL_INTERACTIONS": str(missing), "SM_NUM_GPUS": "0"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    message = f"interactions channel {missing} does not exist or is not a folder"
    assert result.returncode == 1
    assert result.stderr == f"training failed: {message}\n"
    assert failure_file.read_text() == message


def _write(table: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path, index=False)


def _events(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [f"e{index}" for index in range(len(rows))],
            "member_id": [row[0] for row in rows],
            "title_id": [row[1] for row in rows],
            "event_type": [row[2] for row in rows],
            "event_time": pd.to_datetime([row[3] for row in rows], utc=True),
            "watch_seconds": pd.array([None] * len(rows), dtype="Int32"),
            "device_type": "tv",
            "country": "US",
        }
    )


def _missing(root: Path) -> None:
    del root


def _empty(root: Path) -> None:
    root.mkdir()


def _no_parquet(root: Path) -> None:
    (root / "event_date=2024-05-01").mkdir(parents=True)
    (root / "event_date=2024-05-01" / "part-00000.json").write_text("{}\n")
    (root / "_SUCCESS").touch()
    (root / ".hidden.parquet").write_bytes(b"")


def _unreadable(root: Path) -> None:
    (root / "event_date=2024-05-01").mkdir(parents=True)
    (root / "event_date=2024-05-01" / "part-00000.parquet").write_bytes(b"not parquet")


def _missing_columns(root: Path) -> None:
    events = _events([("m1", "t1", "PLAY", "2024-05-01T10:00:00")])
    _write(events, root / "event_date=2024-05-01" / "part-00000.parquet")
    _write(
        events.drop(columns=["title_id", "event_time"]),
        root / "event_date=2024-05-02" / "part-00000.parquet",
    )


def _no_positives(root: Path) -> None:
    events = _events(
        [
            ("m1", "t1", "IMPRESSION", "2024-05-01T10:00:00"),
            ("m1", "t2", "THUMBS_DOWN", "2024-05-01T11:00:00"),
            ("m2", "t1", "IMPRESSION", "2024-05-02T10:00:00"),
        ]
    )
    _write(events, root / "event_date=2024-05-01" / "part-00000.parquet")


def _no_holdout(root: Path) -> None:
    # Every member has several positive events, but all of them on a single title.
    events = _events(
        [
            ("m1", "t1", "PLAY", "2024-05-01T10:00:00"),
            ("m1", "t1", "COMPLETE", "2024-05-01T11:00:00"),
            ("m1", "t2", "IMPRESSION", "2024-05-01T12:00:00"),
            ("m2", "t2", "PLAY", "2024-05-01T10:00:00"),
            ("m2", "t2", "THUMBS_UP", "2024-05-01T12:00:00"),
        ]
    )
    _write(events, root / "event_date=2024-05-01" / "part-00000.parquet")


@pytest.mark.parametrize(
    ("make_channel", "expected"),
    [
        pytest.param(_missing, r"interactions channel \S+ does not exist", id="missing"),
        pytest.param(_empty, r"interactions channel \S+ is empty", id="empty"),
        pytest.param(_no_parquet, r"interactions channel \S+ holds no Parquet files", id="no-pq"),
        pytest.param(_unreadable, r"cannot read Parquet file \S+part-00000.parquet: ", id="bad"),
        pytest.param(
            _missing_columns,
            r"Parquet file \S+ lacks required columns: title_id, event_time",
            id="columns",
        ),
        pytest.param(
            _no_positives,
            r"no positive interactions \(PLAY, COMPLETE, THUMBS_UP, ADD_TO_LIST\) among 3 rows",
            id="no-positives",
        ),
        pytest.param(
            _no_holdout,
            r"no member has at least 2 positive interactions among 2 members, so there is no "
            r"holdout",
            id="no-holdout",
        ),
    ],
)
def test_unusable_channels_fail_with_one_line_and_no_model(
    run_job: RunJob, tmp_path: Path, fast_args: tuple[str, ...], make_channel, expected: str
) -> None:
    channel = tmp_path / "channel"
    make_channel(channel)
    result = run_job(*fast_args, channel=channel)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("training failed: ")
    message = result.stderr.removeprefix("training failed: ").rstrip("\n")
    assert re.match(expected, message), message
    assert result.failure_file.read_text() == message
    assert "METRIC" not in result.stdout
    assert not result.model_dir.exists()
    assert not result.output_data_dir.exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--epochs", "0"], "invalid arguments: argument --epochs: must be at least 1, got 0"),
        (["--learning-rate", "fast"], "invalid arguments: argument --learning-rate: not float"),
        (["--min-recall", "1.5"], "invalid arguments: argument --min-recall: must be between"),
        (["--no-such-flag"], "invalid arguments: unrecognized arguments: --no-such-flag"),
    ],
)
def test_invalid_hyperparameters_fail_with_one_line(
    run_job: RunJob, argv: list[str], expected: str
) -> None:
    result = run_job(*argv)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"training failed: {expected}")
    assert result.stderr.count("\n") == 1
    assert result.failure_file.read_text().startswith(expected)
    assert not result.model_dir.exists()
