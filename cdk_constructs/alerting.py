"""The platform's one alert path: an encrypted SNS topic that alarms and failure events reach.

Part of the Monitoring container: every alarm of every stack notifies this topic, and every
failed, timed-out or aborted workflow run is published to it, so a person subscribed here hears
of each failure once. Alarms are made one way, through the stack's :class:`AlertTarget`, whose
cdk-monitoring-constructs facades also draw each area's dashboard.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from cdk_monitoring_constructs import (
    AlarmFactoryDefaults,
    CustomMetricGroup,
    CustomMetricWithAlarm,
    CustomThreshold,
    DefaultDashboardFactory,
    MaxMessageCountThreshold,
    MonitoringFacade,
    SnsAlarmActionStrategy,
)
from constructs import Construct

from cdk_constructs.base import PlatformContainer, acknowledge, acknowledge_wildcard_grants

# Every way a Step Functions run can end without succeeding; a Catch inside a machine sees
# only failures, so the status events are what reports time-outs and aborts.
UNSUCCESSFUL_RUNS = ("FAILED", "TIMED_OUT", "ABORTED")
# The AWS services that publish to the topic (alarm actions, rule targets) and that deliver to
# the platform's dead-letter queues, encrypting with the alert key as they do.
# Prometheus's alert manager publishes the serving rules' alerts.
ALERT_PUBLISHERS = ("cloudwatch.amazonaws.com", "events.amazonaws.com", "aps.amazonaws.com")
# An alarm of the facades' defaults fires on three breaching five-minute figures in a row: a
# blip a person cannot act on does not page them.
DEFAULT_EVALUATION_PERIODS = 3


def alarm_name(name_prefix: str, area: str, name: str) -> str:
    """Every alarm's name: deterministic, so the overview dashboard lists alarms of stacks
    deployed after it without cross-stack exports."""
    return f"{name_prefix}-{area}-{name}"


def dashboard_name(name_prefix: str, area: str) -> str:
    return f"{name_prefix}-{area}"


def alert_topic_name(name_prefix: str) -> str:
    return f"{name_prefix}-alerts"


def alert_key_alias(name_prefix: str) -> str:
    return f"alias/{name_prefix}/alerts"


class Alerting(PlatformContainer):
    """The alert topic, its KMS key and its subscribers.

    Secure defaults:
    - the topic is encrypted with its own customer-managed key (rotation on) whose policy lets
      CloudWatch alarms and EventBridge use it only on behalf of this account, so the services
      that publish can (an encrypted topic the publisher cannot use drops the very message
      that reports a failure);
    - the topic accepts TLS only;
    - the same key encrypts the platform's dead-letter queues, which EventBridge writes to.
    """

    container = "monitoring"
    stereotype = "ml-monitoring"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name_prefix: str,
        emails: list[str],
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        account = Stack.of(self).account
        self.key = kms.Key(
            self,
            "Key",
            alias=alert_key_alias(name_prefix),
            description="Encrypts the ML platform's alerts and dead letters",
            enable_key_rotation=True,
            removal_policy=removal_policy,
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AlertPublishers",
                principals=[iam.ServicePrincipal(service) for service in ALERT_PUBLISHERS],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": account}},
            )
        )
        self.topic = sns.Topic(
            self,
            "Topic",
            topic_name=alert_topic_name(name_prefix),
            display_name=f"{name_prefix} alerts",
            master_key=self.key,
            enforce_ssl=True,
        )
        # Rules and alarms of the other stacks import the topic by name, so the CDK cannot add
        # their publish permissions here; this account's alarms and rules may publish.
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AlertPublishers",
                principals=[iam.ServicePrincipal(service) for service in ALERT_PUBLISHERS],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={"StringEquals": {"aws:SourceAccount": account}},
            )
        )
        for address in emails:
            self.topic.add_subscription(subscriptions.EmailSubscription(address))


class AreaMonitoring(PlatformContainer):
    """One area's dashboard (`<prefix>-<area>`) and the factory of its alarms (named
    `<prefix>-<area>-...`, notifying the alert topic on ALARM and on OK)."""

    container = "monitoring"
    stereotype = "ml-monitoring"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name_prefix: str,
        area: str,
        topic: sns.ITopic,
    ) -> None:
        super().__init__(scope, construct_id)
        action = SnsAlarmActionStrategy(on_alarm_topic=topic, on_ok_topic=topic)
        self.facade = MonitoringFacade(
            self,
            "Facade",
            alarm_factory_defaults=AlarmFactoryDefaults(
                alarm_name_prefix=f"{name_prefix}-{area}",
                actions_enabled=True,
                action=action,
                evaluation_periods=DEFAULT_EVALUATION_PERIODS,
                datapoints_to_alarm=DEFAULT_EVALUATION_PERIODS,
            ),
            dashboard_factory=DefaultDashboardFactory(
                self,
                "Dashboards",
                dashboard_name_prefix=dashboard_name(name_prefix, area),
                create_dashboard=True,
                create_summary_dashboard=False,
                create_alarm_dashboard=False,
            ),
        )


class AlertTarget:
    """What a stack needs to alert: the topic and key, imported by their deterministic names
    so a stack depends on the alerting stack without cross-stack exports, and the monitoring
    facade of the stack's area (its dashboard and the one way its alarms are made)."""

    def __init__(self, scope: Construct, *, name_prefix: str, area: str) -> None:
        stack = Stack.of(scope)
        self.topic = sns.Topic.from_topic_arn(
            scope,
            "AlertTopic",
            stack.format_arn(service="sns", resource=alert_topic_name(name_prefix)),
        )
        self.key_alias = alert_key_alias(name_prefix)
        self.key = kms.Alias.from_alias_name(scope, "AlertKey", self.key_alias)
        self._scope = scope
        self._name_prefix = name_prefix
        self._facades: dict[str, MonitoringFacade] = {}
        self.area = area
        self.monitoring = self.dashboard(area)

    def dashboard(self, area: str) -> MonitoringFacade:
        """The facade of `area` in this stack: one dashboard `<prefix>-<area>`, and alarms named
        `<prefix>-<area>-...` that notify the alert topic on ALARM and on OK."""
        facade = self._facades.get(area)
        if facade is None:
            ident = "".join(part.title() for part in area.split("-"))
            facade = AreaMonitoring(
                self._scope,
                f"{ident}Monitoring",
                name_prefix=self._name_prefix,
                area=area,
                topic=self.topic,
            ).facade
            self._facades[area] = facade
        return facade

    def alarm(
        self,
        *,
        name: str,
        title: str,
        description: str,
        metric: cloudwatch.IMetric,
        threshold: float,
        comparison: cloudwatch.ComparisonOperator,
        evaluation_periods: int = 1,
        datapoints_to_alarm: int | None = None,
        treat_missing_data: cloudwatch.TreatMissingData = cloudwatch.TreatMissingData.NOT_BREACHING,
        area: str | None = None,
    ) -> cloudwatch.AlarmBase:
        """An alarm on one metric (or expression), drawn on the area's dashboard, that
        notifies the alert topic; named `<prefix>-<area>-<name>`."""
        area = area or self.area
        facade = self.dashboard(area)
        facade.monitor_custom(
            alarm_friendly_name=name,
            human_readable_name=title,
            metric_groups=[
                CustomMetricGroup(
                    title=title,
                    metrics=[
                        CustomMetricWithAlarm(
                            metric=metric,
                            alarm_friendly_name=name,
                            add_alarm={
                                "Alarm": CustomThreshold(
                                    threshold=threshold,
                                    comparison_operator=comparison,
                                    alarm_name_override=alarm_name(self._name_prefix, area, name),
                                    alarm_description_override=description,
                                    evaluation_periods=evaluation_periods,
                                    datapoints_to_alarm=datapoints_to_alarm or evaluation_periods,
                                    treat_missing_data_override=treat_missing_data,
                                )
                            },
                        )
                    ],
                )
            ],
        )
        # The factory names the alarm's construct after the alarm (reading the facade's list
        # of alarms back would cost a pass over every alarm of the area per alarm).
        return facade.node.find_child(alarm_name(self._name_prefix, area, name))

    def notify(self, alarm: cloudwatch.Alarm) -> cloudwatch.Alarm:
        """Send the state changes (into ALARM and back to OK) of an alarm made elsewhere to
        the alert topic, and draw it on the area's dashboard: for alarms another service
        reads by name, such as ECS's rollback alarms."""
        action = cloudwatch_actions.SnsAction(self.topic)
        alarm.add_alarm_action(action)
        alarm.add_ok_action(action)
        self.monitoring.add_widget(cloudwatch.AlarmWidget(alarm=alarm, title=alarm.alarm_name))
        return alarm

    def grant_encrypt(self, grantee: iam.IGrantable) -> None:
        """Send to the encrypted dead-letter queues: use of the alert key, matched by its
        alias because the key's id is not known outside its stack."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=[
                    Stack.of(self._scope).format_arn(
                        service="kms", resource="key", resource_name="*"
                    )
                ],
                conditions={"ForAnyValue:StringEquals": {"kms:ResourceAliases": self.key_alias}},
            )
        )
        acknowledge_wildcard_grants(
            grantee.grant_principal,
            {
                r"Resource::arn:.*:kms:.*:key/\*": (
                    "Any key id, but a condition on kms:ResourceAliases admits only the "
                    "platform's alert key, whose id is not known outside its stack."
                )
            },
        )

    def report_unsuccessful_runs(
        self,
        scope: Construct,
        construct_id: str,
        *,
        state_machines: list[sfn.IStateMachine],
        what: str,
        dead_letter_queue: sqs.IQueue,
    ) -> events.Rule:
        """One rule that publishes every failed, timed-out or aborted run of these state
        machines, with its error and cause, to the alert topic."""
        return events.Rule(
            scope,
            construct_id,
            description=f"Every {what} run that fails, times out or is aborted",
            event_pattern=events.EventPattern(
                source=["aws.states"],
                detail_type=["Step Functions Execution Status Change"],
                detail={
                    "status": list(UNSUCCESSFUL_RUNS),
                    "stateMachineArn": [m.state_machine_arn for m in state_machines],
                },
            ),
            targets=[
                targets.SnsTopic(
                    self.topic,
                    message=events.RuleTargetInput.from_object(
                        {
                            "alert": f"{what} run did not succeed",
                            "status": events.EventField.from_path("$.detail.status"),
                            "execution": events.EventField.from_path("$.detail.executionArn"),
                            "error": events.EventField.from_path("$.detail.error"),
                            "cause": events.EventField.from_path("$.detail.cause"),
                        }
                    ),
                    dead_letter_queue=dead_letter_queue,
                    retry_attempts=8,
                )
            ],
        )

    def dead_letter_queue(self, scope: Construct, construct_id: str, *, purpose: str) -> sqs.Queue:
        """An encrypted dead-letter queue in `scope` (the construct it serves, whose container
        it belongs to) whose depth alarms through the alert topic."""
        queue = sqs.Queue(
            scope,
            construct_id,
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.key,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        acknowledge(
            queue,
            "AwsSolutions-SQS3",
            "This queue is itself the dead-letter queue of EventBridge and Scheduler targets; "
            "a queue behind it would only move the same undelivered events.",
        )
        self.monitoring.monitor_sqs_queue(
            queue=queue,
            alarm_friendly_name=f"dlq-{_slug(purpose)}",
            human_readable_name=f"Dead letters of {purpose}",
            add_queue_max_size_alarm={
                "Undelivered": MaxMessageCountThreshold(
                    max_message_count=0,
                    evaluation_periods=1,
                    datapoints_to_alarm=1,
                    alarm_name_override=alarm_name(
                        self._name_prefix, self.area, f"dlq-{_slug(purpose)}"
                    ),
                    alarm_description_override=(
                        f"Undelivered events in the dead-letter queue of {purpose}"
                    ),
                )
            },
        )
        return queue


def _slug(text: str) -> str:
    """Lowercase words joined by dashes: a readable, alarm-name-safe form of a purpose."""
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())
