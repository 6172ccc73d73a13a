"""Workflow dependencies compile into series and parallel blocks, exactly or not at all; a
workflow or trigger that cannot be wired is refused with a one-line reason."""

from __future__ import annotations

import json
import re

import pytest
from aws_cdk import App, Duration, Stack
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk.assertions import Template
from constructs import Construct

from cdk_constructs.alerting import AlertTarget
from cdk_constructs.orchestrator import (
    Orchestrator,
    SignalTrigger,
    TaskStep,
    UpstreamTrigger,
    Workflow,
)
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


def bare_orchestrator(*workflows: Workflow, signals: dict[str, list[str]] | None = None) -> Stack:
    """The orchestrator alone in a bare stack, with the given workflows and signals."""
    stack = Stack(App(), "Bare", env={"account": "123456789012", "region": "eu-west-1"})
    Orchestrator(
        stack,
        "Orchestrator",
        name_prefix="bare",
        workflows=list(workflows),
        signals=signals or {},
        alerts=AlertTarget(stack, name_prefix="bare", area="workflows"),
        log_retention_days=7,
    )
    return stack


def _workflow(
    name: str, *steps: TaskStep, triggers: tuple[UpstreamTrigger | SignalTrigger, ...] = ()
) -> Workflow:
    return Workflow(
        name=name,
        description=f"{name} for the test",
        steps=steps or (_pass_step("a"),),
        timeout=Duration.hours(1),
        triggers=triggers,
    )


def test_a_diamond_workflow_synthesizes_to_a_parallel_block_and_a_join():
    stack = bare_orchestrator(
        _workflow(
            "diamond",
            _pass_step("a"),
            _pass_step("b", "a"),
            _pass_step("c", "a"),
            _pass_step("d", "b", "c"),
        )
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


def _refused(message: str):
    """Expects a ValueError whose whole message, one line, is `message`."""
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


def test_an_upstream_trigger_on_an_unknown_workflow_is_refused():
    with _refused("workflow 'validate' waits on unknown workflow 'trian'"):
        bare_orchestrator(
            _workflow("train"), _workflow("validate", triggers=(UpstreamTrigger("trian"),))
        )


def test_a_workflow_cannot_start_on_its_own_success():
    with _refused("workflow 'train' cannot start on its own success"):
        bare_orchestrator(_workflow("train", triggers=(UpstreamTrigger("train"),)))


def test_a_trigger_on_an_undeclared_signal_is_refused():
    with _refused(
        "signal 'retrain' is not declared; declared: analysis-requested, retrain-requested"
    ):
        bare_orchestrator(
            _workflow("train", triggers=(SignalTrigger("retrain"),)),
            signals={"retrain-requested": ["model"], "analysis-requested": []},
        )


def test_a_signal_trigger_missing_a_required_parameter_is_refused():
    with _refused("a trigger on signal 'retrain-requested' lacks required params ['model']"):
        bare_orchestrator(
            _workflow(
                "train",
                triggers=(SignalTrigger("retrain-requested", params={"reason": "manual"}),),
            ),
            signals={"retrain-requested": ["model", "reason"]},
        )


def test_a_signal_trigger_with_its_parameters_matches_exactly_them():
    stack = bare_orchestrator(
        _workflow("train", triggers=(SignalTrigger("retrain-requested", {"model": "rec"}),)),
        signals={"retrain-requested": ["model"]},
    )
    (rule,) = (
        Template.from_stack(stack)
        .find_resources(
            "AWS::Events::Rule",
            {"Properties": {"EventPattern": {"source": ["ml-platform.signals"]}}},
        )
        .values()
    )
    assert rule["Properties"]["EventPattern"]["detail"] == {"params": {"model": ["rec"]}}
    assert rule["Properties"]["EventPattern"]["detail-type"] == ["retrain-requested"]


def test_repeated_step_names_are_refused():
    with _refused("workflow 'train' repeats step names ['a']"):
        _workflow("train", _pass_step("a"), _pass_step("b", "a"), _pass_step("a", "b"))


def test_repeated_workflow_names_are_refused():
    with _refused("workflow names must be unique; repeated: ['train']"):
        bare_orchestrator(_workflow("train"), _workflow("validate"), _workflow("train"))


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            (_pass_step("a", "b"), _pass_step("b", "a")),
            "workflow 'train': step dependencies form a cycle among ['a', 'b']",
        ),
        (
            (_pass_step("a"), _pass_step("b", "a", "feature")),
            "workflow 'train': step 'b' depends on unknown ['feature']",
        ),
    ],
)
def test_a_workflow_whose_steps_cannot_be_ordered_is_refused_by_name(steps, message):
    with _refused(message):
        bare_orchestrator(_workflow("train", *steps))
