"""Ranking titles for a member with a loaded model, in numpy.

The model's vectors are copied out of the torch module once, at load, so a request costs one
matrix-vector product and a partial sort, without torch's per-call overhead. A member the
model does not know gets the popularity baseline of training instead.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from training.recommender.artifact import ModelArtifact


@dataclass(frozen=True)
class Ranking:
    """Titles best first with their scores; ``popularity`` when the member was unknown.

    Model scores are the member-title dot product plus the title bias; popularity scores are
    the titles' training positives.
    """

    title_ids: list[str]
    scores: list[float]
    popularity: bool


class Ranker:
    """Ranks the titles of one model version for a member, leaving out titles seen already."""

    def __init__(self, artifact: ModelArtifact) -> None:
        # The figures training reported for this model (its metrics.json).
        self.metrics = dict(artifact.metrics)
        model = artifact.model
        self._member_rows = {member: row for row, member in enumerate(artifact.member_ids)}
        self._title_rows = {title: row for row, title in enumerate(artifact.title_ids)}
        self._title_ids = np.asarray(artifact.title_ids, dtype=object)
        self._member_vectors = model.member_embedding.weight.detach().numpy().copy()
        self._title_vectors = model.title_embedding.weight.detach().numpy().copy()
        self._title_bias = model.title_bias.weight.detach().numpy()[:, 0].copy()
        counts = artifact.title_positives
        # Each title's training positives by id, built once: the monitored inputs of every
        # request are computed from them (training.recommender.inputs).
        self.title_positives: Mapping[str, int] = MappingProxyType(
            dict(zip(artifact.title_ids, counts.tolist(), strict=True))
        )
        # Most positives first, ties to the lower row: the baseline training evaluates.
        self._popular_rows = np.lexsort((np.arange(len(counts)), -counts))
        self._popular_scores = counts[self._popular_rows].astype(np.float64)

    @property
    def num_titles(self) -> int:
        return len(self._title_ids)

    def rank(self, member_id: str, k: int, exclude: Collection[str]) -> Ranking:
        """Return at most ``k`` titles, none of them in ``exclude``."""
        excluded = [self._title_rows[t] for t in exclude if t in self._title_rows]
        member_row = self._member_rows.get(member_id)
        if member_row is None:
            return self._rank_by_popularity(k, excluded)
        scores = self._title_vectors @ self._member_vectors[member_row] + self._title_bias
        scores[excluded] = -np.inf
        count = min(k, self.num_titles - len(set(excluded)))
        if count <= 0:
            return Ranking(title_ids=[], scores=[], popularity=False)
        top = np.argpartition(-scores, count - 1)[:count]
        # Equal scores go to the lower row, so a ranking never depends on the partition.
        top = top[np.lexsort((top, -scores[top]))]
        return Ranking(
            title_ids=self._title_ids[top].tolist(),
            scores=scores[top].tolist(),
            popularity=False,
        )

    def _rank_by_popularity(self, k: int, excluded: list[int]) -> Ranking:
        # The first k + len(excluded) popular titles hold the top k that are not excluded.
        head = self._popular_rows[: k + len(excluded)]
        keep = ~np.isin(head, excluded)
        return Ranking(
            title_ids=self._title_ids[head[keep][:k]].tolist(),
            scores=self._popular_scores[: len(head)][keep][:k].tolist(),
            popularity=True,
        )
