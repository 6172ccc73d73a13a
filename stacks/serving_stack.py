from __future__ import annotations

from pathlib import Path

from aws_cdk import CfnOutput, Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_constructs.alerting import AlertTarget
from cdk_constructs.data_lake import bucket_name
from cdk_constructs.delivery import CanaryAnalysis, Delivery, DeliveryTarget, stack_parameters
from cdk_constructs.experimentation import ExperimentationService, ExperimentTables
from cdk_constructs.model_serving import (
    ModelData,
    ModelService,
    ServingFront,
    Telemetry,
    cluster_name,
    service_name,
    serving_image,
)
from cdk_constructs.monitoring import (
    monitor_experimentation,
    monitor_functions,
    monitor_state_machines,
)
from cdk_constructs.prometheus import PrometheusSink
from cdk_constructs.training_service import MODELS_PREFIX
from platform_config import PlatformConfig
from platform_config.model import ServedModelConfig
from stacks.data_stack import DataStack
from stacks.network_stack import NetworkStack

# The serving tasks' OpenTelemetry collector configuration (scrape the app, write to
# Prometheus), passed to the collector in its environment.
COLLECTOR_CONFIG = Path(__file__).resolve().parent.parent / "serving" / "otel-collector.yaml"
# Parameters the CDK's default synthesizer adds to every stack.
_SYNTHESIZER_PARAMETERS = ("BootstrapVersion",)


def model_stack_name(config: PlatformConfig, index: int) -> str:
    return f"{config.resource_prefix}-serving-models-{index + 1}"


def model_groups(config: PlatformConfig) -> list[list[ServedModelConfig]]:
    """The served models, in stacks of at most `models_per_stack`."""
    models, size = config.serving.models, config.serving.models_per_stack
    return [models[start : start + size] for start in range(0, len(models), size)]


