"""The seam where the experimentation platform (ABlaze) assigns members to test cells.

A :class:`CellAssigner` maps a member to the experiment and cell they are in, and the model
version that cell is served by, or to None when the member is in no experiment. The service
uses :class:`NoExperiments` until a real allocator is plugged in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Assignment:
    """The member is in ``cell`` of ``experiment``, which ``model_version`` serves."""

    experiment: str
    cell: str
    model_version: str


class CellAssigner(Protocol):
    """Allocates members to experiment cells; called once per request, so it must be fast."""

    def assign(self, member_id: str) -> Assignment | None: ...


class NoExperiments:
    """The default allocator: no member is in any experiment."""

    def assign(self, member_id: str) -> Assignment | None:
        return None
