from __future__ import annotations

from aws_cdk import CfnOutput, Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from cdk_monitoring_constructs import (
    ErrorCountThreshold,
    HighConnectionCountThreshold,
    LatencyThreshold,
    MinUsageCountThreshold,
    UsageThreshold,
)
from constructs import Construct

from cdk_constructs.alerting import AlertTarget
from cdk_constructs.base import stateful_removal_policy
from cdk_constructs.data_lake import bucket_name
from cdk_constructs.metaflow_client import MetaflowClient
from cdk_constructs.metaflow_metadata import MetaflowMetadataService
from cdk_constructs.monitoring import monitor_functions
from platform_config import PlatformConfig
from stacks.data_stack import DataStack
from stacks.network_stack import NetworkStack


class MetaflowStack(Stack):
    """Metaflow: the metadata service (with its PostgreSQL) and the client-side AWS resources.

    Stateful (the metadata database and the Step Functions state table): termination
    protection and retained resources in a protected environment. Wires the diagram's
    Metaflow Client -> Metaflow Metadata arrow: Batch jobs reach the metadata load balancer,
    which admits their security group by name (plus `metaflow.client_cidrs`); people use the
    service URL of the client config, the API Gateway endpoint when one is configured.
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
        self.add_stack_dependency(data)
        protect = config.protect_stateful_resources
        removal_policy = stateful_removal_policy(protect=protect)
        key = data.data_lake.key
        vpc_network = network.network
        # Imported without its key: the client grants the key only through S3 and DynamoDB.
        artifacts = s3.Bucket.from_bucket_attributes(
            self, "ArtifactsBucket", bucket_name=bucket_name(config.bucket_prefix, "artifacts")
        )
        self.metadata = MetaflowMetadataService(
            self,
            "MetaflowMetadata",
            config=config.metaflow,
            vpc=vpc_network.vpc,
            vpc_cidr=config.network.cidr,
            service_subnets=vpc_network.compute_subnets,
            database_subnets=vpc_network.data_subnets,
            auth_key_parameter_name=f"/{config.resource_prefix}/metaflow/auth-key-secret",
            protect=protect,
            removal_policy=removal_policy,
        )
        self.client = MetaflowClient(
            self,
            "MetaflowClient",
            config=config.metaflow,
            name_prefix=config.resource_prefix,
            vpc=vpc_network.vpc,
            subnets=vpc_network.compute_subnets,
            artifacts_bucket=artifacts,
            encryption_key=key,
            service_url=self.metadata.service_url,
            internal_service_url=self.metadata.internal_url,
            config_parameter_name=f"/{config.resource_prefix}/metaflow/config",
            protect=protect,
            removal_policy=removal_policy,
        )
        self.metadata.allow_clients(self.client.compute_security_group, "Metaflow Batch jobs")
        self._monitor(config)
        CfnOutput(self, "MetaflowServiceUrl", value=self.metadata.service_url)
        if self.metadata.auth_key_secret is not None:
            CfnOutput(self, "MetaflowApiKeyId", value=self.metadata.api_key_id)
            CfnOutput(self, "MetaflowApiUsagePlanId", value=self.metadata.usage_plan_id)
            # Data scientists' tool reads the key: the pointer parameter, then the secret.
            # Statements on the policy itself: a grant on the secret would try to edit the key
            # policy, which a managed policy cannot be named in.
            self.client.scientist_policy.add_statements(
                iam.PolicyStatement(
                    actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                    resources=[self.metadata.auth_key_secret.secret_arn],
                ),
                iam.PolicyStatement(
                    actions=["kms:Decrypt"],
                    resources=[self.metadata.key.key_arn],
                    conditions={
                        "StringEquals": {
                            "kms:ViaService": f"secretsmanager.{self.region}.amazonaws.com"
                        }
                    },
                ),
            )
            self.metadata.auth_key_parameter.grant_read(self.client.scientist_policy)
        CfnOutput(
            self, "MetaflowConfigParameter", value=self.client.config_parameter.parameter_name
        )
        CfnOutput(self, "MetaflowConfig", value=self.to_json_string(self.client.client_config))
        CfnOutput(self, "MetaflowGpuQueue", value=self.client.gpu_queue.job_queue_arn)
        CfnOutput(
            self,
            "DataScientistPolicyArn",
            value=self.client.scientist_policy.managed_policy_arn,
        )

    def _monitor(self, config: PlatformConfig) -> None:
        """The metadata area: its database, its tasks, its API and its functions."""
        thresholds = config.monitoring
        alerts = AlertTarget(self, name_prefix=config.resource_prefix, area="metadata")
        facade = alerts.monitoring
        metadata = self.metadata
        facade.monitor_rds_instance(
            instance=metadata.database,
            alarm_friendly_name="database",
            human_readable_name="Metaflow metadata database",
            add_cpu_usage_alarm={
                "Cpu": UsageThreshold(max_usage_percent=thresholds.rds_cpu_percent)
            },
            add_free_storage_space_alarm={
                "Storage": MinUsageCountThreshold(
                    min_count=int(thresholds.rds_free_storage_gib * 1024**3)
                )
            },
            add_max_connection_count_alarm={
                "Connections": HighConnectionCountThreshold(
                    max_connection_count=thresholds.rds_max_connections
                )
            },
        )
        facade.monitor_simple_fargate_service(
            fargate_service=metadata.service,
            alarm_friendly_name="service",
            human_readable_name="Metaflow metadata service",
        )
        if metadata.api is not None:
            facade.monitor_api_gateway(
                api=metadata.api,
                api_stage=metadata.api.deployment_stage.stage_name,
                alarm_friendly_name="api",
                human_readable_name="Metaflow metadata API",
                add_latency_p99_alarm={
                    "Latency": LatencyThreshold(
                        max_latency=Duration.millis(thresholds.p99_latency_ms)
                    )
                },
                add5_xx_fault_count_alarm={"Faults": ErrorCountThreshold(max_error_count=0)},
            )
        monitor_functions(alerts, metadata, max_errors=thresholds.lambda_errors)
