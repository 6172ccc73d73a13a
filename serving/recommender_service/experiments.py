"""The seam where the experimentation platform (ABlaze) assigns members to test cells.

A :class:`CellAssigner` maps a member to the experiment and cell they are in, and the model
version that cell is served by, or to None when the member is in no experiment. The service
uses :class:`NoExperiments` unless ``EXPERIMENTS_TABLE`` is set; then :class:`AblazeAssigner`
assigns by the running experiments of ``EXPERIMENT_SURFACE``, which ABlaze's
:class:`~ablaze.allocation.ExperimentAssigner` keeps in memory and reloads in the background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ablaze.allocation import ExperimentAssigner


@dataclass(frozen=True)
class Assignment:
    """The member is in ``cell`` of ``experiment``, which ``model_version`` serves."""

    experiment: str
    cell: str
    model_version: str


class CellAssigner(Protocol):
    """Allocates members to experiment cells.

    ``start`` runs once on the start-up thread before the service reports itself ready, so
    it may wait for a first load; ``assign`` is called once per request, so it must be fast;
    ``stop`` runs at shutdown.
    """

    def start(self) -> None: ...

    def assign(self, member_id: str) -> Assignment | None: ...

    def stop(self) -> None: ...


class NoExperiments:
    """The default allocator: no member is in any experiment."""

    def start(self) -> None:
        """Nothing to load."""

    def assign(self, member_id: str) -> Assignment | None:
        return None

    def stop(self) -> None:
        """Nothing to stop."""


class AblazeAssigner:
    """ABlaze's assigner as a :class:`CellAssigner`.

    ABlaze's :class:`~ablaze.allocation.Assignment` has the fields of :class:`Assignment`;
    ABlaze does not import serving, so each assignment is copied into serving's type here.
    """

    def __init__(self, assigner: ExperimentAssigner) -> None:
        self._assigner = assigner

    def start(self) -> None:
        """Load the running experiments once now, then reload them on ABlaze's own thread."""
        self._assigner.start()

    def assign(self, member_id: str) -> Assignment | None:
        assignment = self._assigner.assign(member_id)
        if assignment is None:
            return None
        return Assignment(assignment.experiment, assignment.cell, assignment.model_version)

    def stop(self) -> None:
        self._assigner.stop()
