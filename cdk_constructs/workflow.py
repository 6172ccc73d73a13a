"""Typed workflows: steps that build their own Step Functions state, triggers that wire
themselves to a state machine.

Every step kind implements one small protocol (`build` a state with its retries, `grant` the
state machine what the state calls), and so does every trigger kind (`wire`), so the
orchestrator composes them without knowing which kinds exist. Maestro's trigger kinds become:

- time: an EventBridge Scheduler schedule (cron, with a time zone);
- signal: a rule on the platform's signal bus matching a named signal and its parameters;
- data availability: S3 "Object Created" events under a prefix, handled by a function that
  starts one run per completed partition (idempotent on redelivery);
- upstream: a rule on another workflow's successful completion.

Every trigger that EventBridge or Scheduler delivers has retries and a dead-letter queue, so
a start that cannot be delivered is kept and alarmed on, never lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aws_cdk import Duration, Stack, TimeZone
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from cdk_constructs.alerting import AlertTarget
from cdk_constructs.base import sync_integration_statement
from cdk_constructs.function import PlatformFunction
from cdk_constructs.signal_bus import SignalBus

# Placeholder in step arguments for the run's date, resolved by the quality gate.
RUN_DATE = "{run_date}"
# How long EventBridge keeps retrying a start before it goes to the dead-letter queue.
_DELIVERY_RETRIES = 8
_DELIVERY_MAX_AGE = Duration.hours(6)

State = sfn.TaskStateBase | sfn.CustomState


@dataclass(frozen=True)
class StepContext:
    """What the orchestrator lends a step while it builds its state."""

    scope: Construct
    workflow: str
    quality_gate: lambda_.IFunction


class Step(Protocol):
    name: str
    depends_on: tuple[str, ...]

    def build(self, context: StepContext) -> State:
        """The step's state, with its retries of transient errors."""
        ...

    def grant(self, role: iam.IRole) -> None:
        """Give the state machine's role what the state calls beyond what `build` granted."""
        ...


@dataclass(frozen=True)
class TriggerContext:
    """What the orchestrator lends a trigger while it wires itself to a workflow."""

    scope: Construct
    workflow: str
    machine: sfn.StateMachine
    state_machines: Mapping[str, sfn.StateMachine]
    signal_bus: SignalBus
    dead_letters: sqs.IQueue
    alerts: AlertTarget
    log_retention_days: int


class Trigger(Protocol):
    def wire(self, context: TriggerContext, trigger_id: str) -> None:
        """Create what starts `context.machine` on this trigger."""
        ...


def _retry(state: State, errors: tuple[str, ...]) -> State:
    # Transient service errors only: a failed gate or a failed job is an answer.
    state.add_retry(
        errors=list(errors),
        interval=Duration.seconds(10),
        max_attempts=3,
        backoff_rate=2,
        jitter_strategy=sfn.JitterType.FULL,
    )
    return state


def with_run_date(argument: str) -> str:
    """A step argument with the run-date placeholder resolved from the run's state."""
    if argument == RUN_DATE:
        return "{% $states.input.run_date %}"
    if RUN_DATE in argument:
        raise ValueError(f"{RUN_DATE} must be a whole argument, not part of {argument!r}")
    return argument


_LAMBDA_TRANSIENT = ("Lambda.ServiceException", "Lambda.TooManyRequestsException")


@dataclass(frozen=True)
class QualityGateStep:
    """Checks that a day's data exists (and is clean enough) before anything runs on it."""

    name: str
    bucket: s3.IBucket
    prefix_template: str
    min_objects: int
    dead_letter_prefix_template: str | None = None
    max_dead_letter_ratio: float | None = None
    depends_on: tuple[str, ...] = ()

    def build(self, context: StepContext) -> State:
        # The gate only counts objects: listing needs neither GetObject nor the key.
        context.quality_gate.add_to_role_policy(
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[self.bucket.bucket_arn])
        )
        payload = {
            # Triggers without a date leave it out; the gate then checks yesterday.
            "run_date": "{% $exists($states.input.run_date) ? $states.input.run_date : null %}",
            "execution_start_time": "{% $states.context.Execution.StartTime %}",
            "bucket": self.bucket.bucket_name,
            "prefix_template": self.prefix_template,
            "min_objects": self.min_objects,
            "min_bytes": 1 if self.min_objects else 0,
        }
        if self.dead_letter_prefix_template is not None:
            payload["dead_letter_prefix_template"] = self.dead_letter_prefix_template
            payload["max_dead_letter_ratio"] = self.max_dead_letter_ratio
        state = tasks.LambdaInvoke.jsonata(
            context.scope,
            f"{context.workflow}-{self.name}",
            state_name=self.name,
            lambda_function=context.quality_gate,
            payload=sfn.TaskInput.from_object(payload),
            payload_response_only=True,
            retry_on_service_exceptions=False,
            task_timeout=sfn.Timeout.duration(Duration.minutes(5)),
            # Later steps read the resolved date from run_date.
            outputs=(
                "{% $merge([$states.input, {'run_date': $states.result.run_date, "
                f"'{self.name}': $states.result}}]) %}}"
            ),
        )
        return _retry(state, _LAMBDA_TRANSIENT)

    def grant(self, role: iam.IRole) -> None:
        """The LambdaInvoke task grants the invocation itself."""


