"""ABlaze, the A/B experimentation container: where experiments and their results live, and
the service that manages them (`ablaze/`).

The tables sit with the platform's other stateful resources (the data stack) and keep
deterministic names, so the service, serving (which reads the running experiments) and the
analysis job (which writes results) import them by name.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration, IgnoreMode, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk_constructs.base import (
    PlatformContainer,
    acknowledge,
    acknowledge_wildcard_grants,
    log_retention,
    skip_checkov,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

SURFACE_INDEX = "surface-state"
APP_PORT = 8080
URL_PREFIX = "/ablaze"
# After every model's rule (models take 1, 2, ...), below the listener's maximum of 50000.
LISTENER_PRIORITY = 49000
# The build context is the repository; the image needs only the ablaze package.
_IMAGE_CONTEXT_EXCLUDES = ["*", "!ablaze", "ablaze/**/__pycache__"]


def experiments_table_name(name_prefix: str) -> str:
    return f"{name_prefix}-experiments"


def results_table_name(name_prefix: str) -> str:
    return f"{name_prefix}-experiment-results"


class ExperimentStore(PlatformContainer):
    """The experiments table (with its surface-and-state index, which serving queries for the
    running experiments) and the results table (one item per analysis run).

    DynamoDB rather than Keyspaces: a handful of small items read by key or by index, state
    changes that must be conditional and transactional (an experiment starts once, a surface
    has one running experiment), and on-demand pricing for a tiny, bursty load.

    Secure defaults: encrypted with the platform's data key, point-in-time recovery,
    deletion protection and retention where the environment is protected.
    """

    container = "ablaze"
    stereotype = "experimentation"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name_prefix: str,
        encryption_key: kms.IKey,
        protect: bool,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        common = {
            "encryption": dynamodb.TableEncryptionV2.customer_managed_key(encryption_key),
            "point_in_time_recovery_specification": dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            "deletion_protection": protect,
            "removal_policy": removal_policy,
        }
        self.experiments = dynamodb.TableV2(
            self,
            "Experiments",
            table_name=experiments_table_name(name_prefix),
            partition_key=_key("experiment_id"),
            global_secondary_indexes=[
                dynamodb.GlobalSecondaryIndexPropsV2(
                    index_name=SURFACE_INDEX,
                    partition_key=_key("surface"),
                    sort_key=_key("state"),
                    projection_type=dynamodb.ProjectionType.ALL,
                )
            ],
            **common,
        )
        self.results = dynamodb.TableV2(
            self,
            "Results",
            table_name=results_table_name(name_prefix),
            partition_key=_key("experiment_id"),
            sort_key=_key("computed_at"),
            **common,
        )


class ExperimentTables:
    """The two tables imported by name in another stack, with the grants each user needs."""

    def __init__(self, scope: Construct, *, name_prefix: str, encryption_key: kms.IKey) -> None:
        self.experiments = dynamodb.Table.from_table_attributes(
            scope,
            "ExperimentsTable",
            table_name=experiments_table_name(name_prefix),
            encryption_key=encryption_key,
            global_indexes=[SURFACE_INDEX],
        )
        self.results = dynamodb.Table.from_table_attributes(
            scope,
            "ExperimentResultsTable",
            table_name=results_table_name(name_prefix),
            encryption_key=encryption_key,
        )

    def grant_read_running(self, grantee: iam.IGrantable) -> None:
        """Serving: query the surface-and-state index for the running experiments, nothing
        else (no item reads, no writes)."""
        table = self.experiments
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["dynamodb:Query"],
                resources=[f"{table.table_arn}/index/{SURFACE_INDEX}"],
            )
        )
        table.encryption_key.grant_decrypt(grantee)

    def grant_manage(self, grantee: iam.IGrantable) -> None:
        """The ABlaze service: read and write experiments, read results."""
        self.experiments.grant_read_write_data(grantee)
        self.results.grant_read_data(grantee)

    def grant_write_results(self, grantee: iam.IGrantable) -> None:
        """The analysis: read the experiments, add result items (never change or delete)."""
        self.experiments.grant_read_data(grantee)
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["dynamodb:PutItem"], resources=[self.results.table_arn])
        )
        self.results.encryption_key.grant_encrypt(grantee)


class ExperimentationService(PlatformContainer):
    """The ABlaze API (`ablaze/`, FastAPI) on ECS Fargate in the serving cluster, behind the
    serving load balancer under `/ablaze/`.

    ECS rather than Lambda: the app needs compiled wheels (pydantic-core) for its platform,
    which an image built at deploy time gets and an offline synth could not.

    Secure defaults: reachable only through the internal serving load balancer, whose
    security group admits the platform's VPC and the configured client networks; tasks in
    private subnets without public IPs, admitting only the load balancer; a non-root
    read-only container; a task role that may use the two tables and list the registry's
    versions of its model group, nothing else; a rolling deployment with the circuit breaker
    rolling back a version that does not become healthy.
    """

    container = "ablaze"
    stereotype = "experimentation"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name_prefix: str,
        tables: ExperimentTables,
        model_package_group: str,
        cluster: ecs.ICluster,
        listener: elbv2.IApplicationListener,
        load_balancer_group: ec2.ISecurityGroup,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        self.tables = tables
        task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=256,
            memory_limit_mib=512,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        role = task_definition.task_role
        tables.grant_manage(role)
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["sagemaker:ListModelPackages"],
                resources=["*"],
            )
        )
        acknowledge_wildcard_grants(
            role,
            {
                r"Action::dynamodb:.*\*|Action::kms:.*\*": (
                    "The CDK's DynamoDB read and write grants on the experiment tables and "
                    "the data key they are encrypted with."
                ),
                r"Resource::<.*Experiments.*>/index/\*|Resource::arn:.*:table/"
                rf"{name_prefix}-experiments/index/\*": (
                    "The experiments table's surface-and-state index, which lists running "
                    "experiments."
                ),
                r"Resource::\*": (
                    "sagemaker:ListModelPackages takes no resource; the app lists the "
                    f"versions of {model_package_group} only."
                ),
            },
        )
        acknowledge_wildcard_grants(
            task_definition.obtain_execution_role(),
            {
                r"Resource::\*": (
                    "ecr:GetAuthorizationToken, which pulls the ABlaze image, takes no resource."
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
            "The API logs requests' outcomes and errors, no member data; CloudWatch Logs "
            "encrypts it at rest with its service key.",
        )
        task_definition.add_container(
            "App",
            image=ecs.ContainerImage.from_docker_image_asset(
                ecr_assets.DockerImageAsset(
                    self,
                    "Image",
                    directory=str(REPO_ROOT),
                    file="ablaze/Dockerfile",
                    exclude=_IMAGE_CONTEXT_EXCLUDES,
                    ignore_mode=IgnoreMode.DOCKER,
                    platform=ecr_assets.Platform.LINUX_AMD64,
                )
            ),
            port_mappings=[ecs.PortMapping(container_port=APP_PORT)],
            environment={
                "EXPERIMENTS_TABLE": tables.experiments.table_name,
                "RESULTS_TABLE": tables.results.table_name,
                "MODEL_PACKAGE_GROUP": model_package_group,
                "AWS_REGION": Stack.of(self).region,
                "URL_PREFIX": URL_PREFIX,
                "PORT": str(APP_PORT),
            },
            logging=ecs.LogDriver.aws_logs(stream_prefix="ablaze", log_group=log_group),
            readonly_root_filesystem=True,
        )
        acknowledge(
            task_definition,
            "AwsSolutions-ECS2",
            "The environment carries table names, the model group and the path prefix; no "
            "secret is passed to the container.",
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="ABlaze experimentation tasks",
            allow_all_outbound=False,
        )
        self.security_group.add_ingress_rule(
            load_balancer_group, ec2.Port.tcp(APP_PORT), "the serving load balancer"
        )
        load_balancer_group.add_egress_rule(
            self.security_group, ec2.Port.tcp(APP_PORT), "ABlaze tasks", True
        )
        self.security_group.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "AWS APIs: DynamoDB, SageMaker, logs"
        )
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=cluster,
            service_name=f"{name_prefix}-ablaze",
            task_definition=task_definition,
            vpc_subnets=subnets,
            security_groups=[self.security_group],
            desired_count=1,
            min_healthy_percent=100,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            health_check_grace_period=Duration.seconds(60),
        )
        self.target_group = elbv2.ApplicationTargetGroup(
            self,
            "TargetGroup",
            vpc=vpc,
            port=APP_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            target_type=elbv2.TargetType.IP,
            deregistration_delay=Duration.seconds(30),
            health_check=elbv2.HealthCheck(
                path=f"{URL_PREFIX}/health",
                healthy_http_codes="200",
                interval=Duration.seconds(15),
            ),
            targets=[self.service],
        )
        self.rule = elbv2.ApplicationListenerRule(
            self,
            "Rule",
            listener=listener,
            priority=LISTENER_PRIORITY,
            conditions=[elbv2.ListenerCondition.path_patterns([URL_PREFIX, f"{URL_PREFIX}/*"])],
            target_groups=[self.target_group],
        )


def _key(name: str) -> dynamodb.Attribute:
    return dynamodb.Attribute(name=name, type=dynamodb.AttributeType.STRING)
