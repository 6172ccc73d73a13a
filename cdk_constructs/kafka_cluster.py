"""Apache Kafka container: an Amazon MSK provisioned cluster with IAM access control."""

from __future__ import annotations

import re

import aws_cdk.aws_msk_alpha as msk_alpha
from aws_cdk import Fn, RemovalPolicy, Stack
from aws_cdk import aws_applicationautoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_msk as msk
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk_constructs.base import (
    PlatformContainer,
    acknowledge,
    acknowledge_wildcard_grants,
    log_retention,
)
from cdk_constructs.function import encrypt_deploy_handler_logs, skip_checkov_for_deploy_handler
from platform_config.model import KafkaConfig

# Port of the SASL/IAM listener inside the VPC.
IAM_AUTH_PORT = ec2.Port.tcp(9098)

_KAFKA_VERSIONS = {"3.8.x": msk_alpha.KafkaVersion.V3_8_X, "3.9.x": msk_alpha.KafkaVersion.V3_9_X}

# Construct id of the CDK's AwsCustomResource provider Lambda (fixed by the CDK).
_AWS_CUSTOM_RESOURCE_SINGLETON = "AWS679f53fac002430cb0da5b7982bd2287"

# Storage auto-scaling grows volumes when average disk use crosses this percentage.
_STORAGE_TARGET_UTILIZATION = 60


