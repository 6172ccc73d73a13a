"""Spark Processing Cluster container: EMR with Spark and Hive on the Glue Data Catalog."""

from __future__ import annotations

from aws_cdk import aws_emr as emr

from cdk_constructs.emr import JOB_PYTHON, EmrCluster, classification

_GLUE_METASTORE = {
    "hive.metastore.client.factory.class": (
        "com.amazonaws.glue.catalog.metastore.AWSGlueDataCatalogHiveClientFactory"
    )
}


class SparkCluster(EmrCluster):
    """Batch ETL cluster (EMR security defaults in EmrCluster).

    Spark-specific defaults: the Glue Data Catalog is the Hive metastore of both Spark and
    Hive, dynamic partition overwrite (re-running a day replaces only that day), adaptive
    query execution on.
    """

    container = "spark"
    stereotype = "batch-processing"
    applications = ("Spark", "Hive", "Hadoop")

    def configurations(self) -> list[emr.CfnCluster.ConfigurationProperty]:
        return [
            classification("spark-hive-site", _GLUE_METASTORE),
            classification("hive-site", _GLUE_METASTORE),
            emr.CfnCluster.ConfigurationProperty(
                classification="spark-env",
                configurations=[
                    classification(
                        "export",
                        {"PYSPARK_PYTHON": JOB_PYTHON, "PYSPARK_DRIVER_PYTHON": JOB_PYTHON},
                    )
                ],
            ),
            classification(
                "spark-defaults",
                {
                    "spark.sql.sources.partitionOverwriteMode": "dynamic",
                    "spark.sql.adaptive.enabled": "true",
                },
            ),
        ]
