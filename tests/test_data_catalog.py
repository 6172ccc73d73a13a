"""DataCatalog: Glue databases per zone, the schema registry, catalog encryption switch."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Match


@pytest.mark.parametrize(
    ("zone", "bucket", "prefix"),
    [("raw", "Raw", ""), ("curated", "Curated", ""), ("features", "Curated", "features/")],
)
def test_a_database_per_zone_located_in_its_bucket(each_env, zone, bucket, prefix):
    each_env.template("data").has_resource_properties(
        "AWS::Glue::Database",
        {
            "CatalogId": {"Ref": "AWS::AccountId"},
            "DatabaseInput": {
                "Name": f"ml_platform_{each_env.config.env_name}_{zone}",
                "LocationUri": {
                    "Fn::Join": [
                        "",
                        [
                            "s3://",
                            {"Ref": Match.string_like_regexp(f"DataLake{bucket}Bucket")},
                            f"/{prefix}",
                        ],
                    ]
                },
                "Description": Match.any_value(),
            },
        },
    )


def test_schema_registry_for_event_topics(each_env):
    each_env.template("data").has_resource_properties(
        "AWS::Glue::Registry", {"Name": f"ml-platform-{each_env.config.env_name}-events"}
    )


def test_prod_encrypts_the_catalog_with_the_platform_key(prod):
    key = {"Fn::GetAtt": [Match.string_like_regexp("DataLakeKey"), "Arn"]}
    prod.template("data").has_resource_properties(
        "AWS::Glue::DataCatalogEncryptionSettings",
        {
            "DataCatalogEncryptionSettings": {
                "EncryptionAtRest": {"CatalogEncryptionMode": "SSE-KMS", "SseAwsKmsKeyId": key},
                "ConnectionPasswordEncryption": {
                    "ReturnConnectionPasswordEncrypted": True,
                    "KmsKeyId": key,
                },
            }
        },
    )


def test_dev_leaves_the_account_wide_catalog_setting_alone(dev):
    dev.template("data").resource_count_is("AWS::Glue::DataCatalogEncryptionSettings", 0)


def test_catalog_resources_follow_the_environment_removal_policy(dev, prod):
    for cfn_type in ("AWS::Glue::Database", "AWS::Glue::Registry"):
        dev.template("data").all_resources(cfn_type, {"DeletionPolicy": "Delete"})
        prod.template("data").all_resources(cfn_type, {"DeletionPolicy": "Retain"})
