"""DataLake: encryption, TLS, public access, logging, lifecycle and retention per env."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Match

ZONE_BUCKETS = ("Raw", "Curated", "Artifacts")


def bucket(synth, name: str) -> dict:
    buckets = synth.template("data").find_resources("AWS::S3::Bucket")
    (found,) = [b for lid, b in buckets.items() if lid.startswith(f"DataLake{name}Bucket")]
    return found


def bucket_policy(synth, name: str) -> dict:
    policies = synth.template("data").find_resources("AWS::S3::BucketPolicy")
    (found,) = [p for lid, p in policies.items() if lid.startswith(f"DataLake{name}BucketPolicy")]
    return found["Properties"]["PolicyDocument"]["Statement"]


def test_data_key_rotates(each_env):
    each_env.template("data").has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    each_env.template("data").has_resource_properties(
        "AWS::KMS::Alias", {"AliasName": f"alias/ml-platform-{each_env.config.env_name}/data"}
    )


@pytest.mark.parametrize("zone", ZONE_BUCKETS)
def test_zone_buckets_use_the_platform_key_with_bucket_keys(each_env, zone):
    (rule,) = bucket(each_env, zone)["Properties"]["BucketEncryption"][
        "ServerSideEncryptionConfiguration"
    ]
    assert rule["BucketKeyEnabled"] is True
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    key_ref = rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]["Fn::GetAtt"][0]
    assert key_ref.startswith("DataLakeKey")


def test_logs_bucket_uses_sse_s3_because_log_delivery_cannot_use_kms(each_env):
    (rule,) = bucket(each_env, "Logs")["Properties"]["BucketEncryption"][
        "ServerSideEncryptionConfiguration"
    ]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}


@pytest.mark.parametrize("name", [*ZONE_BUCKETS, "Logs"])
def test_every_bucket_blocks_public_access_versions_and_disables_acls(each_env, name):
    properties = bucket(each_env, name)["Properties"]
    assert properties["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    assert properties["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]


@pytest.mark.parametrize("name", [*ZONE_BUCKETS, "Logs"])
def test_every_bucket_denies_plain_http_and_old_tls(each_env, name):
    denies = [
        s
        for s in bucket_policy(each_env, name)
        if s["Effect"] == "Deny" and s.get("Sid") != "VersionsAreDeletedOnlyByBreakGlass"
    ]
    conditions = [s["Condition"] for s in denies]
    assert {"Bool": {"aws:SecureTransport": "false"}} in conditions
    assert {"NumericLessThan": {"s3:TlsVersion": 1.2}} in conditions
    for statement in denies:
        assert statement["Principal"] == {"AWS": "*"}
        assert statement["Action"] == "s3:*"


@pytest.mark.parametrize("zone", ZONE_BUCKETS)
def test_zone_access_logs_go_to_the_logs_bucket(each_env, zone):
    logging = bucket(each_env, zone)["Properties"]["LoggingConfiguration"]
    assert logging["DestinationBucketName"]["Ref"].startswith("DataLakeLogsBucket")
    assert logging["LogFilePrefix"] == f"s3-access/{zone.lower()}/"


def test_raw_zone_tiers_and_old_versions_expire(each_env):
    rules = bucket(each_env, "Raw")["Properties"]["LifecycleConfiguration"]["Rules"]
    config = each_env.config.data_lake
    assert {
        "Id": "raw-to-intelligent-tiering",
        "Status": "Enabled",
        "Transitions": [
            {
                "StorageClass": "INTELLIGENT_TIERING",
                "TransitionInDays": config.raw_to_intelligent_tiering_days,
            }
        ],
    } in rules
    assert {
        "Id": "expire-noncurrent-versions",
        "Status": "Enabled",
        "NoncurrentVersionExpiration": {
            "NoncurrentDays": config.noncurrent_version_expiration_days
        },
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    } in rules


def test_access_logs_expire_after_configured_days(each_env):
    (rule,) = bucket(each_env, "Logs")["Properties"]["LifecycleConfiguration"]["Rules"]
    assert rule["ExpirationInDays"] == each_env.config.data_lake.access_log_retention_days


def test_logs_bucket_admits_s3_log_delivery_only_from_each_zone_into_its_prefix(each_env):
    allows = [s for s in bucket_policy(each_env, "Logs") if s["Effect"] == "Allow"]
    deliveries = [s for s in allows if s["Principal"] == {"Service": "logging.s3.amazonaws.com"}]
    by_source = {}
    for statement in deliveries:
        assert statement["Action"] == "s3:PutObject"
        assert statement["Condition"]["StringEquals"] == {
            "aws:SourceAccount": {"Ref": "AWS::AccountId"}
        }
        source = statement["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::GetAtt"][0]
        by_source[source] = statement["Resource"]["Fn::Join"][1][1]
    assert {lid.split("Bucket")[0]: prefix for lid, prefix in by_source.items()} == {
        f"DataLake{zone}": f"/s3-access/{zone.lower()}/*" for zone in ZONE_BUCKETS
    }


def test_dev_destroys_and_empties_buckets(dev):
    template = dev.template("data")
    template.all_resources("AWS::S3::Bucket", {"DeletionPolicy": "Delete"})
    template.resource_count_is("Custom::S3AutoDeleteObjects", 4)


def test_prod_retains_buckets_and_key_and_never_auto_deletes(prod):
    template = prod.template("data")
    template.all_resources("AWS::S3::Bucket", {"DeletionPolicy": "Retain"})
    template.all_resources("AWS::KMS::Key", {"DeletionPolicy": "Retain"})
    template.resource_count_is("Custom::S3AutoDeleteObjects", 0)
    template.resource_properties_count_is(
        "AWS::S3::Bucket",
        {"Tags": Match.array_with([{"Key": "aws-cdk:auto-delete-objects", "Value": "true"}])},
        0,
    )


def _version_guard(synth, bucket: str) -> dict:
    policies = synth.template_json("data")["Resources"]
    (policy,) = [
        r["Properties"]["PolicyDocument"]
        for lid, r in policies.items()
        if r["Type"] == "AWS::S3::BucketPolicy" and lid.startswith(f"DataLake{bucket}BucketPolicy")
    ]
    (guard,) = [
        s for s in policy["Statement"] if s.get("Sid") == "VersionsAreDeletedOnlyByBreakGlass"
    ]
    return guard


@pytest.mark.parametrize("bucket", ["Raw", "Curated", "Artifacts", "Logs"])
def test_only_the_break_glass_role_may_delete_object_versions(dev, prod, bucket):
    for synth in (dev, prod):
        guard = _version_guard(synth, bucket)
        assert guard["Effect"] == "Deny"
        assert guard["Principal"] == {"AWS": "*"}
        assert guard["Action"] == "s3:DeleteObjectVersion"
        exempt = guard["Condition"]["ArnNotLike"]["aws:PrincipalArn"]
        exempt = exempt if isinstance(exempt, list) else [exempt]
        break_glass = f":role/ml-platform-{synth.config.env_name}-data-break-glass"
        assert break_glass in json.dumps(exempt[0])
    # Prod exempts nobody else; dev also lets the CDK's handler empty buckets on teardown.
    prod_exempt = _version_guard(prod, bucket)["Condition"]["ArnNotLike"]["aws:PrincipalArn"]
    assert "AutoDeleteObjects" not in json.dumps(prod_exempt)
    dev_exempt = _version_guard(dev, bucket)["Condition"]["ArnNotLike"]["aws:PrincipalArn"]
    assert "CustomS3AutoDeleteObjectsCustomResourceProviderRole" in json.dumps(dev_exempt)
