"""What breaks each container, on its area's dashboard and alarmed through the alert topic.

cdk-monitoring-constructs has monitors for Lambda, Step Functions, ECS, load balancers, RDS
and SQS; MSK, EMR, Keyspaces and SageMaker training have none, so their AWS/Kafka,
AWS/ElasticMapReduce and AWS/Cassandra metrics go through its custom monitor
(:meth:`AlertTarget.alarm`), which keeps one way to alarm. The overview dashboard lists every
alarm of the platform by its deterministic name (:func:`alerting.alarm_name`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from cdk_monitoring_constructs import ErrorCountThreshold
from constructs import Construct, IConstruct

from cdk_constructs.alerting import AlertTarget, dashboard_name
from cdk_constructs.base import PlatformContainer
from cdk_constructs.experimentation import ExperimentationService
from cdk_constructs.function import PlatformFunction
from platform_config.model import MonitoringConfig

Gt = cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD
Lt = cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD
FIVE_MINUTES = Duration.minutes(5)
EXPERIMENTATION_AREA = "experimentation"


def monitor_kafka(
    alerts: AlertTarget,
    *,
    cluster_name: str,
    broker_count: int,
    consumer_group: str,
    topic: str,
    config: MonitoringConfig,
    area: str,
) -> None:
    """MSK: offline and under-replicated partitions, the fullest broker's data volume and the
    streaming job's consumer lag (all DEFAULT-level metrics, so no extra monitoring cost)."""
    cluster = {"Cluster Name": cluster_name}

    def per_broker(metric_name: str, statistic: str) -> dict[str, cloudwatch.IMetric]:
        return {
            f"broker{broker}": cloudwatch.Metric(
                namespace="AWS/Kafka",
                metric_name=metric_name,
                dimensions_map={**cluster, "Broker ID": str(broker)},
                statistic=statistic,
                period=FIVE_MINUTES,
            )
            for broker in range(1, broker_count + 1)
        }

    def across_brokers(function: str, metric_name: str, label: str) -> cloudwatch.MathExpression:
        metrics = per_broker(metric_name, "Maximum")
        return cloudwatch.MathExpression(
            expression=f"{function}([{', '.join(f'FILL({m}, 0)' for m in metrics)}])",
            using_metrics=metrics,
            label=label,
            period=FIVE_MINUTES,
        )

    alerts.alarm(
        area=area,
        name="kafka-offline-partitions",
        title="Kafka offline partitions",
        description=f"{cluster_name}: partitions without a leader; producers and Flink stall",
        metric=cloudwatch.Metric(
            namespace="AWS/Kafka",
            metric_name="OfflinePartitionsCount",
            dimensions_map=cluster,
            statistic="Maximum",
            period=FIVE_MINUTES,
        ),
        threshold=0,
        comparison=Gt,
    )
    alerts.alarm(
        area=area,
        name="kafka-under-replicated",
        title="Kafka under-replicated partitions",
        description=f"{cluster_name}: partitions with fewer in-sync replicas than configured",
        metric=across_brokers("SUM", "UnderReplicatedPartitions", "under-replicated"),
        threshold=0,
        comparison=Gt,
        evaluation_periods=3,
    )
    alerts.alarm(
        area=area,
        name="kafka-disk-used",
        title="Kafka fullest broker data volume (%)",
        description=(
            f"{cluster_name}: a broker's data volume is more than "
            f"{config.msk_disk_used_percent:g} % full"
        ),
        metric=across_brokers("MAX", "KafkaDataLogsDiskUsed", "disk used %"),
        threshold=config.msk_disk_used_percent,
        comparison=Gt,
        evaluation_periods=2,
    )
    alerts.alarm(
        area=area,
        name="flink-consumer-lag",
        title=f"Consumer lag of {consumer_group} on {topic}",
        description=(
            f"The streaming job ({consumer_group}) is more than {config.flink_consumer_lag} "
            f"records behind on {topic}"
        ),
        metric=cloudwatch.Metric(
            namespace="AWS/Kafka",
            metric_name="MaxOffsetLag",
            dimensions_map={**cluster, "Consumer Group": consumer_group, "Topic": topic},
            statistic="Maximum",
            period=FIVE_MINUTES,
        ),
        threshold=config.flink_consumer_lag,
        comparison=Gt,
        evaluation_periods=3,
    )


