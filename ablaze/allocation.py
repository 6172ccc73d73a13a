"""Which cell of which experiment a member is in: deterministic, sticky and fast.

This module is what the serving app imports on every request, so it uses the standard
library only and a call to :meth:`ExperimentAssigner.assign` costs one SHA-256 of a short
string and one tuple lookup (a few microseconds).

Bucket
    A member's bucket in an experiment is the first 8 bytes of
    ``SHA-256(f"{salt}:{experiment_id}:{member_id}")`` (UTF-8) read as an unsigned big-endian
    integer, modulo 10,000. ``allocation_vectors.json`` beside this file holds fixed cases
    that any other implementation can test itself against.

Layout
    Each cell owns a set of buckets, kept with the experiment as half-open ranges
    ``[start, end)``. A cell of ``p`` percent owns ``p * 100`` buckets, so percentages have a
    resolution of 0.01 %; buckets no cell owns are the unenrolled pool, and members in them
    are in no cell. A new layout puts the cells end to end from bucket 0, in their order.
    A layout only ever grows: every cell keeps the ranges it owns, and the buckets it gains
    are the lowest free ones. A member's bucket never changes (the salt and the id are
    immutable), so ramping a cell up keeps every member where they were and enrols members
    only from the pool. Shrinking a cell would move its members out of the experiment, and a
    later growth could move them into another cell, so :func:`grown_layout` refuses it.

One surface, one experiment
    Experiments on one surface compete for the same members. The platform runs at most one
    experiment per surface at a time (the store refuses to start a second), because each
    experiment's buckets come from its own salt: two experiments cannot split the members by
    bucket ranges, and letting one take precedence would shrink and skew the other.
    :class:`ExperimentAssigner` still accepts several and asks them in order of their start
    (then id), so a member is in at most one cell even while a stop and a start overlap in
    its cache.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

BUCKETS = 10_000
# Buckets per percentage point: a percentage is a whole number of hundredths.
BUCKETS_PER_PERCENT = BUCKETS // 100
DEFAULT_REFRESH_SECONDS = 30.0

LOGGER = logging.getLogger("ablaze")

BucketRange = tuple[int, int]
# Per cell, in the experiment's cell order, the half-open bucket ranges it owns.
Layout = tuple[tuple[BucketRange, ...], ...]


class NotStickyError(ValueError):
    """The new allocation would move members that are already in a cell."""


def bucket_of(*, salt: str, experiment_id: str, member_id: str) -> int:
    """The member's bucket in the experiment, 0 to 9,999 (see the module docstring)."""
    digest = hashlib.sha256(f"{salt}:{experiment_id}:{member_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def buckets_for_percent(percent: float) -> int:
    """How many buckets ``percent`` is; ValueError unless it is a whole number of 0.01 %."""
    buckets = round(percent * BUCKETS_PER_PERCENT)
    # Floats such as 33.33 are not exact; anything finer than a bucket is a mistake.
    if abs(percent * BUCKETS_PER_PERCENT - buckets) > 1e-6 or not 0 <= buckets <= BUCKETS:
        raise ValueError(f"{percent!r} is not a percentage in steps of 0.01 from 0 to 100")
    return buckets


def new_layout(bucket_counts: Sequence[int]) -> Layout:
    """The cells end to end from bucket 0: cell ``i`` gets ``bucket_counts[i]`` buckets."""
    return grown_layout(tuple(() for _ in bucket_counts), bucket_counts)


def grown_layout(layout: Layout, bucket_counts: Sequence[int]) -> Layout:
    """``layout`` with cell ``i`` grown to ``bucket_counts[i]`` buckets from the free pool.

    Raises NotStickyError when a cell would shrink, and ValueError when the cells do not
    match or need more buckets than there are.
    """
    if len(layout) != len(bucket_counts):
        raise ValueError(f"the layout has {len(layout)} cells, the allocation {len(bucket_counts)}")
    if sum(bucket_counts) > BUCKETS:
        raise ValueError(f"the cells need {sum(bucket_counts)} buckets, there are {BUCKETS}")
    check_layout(layout)
    owned = [bucket_count(ranges) for ranges in layout]
    for index, (have, want) in enumerate(zip(owned, bucket_counts, strict=True)):
        if want < have:
            raise NotStickyError(
                f"cell {index} would shrink from {have} to {want} buckets, moving its members"
            )
    free = _free_ranges(layout)
    grown = []
    for ranges, have, want in zip(layout, owned, bucket_counts, strict=True):
        taken, free = _take(free, want - have)
        grown.append(_merged([*ranges, *taken]))
    return tuple(grown)


def bucket_count(ranges: Iterable[BucketRange]) -> int:
    """How many buckets the ranges hold."""
    return sum(end - start for start, end in ranges)


def check_layout(layout: Layout) -> None:
    """Raise ValueError unless every range is non-empty, inside [0, BUCKETS), and no two
    ranges overlap."""
    cursor = 0
    for start, end in sorted(bucket_range for ranges in layout for bucket_range in ranges):
        if not 0 <= start < end <= BUCKETS:
            raise ValueError(f"bucket range [{start}, {end}) is not a part of [0, {BUCKETS})")
        if start < cursor:
            raise ValueError(f"bucket range [{start}, {end}) overlaps another")
        cursor = end


def _free_ranges(layout: Layout) -> list[BucketRange]:
    free, cursor = [], 0
    for start, end in sorted(bucket_range for ranges in layout for bucket_range in ranges):
        if start > cursor:
            free.append((cursor, start))
        cursor = end
    if cursor < BUCKETS:
        free.append((cursor, BUCKETS))
    return free


def _take(free: list[BucketRange], count: int) -> tuple[list[BucketRange], list[BucketRange]]:
    """The lowest ``count`` free buckets, and what is left free."""
    taken: list[BucketRange] = []
    while count:
        start, end = free[0]
        step = min(count, end - start)
        taken.append((start, start + step))
        free = [(start + step, end), *free[1:]] if start + step < end else free[1:]
        count -= step
    return taken, free


def _merged(ranges: Iterable[BucketRange]) -> tuple[BucketRange, ...]:
    merged: list[BucketRange] = []
    for start, end in sorted(ranges):
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return tuple(merged)


@dataclass(frozen=True)
class Assignment:
    """The member is in ``cell`` of ``experiment``, which ``model_version`` serves."""

    experiment: str
    cell: str
    model_version: str


@dataclass(frozen=True, kw_only=True)
class MemberAttributes:
    """What eligibility rules look at, as the caller knows it (None: unknown)."""

    country: str | None = None
    device_type: str | None = None


@dataclass(frozen=True, kw_only=True)
class Eligibility:
    """Allow-lists: upper-case ISO country codes and lower-case device types; None allows all.

    An experiment with a rule admits only members whose attribute is known and allowed:
    a member the caller knows nothing about is not enrolled.
    """

    countries: frozenset[str] | None = None
    device_types: frozenset[str] | None = None

    def admits(self, attributes: MemberAttributes | None) -> bool:
        if self.countries is None and self.device_types is None:
            return True
        if attributes is None:
            return False
        return _allowed(self.countries, attributes.country, str.upper) and _allowed(
            self.device_types, attributes.device_type, str.lower
        )


def _allowed(
    allow_list: frozenset[str] | None, value: str | None, normalise: Callable[[str], str]
) -> bool:
    return allow_list is None or (value is not None and normalise(value) in allow_list)


@dataclass(frozen=True, kw_only=True)
class AllocatedCell:
    name: str
    model_version: str
    ranges: tuple[BucketRange, ...]


@dataclass(frozen=True, kw_only=True)
class AllocatedExperiment:
    """What assignment needs of a running experiment; ``start``/``end`` are epoch seconds."""

    experiment_id: str
    salt: str
    cells: tuple[AllocatedCell, ...]
    eligibility: Eligibility
    start: float
    end: float


class _Compiled:
    """An experiment ready for per-request lookups: every bucket's assignment precomputed."""

    def __init__(self, experiment: AllocatedExperiment) -> None:
        self.experiment = experiment
        self._key_prefix = f"{experiment.salt}:{experiment.experiment_id}:".encode()
        check_layout(tuple(cell.ranges for cell in experiment.cells))
        table: list[Assignment | None] = [None] * BUCKETS
        for cell in experiment.cells:
            assignment = Assignment(experiment.experiment_id, cell.name, cell.model_version)
            for start, end in cell.ranges:
                table[start:end] = [assignment] * (end - start)
        self._by_bucket = tuple(table)

    def assign(
        self, member_id: str, attributes: MemberAttributes | None, now: float
    ) -> Assignment | None:
        experiment = self.experiment
        if not experiment.start <= now < experiment.end:
            return None
        if not experiment.eligibility.admits(attributes):
            return None
        digest = hashlib.sha256(self._key_prefix + member_id.encode()).digest()
        return self._by_bucket[int.from_bytes(digest[:8], "big") % BUCKETS]


class ExperimentAssigner:
    """Assigns members to the running experiments of one surface (serving's CellAssigner).

    ``loader`` returns those experiments; the assigner keeps them in memory and reloads them
    every ``refresh_seconds`` on a thread of its own once :meth:`start` is called, so a
    request never waits for the loader. A reload that raises keeps the last good set, is
    logged and is counted in :attr:`reload_failures`. ``clock`` gives the current time in
    epoch seconds: an experiment assigns only inside its window.
    """

    def __init__(
        self,
        *,
        loader: Callable[[], Iterable[AllocatedExperiment]],
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if refresh_seconds <= 0:
            raise ValueError(f"refresh_seconds must be above 0, got {refresh_seconds!r}")
        self._loader = loader
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._compiled: tuple[_Compiled, ...] = ()
        self._reload_lock = threading.Lock()
        self._reload_failures = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def experiments(self) -> tuple[AllocatedExperiment, ...]:
        """The experiments of the last good load, in the order they are asked."""
        return tuple(compiled.experiment for compiled in self._compiled)

    @property
    def reload_failures(self) -> int:
        """How many loads have failed since the assigner was made."""
        return self._reload_failures

    def assign(
        self, member_id: str, attributes: MemberAttributes | None = None
    ) -> Assignment | None:
        """The member's cell, or None when no experiment in its window enrols them."""
        now = self._clock()
        for compiled in self._compiled:
            assignment = compiled.assign(member_id, attributes, now)
            if assignment is not None:
                return assignment
        return None

    def refresh(self) -> bool:
        """Load the experiments now; on failure keep the last good set and return False."""
        with self._reload_lock:
            try:
                loaded = sorted(self._loader(), key=lambda e: (e.start, e.experiment_id))
                compiled = tuple(_Compiled(experiment) for experiment in loaded)
            # The loader is I/O and its data is someone else's: whatever goes wrong, requests
            # keep the last good set rather than losing every experiment.
            except Exception:
                self._reload_failures += 1
                LOGGER.exception(
                    "cannot reload experiments; keeping the %d loaded", len(self._compiled)
                )
                return False
            # One reference swap: a request sees the old set or the new one, never a mix.
            self._compiled = compiled
            return True

    def start(self) -> None:
        """Load once now, then reload every ``refresh_seconds`` until :meth:`stop`."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="ablaze-assigner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reloading; waits up to ``timeout`` seconds for a load in progress."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self._refresh_seconds):
            self.refresh()
