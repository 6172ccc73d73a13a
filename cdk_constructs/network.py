"""The platform VPC: not a diagram container, but the network every container lives in."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk_constructs.base import PlatformContainer, log_retention
from cdk_constructs.function import skip_checkov_for_deploy_handler
from platform_config.model import NetworkConfig

# Config names (the endpoint service suffix) to the CDK's endpoint services.
INTERFACE_ENDPOINT_SERVICES: dict[str, ec2.InterfaceVpcEndpointAwsService] = {
    "ecr.api": ec2.InterfaceVpcEndpointAwsService.ECR,
    "ecr.dkr": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "monitoring": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
    "sts": ec2.InterfaceVpcEndpointAwsService.STS,
    "kms": ec2.InterfaceVpcEndpointAwsService.KMS,
    "secretsmanager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
    "ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
    "glue": ec2.InterfaceVpcEndpointAwsService.GLUE,
    "elasticmapreduce": ec2.InterfaceVpcEndpointAwsService.EMR,
    "kafka": ec2.InterfaceVpcEndpointAwsService.KAFKA,
    "cassandra": ec2.InterfaceVpcEndpointAwsService.KEYSPACES,
    "sagemaker.api": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_API,
    "sagemaker.runtime": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_RUNTIME,
    "sagemaker.featurestore-runtime": (
        ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_FEATURESTORE_RUNTIME
    ),
    "states": ec2.InterfaceVpcEndpointAwsService.STEP_FUNCTIONS,
    "events": ec2.InterfaceVpcEndpointAwsService.EVENTBRIDGE,
    "batch": ec2.InterfaceVpcEndpointAwsService.BATCH,
}

PUBLIC_SUBNETS = "ingress"
COMPUTE_SUBNETS = "compute"
DATA_SUBNETS = "data"


class Network(PlatformContainer):
    """VPC with three subnet tiers in the configured availability zones.

    Secure defaults:
    - public subnets hold only NAT gateways and internet-facing load balancers; compute runs in
      private subnets with NAT egress, data stores in isolated subnets without any route out;
    - the default security group admits nothing;
    - VPC flow logs (all traffic) go to a log group encrypted with a rotating KMS key;
    - S3 and DynamoDB gateway endpoints plus the configured interface endpoints (private DNS)
      keep AWS API traffic off the internet.
    """

    container = "network"
    stereotype = "network"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: NetworkConfig,
        availability_zones: list[str],
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(config.cidr),
            availability_zones=availability_zones,
            nat_gateways=config.nat_gateways,
            restrict_default_security_group=True,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name=PUBLIC_SUBNETS, subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24
                ),
                ec2.SubnetConfiguration(
                    name=COMPUTE_SUBNETS,
                    subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS,
                    cidr_mask=22,
                ),
                ec2.SubnetConfiguration(
                    name=DATA_SUBNETS, subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24
                ),
            ],
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
                "DynamoDb": ec2.GatewayVpcEndpointOptions(
                    service=ec2.GatewayVpcEndpointAwsService.DYNAMODB
                ),
            },
        )
        # restrict_default_security_group adds the CDK's provider (a stack singleton).
        skip_checkov_for_deploy_handler(
            Stack.of(self)
            .node.find_child("Custom::VpcRestrictDefaultSGCustomResourceProvider")
            .node.find_child("Handler"),
            what="empties the VPC's default security group",
        )

        self.log_key = kms.Key(
            self,
            "FlowLogKey",
            description="Encrypts the VPC flow log group",
            enable_key_rotation=True,
            removal_policy=removal_policy,
        )
        region = Stack.of(self).region
        self.log_key.grant_encrypt_decrypt(iam.ServicePrincipal(f"logs.{region}.amazonaws.com"))
        flow_log_group = logs.LogGroup(
            self,
            "FlowLogGroup",
            encryption_key=self.log_key,
            retention=log_retention(config.flow_log_retention_days),
            removal_policy=removal_policy,
        )
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )

        if config.interface_endpoints:
            # One group for all endpoints, admitting HTTPS from the VPC's literal range only.
            endpoint_security_group = ec2.SecurityGroup(
                self,
                "EndpointSecurityGroup",
                vpc=self.vpc,
                description="HTTPS from inside the VPC to its interface endpoints",
                allow_all_outbound=False,
            )
            endpoint_security_group.add_ingress_rule(
                ec2.Peer.ipv4(config.cidr), ec2.Port.HTTPS, "AWS API calls from the VPC"
            )
        for name in config.interface_endpoints:
            self.vpc.add_interface_endpoint(
                _endpoint_id(name),
                service=INTERFACE_ENDPOINT_SERVICES[name],
                private_dns_enabled=True,
                open=False,
                security_groups=[endpoint_security_group],
                subnets=ec2.SubnetSelection(subnet_group_name=COMPUTE_SUBNETS),
            )

    @property
    def compute_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_group_name=COMPUTE_SUBNETS)

    @property
    def data_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_group_name=DATA_SUBNETS)


def _endpoint_id(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", ".").split(".")) + "Endpoint"
