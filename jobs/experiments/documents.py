"""What the analysis job needs of an ABlaze experiment, and when it analyses one.

An experiment document is ABlaze's JSON of the experiment; only ``id``, ``state``, the
``cells``' names, ``start``, ``end``, ``stopped_at``, ``primary_metric`` and
``guardrail_metrics`` are read, so fields ABlaze adds later do no harm.

Members are exposed from ``start`` until the experiment closes: at ``end``, or earlier at
``stopped_at``, when the serving tasks stop assigning them. The job measures exposures and
outcomes in ``[start, min(now, close))``: after a stop members see the default experience
again, so their later plays would dilute the effect. It keeps analysing a closed experiment
for :data:`ANALYSIS_AFTER_CLOSE`, while the daily ETL still brings in plays of its window.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jobs.experiments.observations import METRICS

ANALYSIS_AFTER_CLOSE = timedelta(days=7)
ANALYSED_STATES = frozenset({"running", "stopped"})


class ExperimentDocumentError(ValueError):
    """An experiment document the job cannot read; the message says why."""


@dataclass(frozen=True, kw_only=True)
class Window:
    """The times from ``start`` up to, not including, ``end`` (aware UTC)."""

    start: datetime
    end: datetime


@dataclass(frozen=True, kw_only=True)
class ExperimentPlan:
    """An experiment as the job reads it: its cells' names and the metrics it names."""

    id: str
    state: str
    cells: tuple[str, ...]
    metrics: tuple[str, ...]
    start: datetime
    end: datetime
    stopped_at: datetime | None

    @property
    def closes_at(self) -> datetime:
        """When the serving tasks stop assigning members: the end, or the stop before it."""
        return self.end if self.stopped_at is None else min(self.end, self.stopped_at)


def parse_experiment(document: str) -> ExperimentPlan:
    """The plan of an experiment document; ExperimentDocumentError names the first fault."""
    try:
        fields = json.loads(document)
    except ValueError as exc:
        raise ExperimentDocumentError(f"not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ExperimentDocumentError(f"not a JSON object but {type(fields).__name__}")
    state = _text(fields, "state")
    stopped_at = _optional_time(fields, "stopped_at")
    if state == "stopped" and stopped_at is None:
        raise ExperimentDocumentError("a stopped experiment has no stopped_at")
    return ExperimentPlan(
        id=_text(fields, "id"),
        state=state,
        cells=_cell_names(fields.get("cells")),
        metrics=_metrics(fields),
        start=_time(fields, "start"),
        end=_time(fields, "end"),
        stopped_at=stopped_at,
    )


def analysis_window(plan: ExperimentPlan, *, now: datetime) -> Window | None:
    """The window to analyse ``plan`` over at ``now``; None when it is not analysed now.

    A running or stopped experiment is analysed from its start until
    :data:`ANALYSIS_AFTER_CLOSE` after it closes; a draft never is.
    """
    if plan.state not in ANALYSED_STATES or now >= plan.closes_at + ANALYSIS_AFTER_CLOSE:
        return None
    end = min(now, plan.closes_at)
    return Window(start=plan.start, end=end) if plan.start < end else None


def _text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise ExperimentDocumentError(f"{name} is not a non-empty string")
    return value


def _time(fields: Mapping[str, Any], name: str) -> datetime:
    value = _text(fields, name)
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ExperimentDocumentError(f"{name} is not an ISO 8601 time: {value!r}") from None
    if at.tzinfo is None:
        raise ExperimentDocumentError(f"{name} has no time zone: {value!r}")
    return at


def _optional_time(fields: Mapping[str, Any], name: str) -> datetime | None:
    return None if fields.get(name) is None else _time(fields, name)


def _cell_names(cells: Any) -> tuple[str, ...]:
    if not isinstance(cells, list) or not cells:
        raise ExperimentDocumentError("cells is not a non-empty list")
    names = []
    for index, cell in enumerate(cells):
        name = cell.get("name") if isinstance(cell, dict) else None
        if not isinstance(name, str) or not name:
            raise ExperimentDocumentError(f"cells[{index}] has no name")
        names.append(name)
    if len(set(names)) != len(names):
        raise ExperimentDocumentError(f"cells repeat a name: {', '.join(names)}")
    return tuple(names)


def _metrics(fields: Mapping[str, Any]) -> tuple[str, ...]:
    guardrails = fields.get("guardrail_metrics")
    if guardrails is None:
        guardrails = []
    elif not isinstance(guardrails, list):
        raise ExperimentDocumentError("guardrail_metrics is not a list")
    metrics = (_text(fields, "primary_metric"), *guardrails)
    unknown = [repr(metric) for metric in metrics if metric not in METRICS]
    if unknown:
        raise ExperimentDocumentError(
            f"names metrics the job does not measure: {', '.join(unknown)} "
            f"(it measures {', '.join(METRICS)})"
        )
    return metrics
