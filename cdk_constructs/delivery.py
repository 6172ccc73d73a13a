"""Spinnaker container: continuous delivery of model versions through ECS-native canaries.

A registry approval starts the delivery workflow. It sets the approved version on the model's
serving stack (CloudFormation parameters, the rest of the stack as it is), and CloudFormation
rolls the service out as an ECS canary: a share of traffic to the new version, judged by the
canary-analysis hook (a Kayenta-style judge) and watched by the rollback alarms. A failed
canary rolls the service back and CloudFormation rolls the stack back with it, so the stack
always names the version that runs. The workflow records the outcome on the model package
(a rolled-back version is rejected, so nothing promotes it again) and notifies.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from types import ModuleType

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from cdk_constructs.alerting import AlertTarget
from cdk_constructs.base import (
    PlatformContainer,
    acknowledge_wildcard_grants,
    log_retention,
    skip_checkov,
)
from cdk_constructs.function import LAMBDA_ROOT, PlatformFunction
from cdk_constructs.model_serving import (
    METRICS_NAMESPACE,
    VERSION_PARAMETERS,
    ModelService,
    ServingFront,
    parameter_prefix,
)
from platform_config.model import CanaryConfig

JUDGE_SOURCE = LAMBDA_ROOT / "canary_analysis" / "judge.py"
# Stack states in which CloudFormation is still working.
_IN_PROGRESS = "IN_PROGRESS"


@dataclass(frozen=True)
class DeliveryTarget:
    """Where one served model lives: its package group, its stack and that stack's
    parameters (every parameter must be named on an update; the others keep their values)."""

    model: str
    package_group: str
    stack_name: str
    stack_parameters: tuple[str, ...]
    cluster_name: str
    service_name: str


def _judge_module() -> ModuleType:
    """The hook's own judge module, whose `default_config` is the one source of the canary
    metrics and settings (loaded by path: `lambda` is a keyword, not a package)."""
    name = "ml_platform_canary_judge"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, JUDGE_SOURCE)
        module = importlib.util.module_from_spec(spec)
        # Its dataclasses look their module up while the class bodies run.
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def judge_config(
    canary: CanaryConfig,
    *,
    load_balancer_full_name: str,
    target_groups: dict[str, str],
    model: str,
    app_namespace: str,
) -> dict:
    """The canary-analysis settings of one model's hook: the judge's default metrics with the
    environment's thresholds."""
    return {
        **_judge_module().default_config(
            load_balancer_full_name=load_balancer_full_name,
            target_groups=target_groups,
            model_name=model,
        ),
        "app_namespace": app_namespace,
        "analysis_minutes": canary.analysis_minutes,
        "min_samples": canary.min_samples,
        "max_wait_minutes": canary.max_wait_minutes,
        "pass_threshold": canary.pass_threshold,
        "marginal_threshold": canary.marginal_threshold,
        "marginal_is_failure": canary.marginal_is_failure,
        "confidence": canary.confidence,
        "tolerance": canary.tolerance,
    }


