"""FeatureStore: online (KMS) and offline (data lake + Glue) stores, ingestion, freshness."""

from __future__ import annotations

import json

from jobs.batch.feature_ingestion import (
    EVENT_TIME_FEATURE,
    MEMBER_FEATURE_DEFINITIONS,
    RECORD_IDENTIFIER,
)
from tests.test_emr import instance_role_statements
from tests.test_orchestrator import function_role_statements


def feature_group(synth) -> dict:
    (group,) = synth.template("data").find_resources("AWS::SageMaker::FeatureGroup").values()
    return group


def test_definitions_come_from_the_ingestion_code(each_env):
    properties = feature_group(each_env)["Properties"]
    assert properties["RecordIdentifierFeatureName"] == RECORD_IDENTIFIER
    assert properties["EventTimeFeatureName"] == EVENT_TIME_FEATURE
    assert [(d["FeatureName"], d["FeatureType"]) for d in properties["FeatureDefinitions"]] == [
        tuple(definition) for definition in MEMBER_FEATURE_DEFINITIONS
    ]


def test_online_store_is_encrypted_with_the_platform_key(each_env):
    online = feature_group(each_env)["Properties"]["OnlineStoreConfig"]
    assert online["EnableOnlineStore"] is True
    assert "DataLakeKey" in json.dumps(online["SecurityConfig"]["KmsKeyId"])


def test_offline_store_lives_in_the_curated_zone_and_the_features_database(each_env):
    offline = feature_group(each_env)["Properties"]["OfflineStoreConfig"]
    assert "DataLakeCuratedBucket" in json.dumps(offline["S3StorageConfig"]["S3Uri"])
    assert "/feature-store" in json.dumps(offline["S3StorageConfig"]["S3Uri"])
    assert offline["DisableGlueTableCreation"] is False
    assert offline["DataCatalogConfig"]["Database"] == (
        f"ml_platform_{each_env.config.env_name}_features"
    )


def test_feature_group_follows_the_environment_removal_policy(dev, prod):
    assert feature_group(dev)["DeletionPolicy"] == "Delete"
    assert feature_group(prod)["DeletionPolicy"] == "Retain"


def test_freshness_alarm_fires_on_old_or_missing_figures(each_env):
    alarms = each_env.template("data").find_resources(
        "AWS::CloudWatch::Alarm", {"Properties": {"MetricName": "FeatureAgeSeconds"}}
    )
    (alarm,) = alarms.values()
    properties = alarm["Properties"]
    assert properties["MetricName"] == "FeatureAgeSeconds"
    assert properties["Namespace"] == "MLPlatform/FeatureStore"
    assert properties["Threshold"] == each_env.config.feature_store.max_feature_age_hours * 3600
    assert properties["TreatMissingData"] == "breaching"


def test_freshness_runs_every_15_minutes(each_env):
    (schedule,) = each_env.template("data").find_resources("AWS::Scheduler::Schedule").values()
    assert schedule["Properties"]["ScheduleExpression"] == "rate(15 minutes)"


def test_spark_may_put_records_into_the_member_features_group_only(each_env):
    statements = instance_role_statements(each_env, "Spark")
    (put,) = [s for s in statements if s["Action"] == "sagemaker:PutRecord"]
    assert f"feature-group/ml-platform-{each_env.config.env_name}-member-features" in json.dumps(
        put["Resource"]
    )


def test_the_freshness_check_reads_only_the_marker(each_env):
    statements = function_role_statements(
        each_env.template_json("data"), "Publishes the age of each feature group's newest record"
    )
    s3_statements = [s for s in statements if "s3:" in json.dumps(s["Action"])]
    assert sorted(s["Action"] for s in s3_statements) == ["s3:GetObject", "s3:ListBucket"]
    (get,) = [s for s in s3_statements if s["Action"] == "s3:GetObject"]
    assert "features/_ingested/" in json.dumps(get["Resource"])
    (listing,) = [s for s in s3_statements if s["Action"] == "s3:ListBucket"]
    (prefix,) = listing["Condition"]["StringEquals"].values()
    assert prefix.startswith("features/_ingested/")
