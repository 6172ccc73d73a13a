"""S3 Data Lake container: raw, curated and artifacts zones plus the access-log bucket."""

from __future__ import annotations

from aws_cdk import ArnFormat, Aws, Duration, Fn, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_constructs.base import PlatformContainer, acknowledge, skip_checkov
from cdk_constructs.function import skip_checkov_for_deploy_handler
from platform_config.model import DataLakeConfig

ZONES = ("raw", "curated", "artifacts", "logs")

# Construct id of the CDK's bucket-emptying provider (fixed by the CDK).
_AUTO_DELETE_PROVIDER = "Custom::S3AutoDeleteObjectsCustomResourceProvider"
# Construct id of the CDK's bucket-notification handler (fixed by the CDK).
_BUCKET_NOTIFICATIONS_SINGLETON = "BucketNotificationsHandler050a0587b7544547bf325f094a3db834"


def bucket_name(name_prefix: str, zone: str) -> str:
    """The data lake's deterministic bucket name for `zone` in this account and region.

    Other stacks import buckets by this name rather than by cross-stack reference, so their
    IAM policies name the bucket literally and their stacks stay decoupled from exports.
    """
    if zone not in ZONES:
        raise ValueError(f"unknown data lake zone {zone!r}; zones: {', '.join(ZONES)}")
    return f"{name_prefix}-{zone}-{Aws.ACCOUNT_ID}-{Aws.REGION}"


# Incomplete multipart uploads hold storage that no object accounts for.
_ABORT_UPLOADS_AFTER = Duration.days(7)


