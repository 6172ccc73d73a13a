"""Flink Processing Cluster container: EMR with Flink, reading MSK, writing the raw zone, and
keeping its streaming job running."""

from __future__ import annotations

import re
import typing
from collections.abc import Sequence

from aws_cdk import Duration, Stack, Tags
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_emr as emr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from constructs import Construct

from cdk_constructs.alerting import AlertTarget
from cdk_constructs.base import acknowledge_wildcard_grants
from cdk_constructs.emr import (
    EMR_MANAGED_TAG,
    JOB_PYTHON,
    REPO_ROOT,
    EmrCluster,
    classification,
)
from cdk_constructs.function import PlatformFunction
from jobs.layout import CHECKPOINT_PREFIX, FLINK_JARS_DIR, JOBS_ARCHIVE

# What the keeper publishes and its alarm watches.
STREAMING_NAMESPACE = "MLPlatform/Streaming"
JOB_RUNNING_METRIC = "FlinkJobRunning"
# The YARN ResourceManager's REST API on the primary node, which the keeper asks.
RESOURCE_MANAGER_PORT = 8088
KEEPER_INTERVAL = Duration.minutes(5)


class FlinkCluster(EmrCluster):
    """Long-running EMR cluster for streaming jobs (EMR security defaults in EmrCluster).

    Flink-specific defaults: exactly-once checkpoints every minute to the artifacts bucket,
    RocksDB state with incremental checkpoints, restart with backoff after failures. A
    streaming job added with `run_streaming_job` starts with the cluster and is kept running.
    """

    container = "flink"
    stereotype = "stream-processing"
    applications = ("Flink", "Hadoop")

    @property
    def checkpoint_url(self) -> str:
        return self.artifacts_bucket.s3_url_for_object(f"{CHECKPOINT_PREFIX}{self.cluster_name}")

    def configurations(self) -> list[emr.CfnCluster.ConfigurationProperty]:
        checkpoints = self.checkpoint_url
        return [
            classification(
                "flink-conf",
                {
                    "execution.checkpointing.interval": "60s",
                    "execution.checkpointing.mode": "EXACTLY_ONCE",
                    "state.backend.type": "rocksdb",
                    "state.backend.incremental": "true",
                    "state.checkpoints.dir": checkpoints,
                    "restart-strategy.type": "exponential-delay",
                    "python.executable": JOB_PYTHON,
                    "python.client.executable": JOB_PYTHON,
                },
            )
        ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        checkpoints = f"{CHECKPOINT_PREFIX}{self.cluster_name}/"
        self.artifacts_bucket.grant_read_write(self.instance_role, f"{checkpoints}*")
        acknowledge_wildcard_grants(
            self.instance_role,
            {
                rf"Resource::.*/{re.escape(checkpoints)}\*": (
                    "Flink reads and writes checkpoint objects under its own checkpoint prefix."
                )
            },
        )

    @staticmethod
    def flink_run_step(*, name: str, module: str, arguments: Sequence[str]) -> list[str]:
        """The step arguments that submit `module` of the jobs package as a detached Flink job
        on YARN, where its application is called `name`."""
        return [
            "flink", "run", "-m", "yarn-cluster", "-d", "-ynm", name,
            "-pyfs", JOBS_ARCHIVE, "-pym", module, *arguments,
        ]  # fmt: skip

    def run_streaming_job(
        self,
        *,
        name: str,
        module: str,
        arguments: Sequence[str],
        alerts: AlertTarget,
        log_retention_days: int,
    ) -> FlinkJobKeeper:
        """Start the job with the cluster and keep it running.

        The submission is a step of the cluster resource itself, so every new cluster starts
        the job as soon as it is up, with no deploy-time function in between; changing the
        arguments therefore replaces the cluster, as most of its properties do. The returned
        keeper resubmits the same step whenever the job is found not running.
        """
        step_args = self.flink_run_step(
            name=name, module=module, arguments=[*arguments, "--jars", ",".join(connector_jars())]
        )
        self.cluster.steps = [
            *(self.cluster.steps or []),
            emr.CfnCluster.StepConfigProperty(
                name=name,
                action_on_failure="CONTINUE",
                hadoop_jar_step=emr.CfnCluster.HadoopJarStepConfigProperty(
                    jar="command-runner.jar", args=step_args
                ),
            ),
        ]
        return FlinkJobKeeper(
            self,
            f"{name}-keeper",
            cluster=self,
            job_name=name,
            step_args=step_args,
            alerts=alerts,
            log_retention_days=log_retention_days,
        )


class FlinkJobKeeper(Construct):
    """Every five minutes, a function (lambda/flink_job_keeper) checks with YARN that the job
    runs, resubmits its step when it does not and no submission is under way, and publishes
    FlinkJobRunning; an alarm notifies the alert topic when the job stays down or the checks
    stop. Scheduled invocations that cannot be delivered, and runs that fail all their
    retries, land in an encrypted dead-letter queue that alarms.

    Secure defaults: the function runs in the cluster's private subnets behind its own security
    group, which may reach only the primary node's ResourceManager port (opened to this group
    alone) and HTTPS; its role may describe, list steps of and add steps to this one cluster
    and publish metrics in the streaming namespace. One run at a time, so two runs never both
    submit.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster: FlinkCluster,
        job_name: str,
        step_args: list[str],
        alerts: AlertTarget,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        # EMR's service policy may act on resources with this tag; the keeper's are not EMR's.
        Tags.of(self).remove(EMR_MANAGED_TAG[0])
        self.job_name = job_name
        self.step_args = step_args
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=cluster.vpc,
            description=f"Keeper of {job_name} on {cluster.cluster_name}",
            allow_all_outbound=False,
        )
        self.security_group.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "EMR and CloudWatch APIs"
        )
        self.security_group.connections.allow_to(
            cluster.primary_security_group,
            ec2.Port.tcp(RESOURCE_MANAGER_PORT),
            "YARN ResourceManager REST API",
        )
        # Undeliverable scheduled invocations and runs that failed all their retries.
        self.dead_letters = alerts.dead_letter_queue(
            self, "DeadLetters", purpose=f"the keeper of {job_name}"
        )
        self.function = self._function(cluster, alerts, log_retention_days)
        self.schedule = self._schedule(alerts)
        self.alarm = alerts.alarm(
            name=f"{job_name}-not-running",
            title=f"Streaming job {job_name}",
            description=(
                f"{job_name} is not running on {cluster.cluster_name}, or its keeper "
                "stopped reporting"
            ),
            metric=cloudwatch.Metric(
                namespace=STREAMING_NAMESPACE,
                metric_name=JOB_RUNNING_METRIC,
                dimensions_map={"ClusterName": cluster.cluster_name, "JobName": job_name},
                statistic="Maximum",
                period=KEEPER_INTERVAL,
            ),
            threshold=1,
            comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            # A resubmission takes one check; two down in three is a job that stays down.
            evaluation_periods=3,
            datapoints_to_alarm=2,
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        )

    def _function(
        self, cluster: FlinkCluster, alerts: AlertTarget, log_retention_days: int
    ) -> lambda_.Function:
        function = PlatformFunction(
            self,
            "Function",
            handler_name="flink_job_keeper",
            description=f"Keeps {self.job_name} running on {cluster.cluster_name}",
            environment={
                "CLUSTER_ID": cluster.cluster_id,
                "CLUSTER_NAME": cluster.cluster_name,
                "JOB_NAME": self.job_name,
                "STEP_ARGS": Stack.of(self).to_json_string(self.step_args),
                "RESOURCE_MANAGER_PORT": str(RESOURCE_MANAGER_PORT),
                "METRIC_NAMESPACE": STREAMING_NAMESPACE,
            },
            log_retention_days=log_retention_days,
            timeout=Duration.minutes(1),
            vpc=cluster.vpc,
            vpc_subnets=cluster.subnets,
            security_groups=[self.security_group],
            dead_letter_queue=self.dead_letters,
        ).function
        alerts.grant_encrypt(function)
        # Two runs at once could both find the job down and both submit it.
        typing.cast(
            lambda_.CfnFunction, function.node.default_child
        ).reserved_concurrent_executions = 1
        function.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "elasticmapreduce:DescribeCluster",
                    "elasticmapreduce:ListSteps",
                    "elasticmapreduce:AddJobFlowSteps",
                ],
                resources=[
                    Stack.of(self).format_arn(
                        service="elasticmapreduce",
                        resource="cluster",
                        resource_name=cluster.cluster_id,
                    )
                ],
            )
        )
        function.add_to_role_policy(
            iam.PolicyStatement(
                # PutMetricData takes no resource; the namespace condition is the scope.
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": STREAMING_NAMESPACE}},
            )
        )
        acknowledge_wildcard_grants(
            function.role,
            {
                r"Resource::\*": (
                    "cloudwatch:PutMetricData accepts no resource; a condition limits it to the "
                    "streaming namespace."
                )
            },
        )
        return function

    def _schedule(self, alerts: AlertTarget) -> scheduler.Schedule:
        role = iam.Role(
            self,
            "ScheduleRole",
            assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com"),
            description=f"Runs the keeper of {self.job_name}",
        )
        # Scheduler writes undeliverable invocations to the queue with this role.
        alerts.grant_encrypt(role)
        acknowledge_wildcard_grants(
            role,
            {
                r"Resource::<.*keeperFunction.*\.Arn>:\*": (
                    "The schedule may invoke any version of the one keeper function."
                )
            },
        )
        return scheduler.Schedule(
            self,
            "Schedule",
            description=f"Checks every {KEEPER_INTERVAL.to_minutes()} minutes that "
            f"{self.job_name} runs",
            schedule=scheduler.ScheduleExpression.rate(KEEPER_INTERVAL),
            target=scheduler_targets.LambdaInvoke(
                self.function,
                role=role,
                dead_letter_queue=self.dead_letters,
                retry_attempts=2,
                # A later check supersedes an invocation older than one interval.
                max_event_age=KEEPER_INTERVAL,
            ),
        )


def connector_jars() -> list[str]:
    """file:// URIs of the jars the bootstrap verified into FLINK_JARS_DIR, as listed in
    jobs/emr/jar-checksums.txt (`<algorithm> <digest> <url>` lines)."""
    table = (REPO_ROOT / "jobs" / "emr" / "jar-checksums.txt").read_text(encoding="utf-8")
    return [
        f"file://{FLINK_JARS_DIR}/{line.split()[2].rsplit('/', 1)[-1]}"
        for line in table.splitlines()
        if line.strip() and not line.startswith("#")
    ]