def monitor_emr(
    alerts: AlertTarget, *, cluster_id: str, label: str, idle_hours: int | None, area: str
) -> None:
    """EMR: failed YARN applications, unhealthy nodes and, for a cluster that does not end
    itself when idle, the hours it costs while running nothing."""

    def metric(name: str, statistic: str, period: Duration = FIVE_MINUTES) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace="AWS/ElasticMapReduce",
            metric_name=name,
            dimensions_map={"JobFlowId": cluster_id},
            statistic=statistic,
            period=period,
        )

    alerts.alarm(
        area=area,
        name=f"{label}-apps-failed",
        title=f"{label} failed applications",
        description=f"A YARN application (job) failed on the {label} cluster",
        metric=metric("AppsFailed", "Sum"),
        threshold=0,
        comparison=Gt,
    )
    alerts.alarm(
        area=area,
        name=f"{label}-unhealthy-nodes",
        title=f"{label} unhealthy nodes",
        description=f"YARN reports unhealthy nodes on the {label} cluster (disk full, lost)",
        metric=metric("MRUnhealthyNodes", "Maximum"),
        threshold=0,
        comparison=Gt,
        evaluation_periods=3,
    )
    if idle_hours is not None:
        alerts.alarm(
            area=area,
            name=f"{label}-idle",
            title=f"{label} idle (1 = no step or application ran)",
            description=(
                f"The {label} cluster has run nothing for {idle_hours} h and still costs its "
                "instances: set an idle timeout or terminate it"
            ),
            # The hour's minimum is 1 only when the cluster was idle the whole hour.
            metric=metric("IsIdle", "Minimum", Duration.hours(1)),
            threshold=1,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=idle_hours,
        )


def monitor_keyspaces(
    alerts: AlertTarget, *, keyspace: str, operations: Mapping[str, Sequence[str]]
) -> None:
    """Keyspaces: system errors and throttles of each table and CQL operation the platform
    uses (the metrics carry the operation as a dimension, so each pair is named)."""
    for table, table_operations in operations.items():
        for operation in table_operations:
            dimensions = {"Keyspace": keyspace, "TableName": table, "Operation": operation}
            throttles = "ReadThrottleEvents" if operation == "SELECT" else "WriteThrottleEvents"
            for metric_name, what in (("SystemErrors", "system errors"), (throttles, "throttles")):
                alerts.alarm(
                    name=f"keyspaces-{table}-{operation.lower()}-{what.replace(' ', '-')}",
                    title=f"Keyspaces {table} {operation} {what}",
                    description=f"Keyspaces {what} on {operation} of {keyspace}.{table}",
                    metric=cloudwatch.Metric(
                        namespace="AWS/Cassandra",
                        metric_name=metric_name,
                        dimensions_map=dimensions,
                        statistic="Sum",
                        period=FIVE_MINUTES,
                    ),
                    threshold=0,
                    comparison=Gt,
                    evaluation_periods=3,
                )


def monitor_functions(
    alerts: AlertTarget, scope: IConstruct, *, max_errors: int, area: str | None = None
) -> None:
    """Errors and throttles of every platform function under `scope` (the CDK's own
    deploy-time helpers are not the platform's and are left out)."""
    for found in scope.node.find_all():
        if not isinstance(found, PlatformFunction):
            continue
        function: lambda_.IFunction = found.function
        alerts.dashboard(area or alerts.area).monitor_lambda_function(
            lambda_function=function,
            alarm_friendly_name=_friendly(found),
            human_readable_name=f"Function {found.node.path.split('/', 1)[-1]}",
            add_fault_count_alarm={
                "Errors": ErrorCountThreshold(
                    max_error_count=max_errors, evaluation_periods=1, datapoints_to_alarm=1
                )
            },
            add_throttles_count_alarm={
                "Throttles": ErrorCountThreshold(
                    max_error_count=0, evaluation_periods=3, datapoints_to_alarm=3
                )
            },
        )


