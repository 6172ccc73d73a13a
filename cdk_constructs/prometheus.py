"""Prometheus as the diagram draws it: an Amazon Managed Service for Prometheus workspace that
the serving tasks' OpenTelemetry collectors write to, alert rules for serving that page
through the platform's alert topic, and (behind a switch) Amazon Managed Grafana over it.

The serving stacks find the workspace through two SSM parameters with deterministic names,
resolved at deploy, so they depend on the alerting stack without cross-stack exports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_aps as aps
from aws_cdk import aws_grafana as grafana
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk_constructs.base import (
    PlatformContainer,
    acknowledge_wildcard_grants,
    log_retention,
    skip_checkov,
)
from platform_config.model import CanaryConfig

# The serving app's Prometheus metric names (serving/recommender_service/prometheus.py).
REQUESTS = "recommender_requests_total"
LATENCY = "recommender_request_latency_seconds"
# Outcomes of a request: ok, a fallback kind, or error (answered 5xx).
ERROR_OUTCOME = "error"
FALLBACK_OUTCOMES = ("popularity", "store_timeout", "store_unavailable")
SCRAPE_JOB = "recommender-serving"


def remote_write_parameter_name(name_prefix: str) -> str:
    return f"/{name_prefix}/monitoring/prometheus-remote-write-url"


def workspace_arn_parameter_name(name_prefix: str) -> str:
    return f"/{name_prefix}/monitoring/prometheus-workspace-arn"


@dataclass(frozen=True)
class PrometheusSink:
    """Where a serving task's collector writes, as a serving stack resolves it at deploy."""

    remote_write_url: str
    workspace_arn: str

    @classmethod
    def lookup(cls, *, name_prefix: str) -> PrometheusSink:
        """SSM dynamic references, resolved at each deploy: unlike stack parameters, they
        leave the model stacks' parameter list (which delivery sets) unchanged."""
        return cls(
            remote_write_url=_ssm_reference(remote_write_parameter_name(name_prefix)),
            workspace_arn=_ssm_reference(workspace_arn_parameter_name(name_prefix)),
        )

    def grant_remote_write(self, grantee: iam.IGrantable) -> None:
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["aps:RemoteWrite"], resources=[self.workspace_arn])
        )


def serving_rules(canary: CanaryConfig) -> dict:
    """The workspace's alert rules for serving, in Prometheus's rule-file format. The
    thresholds are the canary's rollback thresholds: what rolls a deployment back also pages
    when it happens outside one."""
    error_share = (
        f'sum by (model) (rate({REQUESTS}{{outcome="{ERROR_OUTCOME}"}}[5m])) '
        f"/ sum by (model) (rate({REQUESTS}[5m]))"
    )
    p99_seconds = f"histogram_quantile(0.99, sum by (model, le) (rate({LATENCY}_bucket[5m])))"
    fallback_share = (
        f'sum by (model) (rate({REQUESTS}{{outcome=~"{"|".join(FALLBACK_OUTCOMES)}"}}[15m])) '
        f"/ sum by (model) (rate({REQUESTS}[15m]))"
    )
    return {
        "groups": [
            {
                "name": "serving",
                "rules": [
                    {
                        "alert": "ServingErrorRate",
                        "expr": f"100 * {error_share} > {canary.alarm_5xx_percent:g}",
                        "for": "5m",
                        "labels": {"severity": "page"},
                        "annotations": {
                            "summary": (
                                f"{{{{ $labels.model }}}}: more than "
                                f"{canary.alarm_5xx_percent:g} % of requests fail"
                            )
                        },
                    },
                    {
                        "alert": "ServingP99Latency",
                        "expr": f"1000 * {p99_seconds} > {canary.alarm_p99_latency_ms}",
                        "for": "5m",
                        "labels": {"severity": "page"},
                        "annotations": {
                            "summary": (
                                f"{{{{ $labels.model }}}}: p99 latency above "
                                f"{canary.alarm_p99_latency_ms} ms"
                            )
                        },
                    },
                    {
                        "alert": "ServingMostlyFallbacks",
                        "expr": f"{fallback_share} > 0.5",
                        "for": "15m",
                        "labels": {"severity": "page"},
                        "annotations": {
                            "summary": (
                                "{{ $labels.model }}: most answers are fallbacks (unknown "
                                "members or an unreachable store), not the model's ranking"
                            )
                        },
                    },
                    {
                        "alert": "ServingMetricsAbsent",
                        "expr": f'absent(up{{job="{SCRAPE_JOB}"}})',
                        "for": "15m",
                        "labels": {"severity": "page"},
                        "annotations": {
                            "summary": "No serving task has reported metrics for 15 minutes"
                        },
                    },
                ],
            }
        ]
    }


