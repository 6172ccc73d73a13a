"""Maestro Orchestrator container: typed workflows as Step Functions, with their triggers.

A workflow is a small typed definition: steps with explicit dependencies, and the triggers
that start it. Maestro's trigger kinds become concrete wiring:

- time: an EventBridge Scheduler schedule (cron, with a time zone);
- signal: a rule on the platform's signal bus matching a named signal and its parameters;
- data availability: S3 "Object Created" events under a prefix, handled by a function that
  starts one run per completed partition (idempotent on redelivery);
- upstream: a rule on another workflow's successful completion.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from aws_cdk import Duration, RemovalPolicy, TimeZone
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from cdk_constructs.base import PlatformContainer, acknowledge_wildcard_grants, log_retention
from cdk_constructs.function import PlatformFunction

SIGNAL_SOURCE = "ml-platform.signals"
# Where a failed state's error lands: under "failure" (catchers that set an output) or as
# the whole input (custom states, whose catchers cannot).
_FAILURE = "($states.input.failure ? $states.input.failure : $states.input)"
# Placeholder in step arguments for the run's date, resolved by the quality gate.
RUN_DATE = "{run_date}"


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


@dataclass(frozen=True)
class EmrStep:
    """Runs a command (e.g. spark-submit) as an EMR step and waits for it."""

    name: str
    cluster_id: str
    args: tuple[str, ...]
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskStep:
    """A step whose state another container builds (training, registration): `build` gets
    (scope, construct id, state name) and returns a task state; `grant` gives the state
    machine's role what the task needs; `retry_errors` are the transient errors to retry."""

    name: str
    build: Callable[[Construct, str, str], sfn.TaskStateBase | sfn.CustomState]
    retry_errors: tuple[str, ...]
    grant: Callable[[iam.IRole], None] | None = None
    depends_on: tuple[str, ...] = ()


Step = QualityGateStep | EmrStep | TaskStep


@dataclass(frozen=True)
class TimeTrigger:
    cron: str
    timezone: str


@dataclass(frozen=True)
class SignalTrigger:
    signal: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DataTrigger:
    bucket: s3.IBucket
    prefix: str
    marker_file: str = "_SUCCESS"


@dataclass(frozen=True)
class UpstreamTrigger:
    workflow: str


Trigger = TimeTrigger | SignalTrigger | DataTrigger | UpstreamTrigger


@dataclass(frozen=True)
class Workflow:
    name: str
    description: str
    steps: tuple[Step, ...]
    triggers: tuple[Trigger, ...] = ()


def execution_order(steps: tuple[Step, ...]) -> list[Step]:
    """Steps in an order that respects every dependency; rejects unknown or cyclic ones."""
    by_name = {step.name: step for step in steps}
    if len(by_name) != len(steps):
        raise ValueError("step names must be distinct")
    for step in steps:
        unknown = set(step.depends_on) - set(by_name)
        if unknown:
            raise ValueError(f"step {step.name!r} depends on unknown {sorted(unknown)}")
    ordered: list[Step] = []
    done: set[str] = set()
    while len(ordered) < len(steps):
        ready = [s for s in steps if s.name not in done and set(s.depends_on) <= done]
        if not ready:
            raise ValueError("step dependencies form a cycle")
        for step in ready:
            ordered.append(step)
            done.add(step.name)
    return ordered


