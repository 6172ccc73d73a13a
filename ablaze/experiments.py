"""Experiments: what they are, what makes one valid, and how their state and allocation change.

An experiment tests cells (one control, one or more treatments, each served by a model
version) on a surface of the product, for the members its eligibility rule admits, between
its start and end. Each cell has a percentage of the members; the percentages add up to at
most 100 and members beyond them are in no cell (they are not enrolled). The salt is made at
creation and never changes, so a member's bucket (see :mod:`ablaze.allocation`) never does.

State goes draft -> running -> stopped and nowhere else. A draft's allocation may change
freely; a running experiment's cells may only grow (see :func:`reallocated`); a stopped
experiment does not change. Every function here is pure: it returns a new
:class:`Experiment`, or raises :class:`InvalidExperimentError` (bad input) or
:class:`ConflictError` (a change the experiment's state does not allow).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ablaze import allocation

MetricKind = Literal["proportion", "mean"]
State = Literal["draft", "running", "stopped"]
# The metric catalogue: each metric is measured per enrolled member.
METRICS: Mapping[str, MetricKind] = {
    "play_rate": "proportion",
    "completion_rate": "proportion",
    "plays_per_member": "mean",
}
METRIC_DESCRIPTIONS: Mapping[str, str] = {
    "play_rate": "share of members who started at least one play",
    "completion_rate": "share of members who finished at least one title",
    "plays_per_member": "mean number of plays per member",
}
MAX_CELLS = 20
SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"

Slug = Annotated[str, Field(pattern=SLUG_PATTERN)]
ModelVersion = Annotated[str, Field(pattern=r"^\S{1,128}$")]
CountryCode = Annotated[str, BeforeValidator(str.upper), Field(pattern=r"^[A-Z]{2}$")]
DeviceType = Annotated[str, BeforeValidator(str.lower), Field(pattern=SLUG_PATTERN)]


class InvalidExperimentError(ValueError):
    """The request is invalid; the message is one line naming the fields."""


class ConflictError(Exception):
    """The change is not allowed in the experiment's current state (or the surface's)."""


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]


def _unique(values: Sequence[str]) -> Sequence[str]:
    duplicates = sorted({value for value in values if values.count(value) > 1})
    if duplicates:
        raise ValueError(f"has duplicates: {', '.join(duplicates)}")
    return values


def _metric_name(name: str) -> str:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; the catalogue has {', '.join(sorted(METRICS))}")
    return name


MetricName = Annotated[str, AfterValidator(_metric_name)]


def _percent(value: float) -> float:
    if not 0 < value <= 100:
        raise ValueError(f"must be above 0 and at most 100, got {value:g}")
    try:
        allocation.buckets_for_percent(value)
    except ValueError:
        raise ValueError(f"must be in steps of 0.01 (one bucket), got {value!r}") from None
    return value


Percent = Annotated[float, AfterValidator(_percent)]


class CellSpec(BaseModel):
    """A cell as requested: its name, its share of the members and the version serving it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Slug
    percent: Percent
    model_version: ModelVersion
    control: bool = False