class CanaryAnalysis(PlatformContainer):
    """One model's canary judge: the ECS deployment hook on its production traffic shifts.

    Secure defaults: the function reads metrics and describes the model's own service
    revisions only; ECS invokes it through a role that may invoke nothing else.
    """

    container = "spinnaker"
    stereotype = "continuous-delivery"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        service: ModelService,
        front: ServingFront,
        canary: CanaryConfig,
        cluster: str,
        service_name: str,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        config = judge_config(
            canary,
            load_balancer_full_name=front.load_balancer.load_balancer_full_name,
            target_groups={
                group.target_group_arn: group.target_group_full_name
                for group in (service.blue, service.green)
            },
            model=service.model,
            app_namespace=METRICS_NAMESPACE,
        )
        self.function = PlatformFunction(
            self,
            "Judge",
            handler_name="canary_analysis",
            description=f"Judges {service.model} canaries against their baseline (ECS hook)",
            environment={"CANARY_CONFIG": Stack.of(self).to_json_string(config)},
            log_retention_days=log_retention_days,
            timeout=Duration.seconds(60),
        ).function
        skip_checkov(
            self.function,
            "CKV_AWS_116",
            "Only ECS invokes it, synchronously, as the deployment's lifecycle hook, and rolls "
            "back on its error; a dead-letter queue only catches asynchronous invocations.",
        )
        stack = Stack.of(self)
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["ecs:DescribeServiceRevisions"],
                resources=[
                    stack.format_arn(
                        service="ecs",
                        resource="service-revision",
                        resource_name=f"{cluster}/{service_name}/*",
                    )
                ],
            )
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                # Neither call takes a resource.
                actions=["cloudwatch:GetMetricData", "ecs:DescribeTaskDefinition"],
                resources=["*"],
            )
        )
        acknowledge_wildcard_grants(
            self.function.role,
            {
                r"Resource::\*": (
                    "GetMetricData and DescribeTaskDefinition accept no resource-level scope."
                ),
                r"Resource::arn:.*:ecs:.*:service-revision/.*/\*": (
                    "Revisions of this model's service only; their ids exist once ECS deploys."
                ),
            },
        )
        invoke_role = iam.Role(
            self,
            "HookRole",
            assumed_by=iam.ServicePrincipal("ecs.amazonaws.com"),
            description=f"ECS invokes the {service.model} canary judge during deployments",
        )
        acknowledge_wildcard_grants(
            invoke_role,
            {r"Resource::<Canary.*JudgeFunction.*\.Arn>:\*": "Any version of this one judge."},
        )
        hook = ecs.DeploymentLifecycleLambdaTarget(
            self.function,
            "CanaryAnalysis",
            # ECS invokes it at every traffic shift step; it judges while both revisions
            # take production traffic.
            lifecycle_stages=[ecs.DeploymentLifecycleStage.PRODUCTION_TRAFFIC_SHIFT],
            role=invoke_role,
        )
        service.service.add_lifecycle_hook(hook)