@dataclass(frozen=True)
class EmrStep:
    """Runs a command (e.g. spark-submit) as an EMR step on one cluster and waits for it.

    On time-out Step Functions cancels the step, so a hung job cannot hold the cluster (which
    runs one step at a time) and block every later run. A custom state rather than the CDK's
    EmrAddStep task, whose grant covers every cluster of the account (the Flink cluster
    included): the state machine may add, watch and cancel steps on this cluster only.
    """

    name: str
    cluster_id: str
    args: tuple[str, ...]
    timeout: Duration
    depends_on: tuple[str, ...] = ()

    def build(self, context: StepContext) -> State:
        stack = Stack.of(context.scope)
        state = sfn.CustomState(
            Construct(context.scope, f"{context.workflow}-{self.name}"),
            self.name,
            state_json={
                "Type": "Task",
                "Resource": f"arn:{stack.partition}:states:::elasticmapreduce:addStep.sync",
                "Arguments": {
                    "ClusterId": self.cluster_id,
                    "Step": {
                        "Name": f"{context.workflow}-{self.name}",
                        "ActionOnFailure": "CONTINUE",
                        "HadoopJarStep": {
                            "Jar": "command-runner.jar",
                            "Args": [with_run_date(arg) for arg in self.args],
                        },
                    },
                },
                "TimeoutSeconds": int(self.timeout.to_seconds()),
                # Keep the run's state (run date, gate report) for the steps after this one.
                "Output": "{% $states.input %}",
            },
        )
        return _retry(state, ("EMR.AmazonElasticMapReduceException",))

    def grant(self, role: iam.IRole) -> None:
        stack = Stack.of(role)
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=[
                    "elasticmapreduce:AddJobFlowSteps",
                    "elasticmapreduce:DescribeStep",
                    "elasticmapreduce:CancelSteps",
                ],
                resources=[
                    stack.format_arn(
                        service="elasticmapreduce",
                        resource="cluster",
                        resource_name=self.cluster_id,
                    )
                ],
            )
        )
        role.add_to_principal_policy(
            sync_integration_statement(role, "StepFunctionsGetEventForEMRAddJobFlowStepsRule")
        )


@dataclass(frozen=True)
class TaskStep:
    """A step whose state another container builds (training, registration): `build_state`
    gets (scope, construct id, state name) and returns a task state with its own time-out;
    `grant_to` gives the state machine's role what the task needs; `retry_errors` are the
    transient errors to retry."""

    name: str
    build_state: Callable[[Construct, str, str], State]
    retry_errors: tuple[str, ...]
    grant_to: Callable[[iam.IRole], None] | None = None
    depends_on: tuple[str, ...] = ()

    def build(self, context: StepContext) -> State:
        state = self.build_state(context.scope, f"{context.workflow}-{self.name}", self.name)
        return _retry(state, self.retry_errors)

    def grant(self, role: iam.IRole) -> None:
        if self.grant_to is not None:
            self.grant_to(role)


@dataclass(frozen=True)
class TimeTrigger:
    cron: str
    timezone: str

    def wire(self, context: TriggerContext, trigger_id: str) -> None:
        # Our own role, so it belongs to (and is tagged as) this container.
        role = iam.Role(
            context.scope,
            f"{trigger_id}-role",
            assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com"),
            description=f"Starts {context.workflow} on its schedule",
        )
        # Scheduler writes undeliverable starts to the queue with this role.
        context.alerts.grant_encrypt(role)
        scheduler.Schedule(
            context.scope,
            trigger_id,
            description=f"Starts {context.workflow} on its schedule",
            schedule=scheduler.ScheduleExpression.expression(
                f"cron({self.cron})", TimeZone.of(self.timezone)
            ),
            target=scheduler_targets.StepFunctionsStartExecution(
                context.machine,
                role=role,
                input=scheduler.ScheduleTargetInput.from_object(
                    {"trigger": {"type": "time", "cron": self.cron}}
                ),
                dead_letter_queue=context.dead_letters,
                retry_attempts=_DELIVERY_RETRIES,
                max_event_age=_DELIVERY_MAX_AGE,
            ),
        )


