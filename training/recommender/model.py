"""Implicit-feedback matrix factorization trained with the BPR pairwise loss.

The embeddings produce sparse gradients: a batch's gradient holds only the member and title
rows the batch touches, and the optimizer is lazy Adam (``torch.optim.SparseAdam``), which
updates only those rows. A training step therefore costs the same whatever the number of
members and titles, and so does exchanging gradients between data-parallel processes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional

# Uniform negatives that hit one of the member's positives are redrawn up to this many times;
# only a member who liked nearly every title can keep a collision after that.
_NEGATIVE_REDRAWS = 32


class MatrixFactorization(nn.Module):
    """Scores a member-title pair as the dot product of their embeddings plus a title bias."""

    def __init__(
        self, num_members: int, num_titles: int, embedding_dim: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.member_embedding = nn.Embedding(num_members, embedding_dim, sparse=True)
        self.title_embedding = nn.Embedding(num_titles, embedding_dim, sparse=True)
        self.title_bias = nn.Embedding(num_titles, 1, sparse=True)
        # Small initial vectors keep the first scores near zero, where the BPR gradient is
        # largest; the explicit generator makes the start independent of global RNG state.
        nn.init.normal_(self.member_embedding.weight, std=0.1, generator=generator)
        nn.init.normal_(self.title_embedding.weight, std=0.1, generator=generator)
        nn.init.zeros_(self.title_bias.weight)

    def forward(self, members: torch.Tensor, titles: torch.Tensor) -> torch.Tensor:
        """Return the score of each ``(members[i], titles[i])`` pair."""
        return self.pair_scores(
            self.member_embedding(members), self.title_embedding(titles), titles
        )

    def pair_scores(
        self, member_vectors: torch.Tensor, title_vectors: torch.Tensor, titles: torch.Tensor
    ) -> torch.Tensor:
        """Return the scores of pairs whose vectors are already looked up."""
        return (member_vectors * title_vectors).sum(dim=-1) + self.title_bias(titles).squeeze(-1)

    @torch.no_grad()
    def score_all_titles(self, members: torch.Tensor) -> torch.Tensor:
        """Return a ``(len(members), num_titles)`` matrix of scores for every title."""
        member_vectors = self.member_embedding(members)
        return member_vectors @ self.title_embedding.weight.T + self.title_bias.weight.T


class NegativeSampler:
    """Draws, for each training pair, a title the member has no training positive for."""

    def __init__(self, train_members: np.ndarray, train_titles: np.ndarray, num_titles: int):
        self._num_titles = num_titles
        self._positive_keys = torch.from_numpy(
            np.unique(train_members.astype(np.int64) * num_titles + train_titles)
        )

    def sample(self, members: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return one negative title per entry of ``members`` (a CPU int64 tensor)."""
        negatives = torch.randint(self._num_titles, members.shape, generator=generator)
        # Only the entries redrawn last round are checked again, so the rounds shrink fast.
        pending = torch.arange(len(members))
        for _ in range(_NEGATIVE_REDRAWS):
            pending = pending[self._is_positive(members[pending], negatives[pending])]
            if len(pending) == 0:
                break
            negatives[pending] = torch.randint(
                self._num_titles, (len(pending),), generator=generator
            )
        return negatives

    def _is_positive(self, members: torch.Tensor, titles: torch.Tensor) -> torch.Tensor:
        keys = members * self._num_titles + titles
        slots = torch.searchsorted(self._positive_keys, keys).clamp(
            max=len(self._positive_keys) - 1
        )
        return self._positive_keys[slots] == keys


def bpr_loss(
    model: MatrixFactorization,
    members: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    weight_decay: float,
) -> torch.Tensor:
    """Return the mean BPR loss of a batch plus L2 on the embeddings the batch touches.

    BPR maximizes the log-probability that each member scores a liked title above a sampled
    one. The regularizer is applied per batch row rather than through the optimizer, so rows
    of members and titles absent from the batch are not shrunk.
    """
    # Each vector is looked up once, not once per use: the sparse gradients then hold each
    # row fewer times, which keeps their exchange between processes and the optimizer small.
    member_vectors = model.member_embedding(members)
    positive_vectors = model.title_embedding(positives)
    negative_vectors = model.title_embedding(negatives)
    difference = model.pair_scores(member_vectors, positive_vectors, positives) - (
        model.pair_scores(member_vectors, negative_vectors, negatives)
    )
    ranking = -functional.logsigmoid(difference).mean()
    vectors = (member_vectors, positive_vectors, negative_vectors)
    l2 = sum(vector.pow(2).sum(dim=-1).mean() for vector in vectors)
    return ranking + weight_decay * l2


def make_optimizer(model: MatrixFactorization, learning_rate: float) -> torch.optim.Optimizer:
    """Return lazy Adam over the model's embeddings: rows a batch does not touch keep still."""
    return torch.optim.SparseAdam(list(model.parameters()), lr=learning_rate)


def train_epoch(
    model: MatrixFactorization,
    optimizer: torch.optim.Optimizer,
    sampler: NegativeSampler,
    train_members: torch.Tensor,
    train_titles: torch.Tensor,
    batch_size: int,
    weight_decay: float,
    generator: torch.Generator,
    average_gradients: Callable[[], None],
) -> float:
    """Run one epoch over the training pairs in a shuffled order and return its mean loss.

    ``train_members`` and ``train_titles`` are CPU tensors, this process's share of the
    pairs. Shuffling and negative sampling draw from ``generator`` on the CPU, so the epoch
    is the same on any device. ``average_gradients`` runs between each backward pass and
    optimizer step; data-parallel training replaces every process's gradients there with
    their mean over the processes, so all of them take the same step.
    """
    device = next(model.parameters()).device
    order = torch.randperm(len(train_members), generator=generator)
    members = train_members[order]
    positives = train_titles[order]
    negatives = sampler.sample(members, generator)
    members, positives, negatives = (t.to(device) for t in (members, positives, negatives))

    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, len(members), batch_size):
        batch = slice(start, start + batch_size)
        loss = bpr_loss(model, members[batch], positives[batch], negatives[batch], weight_decay)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients()
        optimizer.step()
        total += loss.detach().double() * len(members[batch])
    return float(total) / len(members)