class Delivery(PlatformContainer):
    """The workflow that delivers approved model versions (each model's judge is a
    `CanaryAnalysis` beside its service).

    Secure defaults:
    - the workflow may update only the serving stacks, through a CloudFormation role limited
      to what a version change touches, and may record outcomes only on the served models'
      package groups;
    - every delivery that fails, times out or is aborted notifies, like every outcome.
    """

    container = "spinnaker"
    stereotype = "continuous-delivery"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name_prefix: str,
        canary: CanaryConfig,
        delivery_targets: list[DeliveryTarget],
        alerts: AlertTarget,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        self._name_prefix = name_prefix
        self.deploy_role = self._cloudformation_role(delivery_targets)
        self.workflow = self._workflow(delivery_targets, alerts, log_retention_days)
        approval_dead_letters = alerts.dead_letter_queue(
            self, "ApprovalDeadLetters", purpose="model delivery"
        )
        events.Rule(
            self,
            "Approvals",
            description="A served model's version is approved in the registry",
            event_pattern=events.EventPattern(
                source=["aws.sagemaker"],
                detail_type=["SageMaker Model Package State Change"],
                detail={
                    "ModelPackageGroupName": [t.package_group for t in delivery_targets],
                    "ModelApprovalStatus": ["Approved"],
                },
            ),
            targets=[
                targets.SfnStateMachine(
                    self.workflow,
                    dead_letter_queue=approval_dead_letters,
                    retry_attempts=8,
                )
            ],
        )
        alerts.report_unsuccessful_runs(
            self,
            "DeliveryFailures",
            state_machines=[self.workflow],
            what="model delivery",
            dead_letter_queue=approval_dead_letters,
        )

    def _cloudformation_role(self, delivery_targets: list[DeliveryTarget]) -> iam.Role:
        """What CloudFormation may do when delivery changes a served version: register the
        new task definition, update the model services and their scaling, nothing else."""
        stack = Stack.of(self)
        role = iam.Role(
            self,
            "StackUpdateRole",
            assumed_by=iam.ServicePrincipal("cloudformation.amazonaws.com"),
            description="CloudFormation applies a delivered model version to a serving stack",
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                # Task definitions are not resource-scoped on registration.
                actions=[
                    "ecs:RegisterTaskDefinition",
                    "ecs:DeregisterTaskDefinition",
                    "ecs:DescribeTaskDefinition",
                    "application-autoscaling:DescribeScalableTargets",
                    "application-autoscaling:DescribeScalingPolicies",
                ],
                resources=["*"],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=[
                    "ecs:UpdateService",
                    "ecs:DescribeServices",
                    "ecs:TagResource",
                    "ecs:UntagResource",
                    "application-autoscaling:RegisterScalableTarget",
                    "application-autoscaling:PutScalingPolicy",
                ],
                resources=[
                    stack.format_arn(
                        service="ecs",
                        resource="service",
                        resource_name=f"{t.cluster_name}/{t.service_name}",
                    )
                    for t in delivery_targets
                ]
                + [
                    stack.format_arn(
                        service="application-autoscaling",
                        resource="scalable-target",
                        resource_name="*",
                    )
                ],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[
                    stack.format_arn(
                        service="iam",
                        region="",
                        resource="role",
                        resource_name=f"{self._name_prefix}-serving*",
                    )
                ],
                conditions={
                    "StringEquals": {
                        "iam:PassedToService": ["ecs-tasks.amazonaws.com", "ecs.amazonaws.com"]
                    }
                },
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                # The CDK's bootstrap-version check is a parameter of every stack.
                actions=["ssm:GetParameters"],
                resources=[
                    stack.format_arn(
                        service="ssm", resource="parameter", resource_name="cdk-bootstrap/*"
                    )
                ],
            )
        )
        acknowledge_wildcard_grants(
            role,
            {
                r"Resource::\*": (
                    "Registering and describing task definitions and describing scaling accept "
                    "no resource-level scope."
                ),
                r"Resource::arn:.*:application-autoscaling:.*:scalable-target/\*": (
                    "Scalable target ids are generated by Application Auto Scaling."
                ),
                r"Resource::arn:.*:iam::.*:role/.*-serving\*": (
                    "The serving stacks' task, execution and deployment roles, passed only to ECS."
                ),
                r"Resource::arn:.*:ssm:.*:parameter/cdk-bootstrap/\*": (
                    "The CDK bootstrap version parameter CloudFormation resolves on update."
                ),
            },
        )
        return role

    def _workflow(
        self, delivery_targets: list[DeliveryTarget], alerts: AlertTarget, log_retention_days: int
    ) -> sfn.StateMachine:
        stack = Stack.of(self)
        lookup = json.dumps(
            {
                t.package_group: {
                    "model": t.model,
                    "prefix": parameter_prefix(t.model),
                    "stack": t.stack_name,
                    "parameters": list(t.stack_parameters),
                    "cluster": t.cluster_name,
                    "service": t.service_name,
                }
                for t in delivery_targets
            },
            sort_keys=True,
        )
        packages = [
            stack.format_arn(
                service="sagemaker", resource="model-package", resource_name=f"{t.package_group}/*"
            )
            for t in delivery_targets
        ]
        stacks = [
            stack.format_arn(
                service="cloudformation", resource="stack", resource_name=f"{t.stack_name}/*"
            )
            for t in delivery_targets
        ]
        metadata = "$package.CustomerMetadataProperties"
        describe = tasks.CallAwsService.jsonata(
            self,
            "DescribeVersion",
            state_name="Describe version",
            service="sagemaker",
            action="describeModelPackage",
            parameters={"ModelPackageName": "{% $states.input.detail.ModelPackageArn %}"},
            iam_resources=packages,
            assign={
                "package": "{% $states.result %}",
                "target": f"{{% $lookup({lookup}, $states.result.ModelPackageGroupName) %}}",
            },
        )
        values = (
            "{% $merge([{$target.prefix & 'Version': $string($package.ModelPackageVersion)}, "
            "{$target.prefix & 'ArtifactUri': "
            "$package.InferenceSpecification.Containers[0].ModelDataUrl}, "
            f"{{$target.prefix & 'TrainingDate': $exists({metadata}.training_date) ? "
            f"{metadata}.training_date : 'unknown'}}, "
            f"{{$target.prefix & 'Metrics': $exists($sift({metadata}, function($v, $k) "
            f"{{$substring($k, 0, 7) = 'metric_'}})) ? $string($sift({metadata}, "
            "function($v, $k) {$substring($k, 0, 7) = 'metric_'})) : '{}'}, "
            "{$target.prefix & 'PackageArn': $package.ModelPackageArn}]) %}"
        )
        set_version = tasks.CallAwsService.jsonata(
            self,
            "SetVersion",
            state_name="Set served version",
            service="cloudformation",
            action="updateStack",
            parameters={
                "StackName": "{% $target.stack %}",
                "UsePreviousTemplate": True,
                "Capabilities": ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
                "RoleARN": self.deploy_role.role_arn,
                "Parameters": (
                    "{% $map($target.parameters, function($p) { $exists($lookup($values, $p)) "
                    "? {'ParameterKey': $p, 'ParameterValue': $lookup($values, $p)} "
                    ": {'ParameterKey': $p, 'UsePreviousValue': true} }) %}"
                ),
            },
            iam_resources=stacks,
            additional_iam_statements=[
                iam.PolicyStatement(actions=["iam:PassRole"], resources=[self.deploy_role.role_arn])
            ],
            assign={"values": values},
        )
        # The stack may be busy with a `cdk deploy` or an earlier delivery: wait for it.
        set_version.add_retry(
            errors=["CloudFormation.CloudFormationException"],
            interval=Duration.seconds(60),
            max_attempts=10,
            backoff_rate=1.5,
        )
        wait = sfn.Wait.jsonata(
            self,
            "Wait",
            state_name="Wait for the rollout",
            time=sfn.WaitTime.duration(Duration.minutes(1)),
        )
        check = tasks.CallAwsService.jsonata(
            self,
            "CheckStack",
            state_name="Check the rollout",
            service="cloudformation",
            action="describeStacks",
            parameters={"StackName": "{% $target.stack %}"},
            iam_resources=stacks,
            assign={"status": "{% $states.result.Stacks[0].StackStatus %}"},
        )
        find_reason = tasks.CallAwsService.jsonata(
            self,
            "FindReason",
            state_name="Find why it rolled back",
            service="ecs",
            action="listServiceDeployments",
            parameters={"Cluster": "{% $target.cluster %}", "Service": "{% $target.service %}"},
            iam_resources=[
                stack.format_arn(
                    service="ecs",
                    resource="service",
                    resource_name=f"{t.cluster_name}/{t.service_name}",
                )
                for t in delivery_targets
            ],
            assign={
                "reason": (
                    "{% $exists($states.result.ServiceDeployments) ? "
                    "$sort($states.result.ServiceDeployments, function($a, $b) "
                    "{$a.CreatedAt < $b.CreatedAt})[0].StatusReason : 'the stack rolled back' %}"
                )
            },
        )
        # Customer metadata takes letters, digits, spaces and _.:/=+-@ only.
        clean = r"$replace({text}, /[^A-Za-z0-9 _.:\/=+\-@]/, '_')"
        record_deployed = tasks.CallAwsService.jsonata(
            self,
            "RecordDeployed",
            state_name="Record deployed",
            service="sagemaker",
            action="updateModelPackage",
            parameters={
                "ModelPackageArn": "{% $package.ModelPackageArn %}",
                # Restated whole with the record added, as registration does: the call
                # may otherwise leave only what it names.
                "CustomerMetadataProperties": (
                    "{% $merge([$package.CustomerMetadataProperties, "
                    "{'deployment': 'deployed ' & $now() & ' to ' & $target.stack}]) %}"
                ),
            },
            iam_resources=packages,
        )
        rolled_back_text = clean.format(text="'rolled back ' & $now() & ': ' & $string($reason)")
        record_rolled_back = tasks.CallAwsService.jsonata(
            self,
            "RecordRolledBack",
            state_name="Record rolled back",
            service="sagemaker",
            action="updateModelPackage",
            parameters={
                "ModelPackageArn": "{% $package.ModelPackageArn %}",
                # Rejected: the registry never promotes a version that failed its canary.
                "ModelApprovalStatus": "Rejected",
                "ApprovalDescription": (
                    "{% $substring('Rolled back by canary delivery: ' & $string($reason), "
                    "0, 1000) %}"
                ),
                "CustomerMetadataProperties": (
                    "{% $merge([$package.CustomerMetadataProperties, "
                    f"{{'deployment': $substring({rolled_back_text}, 0, 256)}}]) %}}"
                ),
            },
            iam_resources=packages,
        )

        def notify(construct_id: str, outcome: str) -> tasks.SnsPublish:
            return tasks.SnsPublish.jsonata(
                self,
                construct_id,
                state_name=f"Notify {outcome}",
                topic=alerts.topic,
                subject=f"{{% 'Model ' & $target.model & ' version ' & "
                f"$string($package.ModelPackageVersion) & ' {outcome}' %}}",
                message=sfn.TaskInput.from_object(
                    {
                        "model": "{% $target.model %}",
                        "version": "{% $package.ModelPackageVersion %}",
                        "package": "{% $package.ModelPackageArn %}",
                        "outcome": outcome,
                        "stack": "{% $target.stack %}",
                        "reason": "{% $exists($reason) ? $reason : null %}",
                    }
                ),
            )

        deployed = record_deployed.next(notify("NotifyDeployed", "deployed")).next(
            sfn.Succeed.jsonata(self, "Delivered", state_name="Delivered")
        )
        rolled_back = (
            find_reason.next(record_rolled_back)
            .next(notify("NotifyRolledBack", "rolled back"))
            .next(sfn.Succeed.jsonata(self, "RolledBack", state_name="Rolled back safely"))
        )
        set_version.add_catch(
            sfn.Choice.jsonata(self, "NothingToDo", state_name="Already serving?")
            .when(
                sfn.Condition.jsonata(
                    "{% $contains($states.input.Cause, 'No updates are to be performed') %}"
                ),
                record_deployed,
            )
            .otherwise(
                sfn.Fail.jsonata(self, "CannotUpdate", state_name="Cannot update the stack")
            ),
            errors=["CloudFormation.CloudFormationException"],
        )
        outcome = (
            sfn.Choice.jsonata(self, "Outcome", state_name="Rolled out?")
            .when(sfn.Condition.jsonata(f"{{% $contains($status, '{_IN_PROGRESS}') %}}"), wait)
            .when(sfn.Condition.jsonata("{% $status = 'UPDATE_COMPLETE' %}"), deployed)
            .when(sfn.Condition.jsonata("{% $status = 'UPDATE_ROLLBACK_COMPLETE' %}"), rolled_back)
            .otherwise(sfn.Fail.jsonata(self, "Stuck", state_name="The stack needs a person"))
        )
        definition = describe.next(set_version).next(wait).next(check).next(outcome)
        log_group = logs.LogGroup(
            self,
            "WorkflowLogs",
            log_group_name=f"/aws/vendedlogs/states/{self._name_prefix}-delivery",
            retention=log_retention(log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        skip_checkov(
            log_group,
            "CKV_AWS_158",
            "Execution data is a rollout's model, version and stack status, no records of the "
            "lake; CloudWatch Logs encrypts it at rest with its service key.",
        )
        machine = sfn.StateMachine(
            self,
            "Workflow",
            state_machine_name=f"{self._name_prefix}-delivery",
            comment="Delivers an approved model version through its canary and records the outcome",
            query_language=sfn.QueryLanguage.JSONATA,
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            timeout=Duration.hours(6),
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL),
            tracing_enabled=True,
        )
        alerts.grant_encrypt(machine)
        acknowledge_wildcard_grants(
            machine.role,
            {
                r"Resource::\*": (
                    "X-Ray tracing and CloudWatch Logs delivery for the state machine accept "
                    "only the `*` resource."
                ),
                r"Resource::arn:.*:sagemaker:.*:model-package/.*/\*": (
                    "Versions of the served models' package groups; version numbers grow."
                ),
                r"Resource::arn:.*:cloudformation:.*:stack/.*-serving-.*/\*": (
                    "The serving stacks by name; the suffix is the stack id CloudFormation assigns."
                ),
            },
        )
        return machine


def stack_parameters(models: list[str]) -> tuple[str, ...]:
    """Every parameter of a serving stack that holds these models."""
    return tuple(
        f"{parameter_prefix(model)}{parameter.suffix}"
        for model in models
        for parameter in VERSION_PARAMETERS
    )
