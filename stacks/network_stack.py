from __future__ import annotations

from aws_cdk import Stack
from constructs import Construct

from cdk_constructs.base import stateful_removal_policy
from cdk_constructs.network import Network
from platform_config import PlatformConfig


class NetworkStack(Stack):
    """The VPC. Stateless: it can be torn down and recreated once nothing runs in it."""

    def __init__(self, scope: Construct, construct_id: str, *, config: PlatformConfig, **kwargs):
        super().__init__(scope, construct_id, **kwargs)
        self.network = Network(
            self,
            "Network",
            config=config.network,
            availability_zones=config.availability_zones,
            removal_policy=stateful_removal_policy(protect=config.protect_stateful_resources),
        )
