"""The recommender's model artifact: the one definition of what a model folder holds.

Training writes the folder (SageMaker packs it as ``model.tar.gz``) and serving reads it:

- ``model.pt``: the :class:`MatrixFactorization` state dict, saved from the CPU;
- ``id_maps.json``: ``{"member_index": {member_id: row}, "title_index": {title_id: row}}``;
- ``popularity.json``: ``{"title_positives": {title_id: count}}``, the training positives of
  every title, from which the popularity baseline ranks (most positives first, ties to the
  lower title row);
- ``metrics.json``: the evaluation figures, a JSON object of numbers.

:func:`load` checks that the files agree with each other, so a folder it returns can be
served without further checks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__:
    from .model import MatrixFactorization
else:  # SageMaker runs train.py as a script from the source directory, outside any package.
    from model import MatrixFactorization

MODEL_FILE = "model.pt"
ID_MAPS_FILE = "id_maps.json"
POPULARITY_FILE = "popularity.json"
METRICS_FILE = "metrics.json"
ARTIFACT_FILES = (MODEL_FILE, ID_MAPS_FILE, POPULARITY_FILE, METRICS_FILE)

Metrics = Mapping[str, float | int]


class ArtifactError(Exception):
    """Raised when a model folder lacks a file or holds one that does not fit the others."""


@dataclass(frozen=True)
class ModelArtifact:
    """A loaded model folder; ``member_ids`` and ``title_ids`` are in row order."""

    model: MatrixFactorization
    member_ids: list[str]
    title_ids: list[str]
    title_positives: np.ndarray
    metrics: dict[str, float | int]


def save(
    model_dir: Path,
    *,
    model: MatrixFactorization,
    member_ids: Sequence[str],
    title_ids: Sequence[str],
    title_positives: Sequence[int] | np.ndarray,
    metrics: Metrics,
) -> None:
    """Write the four files of a model folder, creating the folder if needed."""
    if len(title_positives) != len(title_ids):
        raise ValueError(
            f"{len(title_positives)} title positive counts for {len(title_ids)} titles"
        )
    model_dir.mkdir(parents=True, exist_ok=True)
    # Saved from the CPU so the weights load on hosts without a GPU.
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    torch.save(state, model_dir / MODEL_FILE)
    id_maps = {
        "member_index": {member: row for row, member in enumerate(member_ids)},
        "title_index": {title: row for row, title in enumerate(title_ids)},
    }
    (model_dir / ID_MAPS_FILE).write_text(json.dumps(id_maps))
    positives = {title: int(count) for title, count in zip(title_ids, title_positives, strict=True)}
    (model_dir / POPULARITY_FILE).write_text(json.dumps({"title_positives": positives}))
    write_metrics(model_dir, metrics)


def write_metrics(folder: Path, metrics: Metrics) -> None:
    """Write ``metrics.json`` to ``folder``, creating it if needed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METRICS_FILE).write_text(json.dumps(dict(metrics), indent=2))


def load(model_dir: Path) -> ModelArtifact:
    """Read a model folder on the CPU; raise :class:`ArtifactError` naming what is wrong."""
    missing = [name for name in ARTIFACT_FILES if not (model_dir / name).is_file()]
    if missing:
        raise ArtifactError(f"model folder {model_dir} lacks {', '.join(missing)}")
    id_maps = _read_json(model_dir / ID_MAPS_FILE)
    if not isinstance(id_maps, dict):
        raise ArtifactError(f"{ID_MAPS_FILE} is not a JSON object")
    member_ids = _ids_in_row_order(id_maps, "member_index")
    title_ids = _ids_in_row_order(id_maps, "title_index")
    return ModelArtifact(
        model=_read_model(model_dir / MODEL_FILE, len(member_ids), len(title_ids)),
        member_ids=member_ids,
        title_ids=title_ids,
        title_positives=_read_title_positives(model_dir / POPULARITY_FILE, title_ids),
        metrics=_read_metrics(model_dir / METRICS_FILE),
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {path.name}: {_one_line(exc)}") from None


def _ids_in_row_order(id_maps: dict[str, Any], key: str) -> list[str]:
    index = id_maps.get(key)
    if not isinstance(index, dict) or not index:
        raise ArtifactError(f"{ID_MAPS_FILE} has no non-empty {key!r} object")
    rows = sorted(index.items(), key=lambda item: item[1] if isinstance(item[1], int) else -1)
    if [row for _, row in rows] != list(range(len(rows))):
        raise ArtifactError(f"{ID_MAPS_FILE}: the rows of {key!r} are not 0..{len(rows) - 1}")
    return [identifier for identifier, _ in rows]


def _read_model(path: Path, num_members: int, num_titles: int) -> MatrixFactorization:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # torch reports a damaged file with whatever its unpickler or zip reader raises.
    except Exception as exc:
        raise ArtifactError(f"cannot read {MODEL_FILE}: {_one_line(exc)}") from None
    titles = state.get("title_embedding.weight") if isinstance(state, dict) else None
    if not isinstance(titles, torch.Tensor) or titles.dim() != 2:
        raise ArtifactError(f"{MODEL_FILE} holds no 2-D 'title_embedding.weight'")
    model = MatrixFactorization(num_members, num_titles, titles.shape[1], torch.Generator())
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(
            f"{MODEL_FILE} does not fit {num_members} members and {num_titles} titles of "
            f"{ID_MAPS_FILE}: {_one_line(exc)}"
        ) from None
    return model.eval()


def _read_title_positives(path: Path, title_ids: list[str]) -> np.ndarray:
    positives = _read_json(path)
    counts = positives.get("title_positives") if isinstance(positives, dict) else None
    if not isinstance(counts, dict) or counts.keys() != set(title_ids):
        raise ArtifactError(
            f"{POPULARITY_FILE} does not give 'title_positives' for exactly the titles of "
            f"{ID_MAPS_FILE}"
        )
    values = [counts[title] for title in title_ids]
    if not all(isinstance(value, int) and value >= 0 for value in values):
        raise ArtifactError(f"{POPULARITY_FILE}: title positives must be integers >= 0")
    return np.asarray(values, dtype=np.int64)


def _read_metrics(path: Path) -> dict[str, float | int]:
    metrics = _read_json(path)
    if not isinstance(metrics, dict) or not all(
        isinstance(value, int | float) and math.isfinite(value) for value in metrics.values()
    ):
        raise ArtifactError(f"{METRICS_FILE} is not a JSON object of finite numbers")
    return metrics


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
