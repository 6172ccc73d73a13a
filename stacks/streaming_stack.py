from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from cdk_constructs.base import stateful_removal_policy
from cdk_constructs.kafka_cluster import KafkaCluster
from platform_config import PlatformConfig
from stacks.data_stack import DataStack
from stacks.network_stack import NetworkStack


class StreamingStack(Stack):
    """Stateful event streaming: the MSK cluster and its topics.

    In a protected environment the stack has termination protection and the cluster is
    retained if the stack is ever deleted.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PlatformConfig,
        network: NetworkStack,
        data: DataStack,
        **kwargs,
    ):
        super().__init__(
            scope, construct_id, termination_protection=config.protect_stateful_resources, **kwargs
        )
        self.kafka = KafkaCluster(
            self,
            "Kafka",
            config=config.kafka,
            cluster_name=f"{config.resource_prefix}-events",
            vpc=network.network.vpc,
            subnets=network.network.data_subnets,
            brokers_per_zone=config.kafka.brokers_per_zone,
            encryption_key=data.data_lake.key,
            bootstrap_parameter_name=f"/{config.resource_prefix}/kafka/bootstrap-brokers",
            removal_policy=stateful_removal_policy(protect=config.protect_stateful_resources),
        )
        CfnOutput(self, "KafkaClusterArn", value=self.kafka.cluster.cluster_arn)
        CfnOutput(self, "KafkaBootstrapBrokers", value=self.kafka.bootstrap_brokers)
        CfnOutput(
            self,
            "KafkaBootstrapParameter",
            value=self.kafka.bootstrap_parameter.parameter_name,
        )
