"""Data-parallel training: two processes under torchrun (gloo, CPU) against one process.

Each torchrun run starts two Python processes on localhost, as the SageMaker PyTorch
container does on a host with two GPUs, and takes a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from training.recommender import artifact, data_parallel

if TYPE_CHECKING:
    from conftest import JobRun, RunJob

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = REPO_ROOT / "training" / "recommender"
# A 2-process run draws other shuffles and negatives than a 1-process run with the same
# seed: the same kind of difference as another seed, not a worse model. Over seeds 1 to 8 on
# the planted data, 1- and 2-process runs of one seed differed in recall@10 by 0.008 on
# average (standard deviation 0.027, at most 0.053; one of the 400 holdout members is
# 0.0025) and in NDCG@10 by 0.004 (0.012, at most 0.020). The tolerances are about three
# of those standard deviations. Without the gradient exchange, recall@10 falls by 0.18.
RECALL_TOLERANCE = 0.08
NDCG_TOLERANCE = 0.04


@dataclass(frozen=True)
class TorchrunResult:
    returncode: int
    stdout: str
    stderr: str


def torchrun(workdir: Path, channel: Path, *args: str) -> TorchrunResult:
    """Run train.py in its source folder under torchrun with two CPU processes.

    ``--standalone`` has torchrun bind a free port on localhost itself, so that test runs
    side by side never race for one.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "train.py",
        "--interactions",
        str(channel),
        "--model-dir",
        str(workdir / "model"),
        "--output-data-dir",
        str(workdir / "output" / "data"),
        "--checkpoint-dir",
        str(workdir / "checkpoints"),
        "--failure-file",
        str(workdir / "output" / "failure"),
        "--num-gpus",
        "0",
        *args,
    ]
    result = subprocess.run(
        command,
        cwd=SOURCE_DIR,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return TorchrunResult(result.returncode, result.stdout, result.stderr)


def metric_values(stdout: str, name: str) -> list[float]:
    return [float(value) for value in re.findall(rf"^METRIC {name}=(\S+)$", stdout, re.M)]


def metrics_of(model_dir: Path) -> dict[str, float]:
    return json.loads((model_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def two_processes(
    tmp_path_factory: pytest.TempPathFactory, planted_channel: Path, fast_args: tuple[str, ...]
) -> tuple[TorchrunResult, Path]:
    """One 2-process run of the fast hyperparameters, shared by the tests that only read it."""
    workdir = tmp_path_factory.mktemp("two-processes")
    return torchrun(workdir, planted_channel, *fast_args), workdir


def test_two_processes_reach_the_one_process_metrics(
    two_processes: tuple[TorchrunResult, Path], trained: JobRun, fast_epochs: int
) -> None:
    result, workdir = two_processes
    assert result.returncode == 0, result.stderr
    # No process warns: a Python warning prints as "<file>.py:<line>: <kind>Warning: ...".
    assert not re.search(r"\.py:\d+: \w*Warning: ", result.stderr), result.stderr
    assert "training failed" not in result.stderr
    assert "training on cpu in each of 2 processes" in result.stdout
    single = metrics_of(trained.model_dir)
    both = metrics_of(workdir / "model")
    assert both["recall_at_k"] == pytest.approx(single["recall_at_k"], abs=RECALL_TOLERANCE)
    assert both["ndcg_at_k"] == pytest.approx(single["ndcg_at_k"], abs=NDCG_TOLERANCE)
    assert both["recall_at_k"] >= both["popularity_recall_at_k"] + 0.2
    assert both["ndcg_at_k"] >= both["popularity_ndcg_at_k"] + 0.1
    # Both read the same data into the same split; only the training draws differ.
    for name in both.keys() - {"recall_at_k", "ndcg_at_k"}:
        assert both[name] == single[name], name
    assert not torch.equal(
        torch.load(workdir / "model" / "model.pt", weights_only=True)["title_embedding.weight"],
        torch.load(trained.model_dir / "model.pt", weights_only=True)["title_embedding.weight"],
    )
    assert both.keys() == single.keys()
    assert both["epochs"] == fast_epochs


def test_only_the_leader_prints_metrics_and_writes_files(
    two_processes: tuple[TorchrunResult, Path], fast_epochs: int
) -> None:
    result, workdir = two_processes
    # One line per metric and epoch, as from a single process: SageMaker records each once.
    assert len(metric_values(result.stdout, "train_loss")) == fast_epochs
    metrics = metrics_of(workdir / "model")
    for name in ("recall_at_k", "ndcg_at_k", "popularity_recall_at_k", "popularity_ndcg_at_k"):
        assert metric_values(result.stdout, name) == [metrics[name]], name
    assert result.stdout.count("wrote model.pt") == 1
    assert sorted(path.name for path in (workdir / "checkpoints").iterdir()) == [
        f"epoch-{fast_epochs - 1:04d}.pt",
        f"epoch-{fast_epochs:04d}.pt",
    ]
    loaded = artifact.load(workdir / "model")
    assert len(loaded.member_ids) == metrics["members"]
    assert (workdir / "output" / "data" / "metrics.json").read_text() == (
        workdir / "model" / "metrics.json"
    ).read_text()
    assert not (workdir / "output" / "failure").exists()


def test_one_process_resumes_from_a_two_process_checkpoint(
    two_processes: tuple[TorchrunResult, Path],
    run_job: RunJob,
    tmp_path: Path,
    fast_args: tuple[str, ...],
    fast_epochs: int,
) -> None:
    _, workdir = two_processes
    restarted = tmp_path / "restarted"
    shutil.copytree(workdir / "checkpoints", restarted / "checkpoints")
    result = run_job(*fast_args, workdir=restarted)
    assert result.exit_code == 0, result.stderr
    assert f"resuming from the checkpoint of epoch {fast_epochs}" in result.stdout
    assert result.metric_lines("train_loss") == []
    # The checkpoint holds the whole model, not one process's share: the same model results.
    expected = torch.load(workdir / "model" / "model.pt", weights_only=True)
    resumed = torch.load(result.model_dir / "model.pt", weights_only=True)
    assert resumed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), name
    assert metrics_of(result.model_dir) == metrics_of(workdir / "model")


def test_two_processes_resume_a_one_process_checkpoint_and_fail_alike(
    run_job: RunJob, planted_channel: Path, tmp_path: Path, fast_args: tuple[str, ...]
) -> None:
    workdir = tmp_path / "spot"
    first = run_job(*fast_args, "--epochs", "3", workdir=workdir)
    assert first.exit_code == 0, first.stderr
    shutil.rmtree(workdir / "model")
    shutil.rmtree(workdir / "output")

    # Interrupted after epoch 3 of a 1-process job, restarted on two processes.
    result = torchrun(workdir, planted_channel, *fast_args, "--epochs", "4", "--min-recall", "1")
    assert result.stdout.count("resuming from the checkpoint of epoch 3") == 1
    assert re.findall(r"^epoch (\d+)/", result.stdout, flags=re.M) == ["4"]
    assert sorted(path.name for path in (workdir / "checkpoints").iterdir()) == [
        "epoch-0003.pt",
        "epoch-0004.pt",
    ]
    # Every process learns the leader's figures, so both fail, each with the same line.
    assert result.returncode != 0
    (recall,) = metric_values(result.stdout, "recall_at_k")
    message = f"recall_at_k {recall} is below --min-recall 1.0; no model written"
    lines = [line for line in result.stderr.splitlines() if line.startswith("training failed")]
    assert set(lines) == {f"training failed: {message}"}
    assert (workdir / "output" / "failure").read_text() == message
    assert not (workdir / "model").exists()
    assert not (workdir / "output" / "data").exists()


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("count", [1, 7, 12])
def test_shards_are_disjoint_equal_and_cover_every_pair(world_size: int, count: int) -> None:
    shards = [
        data_parallel.shard(count, data_parallel.Layout(rank=rank, world_size=world_size))
        for rank in range(world_size)
    ]
    assert len({len(shard) for shard in shards}) == 1
    dealt = np.concatenate(shards)
    assert set(dealt.tolist()) == set(range(count))
    # Only the top-up repeats pairs, fewer than one per process.
    assert len(dealt) - count == -count % world_size


def _exchange_gradients(rank: int, results: Path) -> None:
    # One process of test_gradients_are_averaged_over_the_processes_row_by_row. The processes
    # meet through a file, so no port is chosen in advance.
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{results / 'store'}", rank=rank, world_size=2
    )
    table = torch.nn.Embedding(6, 2, sparse=True)
    bias = torch.nn.Embedding(6, 1, sparse=True)
    # Process 0 touches rows 1 and 4 (row 4 twice), process 1 rows 1, 2 and 5.
    rows = torch.tensor([[1, 4, 4], [1, 2, 5]][rank])
    scale = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]][rank])
    ((table(rows).sum(dim=1) + bias(rows).squeeze(1)) * scale).sum().backward()
    layout = data_parallel.Layout(rank=rank, local_rank=rank, world_size=2)
    data_parallel.average_gradients([table.weight, bias.weight], layout)
    torch.save(
        [table.weight.grad.to_dense(), bias.weight.grad.to_dense(), table.weight.grad.is_sparse],
        results / f"rank-{rank}.pt",
    )
    torch.distributed.destroy_process_group()