def monitor_state_machines(
    alerts: AlertTarget, state_machines: Mapping[str, sfn.IStateMachine], *, area: str
) -> None:
    """Failed, timed-out and aborted runs of each state machine (the status rule of
    :meth:`AlertTarget.report_unsuccessful_runs` says why; the alarm says it still fails)."""
    facade = alerts.dashboard(area)
    for name, machine in state_machines.items():
        once = {"evaluation_periods": 1, "datapoints_to_alarm": 1}
        facade.monitor_step_function(
            state_machine=machine,
            alarm_friendly_name=f"workflow-{name}",
            human_readable_name=f"Workflow {name}",
            add_failed_execution_count_alarm={
                "Failed": ErrorCountThreshold(max_error_count=0, **once)
            },
            add_timed_out_execution_count_alarm={
                "TimedOut": ErrorCountThreshold(max_error_count=0, **once)
            },
            add_aborted_execution_count_alarm={
                "Aborted": ErrorCountThreshold(max_error_count=0, **once)
            },
        )


def monitor_experimentation(alerts: AlertTarget, *, service: ExperimentationService) -> None:
    """ABlaze: its tasks behind the load balancer (failing health checks, 5xx answers) and
    its functions' errors through the shared rule; the tables through DynamoDB's metrics."""
    facade = alerts.dashboard(EXPERIMENTATION_AREA)
    facade.monitor_simple_fargate_service(
        fargate_service=service.service,
        alarm_friendly_name="ablaze-tasks",
        human_readable_name="ABlaze tasks",
    )
    group = service.target_group

    def target_metric(name: str, statistic: str) -> cloudwatch.IMetric:
        return group.metrics.custom(name, statistic=statistic, period=FIVE_MINUTES)

    alerts.alarm(
        area=EXPERIMENTATION_AREA,
        name="ablaze-unhealthy-targets",
        title="ABlaze tasks failing the health check",
        description="ABlaze tasks fail the load balancer's health check",
        metric=target_metric("UnHealthyHostCount", "Maximum"),
        threshold=0,
        comparison=Gt,
        evaluation_periods=3,
    )
    alerts.alarm(
        area=EXPERIMENTATION_AREA,
        name="ablaze-5xx",
        title="ABlaze 5xx answers",
        description="The ABlaze API answered with server errors",
        metric=target_metric("HTTPCode_Target_5XX_Count", "Sum"),
        threshold=0,
        comparison=Gt,
        evaluation_periods=2,
    )
    for table, label in (
        (service.tables.experiments, "experiments"),
        (service.tables.results, "results"),
    ):
        facade.monitor_dynamo_table(
            table=table,
            alarm_friendly_name=f"ablaze-{label}-table",
            human_readable_name=f"ABlaze {label} table",
            add_system_error_count_alarm={"SystemErrors": ErrorCountThreshold(max_error_count=0)},
        )


