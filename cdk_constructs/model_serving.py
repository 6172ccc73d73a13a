"""Model Serving container (Metaflow Hosting): the FastAPI serving app on ECS Fargate.

`ServingFront` is what every model shares (the ECS cluster, the load balancer, its listener
and the roles ECS uses for canary deployments); `ModelService` is one model's service, its
blue and green target groups, its rule on the listener and its rollback alarms. A model's
served version is a set of CloudFormation parameters of its stack, so the version
CloudFormation holds is the version that runs (see `ServedVersion`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import (
    Annotations,
    CfnCondition,
    CfnParameter,
    Duration,
    Fn,
    IgnoreMode,
    RemovalPolicy,
    Stack,
    Tags,
    Token,
)
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_constructs.alerting import alarm_name
from cdk_constructs.base import (
    PlatformContainer,
    acknowledge,
    acknowledge_wildcard_grants,
    log_retention,
    skip_checkov,
)
from cdk_constructs.experimentation import ExperimentTables
from cdk_constructs.prometheus import PrometheusSink
from jobs.layout import PREDICTIONS_PREFIX
from platform_config.model import CanaryConfig, ServedModelConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_PORT = 8080
# The app's Prometheus port: reached only by the collector over the task's loopback, never
# by the load balancer.
METRICS_PORT = 9464
# What the app appends to a model's name for its shadow candidate's records
# (serving/recommender_service/service.py, SHADOW_MODEL_NAME_SUFFIX).
SHADOW_MODEL_SUFFIX = ":shadow"
METRICS_NAMESPACE = "MLPlatform/Serving"
# The build context is the repository; the image needs only the app and the training package
# whose artifact format it loads.
_IMAGE_CONTEXT_EXCLUDES = ["*", "!serving", "!training", "training/**/__pycache__"]
# A version parameter with this value serves nothing yet: the service runs no task.
NO_VERSION = "none"
MODEL_VERSION_TAG = "ml-platform:model-version"


def serving_image(scope: Construct) -> ecs.ContainerImage:
    """The serving app's image, built from serving/Dockerfile when the stack is deployed
    (synth only stages the build context)."""
    return ecs.ContainerImage.from_docker_image_asset(
        ecr_assets.DockerImageAsset(
            scope,
            "ServingImage",
            directory=str(REPO_ROOT),
            file="serving/Dockerfile",
            exclude=_IMAGE_CONTEXT_EXCLUDES,
            ignore_mode=IgnoreMode.DOCKER,
            platform=ecr_assets.Platform.LINUX_AMD64,
        )
    )


def service_name(name_prefix: str, model: str) -> str:
    return f"{name_prefix}-{model}"


def cluster_name(name_prefix: str) -> str:
    return f"{name_prefix}-serving"


def parameter_prefix(model: str) -> str:
    """CloudFormation names for a model's parameters: letters and digits only."""
    return "".join(part.capitalize() for part in re.split(r"[^a-zA-Z0-9]", model))


@dataclass(frozen=True)
class VersionParameter:
    """One parameter of a model's served version: its suffix, default and meaning."""

    suffix: str
    default: str
    description: str


# What delivery sets on each promotion (and `cdk deploy` keeps, with the CLI's default
# --previous-parameters): the served version, and the candidate that shadow mode scores.
VERSION_PARAMETERS = (
    VersionParameter("Version", NO_VERSION, "served model package version"),
    VersionParameter("ArtifactUri", NO_VERSION, "S3 URI of the served version's model.tar.gz"),
    VersionParameter("TrainingDate", "unknown", "training date of the served version"),
    VersionParameter("Metrics", "{}", "key metrics of the served version (JSON object)"),
    VersionParameter("PackageArn", NO_VERSION, "model package of the served version"),
    VersionParameter("CandidateVersion", NO_VERSION, "version scored in shadow mode"),
    VersionParameter("CandidateArtifactUri", NO_VERSION, "S3 URI of the shadow candidate"),
)


