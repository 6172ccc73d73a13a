"""The analysis job's side of the results table (jobs/experiments) against ABlaze's: the job
reads the experiment documents ABlaze writes, and ABlaze analyses the items the job builds.

The job cannot import ABlaze (only the jobs package ships to EMR), so these tests are what
keeps the two sides of the format from drifting apart."""

from __future__ import annotations

from typing import Any

from ablaze_helpers import BEFORE_START, COMPUTED_AT, RESULTS_TABLE, START, spec

from ablaze.experiments import METRICS, Experiment, ExperimentSpec, create_experiment, started
from ablaze.results import (
    OBSERVATIONS_FORMAT,
    CellObservations,
    ObservationWindow,
    analyse,
)
from ablaze.statistics import Sample
from ablaze.store import COMPUTED_AT_FORMAT, ResultStore
from jobs.experiments import documents
from jobs.experiments import observations as job


def running(**overrides: Any) -> Experiment:
    draft = create_experiment(ExperimentSpec.model_validate(spec(**overrides)), now=BEFORE_START)
    return started(draft, now=BEFORE_START)


def test_both_sides_have_the_same_catalogue_format_and_times() -> None:
    assert tuple(METRICS) == job.METRICS
    assert job.FORMAT == OBSERVATIONS_FORMAT
    assert job.COMPUTED_AT_FORMAT == COMPUTED_AT_FORMAT


def test_the_job_reads_the_documents_ablaze_writes() -> None:
    experiment = running()
    plan = documents.parse_experiment(experiment.model_dump_json())
    assert plan == documents.ExperimentPlan(
        id="homepage-ranker",
        state="running",
        cells=("control", "treatment"),
        metrics=("play_rate", "completion_rate", "plays_per_member"),
        start=experiment.start,
        end=experiment.end,
        stopped_at=None,
    )


def job_cell(members: int, *, plays: int, plays_mean: float) -> job.CellObservations:
    return job.CellObservations(
        members=members,
        metrics={
            "play_rate": job.MetricSample(n=members, mean=plays / members, variance=0.16),
            "completion_rate": job.MetricSample(n=members, mean=0.25, variance=0.1875),
            "plays_per_member": job.MetricSample(n=members, mean=plays_mean, variance=4.0),
        },
    )


def ablaze_cell(cell: job.CellObservations) -> CellObservations:
    return CellObservations(
        members=cell.members,
        metrics={
            metric: Sample(n=sample.n, mean=sample.mean, variance=sample.variance)
            for metric, sample in cell.metrics.items()
        },
    )


def test_ablaze_analyses_the_items_the_job_builds(results: ResultStore, dynamodb: Any) -> None:
    experiment = running()
    plan = documents.parse_experiment(experiment.model_dump_json())
    window = documents.analysis_window(plan, now=COMPUTED_AT)
    cells = {
        "control": job_cell(10_000, plays=2_000, plays_mean=2.0),
        "treatment": job_cell(10_050, plays=2_400, plays_mean=2.1),
    }
    text = job.observations_json(plan, window, cells=cells, cell_conflicts=2)
    item = job.results_item(plan.id, computed_at=COMPUTED_AT, observations=text)
    dynamodb.put_item(TableName=RESULTS_TABLE, Item=item)

    result = results.latest(experiment)

    assert result == analyse(
        experiment,
        {name: ablaze_cell(cell) for name, cell in cells.items()},
        computed_at=COMPUTED_AT,
        window=ObservationWindow(start=START, end=COMPUTED_AT),
        cell_conflicts=2,
    )
    assert result.metrics[0].comparisons[0].fixed.excludes_zero


def test_ablaze_reads_a_cell_nobody_was_exposed_in(results: ResultStore, dynamodb: Any) -> None:
    experiment = running(guardrail_metrics=[])
    plan = documents.parse_experiment(experiment.model_dump_json())
    window = documents.analysis_window(plan, now=COMPUTED_AT)
    cells = {"control": job_cell(10, plays=5, plays_mean=1.0)}
    text = job.observations_json(plan, window, cells=cells, cell_conflicts=0)
    dynamodb.put_item(
        TableName=RESULTS_TABLE,
        Item=job.results_item(plan.id, computed_at=COMPUTED_AT, observations=text),
    )

    result = results.latest(experiment)

    assert result.srm.counts == {"control": 10, "treatment": 0}
    assert [metric.metric for metric in result.metrics] == ["play_rate"]
    assert result.metrics[0].comparisons[0].effect is None
    assert not result.trustworthy
