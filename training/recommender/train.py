"""SageMaker script-mode entry point: train the title recommender on member interactions.

SageMaker runs ``torchrun --nproc_per_node <GPUs> ... train.py --epochs 20 ...`` in the
source directory, one process per GPU of every host; the same script also runs as a single
plain process (``python train.py`` or ``python -m training.recommender.train``). The job:

1. reads the curated ``member_interactions`` Parquet table from the ``interactions`` channel
   and keeps the positive events (PLAY, COMPLETE, THUMBS_UP, ADD_TO_LIST), one per member and
   title;
2. holds out each member's latest positive (members with at least two) and trains matrix
   factorization with the BPR loss on the rest, data-parallel over the processes (each
   trains on its own share of the pairs, gradients are averaged every step), saving a
   checkpoint after every epoch and resuming from the latest matching one;
3. evaluates recall@k and NDCG@k on the holdout for the model and a popularity baseline, and
   fails when ``--min-recall`` is given and not reached;
4. only then writes the model folder (``model.pt``, ``id_maps.json``, ``popularity.json`` and
   ``metrics.json``, see :mod:`artifact`, and the drift baseline ``baseline.json``, see
   :mod:`baseline`) and ``metrics.json`` to the output data folder.

Only the leader process (rank 0) reads and writes checkpoints, evaluates, prints the log and
the ``METRIC <name>=<value>`` lines for SageMaker's metric definitions, and writes files. A
failure prints one ``training failed: <reason>`` line to stderr, writes the reason to the
failure file SageMaker reports, and exits with status 1; every process that fails reports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NoReturn, TypeVar

import numpy as np
import torch

if __package__:
    from . import artifact, baseline, checkpoints, data, data_parallel, evaluation
    from .model import MatrixFactorization, NegativeSampler, make_optimizer, train_epoch
else:  # SageMaker runs train.py as a script from the source directory, outside any package.
    import artifact
    import baseline
    import checkpoints
    import data
    import data_parallel
    import evaluation
    from model import MatrixFactorization, NegativeSampler, make_optimizer, train_epoch

DEFAULT_CHANNEL = "/opt/ml/input/data/interactions"
DEFAULT_MODEL_DIR = "/opt/ml/model"
DEFAULT_OUTPUT_DATA_DIR = "/opt/ml/output/data"
DEFAULT_CHECKPOINT_DIR = "/opt/ml/checkpoints"
DEFAULT_FAILURE_FILE = "/opt/ml/output/failure"
# Printed as `METRIC <name>=<value>`; train_loss once per epoch, the others once per run.
METRIC_NAMES = (
    "train_loss",
    "recall_at_k",
    "ndcg_at_k",
    "popularity_recall_at_k",
    "popularity_ndcg_at_k",
)
_Number = TypeVar("_Number", int, float)


class TrainingError(Exception):
    """Raised when the job must stop without writing a model."""


class _ArgumentParser(argparse.ArgumentParser):
    # A bad hyperparameter is reported like any other failure: one line and the failure file.
    def error(self, message: str) -> NoReturn:
        raise TrainingError(f"invalid arguments: {message}")


def build_parser() -> argparse.ArgumentParser:
    """Return the job's parser; paths default to the SageMaker environment when it is set."""
    env = os.environ
    parser = _ArgumentParser(
        prog="train.py",
        description="Train a BPR matrix-factorization title recommender on member interactions.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=_positive_int, default=20, help="passes over the data")
    parser.add_argument(
        "--embedding-dim", type=_positive_int, default=64, help="size of member/title vectors"
    )
    parser.add_argument(
        "--learning-rate", type=_positive_float, default=0.01, help="step size of Adam"
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=1024,
        help="training pairs per step over all processes, split evenly between them",
    )
    parser.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        default=1e-4,
        help="L2 weight on the embeddings each batch touches",
    )
    parser.add_argument("--k", type=_positive_int, default=10, help="cut-off of the metrics")
    parser.add_argument("--seed", type=int, default=42, help="seed of every random choice")
    parser.add_argument(
        "--min-recall",
        type=_fraction,
        default=None,
        help="fail without writing the model when recall@k on the holdout is below this",
    )
    parser.add_argument(
        "--interactions",
        type=Path,
        default=Path(env.get("SM_CHANNEL_INTERACTIONS", DEFAULT_CHANNEL)),
        help="folder of the member_interactions Parquet files ($SM_CHANNEL_INTERACTIONS)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(env.get("SM_MODEL_DIR", DEFAULT_MODEL_DIR)),
        help="where the model folder's files go ($SM_MODEL_DIR)",
    )
    parser.add_argument(
        "--output-data-dir",
        type=Path,
        default=Path(env.get("SM_OUTPUT_DATA_DIR", DEFAULT_OUTPUT_DATA_DIR)),
        help="where a copy of metrics.json goes ($SM_OUTPUT_DATA_DIR)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=Path(DEFAULT_CHECKPOINT_DIR),
        help="per-epoch checkpoints, synced to S3 by SageMaker",
    )
    parser.add_argument(
        "--failure-file",
        type=Path,
        default=Path(DEFAULT_FAILURE_FILE),
        help="where the reason of a failure goes for SageMaker to report",
    )
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=int(env.get("SM_NUM_GPUS", torch.cuda.device_count())),
        help="0 trains on the CPU; otherwise each process uses the GPU of its LOCAL_RANK "
        "($SM_NUM_GPUS)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; return 0 on success and 1 after reporting a failure.

    An unexpected exception is written to the failure file and raised again.
    """
    failure_file = _failure_file(argv)
    try:
        run(build_parser().parse_args(argv))
    except (TrainingError, data.InputDataError, data_parallel.LayoutError) as exc:
        message = _one_line(exc)
        _write_failure(failure_file, message)
        # One write of the whole line: the processes under torchrun share stderr, and print()
        # writes the text and the newline separately, so their lines could interleave.
        sys.stderr.write(f"training failed: {message}\n")
        sys.stderr.flush()
        return 1
    except Exception as exc:
        _write_failure(failure_file, f"unexpected {type(exc).__name__}: {_one_line(exc)}")
        raise
    return 0


def run(args: argparse.Namespace) -> dict[str, float | int]:
    """Train, evaluate and write the artifacts; return the contents of ``metrics.json``.

    Under ``torchrun`` this process is one of several; every one of them returns the metrics.
    """
    layout = data_parallel.layout_from_env()
    if args.batch_size < layout.world_size:
        raise TrainingError(
            f"--batch-size {args.batch_size} is smaller than the {layout.world_size} "
            "processes; each needs at least one pair per step"
        )
    device = data_parallel.select_device(layout, args.num_gpus)
    if device.type == "cuda":
        _make_gpu_deterministic()
    data_parallel.start(layout, device)
    try:
        return _run(args, layout, device)
    finally:
        data_parallel.stop(layout)


def _run(
    args: argparse.Namespace, layout: data_parallel.Layout, device: torch.device
) -> dict[str, float | int]:
    process = _Process(layout, device, _Console(enabled=layout.is_leader))
    split, data_digest = _read_split(args, process)
    model = MatrixFactorization(
        split.num_members,
        split.num_titles,
        args.embedding_dim,
        generator=torch.Generator().manual_seed(args.seed),
    ).to(device)
    optimizer = make_optimizer(model, args.learning_rate)
    fingerprint = _fingerprint(data_digest, args, optimizer)
    first_epoch = _resume(args, fingerprint, model, optimizer, process) + 1
    _train(args, split, model, optimizer, fingerprint, first_epoch, process)
    return _evaluate_and_write(args, split, model, process)


@dataclass(frozen=True)
class _Process:
    """This process's place in the job, its device, and its console."""

    layout: data_parallel.Layout
    device: torch.device
    console: _Console


