"""Spark Processing Cluster container: EMR with Spark and Hive on the Glue Data Catalog."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import aws_emr as emr

from cdk_constructs.emr import JOB_PYTHON, EmrCluster, classification
from jobs.layout import JOBS_ARCHIVE

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

    @classmethod
    def spark_submit_step(cls, *, script: str, arguments: Sequence[str]) -> list[str]:
        """The step arguments that run `script` (a path in the deployed code, e.g.
        jobs/batch/interaction_etl.py) in cluster mode, with the jobs package on its path."""
        return [
            "spark-submit", "--deploy-mode", "cluster",
            "--py-files", JOBS_ARCHIVE, cls.node_path(script), *arguments,
        ]  # fmt: skip
