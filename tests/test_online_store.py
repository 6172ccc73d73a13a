"""OnlineStore: Keyspaces tables with CMK encryption, PITR, on-demand capacity and TTL."""

from __future__ import annotations

import pytest


def tables(synth) -> dict[str, dict]:
    found = synth.template("data").find_resources("AWS::Cassandra::Table")
    return {t["Properties"]["TableName"]: t for t in found.values()}


def test_keyspace_is_named_for_the_environment(each_env):
    each_env.template("data").has_resource_properties(
        "AWS::Cassandra::Keyspace", {"KeyspaceName": f"ml_platform_{each_env.config.env_name}"}
    )


def test_member_and_prediction_tables_exist(each_env):
    assert set(tables(each_env)) == {"member_profile", "predictions", "member_history"}


@pytest.mark.parametrize("name", ["member_profile", "predictions", "member_history"])
def test_tables_are_encrypted_recoverable_and_on_demand(each_env, name):
    properties = tables(each_env)[name]["Properties"]
    encryption = properties["EncryptionSpecification"]
    assert encryption["EncryptionType"] == "CUSTOMER_MANAGED_KMS_KEY"
    key_id, attribute = encryption["KmsKeyIdentifier"]["Fn::GetAtt"]
    assert key_id.startswith("DataLakeKey")
    assert attribute == "Arn"
    assert properties["PointInTimeRecoveryEnabled"] is True
    assert properties["BillingMode"] == {"Mode": "ON_DEMAND"}
    assert properties["KeyspaceName"]["Ref"].startswith("OnlineStoreKeyspace")


def test_predictions_expire_after_the_configured_ttl(each_env):
    properties = tables(each_env)["predictions"]["Properties"]
    assert (
        properties["DefaultTimeToLive"] == each_env.config.online_store.prediction_ttl_days * 86400
    )
    assert "DefaultTimeToLive" not in tables(each_env)["member_profile"]["Properties"]


def test_predictions_are_keyed_by_member_then_model(each_env):
    properties = tables(each_env)["predictions"]["Properties"]
    assert properties["PartitionKeyColumns"] == [{"ColumnName": "member_id", "ColumnType": "text"}]
    assert properties["ClusteringKeyColumns"] == [
        {"Column": {"ColumnName": "model_name", "ColumnType": "text"}, "OrderBy": "ASC"}
    ]
    # Each prediction records the version that made it and, under an experiment, the cell.
    assert {c["ColumnName"]: c["ColumnType"] for c in properties["RegularColumns"]} == {
        "model_version": "text",
        "ranked_title_ids": "list<text>",
        "scores": "list<double>",
        "generated_at": "timestamp",
        "experiment": "text",
        "cell": "text",
    }


def test_member_history_holds_recent_titles_per_member(each_env):
    properties = tables(each_env)["member_history"]["Properties"]
    assert properties["PartitionKeyColumns"] == [{"ColumnName": "member_id", "ColumnType": "text"}]
    assert {c["ColumnName"]: c["ColumnType"] for c in properties["RegularColumns"]} == {
        "recent_title_ids": "list<text>",
        "updated_at": "timestamp",
    }


def test_keyspaces_resources_follow_the_environment_removal_policy(dev, prod):
    for cfn_type in ("AWS::Cassandra::Keyspace", "AWS::Cassandra::Table"):
        dev.template("data").all_resources(cfn_type, {"DeletionPolicy": "Delete"})
        prod.template("data").all_resources(cfn_type, {"DeletionPolicy": "Retain"})
