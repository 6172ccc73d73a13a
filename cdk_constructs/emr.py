"""What the Flink and Spark containers share: a hardened EMR cluster on instance fleets, and
the TLS certificates of EMR's in-transit encryption."""

from __future__ import annotations

import re
from pathlib import Path

from aws_cdk import CustomResource, Duration, Stack, Tags, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_emr as emr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3_deployment
from constructs import Construct

from cdk_constructs.base import (
    PlatformContainer,
    acknowledge,
    acknowledge_wildcard_grants,
    grant_key_use_for_aws_resources,
    skip_checkov,
)
from cdk_constructs.function import (
    PlatformFunction,
    encrypt_deploy_handler_logs,
    skip_checkov_for_deploy_handler,
)
from jobs.layout import NODE_CODE_DIR
from platform_config.model import EmrClusterConfig, EmrTlsConfig

REPO_ROOT = Path(__file__).resolve().parent.parent

# EMR's v2 managed policies act only on resources carrying this tag.
EMR_MANAGED_TAG = ("for-use-with-amazon-emr-managed-policies", "true")

# The jobs need Python 3.11, which EMR 7.x ships beside its default 3.9.
JOB_PYTHON = "/usr/bin/python3.11"

# Construct id of the CDK's BucketDeployment handler Lambda (fixed by the CDK).
_BUCKET_DEPLOYMENT_SINGLETON = "Custom::CDKBucketDeployment8693BB64968944B69AAFB0CC9EB8756C"

# Where the PEM certificates for EMR in-transit encryption live in the artifacts bucket.
TLS_CERTIFICATES_KEY = "emr/tls/certificates.zip"
# The key pair GenerateDataKeyPair makes for a generated certificate.
TLS_KEY_PAIR_SPEC = "RSA_2048"


def internal_domain(region: str) -> str:
    """The wildcard of the private DNS names EC2 gives the cluster's nodes in `region`
    (what EMR's documentation asks a PEM certificate to cover)."""
    if region == "us-east-1":
        return "*.ec2.internal"
    return f"*.{region}.compute.internal"


class EmrTlsCertificates(PlatformContainer):
    """The PEM certificates of EMR in-transit encryption: a zip of privateKey.pem,
    certificateChain.pem and trustedCertificates.pem at TLS_CERTIFICATES_KEY of the artifacts
    bucket, there before any cluster that depends on this construct is created.

    - `generated`: a custom resource writes a self-signed certificate for the region's internal
      domain (key pair from KMS GenerateDataKeyPair under the platform key, zip stored SSE-KMS
      under the same key) and writes a new one when `validity_days` changes. Its role may
      generate RSA_2048 pairs and data keys with the platform key and put that one object,
      nothing else. `certificate_id` names the certificate.
    - `provided`: nothing is created; the zip the user put at the same key is used, and
      `certificate_id` is None.

    The object outlives the stack (see lambda/emr_tls_certificates/handler.py for why).
    """

    container = "emr-tls"
    stereotype = "certificates"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EmrTlsConfig,
        artifacts_bucket: s3.IBucket,
        encryption_key: kms.IKey,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        self.object_url = artifacts_bucket.s3_url_for_object(TLS_CERTIFICATES_KEY)
        self.certificate_id: str | None = None
        if config.certificates == "generated":
            self.certificate_id = self._generate(
                config, artifacts_bucket, encryption_key, log_retention_days
            )

    def _generate(
        self,
        config: EmrTlsConfig,
        artifacts_bucket: s3.IBucket,
        encryption_key: kms.IKey,
        log_retention_days: int,
    ) -> str:
        region = Stack.of(self).region
        if Token.is_unresolved(region):
            raise ValueError("a generated EMR certificate needs a stack with a concrete region")
        writer = PlatformFunction(
            self,
            "Writer",
            handler_name="emr_tls_certificates",
            description="Writes the self-signed certificates of EMR in-transit encryption",
            environment={},
            log_retention_days=log_retention_days,
            timeout=Duration.minutes(1),
            log_key=encryption_key,
        ).function
        skip_checkov(
            writer,
            "CKV_AWS_116",
            "Only CloudFormation invokes it, for the certificates' custom resource, and fails the "
            "deployment on its error; a dead-letter queue would keep an event nothing replays.",
        )
        for statement in (
            iam.PolicyStatement(
                actions=["kms:GenerateDataKeyPair"],
                resources=[encryption_key.key_arn],
                conditions={"StringEquals": {"kms:DataKeyPairSpec": TLS_KEY_PAIR_SPEC}},
            ),
            # S3 asks KMS for the data key of the SSE-KMS upload as the caller.
            iam.PolicyStatement(
                actions=["kms:GenerateDataKey"], resources=[encryption_key.key_arn]
            ),
            iam.PolicyStatement(
                actions=["s3:PutObject"],
                resources=[artifacts_bucket.arn_for_objects(TLS_CERTIFICATES_KEY)],
            ),
        ):
            writer.add_to_role_policy(statement)
        certificates = CustomResource(
            self,
            "Certificates",
            service_token=writer.function_arn,
            resource_type="Custom::EmrTlsCertificates",
            # The handler answers within seconds; a lost answer fails the deploy soon, not
            # after CloudFormation's default hour.
            service_timeout=Duration.minutes(5),
            properties={
                "Bucket": artifacts_bucket.bucket_name,
                "Key": TLS_CERTIFICATES_KEY,
                "KmsKeyArn": encryption_key.key_arn,
                "DnsName": internal_domain(region),
                "ValidityDays": config.validity_days,
            },
        )
        return certificates.get_att_string("CertificateId")