class DataLake(PlatformContainer):
    """The platform's S3 data lake and the KMS key that protects the platform's data.

    Secure defaults:
    - one customer-managed KMS key with yearly rotation; raw, curated and artifacts buckets use
      SSE-KMS with S3 bucket keys (fewer KMS calls, same key);
    - every bucket blocks public access, enforces TLS 1.2+, has ACLs disabled and versioning on;
    - server access logs of the three zones go to the logs bucket (SSE-S3, because S3 log
      delivery cannot write to SSE-KMS buckets), which expires them after the configured days;
    - lifecycle: raw objects move to Intelligent-Tiering, old versions and incomplete uploads
      expire;
    - raw and curated buckets send their object events to EventBridge, where workflows'
      data-availability triggers listen;
    - removal follows the environment: RETAIN when protected, else DESTROY with auto-delete;
    - no principal but the break-glass role (and, when disposable, the bucket-emptying handler)
      may delete an object version, whatever its IAM policies allow.
    """

    container = "data-lake"
    stereotype = "data-lake"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DataLakeConfig,
        bucket_name_prefix: str,
        key_alias: str,
        break_glass_role_name: str,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        auto_delete = removal_policy == RemovalPolicy.DESTROY
        self.key = kms.Key(
            self,
            "Key",
            alias=key_alias,
            description="Encrypts the ML platform's data at rest",
            enable_key_rotation=True,
            removal_policy=removal_policy,
        )
        # CloudWatch Logs encrypts log groups of other stacks with this key (the brokers' logs);
        # it can use the key only for log groups of this account and region.
        stack = Stack.of(self)
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="LogGroupsOfThisAccount",
                principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
                actions=[
                    "kms:Encrypt*",
                    "kms:Decrypt*",
                    "kms:ReEncrypt*",
                    "kms:GenerateDataKey*",
                    "kms:Describe*",
                ],
                resources=["*"],
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": stack.format_arn(
                            service="logs",
                            resource="log-group",
                            resource_name="*",
                            arn_format=ArnFormat.COLON_RESOURCE_NAME,
                        )
                    }
                },
            )
        )
        expire_old_versions = s3.LifecycleRule(
            id="expire-noncurrent-versions",
            noncurrent_version_expiration=Duration.days(config.noncurrent_version_expiration_days),
            abort_incomplete_multipart_upload_after=_ABORT_UPLOADS_AFTER,
        )

        self.logs_bucket = s3.Bucket(
            self,
            "LogsBucket",
            bucket_name=bucket_name(bucket_name_prefix, "logs"),
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-access-logs",
                    expiration=Duration.days(config.access_log_retention_days),
                    noncurrent_version_expiration=Duration.days(1),
                    abort_incomplete_multipart_upload_after=_ABORT_UPLOADS_AFTER,
                )
            ],
            removal_policy=removal_policy,
            auto_delete_objects=auto_delete,
        )
        skip_checkov(
            self.logs_bucket,
            "CKV_AWS_18",
            "This is the access-log target of the other buckets; logging it into itself would "
            "loop, and into another bucket would only move the finding.",
        )
        acknowledge(
            self.logs_bucket,
            "AwsSolutions-S1",
            "This bucket is the server-access-log target of the data lake; logging its own "
            "access into itself would create a write loop.",
        )

        def zone_bucket(
            zone: str, lifecycle_rules: list[s3.LifecycleRule], *, events: bool = False
        ) -> s3.Bucket:
            return s3.Bucket(
                self,
                f"{zone.capitalize()}Bucket",
                bucket_name=bucket_name(bucket_name_prefix, zone),
                encryption=s3.BucketEncryption.KMS,
                encryption_key=self.key,
                bucket_key_enabled=True,
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
                enforce_ssl=True,
                minimum_tls_version=1.2,
                versioned=True,
                server_access_logs_bucket=self.logs_bucket,
                server_access_logs_prefix=f"s3-access/{zone}/",
                lifecycle_rules=lifecycle_rules,
                event_bridge_enabled=events,
                removal_policy=removal_policy,
                auto_delete_objects=auto_delete,
            )

        self.raw_bucket = zone_bucket(
            "raw",
            [
                expire_old_versions,
                s3.LifecycleRule(
                    id="raw-to-intelligent-tiering",
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.INTELLIGENT_TIERING,
                            transition_after=Duration.days(config.raw_to_intelligent_tiering_days),
                        )
                    ],
                ),
            ],
            events=True,
        )
        self.curated_bucket = zone_bucket("curated", [expire_old_versions], events=True)
        # Turning on EventBridge delivery adds the CDK's bucket-notification Lambda (a stack
        # singleton).
        notifications = Stack.of(self).node.find_child(_BUCKET_NOTIFICATIONS_SINGLETON)
        acknowledge(
            notifications.node.find_child("Role"),
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AWSLambdaBasicExecutionRole]",
            "The CDK's bucket-notification Lambda only writes its own CloudWatch logs with "
            "this AWS basic execution policy.",
        )
        skip_checkov_for_deploy_handler(
            notifications, what="turns on the buckets' EventBridge notifications"
        )
        self.artifacts_bucket = zone_bucket("artifacts", [expire_old_versions])
        self._protect_versions(break_glass_role_name, auto_delete=auto_delete)

    def _protect_versions(self, break_glass_role_name: str, *, auto_delete: bool) -> None:
        """Object versions are the last line against deletion: no principal but the
        break-glass role (and, where the environment is disposable, the CDK's bucket-emptying
        handler) may delete one, whatever its IAM policies allow."""
        stack = Stack.of(self)
        exempt = [
            stack.format_arn(
                service="iam", region="", resource="role", resource_name=break_glass_role_name
            )
        ]
        if auto_delete:
            provider = stack.node.find_child(_AUTO_DELETE_PROVIDER)
            skip_checkov_for_deploy_handler(
                provider.node.find_child("Handler"),
                what="empties a disposable environment's buckets before deleting them",
            )
            exempt.append(
                Fn.get_att(provider.node.find_child("Role").logical_id, "Arn").to_string()
            )
        for bucket in (
            self.raw_bucket,
            self.curated_bucket,
            self.artifacts_bucket,
            self.logs_bucket,
        ):
            bucket.add_to_resource_policy(
                iam.PolicyStatement(
                    sid="VersionsAreDeletedOnlyByBreakGlass",
                    effect=iam.Effect.DENY,
                    principals=[iam.AnyPrincipal()],
                    actions=["s3:DeleteObjectVersion"],
                    resources=[bucket.arn_for_objects("*")],
                    conditions={"ArnNotLike": {"aws:PrincipalArn": exempt}},
                )
            )