class ServedVersion(Construct):
    """A model's served version as stack parameters, and whether there is one yet."""

    def __init__(self, scope: Construct, construct_id: str, *, model: str) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        prefix = parameter_prefix(model)
        self.values: dict[str, str] = {}
        for parameter in VERSION_PARAMETERS:
            resource = CfnParameter(
                stack,
                f"{prefix}{parameter.suffix}",
                type="String",
                default=parameter.default,
                min_length=1,
                description=f"{model}: {parameter.description} (set by delivery)",
            )
            self.values[parameter.suffix] = resource.value_as_string
        self.present = CfnCondition(
            self,
            "Present",
            expression=Fn.condition_not(Fn.condition_equals(self.values["Version"], NO_VERSION)),
        )

    def when_present(self, count: int) -> int:
        """`count` once a version is served, 0 before (a first deploy starts no task that
        could only fail its readiness check)."""
        return Token.as_number(Fn.condition_if(self.present.logical_id, count, 0))


class ServingFront(PlatformContainer):
    """What every served model shares.

    Secure defaults:
    - an internal Application Load Balancer in the private subnets (internet-facing only with
      HTTPS), access logs to the logs bucket, invalid header fields dropped;
    - HTTPS with the configured certificate (TLS 1.2+ policy), or plain HTTP open only to the
      VPC and the configured networks; unknown paths get a 404;
    - an ECS cluster with Container Insights;
    - one infrastructure role ECS uses to shift traffic between target groups
      (each model's canary-analysis hook comes with its own invoke role).
    """

    container = "serving"
    stereotype = "model-serving"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name_prefix: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        internal: bool,
        certificate_arn: str | None,
        allowed_cidrs: list[str],
        logs_bucket: s3.IBucket,
    ) -> None:
        super().__init__(scope, construct_id)
        self.vpc = vpc
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            cluster_name=cluster_name(name_prefix),
            vpc=vpc,
            container_insights_v2=ecs.ContainerInsights.ENHANCED,
        )
        self.load_balancer_group = ec2.SecurityGroup(
            self,
            "LoadBalancerSecurityGroup",
            vpc=vpc,
            description=f"{name_prefix} model serving load balancer",
            allow_all_outbound=False,
        )
        port = 443 if certificate_arn else 80
        for peer, what in [
            (ec2.Peer.ipv4(vpc.vpc_cidr_block), "the platform's VPC"),
            *((ec2.Peer.ipv4(cidr), "configured client network") for cidr in allowed_cidrs),
        ]:
            self.load_balancer_group.add_ingress_rule(peer, ec2.Port.tcp(port), what)
        self.load_balancer = elbv2.ApplicationLoadBalancer(
            self,
            "LoadBalancer",
            vpc=vpc,
            vpc_subnets=subnets if internal else ec2.SubnetSelection(subnet_group_name="public"),
            internet_facing=not internal,
            security_group=self.load_balancer_group,
            drop_invalid_header_fields=True,
        )
        self.load_balancer.log_access_logs(logs_bucket, prefix=f"alb/{name_prefix}-serving")
        if certificate_arn:
            self.listener = self.load_balancer.add_listener(
                "Listener",
                port=443,
                certificates=[elbv2.ListenerCertificate.from_arn(certificate_arn)],
                ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
                open=False,
                default_action=_not_found(),
            )
        else:
            self.listener = self.load_balancer.add_listener(
                "Listener", port=80, open=False, default_action=_not_found()
            )
            for check_id in ("CKV_AWS_2", "CKV_AWS_103"):
                skip_checkov(
                    self.listener,
                    check_id,
                    "No serving certificate is configured, so the listener serves plain HTTP; "
                    "setting one in the config makes it HTTPS with TLS 1.2 or later.",
                )
            acknowledge(
                self.load_balancer,
                "AwsSolutions-ELB2",
                "Access logs are on (log_access_logs to the logs bucket); the rule cannot "
                "see the attribute set through the listener-independent L2 call.",
            )
        acknowledge(
            self.load_balancer_group,
            "AwsSolutions-EC23",
            "Ingress is the VPC's own range (a reference the rule cannot resolve) and the "
            "configured client networks, which config refuses when they are 0.0.0.0/0.",
        )
        self.scheme = "https" if certificate_arn else "http"

        self.infrastructure_role = iam.Role(
            self,
            "DeploymentRole",
            assumed_by=iam.ServicePrincipal("ecs.amazonaws.com"),
            description="ECS shifts model traffic between blue and green target groups",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name(
                    "service-role/AmazonECSInfrastructureRolePolicyForLoadBalancers"
                )
            ],
        )
        acknowledge(
            self.infrastructure_role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonECSInfrastructureRolePolicyForLoadBalancers]",
            "AWS's policy for ECS-native blue/green and canary deployments: it lets ECS "
            "modify listener rules and target groups, nothing else.",
        )


