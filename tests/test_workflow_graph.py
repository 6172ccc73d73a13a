"""Workflow dependencies compile into series and parallel blocks, exactly or not at all."""

from __future__ import annotations

import json

import pytest
from aws_cdk import App, Duration, Stack
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk.assertions import Template
from constructs import Construct

from cdk_constructs.alerting import AlertTarget
from cdk_constructs.orchestrator import Orchestrator, TaskStep, Workflow
from cdk_constructs.workflow_graph import Branches, Series, plan


def test_a_chain_stays_a_chain():
    assert plan({"a": [], "b": ["a"], "c": ["b"]}) == Series(("a", "b", "c"))


def test_a_diamond_forks_and_joins():
    assert plan({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}) == Series(
        ("a", Branches(("b", "c")), "d")
    )


def test_a_branch_runs_its_own_chain_beside_the_others():
    steps = {"gate": [], "etl": ["gate"], "load": ["etl"], "train": ["etl"], "register": ["train"]}
    assert plan(steps) == Series(("gate", "etl", Branches(("load", Series(("train", "register"))))))


def test_independent_steps_all_start_at_once():
    assert plan({"a": [], "b": [], "c": []}) == Branches(("a", "b", "c"))


def test_a_redundant_dependency_changes_nothing():
    assert plan({"a": [], "b": ["a"], "c": ["a", "b"]}) == Series(("a", "b", "c"))


def test_nested_diamonds():
    steps = {
        "a": [],
        "b1": ["a"],
        "b2": ["b1"],
        "c": ["a"],
        "d": ["b2", "c"],
        "e": ["d"],
        "f": ["d"],
        "g": ["e", "f"],
    }
    assert plan(steps) == Series(
        ("a", Branches((Series(("b1", "b2")), "c")), "d", Branches(("e", "f")), "g")
    )


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ({"a": ["b"], "b": ["a"]}, "cycle"),
        ({"a": ["x"]}, "unknown"),
        ({}, "at least one step"),
        # c waits for a and b, d only for a: no nesting of blocks runs d exactly on time.
        ({"a": [], "b": [], "c": ["a", "b"], "d": ["a"]}, "do not split into series and parallel"),
    ],
)
def test_graphs_that_cannot_run_exactly_are_refused(steps, message):
    with pytest.raises(ValueError, match=message):
        plan(steps)


def _pass_step(name: str, *depends_on: str) -> TaskStep:
    def build(scope, construct_id, state_name):
        # A custom state is named by its construct id, so it gets a holder of its own.
        return sfn.CustomState(
            Construct(scope, construct_id),
            state_name,
            state_json={
                "Type": "Task",
                "Resource": "arn:aws:states:::events:putEvents",
                "Arguments": {"Entries": [{"Detail": {"step": state_name}}]},
                "TimeoutSeconds": 60,
            },
        )

    return TaskStep(
        name=name, build_state=build, retry_errors=("States.Timeout",), depends_on=depends_on
    )


def test_a_diamond_workflow_synthesizes_to_a_parallel_block_and_a_join():
    stack = Stack(App(), "Bare", env={"account": "123456789012", "region": "eu-west-1"})
    Orchestrator(
        stack,
        "Orchestrator",
        name_prefix="bare",
        workflows=[
            Workflow(
                name="diamond",
                description="a, then b and c at once, then d",
                steps=(
                    _pass_step("a"),
                    _pass_step("b", "a"),
                    _pass_step("c", "a"),
                    _pass_step("d", "b", "c"),
                ),
                timeout=Duration.hours(1),
            )
        ],
        signals={},
        alerts=AlertTarget(stack, name_prefix="bare", area="workflows"),
        log_retention_days=7,
    )
    (machine,) = (
        Template.from_stack(stack).find_resources("AWS::StepFunctions::StateMachine").values()
    )
    body = machine["Properties"]["DefinitionString"]
    text = (
        body
        if isinstance(body, str)
        else "".join(p if isinstance(p, str) else "REF" for p in body["Fn::Join"][1])
    )
    states = json.loads(text)["States"]
    fork = states[states["a"]["Next"]]
    assert fork["Type"] == "Parallel"
    assert sorted(b["StartAt"] for b in fork["Branches"]) == ["b", "c"]
    assert fork["Next"] == "d"
    assert states["d"]["Next"] == "Done"
    assert json.loads(text)["TimeoutSeconds"] == 3600
