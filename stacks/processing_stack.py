from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_constructs.alerting import AlertTarget
from cdk_constructs.base import acknowledge_wildcard_grants
from cdk_constructs.data_lake import bucket_name
from cdk_constructs.emr import REPO_ROOT, EmrTlsCertificates
from cdk_constructs.experimentation import ExperimentTables
from cdk_constructs.flink_cluster import FlinkCluster
from cdk_constructs.model_monitoring import grant_put_model_metrics
from cdk_constructs.monitoring import monitor_emr, monitor_functions, monitor_kafka
from cdk_constructs.orchestrator import RUN_DATE
from cdk_constructs.spark_cluster import SparkCluster
from cdk_constructs.training_service import MODELS_PREFIX
from jobs import layout
from platform_config import PlatformConfig
from stacks.data_stack import DataStack
from stacks.network_stack import NetworkStack
from stacks.streaming_stack import StreamingStack

CODE_DIRECTORIES = {"jobs": REPO_ROOT / "jobs", "schemas": REPO_ROOT / "schemas"}
# The EMR step (and YARN application) name of the streaming job.
STREAMING_JOB_NAME = "raw-ingest"


class ProcessingStack(Stack):
    """Stateless compute on EMR: the Flink streaming cluster and the Spark batch cluster.

    Wires the diagram's arrows: Kafka -> Flink (MSK IAM read of the events topic, network path
    to the brokers), Flink -> S3 (its raw prefix only), Spark -> S3 (read raw, write curated)
    and Spark -> Hive metastore (tables and partitions of the curated and features databases).
    The clusters' TLS certificates exist before the clusters; the streaming job starts with
    the Flink cluster and is kept running, alerting through the platform's alert topic.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PlatformConfig,
        network: NetworkStack,
        data: DataStack,
        streaming: StreamingStack,
        **kwargs,
    ):
        super().__init__(scope, construct_id, **kwargs)
        key = data.data_lake.key
        kafka = streaming.kafka
        self.kafka_cluster_name = kafka.cluster_name
        # Buckets by name: the policies below then name them literally (see bucket_name).
        self.add_stack_dependency(data)
        raw, curated, artifacts, logs_bucket = (
            s3.Bucket.from_bucket_attributes(
                self,
                f"{zone.capitalize()}Bucket",
                bucket_name=bucket_name(config.bucket_prefix, zone),
                encryption_key=None if zone == "logs" else key,
            )
            for zone in ("raw", "curated", "artifacts", "logs")
        )
        log_retention_days = config.network.flow_log_retention_days
        # Streaming (Kafka, Flink and its keeper) and batch processing each have a dashboard.
        alerts = AlertTarget(self, name_prefix=config.resource_prefix, area="streaming")
        self.tls_certificates = EmrTlsCertificates(
            self,
            "EmrTls",
            config=config.emr_tls,
            artifacts_bucket=artifacts,
            encryption_key=key,
            log_retention_days=log_retention_days,
        )
        shared = {
            "vpc": network.network.vpc,
            "subnets": network.network.compute_subnets,
            "encryption_key": key,
            "logs_bucket": logs_bucket,
            "artifacts_bucket": artifacts,
            "code_directories": CODE_DIRECTORIES,
            "tls_certificates": self.tls_certificates,
        }
        self.flink = FlinkCluster(
            self,
            "Flink",
            config=config.flink,
            cluster_name=f"{config.resource_prefix}-flink",
            # Its running job and the consumer offsets it checkpoints are the platform's
            # ingestion: no accidental termination where the environment is protected.
            termination_protected=config.protect_stateful_resources,
            **shared,
        )
        self.spark = SparkCluster(
            self,
            "Spark",
            config=config.spark,
            cluster_name=f"{config.resource_prefix}-spark",
            # Holds no state between runs (and, in dev, terminates when idle).
            termination_protected=False,
            **shared,
        )

        bucket_arn = rf"arn:aws[a-z-]*:s3:::{config.bucket_prefix}"

        # Kafka -> Flink
        events_topic = config.kafka.topics[0].name
        self.flink_consumer_group = f"{config.resource_prefix}-raw-ingest"
        kafka.allow_clients(self.flink.connections, "Flink reads the event topics")
        kafka.grant_consume(
            self.flink.instance_role, topic=events_topic, group=self.flink_consumer_group
        )
        kafka.acknowledge_client_grants(self.flink.instance_role)
        # Flink -> S3 raw zone, its prefix only
        raw.grant_put(self.flink.instance_role, f"{layout.STREAMING_PREFIX}*")
        acknowledge_wildcard_grants(
            self.flink.instance_role,
            {
                rf"Resource::{bucket_arn}-raw-[^/]*/{layout.STREAMING_PREFIX}\*": (
                    "Flink writes event objects only under the streaming/ prefix of the raw "
                    "zone, partitioned by event date and hour."
                ),
            },
        )

        # Spark -> S3: read raw, write curated
        raw.grant_read(self.spark.instance_role)
        curated.grant_read_write(self.spark.instance_role)
        # Spark -> Hive metastore: tables and partitions of the curated and features databases
        data.catalog.grant_table_maintenance(
            self.spark.instance_role, zones=("curated", "features")
        )
        acknowledge_wildcard_grants(
            self.spark.instance_role,
            {
                rf"Resource::{bucket_arn}-(raw|curated)-[^/]*/\*": (
                    "The ETL reads any raw-zone object and rewrites curated tables, features "
                    "and quarantine objects anywhere in the curated zone."
                ),
                rf"Resource::arn:.*:glue:.*:table/{config.snake_prefix}_(curated|features)/\*": (
                    "The ETL creates and updates any table of the curated and features "
                    "databases (no deletes, no other database)."
                ),
            },
        )

        # Kafka -> Flink -> S3: the streaming job, started with the cluster and kept running.
        topic = config.kafka.topics[0]
        self.flink_keeper = self.flink.run_streaming_job(
            name=STREAMING_JOB_NAME,
            module="jobs.streaming.flink_job",
            arguments=[
                "--bootstrap-servers", kafka.bootstrap_brokers,
                "--topic", topic.name,
                "--group-id", self.flink_consumer_group,
                "--raw-bucket", raw.bucket_name,
                "--schema-path", self.flink.node_path(topic.schema_file),
                "--checkpoint-dir", self.flink.checkpoint_url,
            ],
            alerts=alerts,
            log_retention_days=log_retention_days,
        )  # fmt: skip
        # The EMR step arguments of the batch jobs, which the workflow runs.
        self.spark_etl_args = self.spark.spark_submit_step(
            script="jobs/batch/interaction_etl.py",
            arguments=[
                "--raw-path", raw.s3_url_for_object(f"{layout.RAW_EVENTS_PREFIX}/"),
                "--run-date", RUN_DATE,
                "--curated-path", curated.s3_url_for_object(layout.CURATED_PREFIX),
                "--features-path", curated.s3_url_for_object(layout.FEATURES_PREFIX),
                "--quarantine-path", curated.s3_url_for_object(layout.QUARANTINE_PREFIX),
                "--curated-database", data.catalog.database_names["curated"],
                "--features-database", data.catalog.database_names["features"],
                "--metrics-path", curated.s3_url_for_object(layout.RUNS_PREFIX),
            ],
        )  # fmt: skip
        # Features -> feature store: the batch ingestion path, run by the workflow after the ETL.
        feature_store = data.feature_store
        feature_store.grant_ingest(self.spark.instance_role)
        self.feature_ingestion_args = self.spark.spark_submit_step(
            script="jobs/batch/feature_ingestion.py",
            arguments=[
                "--features-path", curated.s3_url_for_object(layout.FEATURES_PREFIX),
                "--run-date", RUN_DATE,
                "--feature-group", feature_store.member_features_name,
                "--region", self.region,
                "--marker-path", curated.s3_url_for_object(feature_store.marker_key),
            ],
        )  # fmt: skip
        # Spark -> CloudWatch: the model monitor reads the prediction log (raw zone, read
        # above), the curated plays and each served version's baseline inside its artifact.
        artifacts.grant_read(self.spark.instance_role, f"{MODELS_PREFIX}*")
        acknowledge_wildcard_grants(
            self.spark.instance_role,
            {
                rf"Resource::{bucket_arn}-artifacts-[^/]*/{MODELS_PREFIX}\*": (
                    "The model monitor reads the baseline inside any served version's model "
                    "artifact, whose key the training job names at run time."
                ),
            },
        )
        grant_put_model_metrics(self.spark.instance_role)
        monitoring = config.monitoring.models
        self.model_monitor_args = self.spark.spark_submit_step(
            script="jobs/batch/model_monitor.py",
            arguments=[
                "--predictions", raw.s3_url_for_object(layout.PREDICTIONS_PREFIX),
                "--interactions", curated.s3_url_for_object(layout.CURATED_PREFIX),
                "--window-hours", str(monitoring.window_hours),
                "--outcome-hours", str(monitoring.outcome_hours),
                "--plays-lag-hours", str(monitoring.plays_lag_hours),
                "--k", str(monitoring.top_k),
                "--region", self.region,
            ],
        )  # fmt: skip

        # Spark -> ABlaze: the experiment analysis reads the experiments and adds results.
        experiment_tables = ExperimentTables(
            self, name_prefix=config.resource_prefix, encryption_key=key
        )
        experiment_tables.grant_write_results(self.spark.instance_role)
        acknowledge_wildcard_grants(
            self.spark.instance_role,
            {
                rf"Resource::arn:.*:table/{config.resource_prefix}-experiments/index/\*": (
                    "The CDK's read grant on ABlaze's experiments table covers its one index; "
                    "the analysis only scans the table."
                ),
            },
        )
        self.experiment_analysis_args = self.spark.spark_submit_step(
            script="jobs/batch/experiment_analysis.py",
            arguments=[
                "--predictions", raw.s3_url_for_object(layout.PREDICTIONS_PREFIX),
                "--interactions", curated.s3_url_for_object(layout.CURATED_PREFIX),
                "--experiments-table", experiment_tables.experiments.table_name,
                "--results-table", experiment_tables.results.table_name,
                "--region", self.region,
            ],
        )  # fmt: skip

        self._monitor(config, alerts)
        CfnOutput(self, "FlinkClusterId", value=self.flink.cluster_id)
        CfnOutput(self, "SparkClusterId", value=self.spark.cluster_id)
        CfnOutput(self, "FlinkJobStepArgs", value=self.to_json_string(self.flink_keeper.step_args))
        CfnOutput(self, "SparkJobStepArgs", value=self.to_json_string(self.spark_etl_args))

    def _monitor(self, config: PlatformConfig, alerts: AlertTarget) -> None:
        thresholds = config.monitoring
        monitor_kafka(
            alerts,
            cluster_name=self.kafka_cluster_name,
            broker_count=config.kafka.brokers_per_zone * len(config.availability_zones),
            consumer_group=self.flink_consumer_group,
            topic=config.kafka.topics[0].name,
            config=thresholds,
            area="streaming",
        )
        monitor_emr(
            alerts, cluster_id=self.flink.cluster_id, label="flink", idle_hours=None,
            area="streaming",
        )  # fmt: skip
        monitor_emr(
            alerts,
            cluster_id=self.spark.cluster_id,
            label="spark",
            # A cluster that ends itself when idle costs nothing idle for long.
            idle_hours=(None if config.spark.idle_timeout_minutes else thresholds.spark_idle_hours),
            area="processing",
        )
        monitor_functions(alerts, self.flink, max_errors=thresholds.lambda_errors)
        monitor_functions(
            alerts, self.tls_certificates, max_errors=thresholds.lambda_errors, area="processing"
        )