def _start(context: TriggerContext, trigger: dict) -> targets.SfnStateMachine:
    return targets.SfnStateMachine(
        context.machine,
        input=events.RuleTargetInput.from_object({"trigger": trigger}),
        dead_letter_queue=context.dead_letters,
        retry_attempts=_DELIVERY_RETRIES,
        max_event_age=_DELIVERY_MAX_AGE,
    )


@dataclass(frozen=True)
class SignalTrigger:
    signal: str
    params: dict[str, str] = field(default_factory=dict)

    def wire(self, context: TriggerContext, trigger_id: str) -> None:
        context.signal_bus.on_signal(
            context.scope,
            trigger_id,
            signal=self.signal,
            params=self.params,
            description=f"Starts {context.workflow} on signal {self.signal}",
            target=_start(
                context,
                {
                    "type": "signal",
                    "signal": self.signal,
                    "params": events.EventField.from_path("$.detail.params"),
                },
            ),
        )


@dataclass(frozen=True)
class DataTrigger:
    bucket: s3.IBucket
    prefix: str
    marker_file: str = "_SUCCESS"

    def wire(self, context: TriggerContext, trigger_id: str) -> None:
        starter = PlatformFunction(
            context.scope,
            trigger_id,
            handler_name="data_availability",
            description=f"Starts {context.workflow} when a partition under {self.prefix} lands",
            environment={
                "STATE_MACHINE_ARN": context.machine.state_machine_arn,
                "PREFIX": self.prefix,
                "MARKER_FILE": self.marker_file,
            },
            log_retention_days=context.log_retention_days,
            # EventBridge invokes asynchronously: a start that keeps failing lands here.
            dead_letter_queue=context.dead_letters,
        ).function
        context.alerts.grant_encrypt(starter)
        context.machine.grant_start_execution(starter)
        events.Rule(
            context.scope,
            f"{trigger_id}-rule",
            description=f"Objects created under {self.prefix} (for {context.workflow})",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={
                    "bucket": {"name": [self.bucket.bucket_name]},
                    "object": {"key": [{"prefix": self.prefix}]},
                },
            ),
            targets=[
                targets.LambdaFunction(
                    starter,
                    dead_letter_queue=context.dead_letters,
                    retry_attempts=_DELIVERY_RETRIES,
                    max_event_age=_DELIVERY_MAX_AGE,
                )
            ],
        )


@dataclass(frozen=True)
class UpstreamTrigger:
    workflow: str

    def wire(self, context: TriggerContext, trigger_id: str) -> None:
        if self.workflow == context.workflow:
            # Each success would start the next run, forever.
            raise ValueError(f"workflow {context.workflow!r} cannot start on its own success")
        upstream = context.state_machines.get(self.workflow)
        if upstream is None:
            raise ValueError(
                f"workflow {context.workflow!r} waits on unknown workflow {self.workflow!r}"
            )
        events.Rule(
            context.scope,
            trigger_id,
            description=f"Starts {context.workflow} when {self.workflow} succeeds",
            event_pattern=events.EventPattern(
                source=["aws.states"],
                detail_type=["Step Functions Execution Status Change"],
                detail={"status": ["SUCCEEDED"], "stateMachineArn": [upstream.state_machine_arn]},
            ),
            targets=[
                _start(
                    context,
                    {
                        "type": "upstream",
                        "workflow": self.workflow,
                        "execution": events.EventField.from_path("$.detail.executionArn"),
                    },
                )
            ],
        )


@dataclass(frozen=True)
class Workflow:
    name: str
    description: str
    steps: tuple[Step, ...]
    timeout: Duration
    triggers: tuple[Trigger, ...] = ()

    def __post_init__(self) -> None:
        # Steps are addressed by name (dependencies, state names): a repeated one is ambiguous.
        repeated = repeated_names(step.name for step in self.steps)
        if repeated:
            raise ValueError(f"workflow {self.name!r} repeats step names {repeated}")


def repeated_names(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    counts = Counter(names)
    return sorted(name for name, count in counts.items() if count > 1)
