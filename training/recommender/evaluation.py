"""Top-k ranking metrics on a leave-last-out holdout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# Holdout members are scored in blocks so the score matrix stays small for large catalogs.
_MEMBERS_PER_BLOCK = 1024

ScoreFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RankingMetrics:
    """Mean recall@k and NDCG@k over the holdout members."""

    recall_at_k: float
    ndcg_at_k: float


def evaluate(
    score_titles: ScoreFunction,
    train_members: np.ndarray,
    train_titles: np.ndarray,
    holdout_members: np.ndarray,
    holdout_titles: np.ndarray,
    num_titles: int,
    k: int,
    device: torch.device,
) -> RankingMetrics:
    """Rank every title for each holdout member and score the held-out title's position.

    ``score_titles`` maps a tensor of member indices (on ``device``) to a float matrix of
    scores for all ``num_titles`` titles. Each member's training titles are excluded from the
    ranking. With one held-out title per member, recall@k is 1 when it is in the top k and
    NDCG@k is ``1 / log2(rank + 1)`` for its 1-based rank within the top k (0 beyond). A
    held-out title of -1 (never seen in training) counts as a miss.
    """
    if len(holdout_members) == 0:
        raise ValueError("the holdout is empty")
    order = np.argsort(train_members, kind="stable")
    sorted_members = train_members[order]
    sorted_titles = train_titles[order]
    hits = np.zeros(len(holdout_members), dtype=np.float64)
    gains = np.zeros(len(holdout_members), dtype=np.float64)
    top = min(k, num_titles)
    discounts = 1.0 / np.log2(np.arange(2, top + 2, dtype=np.float64))

    for start in range(0, len(holdout_members), _MEMBERS_PER_BLOCK):
        block = slice(start, start + _MEMBERS_PER_BLOCK)
        members = holdout_members[block]
        scores = score_titles(torch.from_numpy(members).to(device))
        rows, titles = _training_positions(members, sorted_members, sorted_titles)
        scores[torch.from_numpy(rows).to(device), torch.from_numpy(titles).to(device)] = -np.inf
        ranked = torch.topk(scores, top, dim=1).indices.cpu().numpy()
        matches = ranked == holdout_titles[block, None]
        found = matches.any(axis=1)
        hits[block] = found
        gains[block] = np.where(found, discounts[matches.argmax(axis=1)], 0.0)
    return RankingMetrics(recall_at_k=float(hits.mean()), ndcg_at_k=float(gains.mean()))


def popularity_scorer(
    train_titles: np.ndarray, num_titles: int, device: torch.device
) -> ScoreFunction:
    """Return a scorer that ranks titles by their number of training positives.

    Ties go to the lower title index, so the baseline is deterministic.
    """
    counts = np.bincount(train_titles, minlength=num_titles).astype(np.float64)
    # Counts are integers, so adding a fraction below one orders ties without reordering the
    # counts; float64 keeps both parts exact for any realistic catalog.
    tie_break = (num_titles - np.arange(num_titles)) / (num_titles + 1)
    scores = torch.from_numpy(counts + tie_break).to(device)

    def score_titles(members: torch.Tensor) -> torch.Tensor:
        return scores.expand(len(members), num_titles).clone()

    return score_titles


def _training_positions(
    members: np.ndarray, sorted_members: np.ndarray, sorted_titles: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    # Row of the block and title of every training pair of the block's members.
    starts = np.searchsorted(sorted_members, members, side="left")
    ends = np.searchsorted(sorted_members, members, side="right")
    lengths = ends - starts
    rows = np.repeat(np.arange(len(members)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, sorted_titles[np.repeat(starts, lengths) + offsets]