class EmrCluster(PlatformContainer):
    """An EMR 7.x cluster in private subnets, configured by a subclass.

    Secure defaults:
    - an EMR security configuration: S3 (EMRFS) and local disks (EBS included) encrypted with
      the platform KMS key, TLS in transit between nodes, IMDSv2 only;
    - no key pair and no SSH: work arrives as EMR steps through the IAM-authorized EMR API;
    - primary, core and task nodes in the private compute subnets, with EMR-managed security
      groups created here (plus the service-access group private subnets need);
    - logs to this cluster's prefix of the logs bucket;
    - a service role with the v2 EMR managed policy (scoped by tag) and an instance role that
      starts with nothing but reading its own code; everything else is granted by the stack;
    - created after its TLS certificates exist; a generated certificate's id is part of the
      security configuration's name, so a new certificate brings a new cluster whose nodes all
      trust the same one (EMR reads the zip when each node starts);
    - termination protection as the caller decides;
    - every fleet's EBS data volumes sized by the config (gp3, encrypted as above).
    """

    applications: tuple[str, ...] = ()

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EmrClusterConfig,
        cluster_name: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        encryption_key: kms.IKey,
        logs_bucket: s3.IBucket,
        artifacts_bucket: s3.IBucket,
        code_directories: dict[str, Path],
        tls_certificates: EmrTlsCertificates,
        termination_protected: bool,
    ) -> None:
        super().__init__(scope, construct_id)
        self.cluster_name = cluster_name
        self.vpc = vpc
        self.subnets = subnets
        self.artifacts_bucket = artifacts_bucket
        self.code_prefix = f"code/{self.container}/"
        Tags.of(self).add(*EMR_MANAGED_TAG)

        self.instance_role = iam.Role(
            self,
            "InstanceRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description=f"EMR nodes of {cluster_name}",
        )
        instance_profile = iam.CfnInstanceProfile(
            self, "InstanceProfile", roles=[self.instance_role.role_name]
        )
        self.service_role = iam.Role(
            self,
            "ServiceRole",
            assumed_by=iam.ServicePrincipal("elasticmapreduce.amazonaws.com"),
            description=f"EMR service role of {cluster_name}",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name(
                    "service-role/AmazonEMRServicePolicy_v2"
                )
            ],
        )
        acknowledge(
            self.service_role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonEMRServicePolicy_v2]",
            "AWS's v2 EMR service policy acts only on resources tagged "
            "for-use-with-amazon-emr-managed-policies, which this construct sets.",
        )
        self.instance_role.grant_pass_role(self.service_role)
        # EMR launches the nodes' encrypted EBS volumes, so it needs grants on the key.
        grant_key_use_for_aws_resources(encryption_key, self.service_role)
        encryption_key.grant_encrypt_decrypt(self.instance_role)
        grant_key_use_for_aws_resources(encryption_key, self.instance_role)

        acknowledge_wildcard_grants(
            self.instance_role,
            {
                r"Action::kms:(GenerateDataKey|ReEncrypt)\*": (
                    "Data-key and re-encrypt calls on the platform key only, needed for "
                    "SSE-KMS objects and the encrypted EBS volumes of the nodes."
                ),
                r"Action::s3:(GetObject|GetBucket|List|Abort|DeleteObject)\*": (
                    "The CDK's S3 grant action groups, each limited to the bucket prefixes "
                    "granted to this cluster."
                ),
                rf"Resource::.*/emr/{re.escape(cluster_name)}/\*": (
                    "EMR writes this cluster's logs as objects under its own log prefix."
                ),
                rf"Resource::.*/{re.escape(self.code_prefix)}\*": (
                    "Nodes read this cluster's job code as objects under its code prefix."
                ),
            },
        )
        self.log_prefix = f"emr/{cluster_name}/"
        logs_bucket.grant_put(self.instance_role, f"{self.log_prefix}*")
        artifacts_bucket.grant_read(self.instance_role, f"{self.code_prefix}*")
        artifacts_bucket.grant_read(self.instance_role, TLS_CERTIFICATES_KEY)

        # One deployment per directory keeps its folder name under the cluster's code prefix.
        self.code_deployments = [
            s3_deployment.BucketDeployment(
                self,
                f"{name.capitalize()}Code",
                sources=[s3_deployment.Source.asset(str(path), exclude=["**/__pycache__"])],
                destination_bucket=artifacts_bucket,
                destination_key_prefix=f"{self.code_prefix}{name}/",
                prune=True,
                retain_on_delete=False,
            )
            for name, path in code_directories.items()
        ]

        self.primary_security_group = self._security_group("Primary", vpc, "EMR primary node")
        self.worker_security_group = self._security_group("Worker", vpc, "EMR core and task nodes")
        service_access = self._security_group("ServiceAccess", vpc, "EMR service access")
        # EMR's service reaches the primary node on 9443 in private subnets.
        service_access.add_ingress_rule(self.primary_security_group, ec2.Port.tcp(9443))
        self.connections = ec2.Connections(
            security_groups=[self.primary_security_group, self.worker_security_group]
        )

        certificate_suffix = (
            f"-{tls_certificates.certificate_id}" if tls_certificates.certificate_id else ""
        )
        security_configuration = emr.CfnSecurityConfiguration(
            self,
            "SecurityConfiguration",
            name=f"{cluster_name}-security{certificate_suffix}",
            security_configuration=_security_configuration(
                encryption_key.key_arn, tls_certificates.object_url
            ),
        )

        subnet_ids = vpc.select_subnets(subnet_group_name=subnets.subnet_group_name).subnet_ids
        self.cluster = emr.CfnCluster(
            self,
            "Cluster",
            name=cluster_name,
            release_label=config.release_label,
            applications=[
                emr.CfnCluster.ApplicationProperty(name=app) for app in self.applications
            ],
            configurations=self.configurations(),
            service_role=self.service_role.role_arn,
            job_flow_role=instance_profile.ref,
            security_configuration=security_configuration.name,
            log_uri=logs_bucket.s3_url_for_object(self.log_prefix),
            visible_to_all_users=True,
            step_concurrency_level=1,
            ebs_root_volume_size=32,
            instances=emr.CfnCluster.JobFlowInstancesConfigProperty(
                ec2_subnet_ids=subnet_ids,
                emr_managed_master_security_group=self.primary_security_group.security_group_id,
                emr_managed_slave_security_group=self.worker_security_group.security_group_id,
                service_access_security_group=service_access.security_group_id,
                keep_job_flow_alive_when_no_steps=True,
                termination_protected=termination_protected,
                master_instance_fleet=_fleet("primary", config.primary_instance_type, 1, config),
                core_instance_fleet=_fleet(
                    "core", config.core_instance_type, config.core_instance_count, config
                ),
            ),
            bootstrap_actions=[
                emr.CfnCluster.BootstrapActionConfigProperty(
                    name="install-job-code",
                    script_bootstrap_action=emr.CfnCluster.ScriptBootstrapActionConfigProperty(
                        path=self.code_url("jobs/emr/install_job_code.sh"),
                        args=[self.code_url(""), NODE_CODE_DIR, self.container],
                    ),
                )
            ],
            managed_scaling_policy=emr.CfnCluster.ManagedScalingPolicyProperty(
                compute_limits=emr.CfnCluster.ComputeLimitsProperty(
                    # Core and task units; the core fleet stays fixed, tasks absorb the load
                    # and, with spot, are the only units managed scaling buys on spot.
                    unit_type="InstanceFleetUnits",
                    minimum_capacity_units=config.core_instance_count,
                    maximum_capacity_units=config.max_capacity_units,
                    maximum_core_capacity_units=config.core_instance_count,
                    maximum_on_demand_capacity_units=(
                        config.core_instance_count
                        if config.task_use_spot
                        else config.max_capacity_units
                    ),
                )
            ),
            auto_termination_policy=(
                emr.CfnCluster.AutoTerminationPolicyProperty(
                    idle_timeout=config.idle_timeout_minutes * 60
                )
                if config.idle_timeout_minutes
                else None
            ),
        )
        for deployment in self.code_deployments:
            self.cluster.node.add_dependency(deployment)
        self.cluster.add_resource_dependency(security_configuration)
        self.cluster.node.add_dependency(tls_certificates)
        _acknowledge_deployment_handler(self, log_key=encryption_key)
        self.cluster.node.add_dependency(self.instance_role)
        for rule, what in (("EMR4", "local-disk"), ("EMR5", "in-transit")):
            acknowledge(
                self.cluster,
                f"AwsSolutions-{rule}",
                f"SecurityConfiguration enables {what} encryption under EncryptionConfiguration, "
                "where EMR's API expects it; the rule looks for the keys at the document's top "
                "level and cannot see them (tests check the document instead).",
            )
        acknowledge(
            self.cluster,
            "AwsSolutions-EMR6",
            "No interactive login by design: no EC2 key pair and no SSH ingress; jobs are "
            "submitted as EMR steps through the EMR API, which IAM authorizes.",
        )

        if config.task_instance_types:
            emr.CfnInstanceFleetConfig(
                self,
                "TaskFleet",
                cluster_id=self.cluster.ref,
                instance_fleet_type="TASK",
                name="task",
                # Managed scaling sizes the task fleet; it starts empty.
                target_spot_capacity=0,
                target_on_demand_capacity=0,
                instance_type_configs=[
                    _instance_type_config(emr.CfnInstanceFleetConfig, name, config)
                    for name in config.task_instance_types
                ],
                launch_specifications=(
                    emr.CfnInstanceFleetConfig.InstanceFleetProvisioningSpecificationsProperty(
                        spot_specification=emr.CfnInstanceFleetConfig.SpotProvisioningSpecificationProperty(
                            timeout_action="SWITCH_TO_ON_DEMAND",
                            timeout_duration_minutes=10,
                            allocation_strategy="price-capacity-optimized",
                        )
                    )
                    if config.task_use_spot
                    else None
                ),
            )

    def configurations(self) -> list[emr.CfnCluster.ConfigurationProperty]:
        """Application classifications of the subclass's cluster."""
        return []

    def _security_group(self, name: str, vpc: ec2.IVpc, description: str) -> ec2.SecurityGroup:
        group = ec2.SecurityGroup(
            self,
            f"{name}SecurityGroup",
            vpc=vpc,
            description=f"{description} of {self.cluster_name}",
            # EMR manages the rules of its groups and needs egress to AWS APIs and the brokers.
            allow_all_outbound=True,
        )
        return group

    @property
    def cluster_id(self) -> str:
        return self.cluster.ref

    def code_url(self, relative_path: str) -> str:
        """S3 URL of a file (or, given "", the folder) of this cluster's deployed code."""
        return self.artifacts_bucket.s3_url_for_object(f"{self.code_prefix}{relative_path}")

    @staticmethod
    def node_path(relative_path: str) -> str:
        """Where a file of the deployed code (e.g. jobs/batch/x.py, schemas/...) sits on the
        nodes, as step arguments name it."""
        return f"{NODE_CODE_DIR}/{relative_path}"