class Orchestrator(PlatformContainer):
    """State machines for the given workflows, their triggers and the signal bus.

    Secure defaults:
    - every task retries transient failures with backoff and routes any failure to an
      SNS topic (KMS-encrypted, TLS-only) before the run fails;
    - state machines log every execution to a log group with retention;
    - the signal bus accepts events from this account only; signals are published by a
      function that validates them and is idempotent on the caller's key;
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
        encryption_key: kms.IKey,
        failure_emails: list[str],
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        self._name_prefix = name_prefix
        self._log_retention_days = log_retention_days
        self.failure_topic = sns.Topic(
            self,
            "FailureTopic",
            display_name=f"{name_prefix} workflow failures",
            master_key=encryption_key,
            enforce_ssl=True,
        )
        for address in failure_emails:
            self.failure_topic.add_subscription(subscriptions.EmailSubscription(address))

        self.signal_bus = events.EventBus(
            self, "SignalBus", event_bus_name=f"{name_prefix}-signals"
        )
        self.signal_publisher = self._signal_publisher(signals)

        self.quality_gate = PlatformFunction(
            self,
            "QualityGate",
            handler_name="quality_gate",
            description="Data-quality gate of the platform's workflows",
            environment={},
            log_retention_days=log_retention_days,
        ).function

        self.state_machines: dict[str, sfn.StateMachine] = {}
        for workflow in workflows:
            self.state_machines[workflow.name] = self._state_machine(workflow)
        for workflow in workflows:
            for index, trigger in enumerate(workflow.triggers):
                self._wire_trigger(workflow, trigger, index, signals)

    def _signal_publisher(self, signals: dict[str, list[str]]) -> PlatformFunction:
        idempotency = dynamodb.TableV2(
            self,
            "SignalIdempotency",
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            time_to_live_attribute="expiration",
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            # Only in-flight idempotency records: safe to lose with the stack.
            removal_policy=RemovalPolicy.DESTROY,
        )
        publisher = PlatformFunction(
            self,
            "SignalPublisher",
            handler_name="signal_publisher",
            description="Publishes named workflow signals to the signal bus",
            environment={
                "EVENT_BUS_NAME": self.signal_bus.event_bus_name,
                "SIGNALS": json.dumps(signals, sort_keys=True),
                "IDEMPOTENCY_TABLE": idempotency.table_name,
            },
            log_retention_days=self._log_retention_days,
        )
        self.signal_bus.grant_put_events_to(publisher.function)
        # Exactly the calls Powertools' idempotency layer makes.
        idempotency.grant(
            publisher.function,
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",
        )
        return publisher

    def _state_machine(self, workflow: Workflow) -> sfn.StateMachine:
        # JSONata throughout: it can default a missing run date and place it inside an
        # argument list, which JSONPath cannot.
        notify = tasks.SnsPublish.jsonata(
            self,
            f"{workflow.name}-notify",
            state_name="Notify failure",
            topic=self.failure_topic,
            subject=f"{self._name_prefix} {workflow.name} failed",
            message=sfn.TaskInput.from_object(
                {
                    "workflow": workflow.name,
                    "execution": "{% $states.context.Execution.Id %}",
                    "error": f"{{% {_FAILURE}.Error %}}",
                    "cause": f"{{% {_FAILURE}.Cause %}}",
                }
            ),
            outputs="{% $states.input %}",
        ).next(sfn.Fail.jsonata(self, f"{workflow.name}-failed", state_name="Failed"))

        chain: sfn.Chain | None = None
        for step in execution_order(workflow.steps):
            task = self._task(workflow, step)
            # Transient service errors only: a failed gate or a failed job is an answer.
            task.add_retry(
                errors=list(_retry_errors(step)),
                interval=Duration.seconds(10),
                max_attempts=3,
                backoff_rate=2,
                jitter_strategy=sfn.JitterType.FULL,
            )
            task.add_catch(
                notify,
                errors=["States.ALL"],
                outputs="{% $merge([$states.input, {'failure': $states.errorOutput}]) %}",
            )
            chain = sfn.Chain.start(task) if chain is None else chain.next(task)
        chain = chain.next(sfn.Succeed.jsonata(self, f"{workflow.name}-done", state_name="Done"))

        log_group = logs.LogGroup(
            self,
            f"{workflow.name}-logs",
            log_group_name=f"/aws/vendedlogs/states/{self._name_prefix}-{workflow.name}",
            retention=log_retention(self._log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        machine = sfn.StateMachine(
            self,
            f"{workflow.name}-workflow",
            state_machine_name=f"{self._name_prefix}-{workflow.name}",
            comment=workflow.description,
            query_language=sfn.QueryLanguage.JSONATA,
            definition_body=sfn.DefinitionBody.from_chainable(chain),
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL),
            tracing_enabled=True,
        )
        for step in workflow.steps:
            if isinstance(step, TaskStep) and step.grant is not None:
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
                r"Resource::arn:.*:elasticmapreduce:.*:cluster/\*": (
                    "The CDK's EMR step task grants add/describe/cancel step on clusters; the "
                    "workflow passes one cluster id, known only at deploy time."
                ),
            },
        )
        return machine

    def _task(self, workflow: Workflow, step: Step) -> sfn.TaskStateBase | sfn.CustomState:
        state_id = f"{workflow.name}-{step.name}"
        if isinstance(step, TaskStep):
            return step.build(self, state_id, step.name)
        if isinstance(step, QualityGateStep):
            # The gate only counts objects: listing needs neither GetObject nor the key.
            self.quality_gate.add_to_role_policy(
                iam.PolicyStatement(actions=["s3:ListBucket"], resources=[step.bucket.bucket_arn])
            )
            payload = {
                # Triggers without a date leave it out; the gate then checks yesterday.
                "run_date": "{% $exists($states.input.run_date) ? $states.input.run_date : null %}",
                "execution_start_time": "{% $states.context.Execution.StartTime %}",
                "bucket": step.bucket.bucket_name,
                "prefix_template": step.prefix_template,
                "min_objects": step.min_objects,
                "min_bytes": 1 if step.min_objects else 0,
            }
            if step.dead_letter_prefix_template is not None:
                payload["dead_letter_prefix_template"] = step.dead_letter_prefix_template
                payload["max_dead_letter_ratio"] = step.max_dead_letter_ratio
            return tasks.LambdaInvoke.jsonata(
                self,
                state_id,
                state_name=step.name,
                lambda_function=self.quality_gate,
                payload=sfn.TaskInput.from_object(payload),
                payload_response_only=True,
                retry_on_service_exceptions=False,
                # Later steps read the resolved date from run_date.
                outputs=(
                    "{% $merge([$states.input, {'run_date': $states.result.run_date, "
                    f"'{step.name}': $states.result}}]) %}}"
                ),
            )
        return tasks.EmrAddStep.jsonata(
            self,
            state_id,
            state_name=step.name,
            cluster_id=step.cluster_id,
            name=f"{workflow.name}-{step.name}",
            jar="command-runner.jar",
            args=[_with_run_date(arg) for arg in step.args],
            action_on_failure=tasks.ActionOnFailure.CONTINUE,
            integration_pattern=sfn.IntegrationPattern.RUN_JOB,
            # Keep the run's state (run date, gate report) for the steps after this one.
            outputs="{% $states.input %}",
        )

    def _wire_trigger(
        self, workflow: Workflow, trigger: Trigger, index: int, signals: dict[str, list[str]]
    ) -> None:
        machine = self.state_machines[workflow.name]
        trigger_id = f"{workflow.name}-trigger{index}"
        if isinstance(trigger, TimeTrigger):
            # Our own role, so it belongs to (and is tagged as) this container.
            schedule_role = iam.Role(
                self,
                f"{trigger_id}-role",
                assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com"),
                description=f"Starts {workflow.name} on its schedule",
            )
            scheduler.Schedule(
                self,
                trigger_id,
                description=f"Starts {workflow.name} on its schedule",
                schedule=scheduler.ScheduleExpression.expression(
                    f"cron({trigger.cron})", TimeZone.of(trigger.timezone)
                ),
                target=scheduler_targets.StepFunctionsStartExecution(
                    machine,
                    role=schedule_role,
                    input=scheduler.ScheduleTargetInput.from_object(
                        {"trigger": {"type": "time", "cron": trigger.cron}}
                    ),
                ),
            )
        elif isinstance(trigger, SignalTrigger):
            missing = set(signals.get(trigger.signal, [None])) - set(trigger.params)
            if trigger.signal not in signals or missing:
                raise ValueError(
                    f"workflow {workflow.name!r}: signal {trigger.signal!r} is not declared "
                    f"or its trigger lacks required params {sorted(missing, key=str)}"
                )
            events.Rule(
                self,
                trigger_id,
                description=f"Starts {workflow.name} on signal {trigger.signal}",
                event_bus=self.signal_bus,
                event_pattern=events.EventPattern(
                    source=[SIGNAL_SOURCE],
                    detail_type=[trigger.signal],
                    detail={"params": {key: [value] for key, value in trigger.params.items()}},
                ),
                targets=[
                    targets.SfnStateMachine(
                        machine,
                        input=events.RuleTargetInput.from_object(
                            {
                                "trigger": {
                                    "type": "signal",
                                    "signal": trigger.signal,
                                    "params": events.EventField.from_path("$.detail.params"),
                                },
                            }
                        ),
                    )
                ],
            )
        elif isinstance(trigger, DataTrigger):
            handler = PlatformFunction(
                self,
                trigger_id,
                handler_name="data_availability",
                description=f"Starts {workflow.name} when a partition under {trigger.prefix} lands",
                environment={
                    "STATE_MACHINE_ARN": machine.state_machine_arn,
                    "PREFIX": trigger.prefix,
                    "MARKER_FILE": trigger.marker_file,
                },
                log_retention_days=self._log_retention_days,
            ).function
            machine.grant_start_execution(handler)
            events.Rule(
                self,
                f"{trigger_id}-rule",
                description=f"Objects created under {trigger.prefix} (for {workflow.name})",
                event_pattern=events.EventPattern(
                    source=["aws.s3"],
                    detail_type=["Object Created"],
                    detail={
                        "bucket": {"name": [trigger.bucket.bucket_name]},
                        "object": {"key": [{"prefix": trigger.prefix}]},
                    },
                ),
                targets=[targets.LambdaFunction(handler, retry_attempts=4)],
            )
        else:
            upstream = self.state_machines.get(trigger.workflow)
            if upstream is None:
                raise ValueError(
                    f"workflow {workflow.name!r} waits on unknown workflow {trigger.workflow!r}"
                )
            events.Rule(
                self,
                trigger_id,
                description=f"Starts {workflow.name} when {trigger.workflow} succeeds",
                event_pattern=events.EventPattern(
                    source=["aws.states"],
                    detail_type=["Step Functions Execution Status Change"],
                    detail={
                        "status": ["SUCCEEDED"],
                        "stateMachineArn": [upstream.state_machine_arn],
                    },
                ),
                targets=[
                    targets.SfnStateMachine(
                        machine,
                        input=events.RuleTargetInput.from_object(
                            {
                                "trigger": {
                                    "type": "upstream",
                                    "workflow": trigger.workflow,
                                    "execution": events.EventField.from_path(
                                        "$.detail.executionArn"
                                    ),
                                },
                            }
                        ),
                    )
                ],
            )


def _retry_errors(step: Step) -> tuple[str, ...]:
    if isinstance(step, TaskStep):
        return step.retry_errors
    if isinstance(step, EmrStep):
        return ("EMR.AmazonElasticMapReduceException",)
    return ("Lambda.ServiceException", "Lambda.TooManyRequestsException")


def _with_run_date(argument: str) -> str:
    if argument == RUN_DATE:
        return "{% $states.input.run_date %}"
    if RUN_DATE in argument:
        raise ValueError(f"{RUN_DATE} must be a whole argument, not part of {argument!r}")
    return argument
