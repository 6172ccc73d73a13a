"""ExperimentAssigner: the cache of running experiments that serving asks per request."""

from __future__ import annotations

import dataclasses
import itertools
import threading

import pytest
from ablaze_helpers import allocated

from ablaze.allocation import BUCKETS, Assignment, ExperimentAssigner
from serving.recommender_service import experiments as serving_experiments

EVERYONE = ((0, BUCKETS),)
WAIT_SECONDS = 5.0


class Loader:
    """Returns the experiments it is given; raises when given an exception."""

    def __init__(self, *results) -> None:
        self.results = list(results)
        self.calls = 0
        self.called = threading.Event()

    def __call__(self):
        self.calls += 1
        result = self.results[min(self.calls, len(self.results)) - 1]
        if self.calls >= len(self.results):
            self.called.set()
        if isinstance(result, Exception):
            raise result
        return result


def test_the_assignment_has_the_fields_of_servings_assignment() -> None:
    # Serving adapts this object to its own Assignment; the two must not drift apart.
    ours = [(field.name, field.type) for field in dataclasses.fields(Assignment)]
    theirs = [
        (field.name, field.type) for field in dataclasses.fields(serving_experiments.Assignment)
    ]
    assert ours == theirs


def test_nothing_is_assigned_before_the_first_load() -> None:
    assigner = ExperimentAssigner(loader=Loader([allocated(cells={"a": EVERYONE})]))
    assert assigner.assign("m0") is None
    assert assigner.experiments == ()


def test_a_refresh_replaces_the_experiments() -> None:
    first, second = (
        allocated(experiment_id="one", cells={"a": EVERYONE}),
        allocated(experiment_id="two", cells={"b": EVERYONE}),
    )
    assigner = ExperimentAssigner(loader=Loader([first], [second]))
    assert assigner.refresh()
    assert assigner.assign("m0") == Assignment("one", "a", "a")
    assert assigner.refresh()
    assert assigner.assign("m0") == Assignment("two", "b", "b")
    assert assigner.experiments == (second,)


def test_a_failing_load_keeps_the_last_good_set_and_is_counted(caplog) -> None:
    good = allocated(cells={"a": EVERYONE})
    assigner = ExperimentAssigner(loader=Loader([good], RuntimeError("table unavailable")))
    assert assigner.refresh()
    assert not assigner.refresh()
    assert assigner.reload_failures == 1
    assert assigner.assign("m0") == Assignment("exp", "a", "a")
    assert "cannot reload experiments; keeping the 1 loaded" in caplog.text
    assert "table unavailable" in caplog.text


def test_an_invalid_experiment_fails_the_load_rather_than_half_applying_it() -> None:
    good = allocated(cells={"a": EVERYONE})
    broken = allocated(experiment_id="broken", cells={"a": ((0, 10),), "b": ((5, 20),)})
    assigner = ExperimentAssigner(loader=Loader([good], [good, broken]))
    assigner.refresh()
    assert not assigner.refresh()
    assert assigner.experiments == (good,)


def test_a_member_is_in_at_most_one_experiment_the_earliest_started_first() -> None:
    early = allocated(experiment_id="early", cells={"a": ((0, 5000),)}, start=10.0)
    late = allocated(experiment_id="late", cells={"b": EVERYONE}, start=20.0)
    assigner = ExperimentAssigner(loader=Loader([late, early]), clock=lambda: 30.0)
    assigner.refresh()
    assert [e.experiment_id for e in assigner.experiments] == ["early", "late"]
    experiments = {assigner.assign(f"m{i}").experiment for i in range(200)}
    assert experiments == {"early", "late"}
    # Members the early experiment enrols are in its cell only.
    early_only = ExperimentAssigner(loader=Loader([early]), clock=lambda: 30.0)
    early_only.refresh()
    for member in (f"m{i}" for i in range(200)):
        if early_only.assign(member) is not None:
            assert assigner.assign(member).experiment == "early"


def test_start_loads_at_once_and_then_reloads_on_its_own_thread() -> None:
    loader = Loader([allocated(cells={"a": EVERYONE})], [allocated(cells={"b": EVERYONE})])
    assigner = ExperimentAssigner(loader=loader, refresh_seconds=0.01)
    assigner.start()
    try:
        assert assigner.assign("m0") is not None
        assert loader.called.wait(WAIT_SECONDS)
    finally:
        assigner.stop()
    assert loader.calls >= 2


def test_stop_ends_the_reloads() -> None:
    loader = Loader([])
    assigner = ExperimentAssigner(loader=loader, refresh_seconds=3600)
    assigner.start()
    assigner.stop()
    assert loader.calls == 1
    assert not any(thread.name == "ablaze-assigner" for thread in threading.enumerate())


def test_assignments_stay_whole_while_another_thread_reloads() -> None:
    sets = [[allocated(experiment_id=f"exp-{i}", cells={f"cell-{i}": EVERYONE})] for i in range(2)]
    flips = itertools.count()
    assigner = ExperimentAssigner(loader=lambda: sets[next(flips) % 2])
    assigner.refresh()
    stop = threading.Event()

    def reload() -> None:
        while not stop.is_set():
            assigner.refresh()

    reloader = threading.Thread(target=reload)
    reloader.start()
    try:
        seen = {assigner.assign(f"m{i}") for i in range(5_000)}
    finally:
        stop.set()
        reloader.join(WAIT_SECONDS)
    assert seen <= {Assignment(f"exp-{i}", f"cell-{i}", f"cell-{i}") for i in range(2)}
    assert assigner.reload_failures == 0


def test_the_refresh_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="refresh_seconds must be above 0, got 0"):
        ExperimentAssigner(loader=list, refresh_seconds=0)
