from __future__ import annotations

from aws_cdk import CfnOutput, Duration, Stack
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_constructs.alerting import AlertTarget
from cdk_constructs.data_lake import bucket_name
from cdk_constructs.model_monitoring import ModelMonitoring
from cdk_constructs.monitoring import (
    monitor_functions,
    monitor_state_machines,
    report_training_events,
)
from cdk_constructs.orchestrator import (
    RUN_DATE,
    DataTrigger,
    EmrStep,
    Orchestrator,
    QualityGateStep,
    SignalTrigger,
    TaskStep,
    TimeTrigger,
    UpstreamTrigger,
    Workflow,
)
from cdk_constructs.training_service import TrainingService
from jobs.layout import (
    CURATED_PREFIX,
    DEAD_LETTER_PREFIX,
    FEATURES_PREFIX,
    RAW_EVENTS_PREFIX,
)
from platform_config import PlatformConfig
from stacks.data_stack import DataStack
from stacks.network_stack import NetworkStack
from stacks.processing_stack import ProcessingStack

# Named signals and the parameters each must carry (Maestro-style signal triggers).
SIGNALS = {
    "retrain-requested": ["model"],
    "features-requested": ["reason"],
    "analysis-requested": ["reason"],
}
# A backfilled day is complete when its _SUCCESS marker lands under this raw-zone prefix.
BACKFILL_PREFIX = "backfill/member_interactions/"