class ServingStack(Stack):
    """Model serving's shared front (load balancer, cluster) and delivery (canary analysis,
    the workflow that rolls approved versions out). Stateless.

    Wires Spinnaker -> Serving (the hook, the roles ECS deploys with, the workflow that sets
    served versions) and the registry's approval as the event that starts a delivery.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PlatformConfig,
        network: NetworkStack,
        data: DataStack,
        **kwargs,
    ):
        super().__init__(scope, construct_id, **kwargs)
        serving = config.serving
        prefix = config.resource_prefix
        self.add_stack_dependency(network)
        self.add_stack_dependency(data)
        self.front = ServingFront(
            self,
            "Serving",
            name_prefix=prefix,
            vpc=network.network.vpc,
            subnets=network.network.compute_subnets,
            internal=serving.internal,
            certificate_arn=serving.certificate_arn,
            allowed_cidrs=serving.allowed_cidrs,
            logs_bucket=s3.Bucket.from_bucket_name(
                self, "LogsBucket", bucket_name(config.bucket_prefix, "logs")
            ),
        )
        delivery_targets = [
            DeliveryTarget(
                model=model.name,
                package_group=f"{prefix}-{model.name}",
                stack_name=model_stack_name(config, index),
                stack_parameters=(
                    *_SYNTHESIZER_PARAMETERS,
                    *stack_parameters([m.name for m in group]),
                ),
                cluster_name=cluster_name(prefix),
                service_name=service_name(prefix, model.name),
            )
            for index, group in enumerate(model_groups(config))
            for model in group
        ]
        alerts = AlertTarget(self, name_prefix=prefix, area="serving")
        self.delivery = Delivery(
            self,
            "Delivery",
            name_prefix=prefix,
            canary=serving.canary,
            delivery_targets=delivery_targets,
            alerts=alerts,
            log_retention_days=serving.log_retention_days,
        )
        monitor_state_machines(alerts, {"delivery": self.delivery.workflow}, area="serving")
        # ABlaze -> Serving: the service that configures the experiments serving allocates by.
        self.experimentation = ExperimentationService(
            self,
            "Experimentation",
            name_prefix=prefix,
            tables=ExperimentTables(self, name_prefix=prefix, encryption_key=data.data_lake.key),
            model_package_group=data.model_registry.group_names["recommender"],
            cluster=self.front.cluster,
            listener=self.front.listener,
            load_balancer_group=self.front.load_balancer_group,
            vpc=network.network.vpc,
            subnets=network.network.compute_subnets,
            log_retention_days=serving.log_retention_days,
        )
        monitor_experimentation(alerts, service=self.experimentation)
        monitor_functions(alerts, self, max_errors=config.monitoring.lambda_errors)
        CfnOutput(
            self,
            "ServingUrl",
            value=f"{self.front.scheme}://{self.front.load_balancer.load_balancer_dns_name}",
        )
        CfnOutput(self, "DeliveryStateMachine", value=self.delivery.workflow.state_machine_arn)


class ModelServicesStack(Stack):
    """The ECS services of a group of served models (stateless; each model's served version
    is a set of this stack's parameters, which delivery sets and `cdk deploy` keeps).

    Wires Training -> Serving (each service reads its models' artifacts) and
    Serving -> Cassandra (reads member history, writes predictions).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PlatformConfig,
        models: list[ServedModelConfig],
        first_priority: int,
        network: NetworkStack,
        data: DataStack,
        serving: ServingStack,
        **kwargs,
    ):
        super().__init__(scope, construct_id, **kwargs)
        prefix = config.resource_prefix
        self.add_stack_dependency(serving)
        self.add_stack_dependency(data)
        artifacts = s3.Bucket.from_bucket_attributes(
            self,
            "ArtifactsBucket",
            bucket_name=bucket_name(config.bucket_prefix, "artifacts"),
            encryption_key=data.data_lake.key,
        )
        raw = s3.Bucket.from_bucket_attributes(
            self,
            "RawBucket",
            bucket_name=bucket_name(config.bucket_prefix, "raw"),
            encryption_key=data.data_lake.key,
        )
        image = serving_image(self)
        experiments = ExperimentTables(self, name_prefix=prefix, encryption_key=data.data_lake.key)
        telemetry = (
            Telemetry(
                collector_image=config.monitoring.otel_collector_image,
                collector_config=COLLECTOR_CONFIG.read_text(),
                sink=PrometheusSink.lookup(name_prefix=prefix),
            )
            if config.monitoring.prometheus
            else None
        )
        alerts = AlertTarget(self, name_prefix=prefix, area=construct_id.removeprefix(f"{prefix}-"))
        online = data.online_store
        feature_store = data.feature_store
        self.services: dict[str, ModelService] = {}
        for offset, model in enumerate(models):
            has_features = model.name == "recommender"
            service = ModelService(
                self,
                f"Model{model.name.title().replace('-', '')}",
                name_prefix=prefix,
                config=model,
                canary=config.serving.canary,
                front=serving.front,
                image=image,
                data=ModelData(
                    artifacts_bucket=artifacts,
                    artifacts_prefix=f"{MODELS_PREFIX}{prefix}-{model.name}/",
                    keyspace=online.keyspace_name,
                    read_tables=("member_history",),
                    write_tables=("predictions",),
                    feature_group_arn=feature_store.member_features_arn if has_features else None,
                    feature_group_name=(
                        feature_store.member_features_name if has_features else None
                    ),
                    prediction_log_bucket=raw,
                    experiments=experiments,
                ),
                telemetry=telemetry,
                subnets=network.network.compute_subnets,
                priority=first_priority + offset,
                log_retention_days=config.serving.log_retention_days,
            )
            for alarm in service.alarms:
                alerts.notify(alarm)
            # Spinnaker -> Serving: the judge of each canary, as the service's hook.
            CanaryAnalysis(
                self,
                f"Canary{model.name.title().replace('-', '')}",
                service=service,
                front=serving.front,
                canary=config.serving.canary,
                cluster=cluster_name(prefix),
                service_name=service_name(prefix, model.name),
                log_retention_days=config.serving.log_retention_days,
            )
            self.services[model.name] = service
            alerts.alarm(
                name=f"{model.name}-unhealthy-targets",
                title=f"Model {model.name}: unhealthy tasks behind the load balancer",
                description=f"{model.name}: tasks failing the load balancer's health check",
                metric=cloudwatch.MathExpression(
                    expression="MAX([FILL(blue, 0), FILL(green, 0)])",
                    using_metrics={
                        color: service.target_metric(
                            serving.front, group, "UnHealthyHostCount", statistic="Maximum"
                        )
                        for color, group in (("blue", service.blue), ("green", service.green))
                    },
                    period=Duration.minutes(1),
                ),
                threshold=0,
                comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=5,
            )
            alerts.monitoring.monitor_simple_fargate_service(
                fargate_service=service.service,
                alarm_friendly_name=f"{model.name}-tasks",
                human_readable_name=f"Model {model.name}: tasks",
            )
        monitor_functions(alerts, self, max_errors=config.monitoring.lambda_errors)