def _read_split(args: argparse.Namespace, process: _Process) -> tuple[data.TrainingSplit, str]:
    """Read and split the interactions; return the split and its fingerprint.

    Every process reads the channel; a process whose data differs from the leader's (a file
    that changed while the hosts downloaded the channel) stops the whole job.
    """
    console = process.console
    console.log(f"reading the interactions under {args.interactions}")
    interactions = data.read_interactions(args.interactions)
    console.log(
        f"read {interactions.rows} rows from {interactions.files} Parquet files, "
        f"{len(interactions.positives)} positive events"
    )
    split = data.split_leave_last_out(interactions.positives)
    # The split holds its own arrays; the events are no longer needed.
    del interactions
    layout = process.layout
    console.log(
        f"{split.num_members} members, {split.num_titles} titles, "
        f"{len(split.train_members)} training positives, "
        f"{len(split.holdout_members)} holdout members; training on {process.device}"
        + (f" in each of {layout.world_size} processes" if layout.is_distributed else "")
    )
    digest = split.fingerprint()
    leader_digest = data_parallel.broadcast(digest, layout)
    if not data_parallel.all_true(leader_digest == digest, layout, process.device):
        raise TrainingError("the processes read different interactions; restart the job")
    return split, digest


def _train(
    args: argparse.Namespace,
    split: data.TrainingSplit,
    model: MatrixFactorization,
    optimizer: torch.optim.Optimizer,
    fingerprint: str,
    first_epoch: int,
    process: _Process,
) -> None:
    """Train this process's shard of the pairs from ``first_epoch`` to ``--epochs``."""
    layout = process.layout
    shard = data_parallel.shard(len(split.train_members), layout)
    sampler = NegativeSampler(split.train_members, split.train_titles, split.num_titles)
    train_members = torch.from_numpy(split.train_members[shard])
    train_titles = torch.from_numpy(split.train_titles[shard])
    average_gradients = partial(data_parallel.average_gradients, list(model.parameters()), layout)
    for epoch in range(first_epoch, args.epochs + 1):
        process.console.log(f"epoch {epoch}/{args.epochs}")
        loss = train_epoch(
            model,
            optimizer,
            sampler,
            train_members,
            train_titles,
            args.batch_size // layout.world_size,
            args.weight_decay,
            generator=torch.Generator().manual_seed(_epoch_seed(args.seed, epoch, layout.rank)),
            average_gradients=average_gradients,
        )
        # Shards are equally long, so the mean of the processes' means is the epoch's mean.
        loss = data_parallel.average(loss, layout, process.device)
        if not math.isfinite(loss):
            raise TrainingError(
                f"training diverged in epoch {epoch} (loss {loss}); lower --learning-rate"
            )
        process.console.metric("train_loss", loss)
        if layout.is_leader:
            checkpoints.save(args.checkpoint_dir, epoch, fingerprint, model, optimizer)


