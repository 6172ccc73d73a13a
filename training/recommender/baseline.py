"""The drift baseline: how a model version's inputs and top scores were distributed in training.

Training writes ``baseline.json`` into the model folder next to ``metrics.json``, so it
travels inside ``model.tar.gz`` with each version, and the model monitor
(``jobs/batch/model_monitor.py``) compares recent serving with it. Format 1::

    {"format": 1,
     "features": {"<input>": {"edges": [<float>, ...], "proportions": [<float>, ...],
                              "missing_share": <float>}},
     "top_score": {"edges": [<float>, ...], "proportions": [<float>, ...]},
     "sample_size": {"<input>": <int>, "top_score": <int>}}

- ``features``: each monitored input of :mod:`inputs`, one value per training member,
  computed by :func:`inputs.input_features` over the member's history: the member's training
  positives, oldest first, the latest :data:`HISTORY_CAP` of them. ``missing_share`` is the
  share of members whose value is None; the histogram describes the other values.
- ``top_score``: per holdout member (the members evaluation ranks for), the model's best score
  (member vector . title vector + title bias, the score serving ranks by) among the titles
  the member has no training positive for, as serving leaves a member's history out.
- ``edges`` and ``proportions``: ``edges`` cut the number line into ``len(edges) + 1`` bins:
  bin 0 below ``edges[0]``, bin ``i`` from ``edges[i - 1]`` up to (not including)
  ``edges[i]``, the last from ``edges[-1]`` up. The edges are the deciles of the values
  (values of the sample themselves), without duplicates and without one at the smallest value
  (the bin below it would be empty), so no bin is empty and a constant gives no edges and one
  bin. ``proportions`` are the shares of the values in the bins and add up to 1.
- ``sample_size``: how many members each figure describes: every member for an input (its
  nulls included), the members with a finite top score for ``top_score``.

A later change of meaning takes a new ``format``; readers ignore keys they do not know. The
monitor runs on EMR with only the ``jobs`` package, so it reads this file with
``jobs/monitoring/baseline.py`` and bins serving values with ``jobs/monitoring/statistics.py``;
the training tests check that what is written here parses and bins alike there.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__:
    from .data import TrainingSplit
    from .evaluation import _training_positions
    from .inputs import input_features
    from .model import MatrixFactorization
else:  # SageMaker runs train.py as a script from the source directory, outside any package.
    from data import TrainingSplit
    from evaluation import _training_positions
    from inputs import input_features
    from model import MatrixFactorization

BASELINE_FILE = "baseline.json"
FORMAT = 1
TOP_SCORE = "top_score"
DEFAULT_BINS = 10
# Serving summarises the recent titles it reads from member_history, so the histories here
# are cut to the same length, or history_length would drift by construction for every member
# with a longer record. Whatever fills member_history keeps at most this many titles per
# member: enough for months of a member's viewing, while the list serving reads, excludes
# from the ranking and summarises on every request stays small.
HISTORY_CAP = 100
# Holdout members are scored in blocks so the score matrix stays small for large catalogs.
_MEMBERS_PER_BLOCK = 1024


class BaselineError(Exception):
    """Raised when the training data leave a figure of the baseline without values."""


def quantile_edges(values: np.ndarray, *, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Return the edges of ``bins`` quantile bins of ``values`` (a non-empty 1-D array).

    The quantiles are values of the sample (numpy's ``inverted_cdf``), so each bin from an
    edge up holds at least that edge's value. Duplicates and a quantile at the smallest value
    are dropped, so the result is strictly increasing, the bin below the first edge is not
    empty either, and a constant has no edges.
    """
    if len(values) == 0:
        raise ValueError("no values to take quantiles of")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    quantiles = np.unique(np.quantile(values, np.arange(1, bins) / bins, method="inverted_cdf"))
    return quantiles[quantiles > values.min()]


def histogram(values: np.ndarray, *, bins: int = DEFAULT_BINS) -> dict[str, list[float]]:
    """Return ``{"edges", "proportions"}`` of ``values`` in their quantile bins.

    A value equal to an edge belongs to the bin above it.
    """
    edges = quantile_edges(values, bins=bins)
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return {"edges": edges.tolist(), "proportions": (counts / len(values)).tolist()}


def member_histories(
    split: TrainingSplit, *, history_cap: int = HISTORY_CAP
) -> Iterator[list[str]]:
    """Yield each member's history in member row order: the member's training titles, oldest
    first, the latest ``history_cap`` of them.

    ``split_leave_last_out`` lists a member's training pairs in time order; the stable sort
    by member keeps that order.
    """
    order = np.argsort(split.train_members, kind="stable")
    members, titles = split.train_members[order], split.train_titles[order]
    firsts = np.flatnonzero(np.diff(members)) + 1
    for rows in np.split(titles, firsts):
        yield [split.title_ids[row] for row in rows[-history_cap:].tolist()]


@torch.no_grad()
def top_scores(
    model: MatrixFactorization, split: TrainingSplit, device: torch.device
) -> np.ndarray:
    """Return the finite best score of each holdout member among the titles the member has
    no training positive for (a member with a positive for every title has none)."""
    order = np.argsort(split.train_members, kind="stable")
    sorted_members, sorted_titles = split.train_members[order], split.train_titles[order]
    blocks = []
    for start in range(0, len(split.holdout_members), _MEMBERS_PER_BLOCK):
        members = split.holdout_members[start : start + _MEMBERS_PER_BLOCK]
        scores = model.score_all_titles(torch.from_numpy(members).to(device))
        rows, titles = _training_positions(members, sorted_members, sorted_titles)
        scores[torch.from_numpy(rows).to(device), torch.from_numpy(titles).to(device)] = -np.inf
        blocks.append(scores.max(dim=1).values.cpu().numpy().astype(np.float64))
    best = np.concatenate(blocks)
    return best[np.isfinite(best)]


def build(
    *,
    model: MatrixFactorization,
    split: TrainingSplit,
    title_positives: np.ndarray,
    device: torch.device,
    history_cap: int = HISTORY_CAP,
) -> dict[str, Any]:
    """Return the baseline document of a trained model (see the module's format).

    ``title_positives`` are the training positives of each title in row order, as in
    ``popularity.json``, from which serving computes the same inputs. Raises
    :class:`BaselineError` when an input or the top score has no value for any member.
    """
    positives = dict(zip(split.title_ids, title_positives.tolist(), strict=True))
    samples: dict[str, list[float | None]] = defaultdict(list)
    for history in member_histories(split, history_cap=history_cap):
        for name, value in input_features(history, positives).items():
            samples[name].append(value)
    scores = top_scores(model, split, device)
    if len(scores) == 0:
        raise BaselineError("every holdout member has a training positive for every title")
    return {
        "format": FORMAT,
        "features": {name: _feature_summary(values) for name, values in samples.items()},
        TOP_SCORE: histogram(scores),
        "sample_size": {
            **{name: len(values) for name, values in samples.items()},
            TOP_SCORE: len(scores),
        },
    }


def write(model_dir: Path, baseline: Mapping[str, Any]) -> None:
    """Write ``baseline.json`` to ``model_dir``, creating it if needed."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / BASELINE_FILE).write_text(json.dumps(dict(baseline), indent=2))


def _feature_summary(values: list[float | None]) -> dict[str, Any]:
    present = np.asarray([value for value in values if value is not None], dtype=np.float64)
    if len(present) == 0:
        raise BaselineError("an input is None for every member")
    return {**histogram(present), "missing_share": 1 - len(present) / len(values)}