def report_training_events(
    scope: Construct, *, alerts: AlertTarget, job_name_prefix: str, dead_letter_queue: sqs.IQueue
) -> list[events.Rule]:
    """Training jobs that fail or lose their spot capacity, each reported with its reason to
    the alert topic; SageMaker has no per-account metric to alarm on, only these events."""
    rules = []
    for construct_id, what, detail in (
        ("TrainingFailed", "failed", {"TrainingJobStatus": ["Failed"]}),
        ("TrainingInterrupted", "lost its spot capacity", {"SecondaryStatus": ["Interrupted"]}),
    ):
        rule = events.Rule(
            scope,
            construct_id,
            description=f"A training job of {job_name_prefix} that {what}",
            event_pattern=events.EventPattern(
                source=["aws.sagemaker"],
                detail_type=["SageMaker Training Job State Change"],
                detail={
                    "TrainingJobName": [{"prefix": job_name_prefix}],
                    **detail,
                },
            ),
            targets=[
                targets.SnsTopic(
                    alerts.topic,
                    message=events.RuleTargetInput.from_object(
                        {
                            "alert": f"training job {what}",
                            "job": events.EventField.from_path("$.detail.TrainingJobName"),
                            "status": events.EventField.from_path("$.detail.TrainingJobStatus"),
                            "secondary_status": events.EventField.from_path(
                                "$.detail.SecondaryStatus"
                            ),
                            "reason": events.EventField.from_path("$.detail.FailureReason"),
                        }
                    ),
                    dead_letter_queue=dead_letter_queue,
                    retry_attempts=8,
                )
            ],
        )
        alerts.dashboard("training").add_widget(
            cloudwatch.GraphWidget(
                title=f"Training jobs that {what}",
                left=[
                    cloudwatch.Metric(
                        namespace="AWS/Events",
                        metric_name="TriggeredRules",
                        dimensions_map={"RuleName": rule.rule_name},
                        statistic="Sum",
                        period=Duration.hours(1),
                    )
                ],
                width=12,
            )
        )
        rules.append(rule)
    return rules


class Overview(PlatformContainer):
    """The overview dashboard: the state of every alarm of the platform, and the way to each
    area's dashboard. Built last, from the alarms the app holds, so an area that is disabled
    or absent in config leaves nothing behind."""

    container = "monitoring"
    stereotype = "ml-monitoring"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name_prefix: str,
        alarm_names: Iterable[str],
        areas: Iterable[str],
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        names = sorted(alarm_names)
        alarms = [
            cloudwatch.Alarm.from_alarm_arn(
                self,
                name,
                stack.format_arn(
                    service="cloudwatch",
                    resource="alarm",
                    resource_name=name,
                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                ),
            )
            for name in names
        ]
        links = "\n".join(
            f"- [{area}](#dashboards:name={dashboard_name(name_prefix, area)})"
            for area in sorted(set(areas))
        )
        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            dashboard_name=dashboard_name(name_prefix, "overview"),
            widgets=[
                [
                    cloudwatch.TextWidget(
                        markdown=f"# {name_prefix}\nDashboards of each area:\n{links}",
                        width=24,
                        height=2 + len(set(areas)),
                    )
                ],
                [
                    cloudwatch.AlarmStatusWidget(
                        title="Every alarm of the platform",
                        alarms=alarms,
                        width=24,
                        height=max(3, len(alarms) // 2 + 2),
                        sort_by=cloudwatch.AlarmStatusWidgetSortBy.STATE_UPDATED_TIMESTAMP,
                    )
                ],
            ],
        )


def platform_alarm_names(root: IConstruct, name_prefix: str) -> list[str]:
    """Names of the alarms under `root` that belong to the platform (named `<prefix>-...`);
    the scaling alarms that auto scaling makes for itself carry no such name."""
    names = []
    for found in root.node.find_all():
        if isinstance(found, cloudwatch.CfnAlarm):
            name = found.alarm_name
            if isinstance(name, str) and name.startswith(f"{name_prefix}-"):
                names.append(name)
    return names


def dashboard_areas(root: IConstruct, name_prefix: str) -> list[str]:
    """The areas whose dashboards (`<prefix>-<area>`) the app under `root` holds."""
    areas = []
    for found in root.node.find_all():
        if isinstance(found, cloudwatch.CfnDashboard):
            name = found.dashboard_name
            if isinstance(name, str) and name.startswith(f"{name_prefix}-"):
                areas.append(name.removeprefix(f"{name_prefix}-"))
    return areas


def _friendly(function: PlatformFunction) -> str:
    """A short, unique alarm name part from the function's path below its stack."""
    path = function.node.path.split("/", 1)[-1]
    return "fn-" + "-".join(part.lower() for part in path.split("/") if part != "Function")
