"""Per-epoch checkpoints for managed spot training.

SageMaker copies the checkpoint folder to S3 while the job runs and back before a restarted
job begins, so a job interrupted after epoch ``n`` resumes at epoch ``n + 1``. Each file is
written under a temporary name and renamed, so a file with the final name is complete.

A checkpoint holds the whole model and optimizer state, which every process of a
data-parallel job has in full: it does not depend on how many processes wrote it, and a job
with any number of processes resumes from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"epoch-(\d{4,})\.pt")


@dataclass(frozen=True)
class Checkpoint:
    """A saved training state: the epochs completed and the model and optimizer states."""

    epoch: int
    model_state: dict[str, Any]
    optimizer_state: dict[str, Any]


def save(
    folder: Path,
    epoch: int,
    fingerprint: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> Path:
    """Write the state after ``epoch`` completed epochs and delete all but the last two.

    ``fingerprint`` identifies the data and hyperparameters; :func:`load_latest` resumes only
    from checkpoints with the same one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch-{epoch:04d}.pt"
    partial = folder / f".{path.name}.partial"
    state = {
        "epoch": epoch,
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    torch.save(state, partial)
    partial.replace(path)
    # The previous epoch's file stays until this one is complete, so an interruption while
    # writing (or while SageMaker uploads) still leaves a checkpoint to resume from. Files of
    # any other epoch belong to another run's trajectory.
    for other_epoch, other in _checkpoint_files(folder):
        if other_epoch not in (epoch, epoch - 1):
            other.unlink(missing_ok=True)
    return path


def load_latest(
    folder: Path, fingerprint: str, max_epoch: int
) -> tuple[Checkpoint | None, list[str]]:
    """Return the newest usable checkpoint in ``folder`` and notes on the ones passed over.

    A checkpoint is usable when it loads, has ``fingerprint`` and at most ``max_epoch``
    epochs. Returns ``None`` when there is none, and the training starts from scratch. The
    state is loaded on the CPU; ``load_state_dict`` moves it to the model's device.
    """
    notes = []
    for epoch, path in _checkpoint_files(folder):
        if epoch > max_epoch:
            notes.append(f"skipping checkpoint {path}: it is past epoch {max_epoch}")
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file is passed over, whatever failed
            notes.append(f"skipping unreadable checkpoint {path}: {type(exc).__name__}")
            continue
        if state.get("fingerprint") != fingerprint:
            notes.append(f"skipping checkpoint {path}: made for other data or hyperparameters")
            continue
        return Checkpoint(epoch, state["model"], state["optimizer"]), notes
    return None, notes


def _checkpoint_files(folder: Path) -> list[tuple[int, Path]]:
    # Newest first.
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.fullmatch(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)