def _not_found() -> elbv2.ListenerAction:
    return elbv2.ListenerAction.fixed_response(
        404, content_type="application/json", message_body='{"detail": "no such model"}'
    )


@dataclass(frozen=True)
class ModelData:
    """Where a model's versions live and what its service may read and write."""

    artifacts_bucket: s3.IBucket
    artifacts_prefix: str
    keyspace: str
    read_tables: tuple[str, ...]
    write_tables: tuple[str, ...]
    feature_group_arn: str | None
    feature_group_name: str | None
    # The lake's raw zone, where every prediction record is also logged for the model monitor.
    prediction_log_bucket: s3.IBucket | None = None
    # ABlaze's tables, whose running experiments on the model's surface serving allocates by.
    experiments: ExperimentTables | None = None


def render_collector_config(template: str, values: dict[str, str]) -> str:
    """The collector configuration with its `${env:NAME}` placeholders filled in at synth:
    CloudFormation would read a literal `${...}` as a substitution it cannot resolve."""
    rendered = template
    for name, value in values.items():
        rendered = rendered.replace(f"${{env:{name}}}", value)
    leftover = re.findall(r"\$\{env:([A-Za-z_]+)\}", rendered)
    if leftover:
        raise ValueError(f"collector configuration names unset variables: {', '.join(leftover)}")
    return rendered


@dataclass(frozen=True)
class Telemetry:
    """The OpenTelemetry collector beside the app: its image, its configuration file and the
    Prometheus workspace it writes the app's metrics to."""

    collector_image: str
    collector_config: str
    sink: PrometheusSink


