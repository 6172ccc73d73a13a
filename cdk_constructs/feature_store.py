"""Feature store (Netflix's Amber in the seed diagram's limitations): online and offline."""

from __future__ import annotations

import json

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from constructs import Construct

from cdk_constructs.alerting import AlertTarget
from cdk_constructs.base import (
    PlatformContainer,
    acknowledge_wildcard_grants,
    grant_key_use_for_aws_resources,
    skip_checkov,
)
from cdk_constructs.function import PlatformFunction
from jobs.batch.feature_ingestion import (
    EVENT_TIME_FEATURE,
    MEMBER_FEATURE_DEFINITIONS,
    RECORD_IDENTIFIER,
)

FRESHNESS_NAMESPACE = "MLPlatform/FeatureStore"
OFFLINE_PREFIX = "feature-store"
MARKER_PREFIX = "features/_ingested/"


class FeatureStore(PlatformContainer):
    """SageMaker Feature Store groups with online (low-latency) and offline (historical)
    stores, and a freshness metric with an alarm.

    Secure defaults:
    - the online store is encrypted with the platform key; the offline store writes to the
      curated zone (SSE-KMS) and registers its table in the Glue features database;
    - the offline-store role may write only its prefix and create tables only in that database;
    - every 15 minutes a function publishes the age of each group's newest ingested record
      (`FeatureAgeSeconds`), and an alarm fires when it exceeds the configured age or when no
      figure arrives at all.
    """

    container = "feature-store"
    stereotype = "feature-store"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name_prefix: str,
        offline_bucket: s3.IBucket,
        encryption_key: kms.IKey,
        glue_database: str,
        max_feature_age_hours: int,
        log_retention_days: int,
        removal_policy: RemovalPolicy,
        alerts: AlertTarget,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.offline_role = iam.Role(
            self,
            "OfflineStoreRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="Feature Store writes the offline store and its Glue table",
        )
        offline_bucket.grant_read_write(self.offline_role, f"{OFFLINE_PREFIX}/*")
        self.offline_role.add_to_policy(
            iam.PolicyStatement(
                # Feature Store checks the bucket before it writes.
                actions=["s3:GetBucketAcl", "s3:GetBucketLocation"],
                resources=[offline_bucket.bucket_arn],
            )
        )
        encryption_key.grant_encrypt_decrypt(self.offline_role)
        grant_key_use_for_aws_resources(encryption_key, self.offline_role)
        self.offline_role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "glue:GetTable",
                    "glue:CreateTable",
                    "glue:UpdateTable",
                    "glue:GetDatabase",
                ],
                resources=[
                    stack.format_arn(service="glue", resource="catalog"),
                    stack.format_arn(
                        service="glue", resource="database", resource_name=glue_database
                    ),
                    stack.format_arn(
                        service="glue", resource="table", resource_name=f"{glue_database}/*"
                    ),
                ],
            )
        )

        acknowledge_wildcard_grants(
            self.offline_role,
            {
                r"Action::(s3:(GetObject|GetBucket|List|Abort|DeleteObject)|"
                r"kms:(GenerateDataKey|ReEncrypt))\*": (
                    "The CDK's S3 read-write grant on the offline-store prefix and the platform "
                    "key the offline files are encrypted with."
                ),
                rf"Resource::.*/{OFFLINE_PREFIX}/\*": (
                    "Feature Store writes the offline store's Parquet files under its prefix."
                ),
                r"Resource::arn:.*:glue:.*:table/.*_features/\*": (
                    "Feature Store creates and updates its offline table in the features "
                    "database only."
                ),
            },
        )

        self.member_features_name = f"{name_prefix}-member-features"
        self.member_features = sagemaker.CfnFeatureGroup(
            self,
            "MemberFeatures",
            feature_group_name=self.member_features_name,
            description="Per-member engagement features (built daily by the Spark ETL)",
            record_identifier_feature_name=RECORD_IDENTIFIER,
            event_time_feature_name=EVENT_TIME_FEATURE,
            feature_definitions=[
                sagemaker.CfnFeatureGroup.FeatureDefinitionProperty(
                    feature_name=name, feature_type=feature_type
                )
                for name, feature_type in MEMBER_FEATURE_DEFINITIONS
            ],
            online_store_config={
                "EnableOnlineStore": True,
                "SecurityConfig": {"KmsKeyId": encryption_key.key_arn},
            },
            offline_store_config={
                "S3StorageConfig": {
                    "S3Uri": offline_bucket.s3_url_for_object(OFFLINE_PREFIX),
                    "KmsKeyId": encryption_key.key_arn,
                },
                "DisableGlueTableCreation": False,
                "DataCatalogConfig": {
                    "Catalog": "AwsDataCatalog",
                    "Database": glue_database,
                    "TableName": self.member_features_name.replace("-", "_"),
                },
            },
            role_arn=self.offline_role.role_arn,
        )
        self.member_features.node.add_dependency(self.offline_role)
        self.member_features.apply_removal_policy(removal_policy)
        self.member_features_arn = stack.format_arn(
            service="sagemaker", resource="feature-group", resource_name=self.member_features_name
        )
        self.marker_bucket = offline_bucket
        self.marker_key = f"{MARKER_PREFIX}{self.member_features_name}.json"

        freshness = PlatformFunction(
            self,
            "Freshness",
            handler_name="feature_freshness",
            description="Publishes the age of each feature group's newest record",
            environment={
                "METRIC_NAMESPACE": FRESHNESS_NAMESPACE,
                "FEATURE_GROUPS": json.dumps(
                    [
                        {
                            "name": self.member_features_name,
                            "marker_bucket": offline_bucket.bucket_name,
                            "marker_key": self.marker_key,
                        }
                    ]
                ),
            },
            log_retention_days=log_retention_days,
            log_key=encryption_key,
        ).function
        skip_checkov(
            freshness,
            "CKV_AWS_116",
            "A failed check publishes no figure and the freshness alarm treats a missing one as "
            "breaching; the next run, 15 minutes later, replaces the lost one.",
        )
        # The marker object only; listing is limited to its key, so that a missing marker
        # reads as 404 rather than 403.
        freshness.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"],
                resources=[offline_bucket.arn_for_objects(self.marker_key)],
            )
        )
        freshness.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[offline_bucket.bucket_arn],
                conditions={"StringEquals": {"s3:prefix": self.marker_key}},
            )
        )
        encryption_key.grant_decrypt(freshness)
        freshness.add_to_role_policy(
            iam.PolicyStatement(
                # PutMetricData takes no resource; the namespace condition is the scope.
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": FRESHNESS_NAMESPACE}},
            )
        )
        acknowledge_wildcard_grants(
            freshness.role,
            {
                r"Resource::\*": (
                    "cloudwatch:PutMetricData accepts no resource; a condition limits it to the "
                    "feature-store namespace."
                ),
            },
        )
        schedule_role = iam.Role(
            self,
            "FreshnessScheduleRole",
            assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com"),
            description="Runs the feature freshness check",
        )
        acknowledge_wildcard_grants(
            schedule_role,
            {
                r"Resource::<FeatureStoreFreshness.*\.Arn>:\*": (
                    "The schedule may invoke any version of the one freshness function."
                )
            },
        )
        scheduler.Schedule(
            self,
            "FreshnessSchedule",
            description="Feature freshness every 15 minutes",
            schedule=scheduler.ScheduleExpression.rate(Duration.minutes(15)),
            target=scheduler_targets.LambdaInvoke(
                freshness,
                role=schedule_role,
                dead_letter_queue=alerts.dead_letter_queue(
                    self, "FreshnessDeadLetters", purpose="the feature freshness check"
                ),
                retry_attempts=2,
                max_event_age=Duration.minutes(10),
            ),
        )
        alerts.grant_encrypt(schedule_role)
        self.freshness_alarm = alerts.alarm(
            name="feature-freshness",
            title=f"Age of the newest {self.member_features_name} record",
            description=(
                f"Newest {self.member_features_name} record older than {max_feature_age_hours} h"
            ),
            metric=cloudwatch.Metric(
                namespace=FRESHNESS_NAMESPACE,
                metric_name="FeatureAgeSeconds",
                dimensions_map={"FeatureGroup": self.member_features_name},
                statistic="Maximum",
                period=Duration.minutes(15),
            ),
            threshold=max_feature_age_hours * 3600,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=2,
            # No figure means no marker (nothing ever ingested) or a broken check.
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        )

    def grant_ingest(self, grantee: iam.IGrantable) -> iam.Grant:
        """PutRecord into the member-features group (the batch ingestion path)."""
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["sagemaker:PutRecord"],
            resource_arns=[self.member_features_arn],
        )