def _evaluate_and_write(
    args: argparse.Namespace,
    split: data.TrainingSplit,
    model: MatrixFactorization,
    process: _Process,
) -> dict[str, float | int]:
    """Evaluate on the leader, check ``--min-recall`` everywhere, write the artifacts."""
    layout, console = process.layout, process.console
    metrics = _evaluate(args, model, split, process.device) if layout.is_leader else None
    # Every process learns the leader's figures, so all of them agree on --min-recall.
    metrics = data_parallel.broadcast(metrics, layout)
    for name in METRIC_NAMES[1:]:
        console.metric(name, float(metrics[name]))
    if args.min_recall is not None and metrics["recall_at_k"] < args.min_recall:
        raise TrainingError(
            f"recall_at_k {metrics['recall_at_k']} is below --min-recall {args.min_recall}; "
            "no model written"
        )
    if layout.is_leader:
        written = _write_artifacts(args, model, split, metrics, process)
        console.log(f"wrote {', '.join(written)} to {args.model_dir}")
    return metrics


def _resume(
    args: argparse.Namespace,
    fingerprint: str,
    model: MatrixFactorization,
    optimizer: torch.optim.Optimizer,
    process: _Process,
) -> int:
    """Load the latest matching checkpoint into every process; return its epoch (0: none).

    Only the leader reads the checkpoint folder, which SageMaker fills on the first host, and
    sends the state to the others.
    """
    checkpoint = None
    if process.layout.is_leader:
        checkpoint, notes = checkpoints.load_latest(args.checkpoint_dir, fingerprint, args.epochs)
        for note in notes:
            process.console.log(note)
    checkpoint = data_parallel.broadcast(checkpoint, process.layout)
    if checkpoint is None:
        return 0
    model.load_state_dict(checkpoint.model_state)
    optimizer.load_state_dict(checkpoint.optimizer_state)
    process.console.log(
        f"resuming from the checkpoint of epoch {checkpoint.epoch} in {args.checkpoint_dir}"
    )
    return checkpoint.epoch