class KafkaCluster(PlatformContainer):
    """MSK cluster for the platform's event topics.

    Secure defaults:
    - IAM access control only: no unauthenticated or SASL/SCRAM clients, no plaintext listener;
    - TLS between clients and brokers and between brokers;
    - storage encrypted with the platform's customer-managed KMS key;
    - brokers in the isolated data subnets, behind a security group that admits the IAM port
      only from clients wired in with `allow_clients` and the configured producer networks;
    - replication factor and min in-sync replicas enforced through an MSK configuration, and
      automatic topic creation off so topics exist only as declared;
    - broker logs to an encrypted CloudWatch log group;
    - bootstrap brokers read from the cluster by the L2's custom resource and published in
      SSM, never typed by hand.
    """

    container = "kafka"
    stereotype = "event-streaming"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: KafkaConfig,
        cluster_name: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        brokers_per_zone: int,
        encryption_key: kms.IKey,
        bootstrap_parameter_name: str,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self.cluster_name = cluster_name
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description=f"MSK brokers of {cluster_name}: IAM-auth clients only",
            allow_all_outbound=False,
        )
        for cidr in config.producer_cidrs:
            self.security_group.add_ingress_rule(
                ec2.Peer.ipv4(cidr), IAM_AUTH_PORT, "Event producers of the streaming platform"
            )

        broker_settings = _server_properties(config)
        self.configuration = msk.CfnConfiguration(
            self,
            "Configuration",
            name=f"{cluster_name}-brokers",
            description="Durability settings of the platform's brokers",
            kafka_versions_list=[config.kafka_version],
            server_properties=broker_settings,
        )

        log_group = logs.LogGroup(
            self,
            "BrokerLogs",
            encryption_key=encryption_key,
            retention=log_retention(config.log_retention_days),
            removal_policy=removal_policy,
        )
        self.cluster = msk_alpha.Cluster(
            self,
            "Cluster",
            cluster_name=cluster_name,
            kafka_version=_KAFKA_VERSIONS[config.kafka_version],
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[self.security_group],
            # MSK counts brokers per availability zone of the subnets.
            number_of_broker_nodes=brokers_per_zone,
            instance_type=ec2.InstanceType(config.broker_instance_type.removeprefix("kafka.")),
            ebs_storage_info=msk_alpha.EbsStorageInfo(
                volume_size=config.ebs_volume_gib, encryption_key=encryption_key
            ),
            encryption_in_transit=msk_alpha.EncryptionInTransitConfig(
                client_broker=msk_alpha.ClientBrokerEncryption.TLS, enable_in_cluster=True
            ),
            client_authentication=msk_alpha.ClientAuthentication.sasl(iam=True),
            configuration_info=msk_alpha.ClusterConfigurationInfo(
                arn=self.configuration.attr_arn,
                revision=self.configuration.attr_latest_revision_revision,
            ),
            logging=msk_alpha.BrokerLogging(cloudwatch_log_group=log_group),
            monitoring=msk_alpha.MonitoringConfiguration(
                cluster_monitoring_level=msk_alpha.ClusterMonitoringLevel(config.monitoring_level)
            ),
            removal_policy=removal_policy,
        )
        acknowledge(
            self.cluster,
            "AwsSolutions-MSK6",
            "Broker logs go to a KMS-encrypted CloudWatch log group (BrokerLogs); the rule "
            "looks only for S3 or Firehose delivery.",
        )

        if config.storage_autoscaling_max_gib is not None:
            target = autoscaling.ScalableTarget(
                self,
                "StorageScaling",
                service_namespace=autoscaling.ServiceNamespace.KAFKA,
                resource_id=self.cluster.cluster_arn,
                scalable_dimension="kafka:broker-storage:VolumeSize",
                min_capacity=config.ebs_volume_gib,
                max_capacity=config.storage_autoscaling_max_gib,
            )
            target.scale_to_track_metric(
                "StorageUtilization",
                target_value=_STORAGE_TARGET_UTILIZATION,
                predefined_metric=autoscaling.PredefinedMetric.KAFKA_BROKER_STORAGE_UTILIZATION,
                disable_scale_in=True,
            )

        self.topics: dict[str, msk.CfnTopic] = {}
        for topic in config.topics:
            resource = msk.CfnTopic(
                self,
                f"Topic{''.join(p.capitalize() for p in topic.name.replace('.', '-').split('-'))}",
                cluster_arn=self.cluster.cluster_arn,
                topic_name=topic.name,
                partition_count=topic.partitions,
                replication_factor=config.replication_factor,
                configs=Fn.base64(
                    f"retention.ms={topic.retention_hours * 3_600_000}\n"
                    f"min.insync.replicas={config.min_insync_replicas}\n"
                ),
            )
            resource.apply_removal_policy(removal_policy)
            self.topics[topic.name] = resource

        self.bootstrap_brokers = self.cluster.bootstrap_brokers_sasl_iam
        # The L2 reads the brokers with an AwsCustomResource, whose Lambda is a stack singleton.
        reader = Stack.of(self).node.find_child(_AWS_CUSTOM_RESOURCE_SINGLETON)
        acknowledge(
            reader.node.find_child("ServiceRole"),
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AWSLambdaBasicExecutionRole]",
            "The CDK's bootstrap-broker reader Lambda only writes its own CloudWatch logs "
            "with this AWS basic execution policy.",
        )
        encrypt_deploy_handler_logs(reader, encryption_key)
        skip_checkov_for_deploy_handler(reader, what="reads the cluster's bootstrap brokers")
        self.bootstrap_parameter = ssm.StringParameter(
            self,
            "BootstrapBrokers",
            parameter_name=bootstrap_parameter_name,
            description=f"SASL/IAM bootstrap brokers of {cluster_name}",
            string_value=self.bootstrap_brokers,
        )

    def _arn(self, resource: str, name: str) -> str:
        # Topic and group ARNs embed the cluster's UUID, known only once it exists; cluster
        # names are unique per account and region, so `*` there matches this cluster only.
        return Stack.of(self).format_arn(
            service="kafka", resource=resource, resource_name=f"{self.cluster_name}/*/{name}"
        )

    def acknowledge_client_grants(self, grantee: iam.IRole) -> None:
        """Accept the cluster-UUID wildcard of this cluster's topic and group ARNs."""
        acknowledge_wildcard_grants(
            grantee,
            {
                rf"Resource::arn:.*:kafka:.*:(topic|group)/{re.escape(self.cluster_name)}/\*/"
                r"[A-Za-z0-9._-]+": (
                    "Topic and group ARNs of this MSK cluster by name; the wildcard stands only "
                    "for the cluster UUID, which exists once the cluster does."
                )
            },
        )

    def allow_clients(self, clients: ec2.IConnectable, description: str) -> None:
        """Open the IAM-auth port to `clients` (their side of an arrow to Kafka).

        The rules live in the clients' stack, which already depends on this one, so a client
        stack can come and go without touching the brokers' stack.
        """
        for group in clients.connections.security_groups:
            self.security_group.add_ingress_rule(group, IAM_AUTH_PORT, description, True)

    def grant_consume(self, grantee: iam.IGrantable, *, topic: str, group: str) -> iam.Grant:
        """Read `topic` as consumer group `group`, with MSK IAM auth."""
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=[
                "kafka-cluster:Connect",
                "kafka-cluster:DescribeCluster",
                "kafka-cluster:DescribeTopic",
                "kafka-cluster:ReadData",
                "kafka-cluster:DescribeGroup",
                "kafka-cluster:AlterGroup",
            ],
            resource_arns=[
                self.cluster.cluster_arn,
                self._arn("topic", topic),
                self._arn("group", group),
            ],
        )

    def grant_produce(self, grantee: iam.IGrantable, *, topic: str) -> iam.Grant:
        """Write to `topic`, with MSK IAM auth."""
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=[
                "kafka-cluster:Connect",
                "kafka-cluster:DescribeTopic",
                "kafka-cluster:WriteData",
            ],
            resource_arns=[self.cluster.cluster_arn, self._arn("topic", topic)],
        )


def _server_properties(config: KafkaConfig) -> str:
    return "\n".join(
        [
            "auto.create.topics.enable=false",
            f"default.replication.factor={config.replication_factor}",
            f"min.insync.replicas={config.min_insync_replicas}",
            "unclean.leader.election.enable=false",
            f"num.partitions={min(t.partitions for t in config.topics)}",
        ]
    )
