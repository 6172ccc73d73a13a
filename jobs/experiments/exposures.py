"""Exposures: when and in which cell each member was first served in an experiment.

The serving tasks log every prediction with the member's ``experiment`` and ``cell`` (null
when the member is in none; :mod:`jobs.monitoring.prediction_log` has the format). A member's
first record of an experiment, within its window, is their exposure: it gives their cell and
the time their outcomes count from. A member seen in another cell later still counts in the
first, and is counted as a conflict, which should not happen (a running experiment's cells
only grow, so nobody moves).

Values are plain tuples, so they cross between Spark's processes as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobs.experiments.documents import ExperimentPlan, Window
from jobs.monitoring.prediction_log import MalformedRecordError, epoch_millis, parse_prediction

# A member of an experiment: (experiment id, member id).
MemberKey = tuple[str, str]
# A member's first record: (generated_at in epoch milliseconds, cell, seen in another cell).
FirstSeen = tuple[int, str, bool]


@dataclass(frozen=True, kw_only=True)
class Scope:
    """What reading the exposures of an analysed experiment needs: its window in epoch
    milliseconds (half-open) and its cells."""

    start_ms: int
    end_ms: int
    cells: frozenset[str]

    @classmethod
    def of(cls, plan: ExperimentPlan, window: Window) -> Scope:
        return cls(
            start_ms=epoch_millis(window.start),
            end_ms=epoch_millis(window.end),
            cells=frozenset(plan.cells),
        )


def parse_exposure(line: str, *, scopes: Mapping[str, Scope]) -> tuple[MemberKey, FirstSeen] | None:
    """The exposure a log line records, or None when it is of no analysed experiment or
    outside its window.

    Raises :class:`MalformedRecordError` when the line is not a valid record, or names a cell
    its experiment does not have.
    """
    fields = _json_object(line)
    experiment = fields.get("experiment")
    if experiment is None:
        return None
    if not isinstance(experiment, str):
        raise MalformedRecordError("experiment is not null or a string")
    scope = scopes.get(experiment)
    if scope is None:
        return None
    # The monitor's checks, so that a record it counts as malformed is no exposure either.
    record = parse_prediction(line)
    cell = fields.get("cell")
    if not isinstance(cell, str) or cell not in scope.cells:
        raise MalformedRecordError(f"cell {cell!r} is not a cell of experiment {experiment!r}")
    generated_ms = record["generated_at_ms"]
    if not scope.start_ms <= generated_ms < scope.end_ms:
        return None
    return (experiment, record["member_id"]), (generated_ms, cell, False)


def earliest(left: FirstSeen, right: FirstSeen) -> FirstSeen:
    """The first of two records of a member (ties go to the lesser cell name), flagged as a
    conflict when either is one or their cells differ; order-free, as ``reduceByKey`` needs."""
    first = min(left, right)
    return first[0], first[1], left[2] or right[2] or left[1] != right[1]


def _json_object(line: str) -> dict[str, Any]:
    try:
        fields = json.loads(line)
    except ValueError as exc:
        raise MalformedRecordError(f"not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise MalformedRecordError(f"not a JSON object but {type(fields).__name__}")
    return fields