class EligibilityRule(BaseModel):
    """Optional allow-lists; a list left out allows everyone."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    countries: Annotated[list[CountryCode], AfterValidator(_unique)] | None = None
    device_types: Annotated[list[DeviceType], AfterValidator(_unique)] | None = None

    @field_validator("countries", "device_types")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value == []:
            raise ValueError("must not be empty: leave it out to allow everyone")
        return value

    def allocation(self) -> allocation.Eligibility:
        return allocation.Eligibility(
            countries=None if self.countries is None else frozenset(self.countries),
            device_types=None if self.device_types is None else frozenset(self.device_types),
        )


class ExperimentSpec(BaseModel):
    """What a client asks for when it creates an experiment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Slug
    description: Annotated[str, Field(max_length=2000)] = ""
    surface: Slug
    cells: Sequence[CellSpec]
    eligibility: EligibilityRule = EligibilityRule()
    start: UtcDatetime
    end: UtcDatetime
    primary_metric: MetricName
    guardrail_metrics: Annotated[list[MetricName], AfterValidator(_unique)] = []

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        problems = [*_cell_problems(self.cells)]
        if self.end <= self.start:
            problems.append(f"end: must be after start ({self.start.isoformat()})")
        if self.primary_metric in self.guardrail_metrics:
            problems.append(
                f"guardrail_metrics: {self.primary_metric!r} is already the primary metric"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def metrics(self) -> tuple[str, ...]:
        """The primary metric, then the guardrails."""
        return (self.primary_metric, *self.guardrail_metrics)

    @property
    def control(self) -> CellSpec:
        [control] = [cell for cell in self.cells if cell.control]
        return control

    @property
    def treatments(self) -> tuple[CellSpec, ...]:
        return tuple(cell for cell in self.cells if not cell.control)

    @property
    def enrolled_percent(self) -> float:
        """The share of members in some cell; the rest are not enrolled."""
        return sum(allocation.buckets_for_percent(c.percent) for c in self.cells) / 100


def _cell_problems(cells: Sequence[CellSpec]) -> list[str]:
    problems = []
    if not 2 <= len(cells) <= MAX_CELLS:
        problems.append(f"cells: needs a control and 1 to {MAX_CELLS - 1} treatments")
    names = [cell.name for cell in cells]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        problems.append(f"cells: names must be unique, repeated: {', '.join(duplicates)}")
    controls = [cell.name for cell in cells if cell.control]
    if len(controls) != 1:
        problems.append(
            f"cells: exactly one cell must have control true, found {len(controls)}"
            + (f" ({', '.join(controls)})" if controls else "")
        )
    buckets = sum(allocation.buckets_for_percent(cell.percent) for cell in cells)
    if buckets > allocation.BUCKETS:
        problems.append(
            f"cells: percentages add up to {buckets / 100:g}%, at most 100% is allowed "
            "(members beyond the total are not enrolled)"
        )
    return problems


class Cell(CellSpec):
    """A stored cell: the request's cell and the bucket ranges it owns."""

    buckets: tuple[allocation.BucketRange, ...]

    @model_validator(mode="after")
    def _buckets_match_percent(self) -> Cell:
        owned = allocation.bucket_count(self.buckets)
        if owned != allocation.buckets_for_percent(self.percent):
            raise ValueError(f"buckets: cell {self.name!r} owns {owned}, not {self.percent:g}%")
        return self


class Experiment(ExperimentSpec):
    """A stored experiment: the request, its salt, layout, state and history.

    ``version`` counts the writes of the experiment; the store writes only over the version
    it read, so concurrent changes cannot overwrite each other.
    """

    cells: Sequence[Cell]
    salt: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    state: State
    version: Annotated[int, Field(ge=1)]
    created_at: UtcDatetime
    allocation_changed_at: UtcDatetime
    started_at: UtcDatetime | None = None
    stopped_at: UtcDatetime | None = None

    @model_validator(mode="after")
    def _layout_is_disjoint(self) -> Experiment:
        allocation.check_layout(self.layout)
        return self

    @property
    def layout(self) -> allocation.Layout:
        return tuple(tuple(cell.buckets) for cell in self.cells)

    def allocation(self) -> allocation.AllocatedExperiment:
        """What the assigner needs of this experiment."""
        return allocation.AllocatedExperiment(
            experiment_id=self.id,
            salt=self.salt,
            cells=tuple(
                allocation.AllocatedCell(
                    name=cell.name, model_version=cell.model_version, ranges=tuple(cell.buckets)
                )
                for cell in self.cells
            ),
            eligibility=self.eligibility.allocation(),
            start=self.start.timestamp(),
            end=self.end.timestamp(),
        )


class AllocationChange(BaseModel):
    """A new percentage for each cell named; cells left out keep theirs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    percent: Annotated[dict[str, Percent], Field(min_length=1)]


def check_model_versions(cells: Sequence[CellSpec], known: Collection[str]) -> None:
    """Raise InvalidExperimentError naming each cell whose model version is not in ``known``."""
    unknown = [
        f"cells[{index}].model_version: unknown model version {cell.model_version!r}"
        for index, cell in enumerate(cells)
        if cell.model_version not in known
    ]
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise InvalidExperimentError(f"{'; '.join(unknown)} (known versions: {listed})")


def create_experiment(spec: ExperimentSpec, *, now: datetime) -> Experiment:
    """A draft of ``spec`` with a new salt and the cells laid out from bucket 0."""
    counts = [allocation.buckets_for_percent(cell.percent) for cell in spec.cells]
    layout = allocation.new_layout(counts)
    return Experiment.model_validate(
        {
            **_fields(spec),
            "cells": [
                _stored_cell(cell, ranges) for cell, ranges in zip(spec.cells, layout, strict=True)
            ],
            "salt": secrets.token_hex(16),
            "state": "draft",
            "version": 1,
            "created_at": now,
            "allocation_changed_at": now,
        }
    )


def started(experiment: Experiment, *, now: datetime) -> Experiment:
    """The experiment running from ``now``; ConflictError unless a draft whose end is ahead."""
    _require_state(experiment, "draft", "start")
    if now >= experiment.end:
        raise ConflictError(
            f"end: the window of {experiment.id!r} ended at {experiment.end.isoformat()}; "
            "create a new experiment with a later end"
        )
    return experiment.model_copy(update={"state": "running", "started_at": now})


def stopped(experiment: Experiment, *, now: datetime) -> Experiment:
    """The experiment stopped at ``now``; ConflictError unless it is running."""
    _require_state(experiment, "running", "stop")
    return experiment.model_copy(update={"state": "stopped", "stopped_at": now})


def reallocated(experiment: Experiment, change: AllocationChange, *, now: datetime) -> Experiment:
    """The experiment with the cells' new percentages and the layout that serves them.

    A draft is laid out anew. A running experiment's cells may only grow, taking buckets from
    the unenrolled pool, so nobody already in a cell moves; a shrink is a ConflictError (stop
    the experiment and start another instead). A stopped experiment does not change.
    """
    if experiment.state == "stopped":
        raise ConflictError(
            f"experiment {experiment.id!r} is stopped; its allocation cannot change"
        )
    names = [cell.name for cell in experiment.cells]
    unknown = sorted(set(change.percent) - set(names))
    if unknown:
        raise InvalidExperimentError(
            f"percent: no cell named {', '.join(map(repr, unknown))}; "
            f"the cells are {', '.join(names)}"
        )
    cells = [
        CellSpec(**{**_cell_fields(cell), "percent": change.percent.get(cell.name, cell.percent)})
        for cell in experiment.cells
    ]
    problems = _cell_problems(cells)
    if problems:
        raise InvalidExperimentError("; ".join(problems))
    counts = [allocation.buckets_for_percent(cell.percent) for cell in cells]
    if experiment.state == "running":
        _refuse_shrinking(experiment, cells)
        layout = allocation.grown_layout(experiment.layout, counts)
    else:
        layout = allocation.new_layout(counts)
    return Experiment.model_validate(
        {
            **experiment.model_dump(),
            "cells": [
                _stored_cell(cell, ranges) for cell, ranges in zip(cells, layout, strict=True)
            ],
            "allocation_changed_at": now,
        }
    )


def _refuse_shrinking(experiment: Experiment, cells: Sequence[CellSpec]) -> None:
    shrinking = [
        f"{new.name} {old.percent:g}% -> {new.percent:g}%"
        for old, new in zip(experiment.cells, cells, strict=True)
        if new.percent < old.percent
    ]
    if shrinking:
        raise ConflictError(
            f"percent: {experiment.id!r} is running and shrinking a cell would move its members "
            f"out ({', '.join(shrinking)}); cells of a running experiment can only grow, "
            "so stop it and start a new experiment instead"
        )


def _require_state(experiment: Experiment, state: State, action: str) -> None:
    if experiment.state != state:
        raise ConflictError(
            f"experiment {experiment.id!r} is {experiment.state}; only a {state} experiment "
            f"can {action} (draft -> running -> stopped)"
        )


def _fields(spec: ExperimentSpec) -> dict:
    return {name: getattr(spec, name) for name in ExperimentSpec.model_fields}


def _cell_fields(cell: CellSpec) -> dict:
    return {name: getattr(cell, name) for name in CellSpec.model_fields}


def _stored_cell(cell: CellSpec, ranges: Sequence[allocation.BucketRange]) -> dict:
    return {**_cell_fields(cell), "buckets": tuple(ranges)}
