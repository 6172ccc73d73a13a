from __future__ import annotations

from aws_cdk import Stack
from constructs import Construct

from cdk_constructs.alerting import Alerting
from cdk_constructs.base import stateful_removal_policy
from cdk_constructs.prometheus import GrafanaWorkspace, PrometheusWorkspace
from platform_config import PlatformConfig


class AlertsStack(Stack):
    """The Monitoring container's shared part: the alert topic every other stack notifies,
    the Prometheus workspace the serving tasks write to (with Grafana over it when enabled)
    and the overview dashboard. It depends on nothing, so it deploys first beside the network
    and data stacks, and stacks that alarm depend on it."""

    def __init__(self, scope: Construct, construct_id: str, *, config: PlatformConfig, **kwargs):
        super().__init__(scope, construct_id, **kwargs)
        self.alerting = Alerting(
            self,
            "Alerting",
            name_prefix=config.resource_prefix,
            emails=config.alerts.emails,
            # Retaining the key keeps queued dead letters readable after a teardown.
            removal_policy=stateful_removal_policy(protect=config.protect_stateful_resources),
        )
        monitoring = config.monitoring
        self.prometheus: PrometheusWorkspace | None = None
        if monitoring.prometheus and config.serving.models:
            self.prometheus = PrometheusWorkspace(
                self,
                "Prometheus",
                name_prefix=config.resource_prefix,
                alert_topic=self.alerting.topic,
                canary=config.serving.canary,
                log_retention_days=config.serving.log_retention_days,
            )
            if monitoring.grafana:
                GrafanaWorkspace(
                    self,
                    "Grafana",
                    name_prefix=config.resource_prefix,
                    workspace_arn=self.prometheus.workspace.attr_arn,
                )
