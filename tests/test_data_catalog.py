"""DataCatalog: Glue databases per zone, the schema registry, catalog encryption switch."""

from __future__ import annotations

import json

import pytest
from aws_cdk import App, RemovalPolicy, Stack
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match, Template

from cdk_constructs.data_catalog import DataCatalog
from platform_config import model


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
    for cfn_type in ("AWS::Glue::Database", "AWS::Glue::Registry", "AWS::Glue::Schema"):
        dev.template("data").all_resources(cfn_type, {"DeletionPolicy": "Delete"})
        prod.template("data").all_resources(cfn_type, {"DeletionPolicy": "Retain"})


def test_a_changed_schema_is_registered_as_a_new_version(tmp_path, monkeypatch):
    """The first definition is never edited (CloudFormation cannot); later ones are versions."""
    avro = tmp_path / "schemas" / "avro"
    avro.mkdir(parents=True)
    first = {"type": "record", "name": "E", "fields": [{"name": "id", "type": "string"}]}
    second = {**first, "fields": [*first["fields"], {"name": "n", "type": "int", "default": 0}]}
    (avro / "e_v1.avsc").write_text(json.dumps(first))
    (avro / "e_v2.avsc").write_text(json.dumps(second))
    monkeypatch.setattr(model, "REPO_ROOT", tmp_path)
    topic = model.KafkaTopicConfig.model_validate(
        {
            "name": "events",
            "partitions": 1,
            "schema_file": "schemas/avro/e_v2.avsc",
            "previous_schema_files": ["schemas/avro/e_v1.avsc"],
        }
    )
    stack = Stack(App(), "Bare", env={"account": "123456789012", "region": "eu-west-1"})
    bucket = s3.Bucket(stack, "Lake")
    DataCatalog(
        stack,
        "Catalog",
        name_prefix="bare",
        registry_name="bare-events",
        zone_locations=dict.fromkeys(("raw", "curated", "features"), bucket),
        encryption_key=kms.Key(stack, "Key"),
        manage_catalog_encryption=False,
        topics=[topic],
        removal_policy=RemovalPolicy.RETAIN,
    )
    template = Template.from_stack(stack)
    (schema_id, schema), *_ = template.find_resources("AWS::Glue::Schema").items()
    assert json.loads(schema["Properties"]["SchemaDefinition"]) == first
    (version,) = template.find_resources("AWS::Glue::SchemaVersion").values()
    assert json.loads(version["Properties"]["SchemaDefinition"]) == second
    assert version["Properties"]["Schema"] == {"SchemaArn": {"Fn::GetAtt": [schema_id, "Arn"]}}
    assert version["DeletionPolicy"] == "Retain"
