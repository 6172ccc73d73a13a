"""Cassandra container: Amazon Keyspaces tables for member data and predictions."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_cassandra as keyspaces
from aws_cdk import aws_kms as kms
from constructs import Construct

from cdk_constructs.base import PlatformContainer

_SECONDS_PER_DAY = 86_400

Column = keyspaces.CfnTable.ColumnProperty


class OnlineStore(PlatformContainer):
    """A Keyspaces keyspace with the serving path's tables.

    Keyspaces has no L2 construct, so this construct owns the L1 resources. Secure defaults:
    - encryption at rest with the platform's customer-managed KMS key;
    - point-in-time recovery on every table;
    - on-demand capacity (no throttling from under-provisioning, no idle cost);
    - predictions expire after the configured time to live, so stale rankings are never served.
    """

    container = "cassandra"
    stereotype = "online-store"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        keyspace_name: str,
        encryption_key: kms.IKey,
        prediction_ttl_days: int,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self.keyspace = keyspaces.CfnKeyspace(self, "Keyspace", keyspace_name=keyspace_name)
        self.keyspace.apply_removal_policy(removal_policy)
        self.keyspace_name = keyspace_name

        def table(
            construct_id: str,
            *,
            name: str,
            partition_key: list[Column],
            clustering_key: list[keyspaces.CfnTable.ClusteringKeyColumnProperty] | None = None,
            columns: list[Column],
            ttl_seconds: int | None = None,
        ) -> keyspaces.CfnTable:
            resource = keyspaces.CfnTable(
                self,
                construct_id,
                keyspace_name=self.keyspace.ref,
                table_name=name,
                partition_key_columns=partition_key,
                clustering_key_columns=clustering_key,
                regular_columns=columns,
                billing_mode=keyspaces.CfnTable.BillingModeProperty(mode="ON_DEMAND"),
                point_in_time_recovery_enabled=True,
                encryption_specification=keyspaces.CfnTable.EncryptionSpecificationProperty(
                    encryption_type="CUSTOMER_MANAGED_KMS_KEY",
                    kms_key_identifier=encryption_key.key_arn,
                ),
                default_time_to_live=ttl_seconds,
            )
            resource.apply_removal_policy(removal_policy)
            return resource

        self.member_table = table(
            "MemberProfileTable",
            name="member_profile",
            partition_key=[Column(column_name="member_id", column_type="text")],
            columns=[
                Column(column_name="country", column_type="text"),
                Column(column_name="plan", column_type="text"),
                Column(column_name="preferred_languages", column_type="list<text>"),
                Column(column_name="updated_at", column_type="timestamp"),
            ],
        )
        self.predictions_table = table(
            "PredictionsTable",
            name="predictions",
            partition_key=[Column(column_name="member_id", column_type="text")],
            clustering_key=[
                keyspaces.CfnTable.ClusteringKeyColumnProperty(
                    column=Column(column_name="model_name", column_type="text"), order_by="ASC"
                )
            ],
            columns=[
                Column(column_name="model_version", column_type="text"),
                Column(column_name="ranked_title_ids", column_type="list<text>"),
                Column(column_name="scores", column_type="list<double>"),
                Column(column_name="generated_at", column_type="timestamp"),
                # The A/B experiment and cell the member was served in, when there was one.
                Column(column_name="experiment", column_type="text"),
                Column(column_name="cell", column_type="text"),
            ],
            ttl_seconds=prediction_ttl_days * _SECONDS_PER_DAY,
        )
        # The titles a member has recently seen, which serving leaves out of a ranking.
        self.history_table = table(
            "MemberHistoryTable",
            name="member_history",
            partition_key=[Column(column_name="member_id", column_type="text")],
            columns=[
                Column(column_name="recent_title_ids", column_type="list<text>"),
                Column(column_name="updated_at", column_type="timestamp"),
            ],
        )
