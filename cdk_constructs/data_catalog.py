"""Hive Metastore container: the Glue Data Catalog databases and the event schema registry."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_glue as glue
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_constructs.base import PlatformContainer
from platform_config.model import KafkaTopicConfig

ZONES = ("raw", "curated", "features")


class DataCatalog(PlatformContainer):
    """Glue Data Catalog databases for the raw, curated and features zones, used by EMR as its
    Hive metastore, and a Glue Schema Registry for the event topics.

    Each event topic's Avro schema is registered with the topic's name and compatibility mode,
    so producers and the streaming job validate against one source of truth.

    Glue has no stable L2 construct for databases or registries, so this construct owns the
    L1 resources. Secure defaults:
    - each database's location is its zone in the KMS-encrypted data lake;
    - with `manage_catalog_encryption`, the catalog's metadata and connection passwords are
      encrypted with the platform key (one setting per account and region).
    """

    container = "hive-metastore"
    stereotype = "data-catalog"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name_prefix: str,
        registry_name: str,
        zone_locations: dict[str, s3.IBucket],
        encryption_key: kms.IKey,
        manage_catalog_encryption: bool,
        topics: list[KafkaTopicConfig],
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        missing = set(ZONES) - set(zone_locations)
        if missing:
            raise ValueError(f"zone_locations lacks {', '.join(sorted(missing))}")
        account = Stack.of(self).account
        self.database_names: dict[str, str] = {}
        for zone in ZONES:
            name = f"{name_prefix}_{zone}"
            bucket = zone_locations[zone]
            prefix = "features/" if zone == "features" else ""
            database = glue.CfnDatabase(
                self,
                f"{zone.capitalize()}Database",
                catalog_id=account,
                database_input=glue.CfnDatabase.DatabaseInputProperty(
                    name=name,
                    description=f"ML platform {zone} zone",
                    location_uri=bucket.s3_url_for_object(prefix),
                ),
            )
            database.apply_removal_policy(removal_policy)
            self.database_names[zone] = name

        self.schema_registry = glue.CfnRegistry(
            self,
            "SchemaRegistry",
            name=registry_name,
            description="Avro schemas of the platform's event topics",
        )
        self.schema_registry.apply_removal_policy(removal_policy)
        self.schemas: dict[str, glue.CfnSchema] = {}
        self._register_schemas(topics, removal_policy)

        if manage_catalog_encryption:
            glue.CfnDataCatalogEncryptionSettings(
                self,
                "CatalogEncryption",
                catalog_id=account,
                data_catalog_encryption_settings=glue.CfnDataCatalogEncryptionSettings.DataCatalogEncryptionSettingsProperty(
                    encryption_at_rest=glue.CfnDataCatalogEncryptionSettings.EncryptionAtRestProperty(
                        catalog_encryption_mode="SSE-KMS",
                        sse_aws_kms_key_id=encryption_key.key_arn,
                    ),
                    connection_password_encryption=glue.CfnDataCatalogEncryptionSettings.ConnectionPasswordEncryptionProperty(
                        return_connection_password_encrypted=True,
                        kms_key_id=encryption_key.key_arn,
                    ),
                ),
            )

    def grant_table_maintenance(
        self, grantee: iam.IGrantable, *, zones: tuple[str, ...]
    ) -> iam.Grant:
        """Read, create and update tables and their partitions in the `zones` databases; no
        deletes and no other database."""
        stack = Stack.of(self)
        resources = [stack.format_arn(service="glue", resource="catalog")]
        for zone in zones:
            name = self.database_names[zone]
            resources += [
                stack.format_arn(service="glue", resource="database", resource_name=name),
                stack.format_arn(service="glue", resource="table", resource_name=f"{name}/*"),
            ]
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=[
                "glue:GetDatabase",
                "glue:GetDatabases",
                "glue:GetTable",
                "glue:GetTables",
                "glue:CreateTable",
                "glue:UpdateTable",
                "glue:GetPartition",
                "glue:GetPartitions",
                "glue:BatchGetPartition",
                "glue:CreatePartition",
                "glue:BatchCreatePartition",
                "glue:UpdatePartition",
                "glue:BatchUpdatePartition",
            ],
            resource_arns=resources,
        )

    def _register_schemas(
        self, topics: list[KafkaTopicConfig], removal_policy: RemovalPolicy
    ) -> None:
        for topic in topics:
            name = "".join(p.capitalize() for p in topic.name.replace(".", "-").split("-"))
            first, *later = topic.schema_versions
            schema = glue.CfnSchema(
                self,
                f"Schema{name}",
                name=topic.name,
                registry=glue.CfnSchema.RegistryProperty(arn=self.schema_registry.attr_arn),
                data_format="AVRO",
                compatibility=topic.schema_compatibility,
                # Never edited after creation (CloudFormation cannot update a definition):
                # later versions are schema versions below, checked by the registry against
                # the compatibility mode.
                schema_definition=first,
                description=f"Values of the {topic.name} topic ({topic.schema_file})",
            )
            schema.apply_removal_policy(removal_policy)
            previous: glue.CfnSchemaVersion | glue.CfnSchema = schema
            for number, definition in enumerate(later, start=2):
                version = glue.CfnSchemaVersion(
                    self,
                    f"Schema{name}V{number}",
                    schema=glue.CfnSchemaVersion.SchemaProperty(schema_arn=schema.attr_arn),
                    schema_definition=definition,
                )
                # The registry numbers versions in the order they arrive.
                version.add_dependency(previous)
                version.apply_removal_policy(removal_policy)
                previous = version
            self.schemas[topic.name] = schema