class OrchestrationStack(Stack):
    """Maestro-style workflows and the training service they launch (stateless: runs are
    history in Step Functions and models live in the registry).

    Wires the diagram's Maestro -> Spark and Maestro -> Training arrows (EMR steps on the
    Spark cluster, a SageMaker training job), S3 -> Training and Training -> S3 (the training
    role reads curated data and writes its models prefix), and the triggers the diagram cannot
    show.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PlatformConfig,
        network: NetworkStack,
        data: DataStack,
        processing: ProcessingStack,
        **kwargs,
    ):
        super().__init__(scope, construct_id, **kwargs)
        self.add_stack_dependency(data)
        orchestration = config.orchestrator
        raw, curated, artifacts = (
            s3.Bucket.from_bucket_attributes(
                self,
                f"{zone.capitalize()}Bucket",
                bucket_name=bucket_name(config.bucket_prefix, zone),
                encryption_key=data.data_lake.key,
            )
            for zone in ("raw", "curated", "artifacts")
        )
        self.training = TrainingService(
            self,
            "Training",
            config=config.training,
            name_prefix=config.resource_prefix,
            vpc=network.network.vpc,
            subnets=network.network.compute_subnets,
            curated_bucket=curated,
            artifacts_bucket=artifacts,
            encryption_key=data.data_lake.key,
            input_prefixes={
                "interactions": CURATED_PREFIX,
                "features": FEATURES_PREFIX,
            },
            model_package_group=data.model_registry.group_names["recommender"],
            log_retention_days=config.network.flow_log_retention_days,
        )
        workflow_timeout = Duration.minutes(orchestration.workflow_timeout_minutes)
        emr_step_timeout = Duration.minutes(orchestration.emr_step_timeout_minutes)
        train_recommender = Workflow(
            name="train-recommender",
            description=(
                "Daily: gate the raw events, build curated data and features, load the "
                "feature store, train on GPU and register the model version"
            ),
            timeout=workflow_timeout,
            steps=(
                QualityGateStep(
                    name="raw-events-gate",
                    bucket=raw,
                    prefix_template=f"{RAW_EVENTS_PREFIX}/event_date={RUN_DATE}/",
                    min_objects=orchestration.min_raw_objects,
                    dead_letter_prefix_template=f"{DEAD_LETTER_PREFIX}/ingest_date={RUN_DATE}/",
                    max_dead_letter_ratio=orchestration.max_dead_letter_ratio,
                ),
                EmrStep(
                    name="spark-features",
                    cluster_id=processing.spark.cluster_id,
                    args=tuple(processing.spark_etl_args),
                    timeout=emr_step_timeout,
                    depends_on=("raw-events-gate",),
                ),
                # Loading the feature store and training both need only the day's features,
                # so they run at once.
                EmrStep(
                    name="ingest-features",
                    cluster_id=processing.spark.cluster_id,
                    args=tuple(processing.feature_ingestion_args),
                    timeout=emr_step_timeout,
                    depends_on=("spark-features",),
                ),
                TaskStep(
                    name="train",
                    build_state=self.training.training_task,
                    grant_to=self.training.grant_start_training,
                    retry_errors=("SageMaker.AmazonSageMakerException",),
                    depends_on=("spark-features",),
                ),
                TaskStep(
                    name="register-model",
                    build_state=self.training.register_task,
                    retry_errors=("Lambda.ServiceException", "Lambda.TooManyRequestsException"),
                    depends_on=("train",),
                ),
            ),
            triggers=(
                TimeTrigger(
                    cron=orchestration.train_recommender_cron, timezone=orchestration.timezone
                ),
                SignalTrigger(signal="retrain-requested", params={"model": "recommender"}),
                DataTrigger(bucket=raw, prefix=BACKFILL_PREFIX),
            ),
        )
        validate_features = Workflow(
            name="validate-features",
            description="After each feature build: the day's member features exist",
            timeout=workflow_timeout,
            steps=(
                QualityGateStep(
                    name="features-gate",
                    bucket=curated,
                    prefix_template=f"{FEATURES_PREFIX}feature_date={RUN_DATE}/",
                    min_objects=1,
                ),
            ),
            triggers=(
                UpstreamTrigger(workflow="train-recommender"),
                SignalTrigger(signal="features-requested", params={"reason": "manual"}),
            ),
        )
        model_monitoring = config.monitoring.models
        monitor_models = Workflow(
            name="monitor-models",
            description=(
                "Hourly: drift of inputs and scores against each served version's training "
                "baseline, and the online hit rate, published for the ML monitoring alarms"
            ),
            timeout=workflow_timeout,
            steps=(
                EmrStep(
                    name="model-monitor",
                    cluster_id=processing.spark.cluster_id,
                    args=tuple(processing.model_monitor_args),
                    timeout=emr_step_timeout,
                ),
            ),
            triggers=(TimeTrigger(cron=model_monitoring.cron, timezone=orchestration.timezone),),
        )
        analyze_experiments = Workflow(
            name="analyze-experiments",
            description=(
                "Daily, after the day's plays are curated, and on demand: each running or "
                "recently stopped experiment's exposures and outcomes, per cell, for ABlaze"
            ),
            timeout=workflow_timeout,
            steps=(
                EmrStep(
                    name="experiment-analysis",
                    cluster_id=processing.spark.cluster_id,
                    args=tuple(processing.experiment_analysis_args),
                    timeout=emr_step_timeout,
                ),
            ),
            triggers=(
                TimeTrigger(
                    cron=config.experimentation.analysis_cron, timezone=orchestration.timezone
                ),
                SignalTrigger(signal="analysis-requested", params={"reason": "manual"}),
            ),
        )
        alerts = AlertTarget(self, name_prefix=config.resource_prefix, area="workflows")
        self.orchestrator = Orchestrator(
            self,
            "Orchestrator",
            name_prefix=config.resource_prefix,
            workflows=[train_recommender, validate_features, monitor_models, analyze_experiments],
            signals=SIGNALS,
            alerts=alerts,
            log_retention_days=config.network.flow_log_retention_days,
        )
        # Sustained drift of a served model asks for its retraining.
        self.model_monitoring = ModelMonitoring(
            self,
            "ModelMonitoring",
            name_prefix=config.resource_prefix,
            models=[model.name for model in config.serving.models],
            config=model_monitoring,
            alerts=alerts,
            signal_publisher=self.orchestrator.signal_bus.publisher.function,
        )
        self.training_events = report_training_events(
            self.model_monitoring,
            alerts=alerts,
            job_name_prefix=f"{config.resource_prefix}-",
            dead_letter_queue=self.orchestrator.dead_letters,
        )
        monitor_state_machines(alerts, self.orchestrator.state_machines, area="workflows")
        monitor_functions(alerts, self, max_errors=config.monitoring.lambda_errors)
        for name, machine in self.orchestrator.state_machines.items():
            CfnOutput(
                self,
                f"{name.title().replace('-', '')}StateMachine",
                value=machine.state_machine_arn,
            )
        CfnOutput(
            self,
            "SignalPublisherFunction",
            value=self.orchestrator.signal_bus.publisher.function.function_name,
        )
        CfnOutput(self, "SignalBusName", value=self.orchestrator.signal_bus.bus.event_bus_name)
