from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from cdk_constructs.alerting import AlertTarget
from cdk_constructs.base import stateful_removal_policy
from cdk_constructs.data_catalog import DataCatalog
from cdk_constructs.data_lake import DataLake
from cdk_constructs.experimentation import ExperimentStore
from cdk_constructs.feature_store import FeatureStore
from cdk_constructs.model_registry import ModelRegistry
from cdk_constructs.monitoring import monitor_functions, monitor_keyspaces
from cdk_constructs.online_store import OnlineStore
from platform_config import PlatformConfig


class DataStack(Stack):
    """Stateful data: the data lake, its catalog, the online store, the feature store and the
    model registry.

    In a protected environment the stack has termination protection and its resources are
    retained if it is ever deleted.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: PlatformConfig, **kwargs):
        super().__init__(
            scope,
            construct_id,
            termination_protection=config.protect_stateful_resources,
            **kwargs,
        )
        removal_policy = stateful_removal_policy(protect=config.protect_stateful_resources)
        self.data_lake = DataLake(
            self,
            "DataLake",
            config=config.data_lake,
            bucket_name_prefix=config.bucket_prefix,
            key_alias=f"alias/{config.resource_prefix}/data",
            break_glass_role_name=f"{config.resource_prefix}-data-break-glass",
            removal_policy=removal_policy,
        )
        self.catalog = DataCatalog(
            self,
            "DataCatalog",
            name_prefix=config.snake_prefix,
            registry_name=f"{config.resource_prefix}-events",
            zone_locations={
                "raw": self.data_lake.raw_bucket,
                "curated": self.data_lake.curated_bucket,
                "features": self.data_lake.curated_bucket,
            },
            encryption_key=self.data_lake.key,
            manage_catalog_encryption=config.catalog.manage_catalog_encryption,
            topics=config.kafka.topics,
            removal_policy=removal_policy,
        )
        self.online_store = OnlineStore(
            self,
            "OnlineStore",
            keyspace_name=config.snake_prefix,
            encryption_key=self.data_lake.key,
            prediction_ttl_days=config.online_store.prediction_ttl_days,
            removal_policy=removal_policy,
        )

        self.model_registry = ModelRegistry(
            self,
            "ModelRegistry",
            name_prefix=config.resource_prefix,
            models={
                **{m.name: f"Served model {m.name}" for m in config.serving.models},
                "recommender": "Member x title recommender (implicit-feedback embeddings)",
            },
            removal_policy=removal_policy,
        )
        # ABlaze's experiments and results, kept with the other stateful resources.
        self.experiments = ExperimentStore(
            self,
            "Experiments",
            name_prefix=config.resource_prefix,
            encryption_key=self.data_lake.key,
            protect=config.protect_stateful_resources,
            removal_policy=removal_policy,
        )
        alerts = AlertTarget(self, name_prefix=config.resource_prefix, area="data")
        self.feature_store = FeatureStore(
            self,
            "FeatureStore",
            name_prefix=config.resource_prefix,
            offline_bucket=self.data_lake.curated_bucket,
            encryption_key=self.data_lake.key,
            glue_database=self.catalog.database_names["features"],
            max_feature_age_hours=config.feature_store.max_feature_age_hours,
            log_retention_days=config.network.flow_log_retention_days,
            removal_policy=removal_policy,
            alerts=alerts,
        )
        # Keyspaces as serving uses it: history read per request, predictions written.
        monitor_keyspaces(
            alerts,
            keyspace=self.online_store.keyspace_name,
            operations={"member_history": ("SELECT",), "predictions": ("INSERT",)},
        )
        monitor_functions(alerts, self, max_errors=config.monitoring.lambda_errors)

        for name, bucket in {
            "RawBucketName": self.data_lake.raw_bucket,
            "CuratedBucketName": self.data_lake.curated_bucket,
            "ArtifactsBucketName": self.data_lake.artifacts_bucket,
        }.items():
            CfnOutput(self, name, value=bucket.bucket_name)
        CfnOutput(self, "DataKeyArn", value=self.data_lake.key.key_arn)
        CfnOutput(self, "KeyspaceName", value=self.online_store.keyspace_name)
        CfnOutput(self, "MemberFeatureGroup", value=self.feature_store.member_features_name)
        CfnOutput(
            self, "RecommenderModelGroup", value=self.model_registry.group_names["recommender"]
        )
