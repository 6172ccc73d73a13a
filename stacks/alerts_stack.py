from __future__ import annotations

from aws_cdk import Stack
from constructs import Construct

from cdk_constructs.alerting import Alerting
from cdk_constructs.base import stateful_removal_policy
from platform_config import PlatformConfig


class AlertsStack(Stack):
    """The alert topic every other stack notifies; it depends on nothing, so it deploys first
    beside the network and data stacks, and stacks that alarm depend on it."""

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