def test_gradients_are_averaged_over_the_processes_row_by_row(tmp_path: Path) -> None:
    torch.multiprocessing.start_processes(
        _exchange_gradients, args=(tmp_path,), nprocs=2, start_method="fork"
    )
    first, second = (torch.load(tmp_path / f"rank-{rank}.pt") for rank in (0, 1))
    # Each row's gradient is its scale, summed over the lookups of both processes, halved.
    expected = torch.tensor([0.0, 11.0, 20.0, 0.0, 5.0, 30.0]) / 2
    assert torch.equal(first[0], expected.unsqueeze(1).expand(6, 2))
    assert torch.equal(first[1], expected.unsqueeze(1))
    assert first[2] is True
    # Both processes end with the very same gradients, so they take the very same step.
    for mine, theirs in zip(first[:2], second[:2], strict=True):
        assert torch.equal(mine, theirs)


def test_layout_comes_from_torchrun_or_is_a_single_process() -> None:
    assert data_parallel.layout_from_env({}) == data_parallel.Layout(0, 0, 1)
    env = {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}
    layout = data_parallel.layout_from_env(env)
    assert (layout.rank, layout.local_rank, layout.world_size) == (5, 1, 8)
    assert layout.is_distributed
    assert not layout.is_leader


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        (
            {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4"},
            ["--batch-size", "3"],
            "--batch-size 3 is smaller than the 4 processes; each needs at least one pair per step",
        ),
        (
            {"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2"},
            [],
            "RANK 2 is not in 0..WORLD_SIZE-1 (2)",
        ),
        (
            {"RANK": "one", "LOCAL_RANK": "0", "WORLD_SIZE": "2"},
            [],
            "RANK, LOCAL_RANK and WORLD_SIZE must be integers: ",
        ),
    ],
)
def test_unusable_layouts_fail_with_one_line_before_any_process_group(
    run_job: RunJob,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    argv: list[str],
    expected: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_job(*argv)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"training failed: {expected}")
    assert result.stderr.count("\n") == 1
    assert not torch.distributed.is_initialized()
    assert not result.model_dir.exists()
