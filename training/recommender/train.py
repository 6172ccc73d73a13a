"""SageMaker script-mode entry point: train the title recommender on member interactions.

SageMaker runs ``python train.py --epochs 20 ...`` in the source directory; locally the same
job runs as ``python -m training.recommender.train``. The job:

1. reads the curated ``member_interactions`` Parquet table from the ``interactions`` channel
   and keeps the positive events (PLAY, COMPLETE, THUMBS_UP, ADD_TO_LIST), one per member and
   title;
2. holds out each member's latest positive (members with at least two) and trains matrix
   factorization with the BPR loss on the rest, on the GPU when there is one, saving a
   checkpoint after every epoch and resuming from the latest matching one;
3. evaluates recall@k and NDCG@k on the holdout for the model and a popularity baseline, and
   fails when ``--min-recall`` is given and not reached;
4. only then writes the model folder (``model.pt``, ``id_maps.json``, ``popularity.json`` and
   ``metrics.json``, see :mod:`artifact`) and ``metrics.json`` to the output data folder.

Metrics are printed as ``METRIC <name>=<value>`` lines for SageMaker's metric definitions.
A failure prints one ``training failed: <reason>`` line to stderr, writes the reason to the
failure file SageMaker reports, and exits with status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

import numpy as np
import torch

if __package__:
    from . import artifact, checkpoints, data, evaluation
    from .model import MatrixFactorization, NegativeSampler, train_epoch
else:  # SageMaker runs train.py as a script from the source directory, outside any package.
    import artifact
    import checkpoints
    import data
    import evaluation
    from model import MatrixFactorization, NegativeSampler, train_epoch

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
        "--batch-size", type=_positive_int, default=1024, help="training pairs per step"
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
        help="0 trains on the CPU; the model is small, so at most one GPU is used ($SM_NUM_GPUS)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; return 0 on success and 1 after reporting a failure.

    An unexpected exception is written to the failure file and raised again.
    """
    failure_file = _failure_file(argv)
    try:
        run(build_parser().parse_args(argv))
    except (TrainingError, data.InputDataError) as exc:
        message = _one_line(exc)
        _write_failure(failure_file, message)
        print(f"training failed: {message}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:
        _write_failure(failure_file, f"unexpected {type(exc).__name__}: {_one_line(exc)}")
        raise
    return 0


def run(args: argparse.Namespace) -> dict[str, float | int]:
    """Train, evaluate and write the artifacts; return the contents of ``metrics.json``."""
    device = _select_device(args.num_gpus)
    if device.type == "cuda":
        _make_gpu_deterministic()

    interactions = data.read_interactions(args.interactions)
    _log(
        f"read {interactions.rows} rows from {interactions.files} Parquet files, "
        f"{len(interactions.positives)} positive events"
    )
    split = data.split_leave_last_out(interactions.positives)
    _log(
        f"{split.num_members} members, {split.num_titles} titles, "
        f"{len(split.train_members)} training positives, "
        f"{len(split.holdout_members)} holdout members; training on {device}"
    )

    model = MatrixFactorization(
        split.num_members,
        split.num_titles,
        args.embedding_dim,
        generator=torch.Generator().manual_seed(args.seed),
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    fingerprint = _fingerprint(split, args)
    checkpoint, notes = checkpoints.load_latest(
        args.checkpoint_dir, fingerprint, args.epochs, device
    )
    for note in notes:
        _log(note)
    first_epoch = 1
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model_state)
        optimizer.load_state_dict(checkpoint.optimizer_state)
        first_epoch = checkpoint.epoch + 1
        _log(f"resuming from the checkpoint of epoch {checkpoint.epoch} in {args.checkpoint_dir}")

    sampler = NegativeSampler(split.train_members, split.train_titles, split.num_titles)
    train_members = torch.from_numpy(split.train_members)
    train_titles = torch.from_numpy(split.train_titles)
    for epoch in range(first_epoch, args.epochs + 1):
        _log(f"epoch {epoch}/{args.epochs}")
        loss = train_epoch(
            model,
            optimizer,
            sampler,
            train_members,
            train_titles,
            args.batch_size,
            args.weight_decay,
            generator=torch.Generator().manual_seed(_epoch_seed(args.seed, epoch)),
        )
        if not math.isfinite(loss):
            raise TrainingError(
                f"training diverged in epoch {epoch} (loss {loss}); lower --learning-rate"
            )
        _metric("train_loss", loss)
        checkpoints.save(args.checkpoint_dir, epoch, fingerprint, model, optimizer)

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
    metrics: dict[str, float | int] = {
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
    for name in METRIC_NAMES[1:]:
        _metric(name, float(metrics[name]))
    if args.min_recall is not None and learned.recall_at_k < args.min_recall:
        raise TrainingError(
            f"recall_at_k {learned.recall_at_k} is below --min-recall {args.min_recall}; "
            "no model written"
        )

    _write_artifacts(args, model, split, metrics)
    _log(f"wrote {', '.join(artifact.ARTIFACT_FILES)} to {args.model_dir}")
    return metrics


def _write_artifacts(
    args: argparse.Namespace,
    model: MatrixFactorization,
    split: data.TrainingSplit,
    metrics: dict[str, float | int],
) -> None:
    artifact.save(
        args.model_dir,
        model=model,
        member_ids=split.member_ids,
        title_ids=split.title_ids,
        title_positives=np.bincount(split.train_titles, minlength=split.num_titles),
        metrics=metrics,
    )
    artifact.write_metrics(args.output_data_dir, metrics)


def _select_device(num_gpus: int) -> torch.device:
    if num_gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _make_gpu_deterministic() -> None:
    # The CPU kernels this job uses are deterministic already. cuBLAS reads this variable
    # when its first handle is created; without it deterministic matrix products on the GPU
    # are refused. warn_only keeps an op without a deterministic kernel from stopping the job.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Each epoch's shuffle and negatives depend only on the seed and the epoch number, so a
    # run resumed from a checkpoint repeats exactly what an uninterrupted run would do.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _fingerprint(split: data.TrainingSplit, args: argparse.Namespace) -> str:
    trajectory = {
        "data": split.fingerprint(),
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


def _metric(name: str, value: float) -> None:
    # repr() of a float is its shortest round-tripping form, so metrics.json, which holds the
    # same floats, parses back to exactly the printed values.
    print(f"METRIC {name}={float(value)!r}", flush=True)


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
