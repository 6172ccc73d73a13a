"""The DynamoDB store (ablaze/store.py) on moto: conditional writes and surface claims."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ablaze_helpers import (
    BEFORE_START,
    EXPERIMENTS_TABLE,
    RESULTS_TABLE,
    START,
    observations,
    spec,
    write_observations,
)

from ablaze.experiments import (
    AllocationChange,
    Experiment,
    ExperimentSpec,
    create_experiment,
    reallocated,
    started,
    stopped,
)
from ablaze.results import CellObservations, ObservationWindow, analyse
from ablaze.store import (
    ConcurrentChangeError,
    ExperimentExistsError,
    ExperimentNotFoundError,
    ExperimentStore,
    ResultStore,
    SurfaceBusyError,
    UnusableResultError,
)


def draft(**overrides: Any) -> Experiment:
    return create_experiment(ExperimentSpec.model_validate(spec(**overrides)), now=BEFORE_START)


def stored(store: ExperimentStore, **overrides: Any) -> Experiment:
    experiment = draft(**overrides)
    store.create(experiment)
    return experiment


def start(store: ExperimentStore, experiment: Experiment) -> Experiment:
    return store.save(started(experiment, now=BEFORE_START), previous=experiment)


def test_an_experiment_is_read_back_as_written(experiments: ExperimentStore) -> None:
    experiment = stored(experiments)
    assert experiments.get("homepage-ranker") == experiment


def test_an_id_is_created_once(experiments: ExperimentStore) -> None:
    stored(experiments)
    with pytest.raises(ExperimentExistsError, match="experiment 'homepage-ranker' exists already"):
        experiments.create(draft(description="another"))


@pytest.mark.parametrize("experiment_id", ["nope", "surface#homepage-row", "Not A Slug"])
def test_unknown_ids_are_not_found(experiments: ExperimentStore, experiment_id: str) -> None:
    start(experiments, stored(experiments))
    with pytest.raises(ExperimentNotFoundError, match=f"no experiment '{experiment_id}'"):
        experiments.get(experiment_id)


def test_the_item_keeps_keys_beside_the_document(experiments: ExperimentStore, dynamodb) -> None:
    experiment = stored(experiments)
    item = dynamodb.get_item(
        TableName=EXPERIMENTS_TABLE, Key={"experiment_id": {"S": experiment.id}}
    )["Item"]
    assert {
        name: next(iter(value.values())) for name, value in item.items() if name != "document"
    } == {
        "experiment_id": "homepage-ranker",
        "surface": "homepage-row",
        "state": "draft",
        "version": "1",
    }
    assert Experiment.model_validate_json(item["document"]["S"]) == experiment


def test_find_lists_experiments_by_surface_and_state(experiments: ExperimentStore) -> None:
    first = stored(experiments, id="b-first")
    stored(experiments, id="a-second")
    stored(experiments, id="elsewhere", surface="search-row")
    running = start(experiments, first)
    assert [e.id for e in experiments.find()] == ["a-second", "b-first", "elsewhere"]
    assert [e.id for e in experiments.find(surface="homepage-row")] == ["a-second", "b-first"]
    assert [e.id for e in experiments.find(state="draft")] == ["a-second", "elsewhere"]
    assert experiments.find(surface="homepage-row", state="running") == [running]
    assert experiments.running_allocations("homepage-row") == [running.allocation()]
    assert experiments.running_allocations("search-row") == []


def test_a_save_bumps_the_version(experiments: ExperimentStore) -> None:
    experiment = stored(experiments)
    changed = reallocated(experiment, AllocationChange(percent={"treatment": 20}), now=START)
    written = experiments.save(changed, previous=experiment)
    assert written.version == 2
    assert experiments.get(experiment.id) == written


def test_a_save_over_a_stale_read_is_refused(experiments: ExperimentStore) -> None:
    experiment = stored(experiments)
    change = AllocationChange(percent={"treatment": 20})
    experiments.save(reallocated(experiment, change, now=START), previous=experiment)
    with pytest.raises(ConcurrentChangeError, match="'homepage-ranker' changed after it was read"):
        experiments.save(reallocated(experiment, change, now=START), previous=experiment)


def test_an_experiment_cannot_start_twice(experiments: ExperimentStore) -> None:
    experiment = stored(experiments)
    start(experiments, experiment)
    with pytest.raises(ConcurrentChangeError):
        start(experiments, experiment)
    assert experiments.get(experiment.id).version == 2


def test_one_experiment_runs_on_a_surface_at_a_time(experiments: ExperimentStore) -> None:
    first, second = stored(experiments, id="first"), stored(experiments, id="second")
    running = start(experiments, first)
    with pytest.raises(SurfaceBusyError) as caught:
        start(experiments, second)
    assert str(caught.value) == (
        "surface 'homepage-row' runs experiment 'first'; stop it first "
        "(one experiment runs on a surface at a time)"
    )
    assert experiments.get("second").state == "draft"
    experiments.save(stopped(running, now=START), previous=running)
    assert start(experiments, second).state == "running"


def test_other_surfaces_run_their_own(experiments: ExperimentStore) -> None:
    start(experiments, stored(experiments, id="home"))
    assert (
        start(experiments, stored(experiments, id="search", surface="search-row")).state
        == "running"
    )


def test_a_stale_stop_leaves_the_claim(experiments: ExperimentStore) -> None:
    running = start(experiments, stored(experiments))
    grown = experiments.save(
        reallocated(running, AllocationChange(percent={"treatment": 20}), now=START),
        previous=running,
    )
    with pytest.raises(ConcurrentChangeError):
        experiments.save(stopped(running, now=START), previous=running)
    experiments.save(stopped(grown, now=START), previous=grown)
    assert start(experiments, stored(experiments, id="next")).state == "running"


def cells(play_successes: int) -> dict[str, CellObservations]:
    return {"control": observations(1_000, 200), "treatment": observations(1_000, play_successes)}


def put_item(dynamodb: Any, **attributes: str) -> None:
    item = {"experiment_id": "homepage-ranker", "computed_at": "2030-01-04T00:00:00.000000Z"}
    dynamodb.put_item(
        TableName=RESULTS_TABLE,
        Item={name: {"S": value} for name, value in {**item, **attributes}.items()},
    )


def test_the_latest_observations_are_analysed_on_read(results: ResultStore) -> None:
    experiment = draft()
    assert results.latest(experiment) is None
    noon = datetime(2030, 1, 5, 12, tzinfo=UTC)
    # A whole second and a fraction of it: text order must still be time order.
    later = noon + timedelta(microseconds=500_000)
    write_observations(results, cells(300), computed_at=later, cell_conflicts=2)
    write_observations(results, cells(200), computed_at=noon)
    write_observations(results, cells(200), experiment_id="other", computed_at=later)
    assert results.latest(experiment) == analyse(
        experiment,
        cells(300),
        computed_at=later,
        window=ObservationWindow(start=START, end=later),
        cell_conflicts=2,
    )


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"observations": "{not json"}, "not JSON: Expecting property name"),
        ({"observations": '{"format": 2, "cells": {}}'}, "format 2 is not the one this version"),
        ({"result": "{}"}, "the item has no observations attribute of type S"),
        (
            {"observations": '{"format": 1, "cells": {}, "cell_conflicts": -1, "window": []}'},
            "cell_conflicts: Input should be greater than or equal to 0",
        ),
        ({"observations": '{"format": 1, "cells": {}, "cell_conflicts": 0, '
          '"window": ["2030-01-01T00:00:00Z", "2030-01-04T00:00:00Z"]}'},
         "per_cell_observations must have the cells of 'homepage-ranker'"),
    ],
)  # fmt: skip
def test_unusable_observations_say_why_and_are_logged(
    results: ResultStore,
    dynamodb: Any,
    caplog: pytest.LogCaptureFixture,
    attributes: dict[str, str],
    reason: str,
) -> None:
    put_item(dynamodb, **attributes)
    with pytest.raises(UnusableResultError) as caught:
        results.latest(draft())
    assert str(caught.value).startswith(
        "no usable result for 'homepage-ranker' yet: the observations computed at "
        "2030-01-04T00:00:00.000000Z cannot be analysed: "
    )
    assert caught.value.reason.startswith(reason)
    assert [record.getMessage() for record in caplog.records] == [str(caught.value)]
    assert caplog.records[0].levelname == "WARNING"


def test_an_unreadable_computed_at_makes_the_result_unusable(
    results: ResultStore, dynamodb: Any
) -> None:
    write_observations(results, cells(200))
    put_item(dynamodb, computed_at="2030-01-05", observations="{}")
    with pytest.raises(UnusableResultError, match="computed_at '2030-01-05' is not "):
        results.latest(draft())