class PrometheusWorkspace(PlatformContainer):
    """The workspace, its serving alert rules and the alert manager that sends what fires to
    the alert topic.

    Secure defaults: writers need `aps:RemoteWrite` on this workspace (granted per serving
    task role), the alert manager publishes only to the platform's topic (whose policy admits
    the service only for this account), rule-evaluation and alert-manager errors go to a log
    group with retention.
    """

    container = "monitoring"
    stereotype = "ml-monitoring"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name_prefix: str,
        alert_topic: sns.ITopic,
        canary: CanaryConfig,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        region = Stack.of(self).region
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=log_retention(log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        skip_checkov(
            self.log_group,
            "CKV_AWS_158",
            "Holds only rule-evaluation and alert-manager errors, no platform data; "
            "CloudWatch Logs encrypts it at rest with its service key.",
        )
        alert_manager = {
            "alertmanager_config": _yaml_block(
                {
                    "route": {"receiver": "platform", "group_by": ["alertname", "model"]},
                    "receivers": [
                        {
                            "name": "platform",
                            "sns_configs": [
                                {
                                    "topic_arn": alert_topic.topic_arn,
                                    "sigv4": {"region": region},
                                    "subject": "Serving alert from Prometheus",
                                }
                            ],
                        }
                    ],
                }
            )
        }
        self.workspace = aps.CfnWorkspace(
            self,
            "Workspace",
            alias=f"{name_prefix}-metrics",
            alert_manager_definition=_yaml_block(alert_manager),
            logging_configuration=aps.CfnWorkspace.LoggingConfigurationProperty(
                log_group_arn=self.log_group.log_group_arn
            ),
        )
        self.rules = aps.CfnRuleGroupsNamespace(
            self,
            "ServingRules",
            workspace=self.workspace.attr_arn,
            name="serving",
            data=_yaml_block(serving_rules(canary)),
        )
        self.remote_write_url = f"{self.workspace.attr_prometheus_endpoint}api/v1/remote_write"
        ssm.StringParameter(
            self,
            "RemoteWriteUrl",
            parameter_name=remote_write_parameter_name(name_prefix),
            string_value=self.remote_write_url,
            description="Where the serving tasks' collectors write their metrics",
        )
        ssm.StringParameter(
            self,
            "WorkspaceArn",
            parameter_name=workspace_arn_parameter_name(name_prefix),
            string_value=self.workspace.attr_arn,
            description="The Prometheus workspace the serving tasks may write to",
        )


class GrafanaWorkspace(PlatformContainer):
    """Amazon Managed Grafana over the Prometheus workspace and CloudWatch.

    Secure defaults: users sign in through IAM Identity Center (no local users), the
    workspace role may only query this account's Prometheus workspace and read CloudWatch.
    """

    container = "monitoring"
    stereotype = "ml-monitoring"

    def __init__(
        self, scope: Construct, construct_id: str, *, name_prefix: str, workspace_arn: str
    ) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("grafana.amazonaws.com"),
            description=f"{name_prefix} Grafana: query Prometheus, read CloudWatch",
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "aps:QueryMetrics",
                    "aps:GetLabels",
                    "aps:GetSeries",
                    "aps:GetMetricMetadata",
                    "aps:DescribeWorkspace",
                ],
                resources=[workspace_arn],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "cloudwatch:DescribeAlarms",
                    "cloudwatch:GetMetricData",
                    "cloudwatch:ListMetrics",
                ],
                resources=["*"],
            )
        )
        acknowledge_wildcard_grants(
            self.role,
            {
                r"Resource::\*": (
                    "CloudWatch's GetMetricData, ListMetrics and DescribeAlarms take no "
                    "resource; Grafana reads metrics and alarms, it changes nothing."
                )
            },
        )
        self.workspace = grafana.CfnWorkspace(
            self,
            "Workspace",
            name=f"{name_prefix}-grafana",
            account_access_type="CURRENT_ACCOUNT",
            authentication_providers=["AWS_SSO"],
            permission_type="CUSTOMER_MANAGED",
            role_arn=self.role.role_arn,
            data_sources=["PROMETHEUS", "CLOUDWATCH"],
            description=f"{name_prefix}: dashboards over Prometheus and CloudWatch",
        )


def _yaml_block(document: dict) -> str:
    """YAML for the service (JSON is YAML), keeping CDK tokens intact inside the string."""
    return json.dumps(document, indent=2)


def _ssm_reference(parameter_name: str) -> str:
    return f"{{{{resolve:ssm:{parameter_name}}}}}"