def _evaluate(
    args: argparse.Namespace,
    model: MatrixFactorization,
    split: data.TrainingSplit,
    device: torch.device,
) -> dict[str, float | int]:
    model.eval()
    ranking_inputs = (
        split.train_members,
        split.train_titles,
        split.holdout_members,
        split.holdout_titles,
        split.num_titles,
        args.k,
        device,
    )
    learned = evaluation.evaluate(model.score_all_titles, *ranking_inputs)
    popularity = evaluation.evaluate(
        evaluation.popularity_scorer(split.train_titles, split.num_titles, device),
        *ranking_inputs,
    )
    return {
        "k": args.k,
        "recall_at_k": learned.recall_at_k,
        "ndcg_at_k": learned.ndcg_at_k,
        "popularity_recall_at_k": popularity.recall_at_k,
        "popularity_ndcg_at_k": popularity.ndcg_at_k,
        "train_positives": len(split.train_members),
        "holdout_members": len(split.holdout_members),
        "members": split.num_members,
        "titles": split.num_titles,
        "epochs": args.epochs,
    }


def _write_artifacts(
    args: argparse.Namespace,
    model: MatrixFactorization,
    split: data.TrainingSplit,
    metrics: dict[str, float | int],
    process: _Process,
) -> tuple[str, ...]:
    """Write the model folder and the copy of ``metrics.json``; return the folder's files."""
    title_positives = np.bincount(split.train_titles, minlength=split.num_titles)
    # Computed before anything is written, so a failure leaves no partial model folder. A
    # model without a baseline still serves; the monitor reports its baseline missing.
    try:
        drift_baseline = baseline.build(
            model=model, split=split, title_positives=title_positives, device=process.device
        )
    except baseline.BaselineError as exc:
        process.console.log(f"no {baseline.BASELINE_FILE}: {_one_line(exc)}")
        drift_baseline = None
    artifact.save(
        args.model_dir,
        model=model,
        member_ids=split.member_ids,
        title_ids=split.title_ids,
        title_positives=title_positives,
        metrics=metrics,
    )
    written = artifact.ARTIFACT_FILES
    if drift_baseline is not None:
        baseline.write(args.model_dir, drift_baseline)
        written = (*written, baseline.BASELINE_FILE)
    artifact.write_metrics(args.output_data_dir, metrics)
    return written


def _make_gpu_deterministic() -> None:
    # The CPU kernels this job uses are deterministic already. cuBLAS reads this variable
    # when its first handle is created; without it deterministic matrix products on the GPU
    # are refused. warn_only keeps an op without a deterministic kernel from stopping the job.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # Each epoch's shuffle and negatives depend only on the seed, the epoch number and the
    # process's rank: a run resumed from a checkpoint repeats exactly what an uninterrupted
    # run would do, and the processes of one run draw different negatives.
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _fingerprint(
    data_digest: str, args: argparse.Namespace, optimizer: torch.optim.Optimizer
) -> str:
    # Everything that shapes the training trajectory except the number of processes, which
    # may change between an interruption and the restart.
    trajectory = {
        "data": data_digest,
        "optimizer": type(optimizer).__name__,
        "embedding_dim": args.embedding_dim,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
    }
    return hashlib.sha256(json.dumps(trajectory, sort_keys=True).encode()).hexdigest()


def _failure_file(argv: Sequence[str] | None) -> Path:
    # Found before the full parse, so that invalid arguments are reported there too.
    parser = _ArgumentParser(add_help=False)
    parser.add_argument("--failure-file", type=Path, default=Path(DEFAULT_FAILURE_FILE))
    try:
        return parser.parse_known_args(argv)[0].failure_file
    except TrainingError:
        return Path(DEFAULT_FAILURE_FILE)


def _write_failure(path: Path, message: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message)
    except OSError as exc:
        _log(f"cannot write the failure file {path}: {_one_line(exc)}")


def _log(message: str) -> None:
    print(message, flush=True)


@dataclass(frozen=True)
class _Console:
    """The job's log and metric lines; only the leader's console prints, so each appears once."""

    enabled: bool

    def log(self, message: str) -> None:
        if self.enabled:
            _log(message)

    def metric(self, name: str, value: float) -> None:
        # repr() of a float is its shortest round-tripping form, so metrics.json, which holds
        # the same floats, parses back to exactly the printed values.
        self.log(f"METRIC {name}={float(value)!r}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _positive_int(value: str) -> int:
    number = _parse(value, int)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def _positive_float(value: str) -> float:
    number = _parse(value, float)
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return number


def _non_negative_float(value: str) -> float:
    number = _parse(value, float)
    if not (math.isfinite(number) and number >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {value}")
    return number


def _fraction(value: str) -> float:
    number = _parse(value, float)
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return number


def _parse(value: str, kind: type[_Number]) -> _Number:
    try:
        return kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {kind.__name__}: {value!r}") from None


if __name__ == "__main__":
    sys.exit(main())
