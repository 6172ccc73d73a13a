"""The model's inputs as the drift monitor sees them: one definition for training and serving.

The matrix-factorization model takes no feature vector; what it ranks from is a member's
history of titles. Two figures summarise that history, and their distributions are what data
drift compares:

- ``history_length``: how many titles the history holds;
- ``history_popularity``: the mean of ``log1p(training positives)`` over the history's titles
  that the model knows, or None when it knows none of them (a history of new titles drifts as
  a rise in the share of None, which the monitor reports apart from the PSI).

Training computes them over its members' histories for the baseline written with each model
version, and serving over the history it reads for each request, with this same function, so
the two distributions are comparable by construction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

HISTORY_LENGTH = "history_length"
HISTORY_POPULARITY = "history_popularity"
INPUT_FEATURES = (HISTORY_LENGTH, HISTORY_POPULARITY)


def input_features(
    history: Sequence[str], title_positives: Mapping[str, int]
) -> dict[str, float | None]:
    """Return the monitored inputs of one history, given the model's training positives."""
    known = [title_positives[title] for title in history if title in title_positives]
    popularity = sum(math.log1p(count) for count in known) / len(known) if known else None
    return {HISTORY_LENGTH: float(len(history)), HISTORY_POPULARITY: popularity}