def _acknowledge_deployment_handler(scope: Construct, *, log_key: kms.IKey) -> None:
    """The CDK's BucketDeployment handler (one per stack) copies the code assets; its log
    group is encrypted with `log_key`, which admits CloudWatch Logs."""
    handler = Stack.of(scope).node.find_child(_BUCKET_DEPLOYMENT_SINGLETON)
    encrypt_deploy_handler_logs(handler, log_key)
    skip_checkov_for_deploy_handler(handler, what="copies the job code to the artifacts bucket")
    skip_checkov(
        handler,
        "CKV_AWS_173",
        "The CDK sets one variable, the path of the CA bundle the AWS CLI reads; no secret.",
    )
    role = handler.node.find_child("ServiceRole")
    acknowledge(
        handler,
        "AwsSolutions-L1",
        "The CDK's BucketDeployment handler pins its own Python runtime; the construct "
        "offers no runtime setting.",
    )
    acknowledge(
        role,
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AWSLambdaBasicExecutionRole]",
        "The CDK's code-deployment Lambda only writes its own CloudWatch logs with this "
        "AWS basic execution policy.",
    )
    acknowledge_wildcard_grants(
        role,
        {
            r"Action::(s3:(GetObject|GetBucket|List|Abort|DeleteObject)|"
            r"kms:(GenerateDataKey|ReEncrypt))\*": (
                "The CDK's deployment handler reads the CDK asset bucket and gets read, write "
                "and delete on its whole destination bucket (the construct scopes no prefix); "
                "it only syncs the code prefixes, and the artifacts bucket's policy denies "
                "version deletion to all but break-glass, so a prune only adds delete markers."
            ),
            r"Resource::.*/\*": (
                "Every object of the CDK asset bucket and of the artifacts bucket (the CDK's "
                "whole-bucket grant); object versions stay protected by the bucket policy."
            ),
        },
    )


