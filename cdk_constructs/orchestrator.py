"""Maestro Orchestrator container: typed workflows as Step Functions, with their triggers.

A workflow (cdk_constructs/workflow.py) is steps with explicit dependencies and the triggers
that start it. The orchestrator compiles the dependencies into series and parallel blocks
(cdk_constructs/workflow_graph.py), lets each step build its state and each trigger wire
itself, and reports every run that does not succeed.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from cdk_constructs.alerting import AlertTarget
from cdk_constructs.base import (
    PlatformContainer,
    acknowledge_wildcard_grants,
    log_retention,
    skip_checkov,
)
from cdk_constructs.function import PlatformFunction
from cdk_constructs.signal_bus import SignalBus
from cdk_constructs.workflow import (
    RUN_DATE,
    DataTrigger,
    EmrStep,
    QualityGateStep,
    SignalTrigger,
    State,
    StepContext,
    TaskStep,
    TimeTrigger,
    TriggerContext,
    UpstreamTrigger,
    Workflow,
    repeated_names,
)
from cdk_constructs.workflow_graph import Plan, Series, plan

__all__ = [
    "RUN_DATE",
    "DataTrigger",
    "EmrStep",
    "Orchestrator",
    "QualityGateStep",
    "SignalTrigger",
    "TaskStep",
    "TimeTrigger",
    "UpstreamTrigger",
    "Workflow",
]


class Orchestrator(PlatformContainer):
    """State machines for the given workflows, their triggers and the signal bus.

    Secure defaults:
    - steps without a dependency between them run at once (Parallel states), and a step runs
      exactly when its dependencies have succeeded;
    - every task retries transient failures with backoff and has a time-out; every workflow
      has a time-out;
    - one rule reports every failed, timed-out or aborted run to the platform's alert topic;
    - every trigger retries delivery and keeps what it cannot deliver in an encrypted
      dead-letter queue whose depth alarms;
    - state machines log every execution to a log group with retention, and trace;
    - each function and role gets exactly the calls its wiring needs.
    """

    container = "maestro"
    stereotype = "orchestrator"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name_prefix: str,
        workflows: list[Workflow],
        signals: dict[str, list[str]],
        alerts: AlertTarget,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        # Workflows are addressed by name (upstream triggers, state machine names).
        repeated = repeated_names(workflow.name for workflow in workflows)
        if repeated:
            raise ValueError(f"workflow names must be unique; repeated: {repeated}")
        self._name_prefix = name_prefix
        self._log_retention_days = log_retention_days
        self.signal_bus = SignalBus(
            self,
            "Signals",
            bus_name=f"{name_prefix}-signals",
            signals=signals,
            log_retention_days=log_retention_days,
        )
        self.quality_gate = PlatformFunction(
            self,
            "QualityGate",
            handler_name="quality_gate",
            description="Data-quality gate of the platform's workflows",
            environment={},
            log_retention_days=log_retention_days,
        ).function
        skip_checkov(
            self.quality_gate,
            "CKV_AWS_116",
            "Only the state machines' task states invoke it, synchronously, and retry or fail "
            "the run on its error; a dead-letter queue only catches asynchronous invocations.",
        )
        self.dead_letters = alerts.dead_letter_queue(
            self, "TriggerDeadLetters", purpose="the workflow triggers"
        )

        self.state_machines: dict[str, sfn.StateMachine] = {}
        for workflow in workflows:
            self.state_machines[workflow.name] = self._state_machine(workflow)
        for workflow in workflows:
            context = TriggerContext(
                scope=self,
                workflow=workflow.name,
                machine=self.state_machines[workflow.name],
                state_machines=self.state_machines,
                signal_bus=self.signal_bus,
                dead_letters=self.dead_letters,
                alerts=alerts,
                log_retention_days=log_retention_days,
            )
            for index, trigger in enumerate(workflow.triggers):
                trigger.wire(context, f"{workflow.name}-trigger{index}")
        self.run_failures = alerts.report_unsuccessful_runs(
            self,
            "RunFailures",
            state_machines=list(self.state_machines.values()),
            what="workflow",
            dead_letter_queue=self.dead_letters,
        )

    def _state_machine(self, workflow: Workflow) -> sfn.StateMachine:
        try:
            execution_plan = plan({step.name: step.depends_on for step in workflow.steps})
        except ValueError as error:
            raise ValueError(f"workflow {workflow.name!r}: {error}") from None
        context = StepContext(scope=self, workflow=workflow.name, quality_gate=self.quality_gate)
        states = {step.name: step.build(context) for step in workflow.steps}
        done = sfn.Succeed.jsonata(self, f"{workflow.name}-done", state_name="Done")
        log_group = logs.LogGroup(
            self,
            f"{workflow.name}-logs",
            log_group_name=f"/aws/vendedlogs/states/{self._name_prefix}-{workflow.name}",
            retention=log_retention(self._log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        skip_checkov(
            log_group,
            "CKV_AWS_158",
            "Execution data is a run's parameters (dates, S3 prefixes, job ids), no records of "
            "the lake; CloudWatch Logs encrypts it at rest with its service key.",
        )
        machine = sfn.StateMachine(
            self,
            f"{workflow.name}-workflow",
            state_machine_name=f"{self._name_prefix}-{workflow.name}",
            comment=workflow.description,
            # JSONata throughout: it can default a missing run date and place it inside an
            # argument list, which JSONPath cannot.
            query_language=sfn.QueryLanguage.JSONATA,
            definition_body=sfn.DefinitionBody.from_chainable(
                sfn.Chain.start(self._chain(workflow.name, execution_plan, states)).next(done)
            ),
            timeout=workflow.timeout,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL),
            tracing_enabled=True,
        )
        for step in workflow.steps:
            step.grant(machine.role)
        acknowledge_wildcard_grants(
            machine.role,
            {
                r"Resource::\*": (
                    "X-Ray tracing and CloudWatch Logs delivery for the state machine accept "
                    "only the `*` resource."
                ),
                r"Resource::<(OrchestratorQualityGate|TrainingRegister).*\.Arn>:\*": (
                    "Invoking any version of a workflow's own step function (quality gate, "
                    "model registration)."
                ),
                r"Resource::arn:.*:sagemaker:.*:training-job/.*-recommender-\*": (
                    "Training jobs are named per run under the recommender's prefix at run time."
                ),
            },
        )
        return machine

    def _chain(self, workflow: str, block: Plan, states: dict[str, State]) -> sfn.IChainable:
        if isinstance(block, str):
            return states[block]
        if isinstance(block, Series):
            chain = sfn.Chain.start(self._chain(workflow, block.parts[0], states))
            for part in block.parts[1:]:
                chain = chain.next(self._chain(workflow, part, states))
            return chain
        parallel = sfn.Parallel.jsonata(
            self,
            f"{workflow}-{'+'.join(_first_step(b) for b in block.branches)}",
            state_name=" + ".join(_first_step(branch) for branch in block.branches),
            # Each branch passes the run's state on with its own additions; merged, the next
            # step sees all of them.
            outputs="{% $merge($states.result) %}",
        )
        for branch in block.branches:
            parallel.branch(self._chain(workflow, branch, states))
        return parallel


def _first_step(block: Plan) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, Series):
        return _first_step(block.parts[0])
    return _first_step(block.branches[0])