class ModelService(PlatformContainer):
    """One model's ECS service behind the shared load balancer, under `/<model>/`.

    Secure defaults:
    - Fargate tasks in the private subnets, reachable only from the load balancer on the app
      port; the container runs as a non-root user with a read-only root file system;
    - a task role limited to this model's artifacts, the Keyspaces tables the app reads and
      writes and (for models with features) its feature group's online records;
    - deployments are ECS-native canaries: a share of traffic to the new version for a bake
      step, rollback on the 5xx and p99 alarms (and on the verdict of the canary-analysis
      hook that delivery attaches), and an explicit bake time;
    - health checks on the app's readiness (ready only once a model is loaded); scaling on
      CPU and requests per target within the configured bounds.
    """

    container = "serving"
    stereotype = "model-serving"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name_prefix: str,
        config: ServedModelConfig,
        canary: CanaryConfig,
        front: ServingFront,
        image: ecs.ContainerImage,
        data: ModelData,
        subnets: ec2.SubnetSelection,
        priority: int,
        log_retention_days: int,
        telemetry: Telemetry | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        model = config.name
        self.model = model
        self.version = ServedVersion(self, "ServedVersion", model=model)
        version = self.version.values

        task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=config.cpu,
            memory_limit_mib=config.memory_mib,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        self._grant_data(task_definition.task_role, data)
        acknowledge_wildcard_grants(
            task_definition.task_role,
            {
                r"Action::(s3:(GetObject|GetBucket|List)|kms:(GenerateDataKey|ReEncrypt))\*": (
                    "The CDK's S3 read grant on this model's artifacts prefix and its key."
                ),
                rf"Resource::.*/{re.escape(data.artifacts_prefix)}\*": (
                    "Objects of this model's versions under its artifacts prefix."
                ),
                r"Resource::arn:.*:cassandra:.*:/keyspace/system\*": (
                    "Read-only system keyspaces (peers, schema) the Cassandra driver queries "
                    "when it connects to Keyspaces."
                ),
                r"Action::s3:Abort\*": (
                    "The CDK's S3 put grant: aborting its own multipart uploads of prediction "
                    "log objects."
                ),
                rf"Resource::.*/{re.escape(PREDICTIONS_PREFIX)}model={re.escape(model)}"
                rf"({re.escape(SHADOW_MODEL_SUFFIX)})?/\*": (
                    "New prediction log objects of this model (and its shadow), whose keys "
                    "carry the hour and a random name."
                ),
            },
        )
        acknowledge_wildcard_grants(
            task_definition.obtain_execution_role(),
            {
                r"Resource::\*": (
                    "ecr:GetAuthorizationToken, which pulls the serving image, takes no resource."
                )
            },
        )
        log_group = logs.LogGroup(
            self,
            "Logs",
            retention=log_retention(log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        skip_checkov(
            log_group,
            "CKV_AWS_158",
            "The serving container logs model loads and store errors (access logs are off), no "
            "features or predictions; CloudWatch Logs encrypts it at rest with its service key.",
        )
        environment = {
            "MODEL_NAME": model,
            "MODEL_VERSION": version["Version"],
            "MODEL_ARTIFACT_URI": version["ArtifactUri"],
            "MODEL_TRAINING_DATE": version["TrainingDate"],
            "MODEL_METRICS": version["Metrics"],
            "MODEL_PACKAGE_ARN": version["PackageArn"],
            "CANDIDATE_MODEL_VERSION": version["CandidateVersion"],
            "CANDIDATE_MODEL_ARTIFACT_URI": version["CandidateArtifactUri"],
            "SHADOW_FRACTION": str(config.shadow_fraction),
            "KEYSPACE": data.keyspace,
            "METRICS_NAMESPACE": METRICS_NAMESPACE,
            "URL_PREFIX": f"/{model}",
            "PORT": str(APP_PORT),
        }
        if data.feature_group_name:
            environment["FEATURE_GROUP_NAME"] = data.feature_group_name
        if data.prediction_log_bucket is not None:
            environment["PREDICTION_LOG_URI"] = data.prediction_log_bucket.s3_url_for_object(
                PREDICTIONS_PREFIX
            )
        if telemetry is not None:
            environment["METRICS_PORT"] = str(METRICS_PORT)
        if data.experiments is not None:
            # A model's experiments run on the surface named after it.
            environment["EXPERIMENTS_TABLE"] = data.experiments.experiments.table_name
            environment["EXPERIMENT_SURFACE"] = model
            environment["AWS_REGION"] = Stack.of(self).region
        task_definition.add_container(
            "App",
            image=image,
            port_mappings=[ecs.PortMapping(container_port=APP_PORT)],
            environment=environment,
            logging=ecs.LogDriver.aws_logs(stream_prefix=model, log_group=log_group),
            # The image's own non-root user runs the app; only /tmp is writable.
            readonly_root_filesystem=True,
        )
        if telemetry is not None:
            self._add_collector(task_definition, telemetry, model, log_group)
        # The model is downloaded and unpacked here at start-up.
        task_definition.add_volume(name="models")
        task_definition.default_container.add_mount_points(
            ecs.MountPoint(container_path="/tmp", source_volume="models", read_only=False)
        )
        acknowledge(
            task_definition,
            "AwsSolutions-ECS2",
            "The environment carries names, the served version's parameters and the "
            "shadow fraction; no secret is passed to the serving container.",
        )

        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=front.vpc,
            description=f"{model} serving tasks",
            allow_all_outbound=False,
        )
        self.security_group.add_ingress_rule(
            front.load_balancer_group, ec2.Port.tcp(APP_PORT), "the serving load balancer"
        )
        # Created beside the task group (remote rule), so the shared front never refers to a
        # model's stack.
        front.load_balancer_group.add_egress_rule(
            self.security_group, ec2.Port.tcp(APP_PORT), f"{model} serving tasks", True
        )
        self.security_group.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "AWS APIs: S3, metrics, feature store"
        )
        self.security_group.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(9142), "Amazon Keyspaces (TLS)"
        )

        self.blue, self.green = (
            elbv2.ApplicationTargetGroup(
                self,
                f"{color}TargetGroup",
                vpc=front.vpc,
                port=APP_PORT,
                protocol=elbv2.ApplicationProtocol.HTTP,
                target_type=elbv2.TargetType.IP,
                deregistration_delay=Duration.seconds(30),
                health_check=elbv2.HealthCheck(
                    path=f"/{model}/health/ready",
                    healthy_http_codes="200",
                    interval=Duration.seconds(15),
                    healthy_threshold_count=2,
                    unhealthy_threshold_count=3,
                ),
            )
            for color in ("Blue", "Green")
        )
        self.rule = elbv2.ApplicationListenerRule(
            self,
            "Rule",
            listener=front.listener,
            priority=priority,
            conditions=[elbv2.ListenerCondition.path_patterns([f"/{model}/*"])],
            target_groups=[self.blue],
        )

        self.alarms = self._rollback_alarms(front, canary, name_prefix)
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=front.cluster,
            service_name=service_name(name_prefix, model),
            task_definition=task_definition,
            vpc_subnets=subnets,
            security_groups=[self.security_group],
            desired_count=self.version.when_present(config.min_tasks),
            min_healthy_percent=100,
            health_check_grace_period=Duration.seconds(120),
            deployment_strategy=ecs.DeploymentStrategy.CANARY,
            canary_configuration=ecs.TrafficShiftConfig(
                step_percent=canary.step_percent,
                step_bake_time=Duration.minutes(canary.step_bake_minutes),
            ),
            bake_time=Duration.minutes(canary.bake_minutes),
            deployment_alarms=ecs.DeploymentAlarmConfig(
                alarm_names=[alarm.alarm_name for alarm in self.alarms],
                behavior=ecs.AlarmBehavior.ROLLBACK_ON_ALARM,
            ),
            propagate_tags=ecs.PropagatedTagSource.SERVICE,
        )
        self.blue.add_target(
            self.service.load_balancer_target(
                container_name="App",
                container_port=APP_PORT,
                alternate_target=ecs.AlternateTarget(
                    "Green",
                    alternate_target_group=self.green,
                    production_listener=ecs.ListenerRuleConfiguration.application_listener_rule(
                        self.rule
                    ),
                    role=front.infrastructure_role,
                ),
            )
        )
        Tags.of(self.service).add(MODEL_VERSION_TAG, version["Version"])
        Annotations.of(self.service).acknowledge_warning(
            "@aws-cdk/aws-ecs:shouldUseCircuitBreaker",
            "Canary deployments roll back through the analysis hook and the deployment "
            "alarms; the circuit breaker belongs to rolling deployments.",
        )

        scaling = self.service.auto_scale_task_count(
            min_capacity=self.version.when_present(config.min_tasks),
            max_capacity=self.version.when_present(config.max_tasks),
        )
        scaling.scale_on_cpu_utilization(
            "Cpu", target_utilization_percent=config.target_cpu_percent
        )
        requests = config.target_requests_per_task
        # Target tracking takes no metric math, and the serving target group alternates
        # between blue and green: step scaling on the sum of both (during a canary both
        # carry traffic, which only errs towards more tasks).
        scaling.scale_on_metric(
            "Requests",
            metric=cloudwatch.MathExpression(
                expression="FILL(blue, 0) + FILL(green, 0)",
                using_metrics={
                    "blue": self.target_metric(front, self.blue, "RequestCountPerTarget"),
                    "green": self.target_metric(front, self.green, "RequestCountPerTarget"),
                },
                period=Duration.minutes(1),
            ),
            scaling_steps=[
                appscaling.ScalingInterval(upper=requests * 0.5, change=-1),
                appscaling.ScalingInterval(lower=requests, change=+1),
                appscaling.ScalingInterval(lower=requests * 2, change=+3),
            ],
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            cooldown=Duration.minutes(2),
        )

    def _grant_data(self, role: iam.IRole, data: ModelData) -> None:
        data.artifacts_bucket.grant_read(role, f"{data.artifacts_prefix}*")
        if data.experiments is not None:
            data.experiments.grant_read_running(role)
        if data.prediction_log_bucket is not None:
            # Its own records and its shadow's, each under the model's own folder.
            for logged_model in (self.model, f"{self.model}{SHADOW_MODEL_SUFFIX}"):
                data.prediction_log_bucket.grant_put(
                    role, f"{PREDICTIONS_PREFIX}model={logged_model}/*"
                )
        stack = Stack.of(self)

        def table(name: str) -> str:
            return stack.format_arn(
                service="cassandra",
                region=stack.region,
                resource="",
                resource_name=f"keyspace/{data.keyspace}/table/{name}",
            )

        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["cassandra:Select"],
                resources=[
                    *(table(t) for t in data.read_tables),
                    # The driver reads the system keyspaces' peers and schema to connect.
                    stack.format_arn(
                        service="cassandra", resource="", resource_name="keyspace/system*"
                    ),
                ],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["cassandra:Modify"], resources=[table(t) for t in data.write_tables]
            )
        )
        if data.feature_group_arn:
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    actions=["sagemaker:GetRecord"], resources=[data.feature_group_arn]
                )
            )

    def _add_collector(
        self,
        task_definition: ecs.FargateTaskDefinition,
        telemetry: Telemetry,
        model: str,
        log_group: logs.ILogGroup,
    ) -> None:
        """The collector scrapes the app's metrics port over the task's loopback and writes
        to Prometheus; it is not essential, so losing it never stops serving."""
        stack = Stack.of(self)
        task_definition.add_container(
            "Collector",
            image=ecs.ContainerImage.from_registry(telemetry.collector_image),
            essential=False,
            memory_reservation_mib=128,
            environment={
                "AOT_CONFIG_CONTENT": render_collector_config(
                    telemetry.collector_config,
                    {
                        "AWS_REGION": stack.region,
                        "METRICS_PORT": str(METRICS_PORT),
                        "AMP_REMOTE_WRITE_URL": telemetry.sink.remote_write_url,
                    },
                ),
            },
            logging=ecs.LogDriver.aws_logs(stream_prefix=f"{model}-collector", log_group=log_group),
            readonly_root_filesystem=True,
        )
        telemetry.sink.grant_remote_write(task_definition.task_role)

    def target_metric(
        self, front: ServingFront, group: elbv2.ApplicationTargetGroup, name: str, **options
    ) -> cloudwatch.Metric:
        """A load balancer metric of one of the model's target groups, per minute."""
        return cloudwatch.Metric(
            namespace="AWS/ApplicationELB",
            metric_name=name,
            dimensions_map={
                "TargetGroup": group.target_group_full_name,
                "LoadBalancer": front.load_balancer.load_balancer_full_name,
            },
            period=Duration.minutes(1),
            **options,
        )

    def _rollback_alarms(
        self, front: ServingFront, canary: CanaryConfig, name_prefix: str
    ) -> list[cloudwatch.Alarm]:
        """Alarms that roll a deployment back: the 5xx share and the p99 latency of the
        model's targets, whichever target group they sit in."""
        groups = {"blue": self.blue, "green": self.green}

        def per_group(name: str, statistic: str) -> dict[str, cloudwatch.IMetric]:
            return {
                f"{color}{name}": self.target_metric(front, group, name, statistic=statistic)
                for color, group in groups.items()
            }

        errors = cloudwatch.MathExpression(
            expression=(
                "100 * (FILL(blueHTTPCode_Target_5XX_Count, 0) + "
                "FILL(greenHTTPCode_Target_5XX_Count, 0)) / "
                "(FILL(blueRequestCount, 0) + FILL(greenRequestCount, 0))"
            ),
            using_metrics={
                **per_group("HTTPCode_Target_5XX_Count", "Sum"),
                **per_group("RequestCount", "Sum"),
            },
            label=f"{self.model} 5xx %",
            period=Duration.minutes(1),
        )
        latency = cloudwatch.MathExpression(
            expression=(
                "1000 * MAX([FILL(blueTargetResponseTime, 0), FILL(greenTargetResponseTime, 0)])"
            ),
            using_metrics=per_group("TargetResponseTime", "p99"),
            label=f"{self.model} p99 ms",
            period=Duration.minutes(1),
        )
        return [
            cloudwatch.Alarm(
                self,
                alarm_id,
                alarm_name=alarm_name(name_prefix, "serving", f"{self.model}-{suffix}"),
                alarm_description=description,
                metric=metric,
                threshold=threshold,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=3,
                datapoints_to_alarm=2,
                # No traffic is no evidence against a version.
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
            for alarm_id, suffix, description, metric, threshold in (
                (
                    "ErrorRateAlarm",
                    "error-rate",
                    f"{self.model}: more than {canary.alarm_5xx_percent} % 5xx responses",
                    errors,
                    canary.alarm_5xx_percent,
                ),
                (
                    "LatencyAlarm",
                    "p99-latency",
                    f"{self.model}: p99 latency above {canary.alarm_p99_latency_ms} ms",
                    latency,
                    canary.alarm_p99_latency_ms,
                ),
            )
        ]