def classification(name: str, properties: dict[str, str]) -> emr.CfnCluster.ConfigurationProperty:
    return emr.CfnCluster.ConfigurationProperty(
        classification=name, configuration_properties=properties
    )


def _fleet(
    name: str, instance_type: str, count: int, config: EmrClusterConfig
) -> emr.CfnCluster.InstanceFleetConfigProperty:
    return emr.CfnCluster.InstanceFleetConfigProperty(
        name=name,
        target_on_demand_capacity=count,
        instance_type_configs=[_instance_type_config(emr.CfnCluster, instance_type, config)],
    )


def _instance_type_config(
    resource: type[emr.CfnCluster] | type[emr.CfnInstanceFleetConfig],
    name: str,
    config: EmrClusterConfig,
) -> (
    emr.CfnCluster.InstanceTypeConfigProperty
    | emr.CfnInstanceFleetConfig.InstanceTypeConfigProperty
):
    """An instance type of a fleet with its EBS data volume, built from the struct classes of
    `resource` (the cluster's own fleets and a separate fleet each have their own). Only these
    classes render: jsii drops the keys of a plain dict given for a struct without a word."""
    return resource.InstanceTypeConfigProperty(
        instance_type=name,
        weighted_capacity=1,
        ebs_configuration=resource.EbsConfigurationProperty(
            ebs_block_device_configs=[
                resource.EbsBlockDeviceConfigProperty(
                    volume_specification=resource.VolumeSpecificationProperty(
                        size_in_gb=config.ebs_volume_gib, volume_type="gp3"
                    ),
                    volumes_per_instance=1,
                )
            ]
        ),
    )


def _security_configuration(key_arn: str, certificates_url: str) -> dict:
    return {
        "EncryptionConfiguration": {
            "EnableAtRestEncryption": True,
            "EnableInTransitEncryption": True,
            "AtRestEncryptionConfiguration": {
                "S3EncryptionConfiguration": {"EncryptionMode": "SSE-KMS", "AwsKmsKey": key_arn},
                "LocalDiskEncryptionConfiguration": {
                    "EncryptionKeyProviderType": "AwsKms",
                    "AwsKmsKey": key_arn,
                    "EnableEbsEncryption": True,
                },
            },
            "InTransitEncryptionConfiguration": {
                "TLSCertificateConfiguration": {
                    "CertificateProviderType": "PEM",
                    "S3Object": certificates_url,
                }
            },
        },
        "InstanceMetadataServiceConfiguration": {
            "MinimumInstanceMetadataServiceVersion": 2,
            "HttpPutResponseHopLimit": 2,
        },
    }
