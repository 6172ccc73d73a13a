"""Flink Processing Cluster container: EMR with Flink, reading MSK, writing the raw zone."""

from __future__ import annotations

from aws_cdk import aws_emr as emr

from cdk_constructs.emr import JOB_PYTHON, EmrCluster, classification

CHECKPOINT_PREFIX = "flink/checkpoints/"


class FlinkCluster(EmrCluster):
    """Long-running EMR cluster for streaming jobs (EMR security defaults in EmrCluster).

    Flink-specific defaults: exactly-once checkpoints every minute to the artifacts bucket,
    RocksDB state with incremental checkpoints, restart with backoff after failures.
    """

    container = "flink"
    stereotype = "stream-processing"
    applications = ("Flink", "Hadoop")

    @property
    def checkpoint_url(self) -> str:
        return self.artifacts_bucket.s3_url_for_object(f"{CHECKPOINT_PREFIX}{self.cluster_name}")

    def configurations(self) -> list[emr.CfnCluster.ConfigurationProperty]:
        checkpoints = self.checkpoint_url
        return [
            classification(
                "flink-conf",
                {
                    "execution.checkpointing.interval": "60s",
                    "execution.checkpointing.mode": "EXACTLY_ONCE",
                    "state.backend.type": "rocksdb",
                    "state.backend.incremental": "true",
                    "state.checkpoints.dir": checkpoints,
                    "restart-strategy.type": "exponential-delay",
                    "python.executable": JOB_PYTHON,
                    "python.client.executable": JOB_PYTHON,
                },
            )
        ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.artifacts_bucket.grant_read_write(
            self.instance_role, f"{CHECKPOINT_PREFIX}{self.cluster_name}/*"
        )
