"""Metaflow Metadata Service container: the upstream service on Fargate with PostgreSQL."""

from __future__ import annotations

from aws_cdk import CustomResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigateway
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ssm as ssm
from aws_cdk import custom_resources as cr
from constructs import Construct

from cdk_constructs.base import (
    PlatformContainer,
    acknowledge,
    acknowledge_wildcard_grants,
    log_retention,
)
from cdk_constructs.function import PlatformFunction
from platform_config.model import MetaflowConfig

METADATA_PORT = 8080
MIGRATION_PORT = 8082
SERVICE_PORT = 80
DATABASE_NAME = "metaflow"


class MetaflowMetadataService(PlatformContainer):
    """`netflixoss/metaflow_metadata_service` behind an internal network load balancer.

    Secure defaults:
    - PostgreSQL in the isolated data subnets, encrypted with the service's own rotating KMS
      key (which also encrypts the credentials secret and the logs), TLS forced
      (`rds.force_ssl`, and the service connects with `sslmode=require`), automated backups;
      Multi-AZ and deletion protection per config/environment;
    - database credentials generated in Secrets Manager and injected as ECS secrets, never
      as plain environment variables;
    - tasks in private subnets without public IPs; the database admits only the tasks, the
      tasks admit only the load balancer, and the migration port admits only the migration
      function;
    - the schema migration runs on every deploy that changes the task definition and fails
      the deploy if the schema is not current afterwards;
    - with `api_gateway: api_key`, a REST API in front of the load balancer (VPC link) that
      requires an API key on every call, throttles, and writes encrypted access logs;
    - deployment circuit breaker with rollback, CPU-based autoscaling within config bounds,
      Container Insights, logs with retention.
    """

    container = "metaflow-metadata"
    stereotype = "metadata-store"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: MetaflowConfig,
        vpc: ec2.IVpc,
        service_subnets: ec2.SubnetSelection,
        database_subnets: ec2.SubnetSelection,
        client_cidr: str,
        auth_key_parameter_name: str,
        protect: bool,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        # Its own key: the secret's grants edit the key policy, which must live in this stack.
        self.key = encryption_key = kms.Key(
            self,
            "Key",
            description="Encrypts the Metaflow metadata database, its secret and its logs",
            enable_key_rotation=True,
            removal_policy=removal_policy,
        )
        encryption_key.grant_encrypt_decrypt(
            iam.ServicePrincipal(f"logs.{Stack.of(self).region}.amazonaws.com")
        )

        def group(name: str, description: str) -> ec2.SecurityGroup:
            return ec2.SecurityGroup(
                self, name, vpc=vpc, description=description, allow_all_outbound=False
            )

        load_balancer_group = group("LoadBalancerSecurityGroup", "Metaflow metadata NLB")
        service_group = group("ServiceSecurityGroup", "Metaflow metadata service tasks")
        database_group = group("DatabaseSecurityGroup", "Metaflow metadata PostgreSQL")
        migration_group = group("MigrationSecurityGroup", "Metaflow schema migration function")
        # Tasks pull the image from Docker Hub and reach Secrets Manager and CloudWatch.
        service_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.HTTPS, "image pull, AWS APIs")

        self.database = rds.DatabaseInstance(
            self,
            "Database",
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_17_9),
            instance_type=ec2.InstanceType(config.db_instance_type),
            vpc=vpc,
            vpc_subnets=database_subnets,
            security_groups=[database_group],
            database_name=DATABASE_NAME,
            credentials=rds.Credentials.from_generated_secret(
                "metaflow", encryption_key=encryption_key
            ),
            storage_encrypted=True,
            storage_encryption_key=encryption_key,
            allocated_storage=config.db_allocated_storage_gib,
            multi_az=config.db_multi_az,
            backup_retention=Duration.days(config.db_backup_retention_days),
            deletion_protection=protect,
            removal_policy=removal_policy,
            publicly_accessible=False,
            auto_minor_version_upgrade=True,
            cloudwatch_logs_exports=["postgresql"],
            parameters={"rds.force_ssl": "1"},
        )
        # The secret holds the only copy of the master credentials, so it lives as long as the
        # database (the RDS L2 leaves it at DESTROY whatever the instance's policy). The
        # instance's `secret` is the attachment; the secret itself is found by id.
        self.database.node.find_child("Secret").apply_removal_policy(removal_policy)
        database_port = self.database.db_instance_endpoint_port
        acknowledge(
            self.database,
            "AwsSolutions-RDS11",
            "The database sits in isolated subnets and admits only the service tasks' "
            "security group; a non-default port would add no protection.",
        )
        acknowledge(
            self.database.node.find_child("Secret"),
            "AwsSolutions-SMG4",
            "ECS injects the credentials when a task starts; rotating them under running "
            "tasks would break their connections, so rotation is a deliberate redeploy.",
        )
        if not config.db_multi_az:
            acknowledge(
                self.database,
                "AwsSolutions-RDS3",
                "This environment's config runs the metadata database single-AZ to save "
                "cost; prod config sets db_multi_az.",
            )
        if not protect:
            acknowledge(
                self.database,
                "AwsSolutions-RDS10",
                "This environment is disposable (protect_stateful_resources is false); "
                "protected environments turn deletion protection on.",
            )

        log_group = logs.LogGroup(
            self,
            "ServiceLogs",
            retention=log_retention(config.log_retention_days),
            encryption_key=encryption_key,
            removal_policy=RemovalPolicy.DESTROY,
        )
        cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=vpc,
            container_insights_v2=ecs.ContainerInsights.ENABLED,
        )
        self.task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=config.service_cpu,
            memory_limit_mib=config.service_memory_mib,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        self.task_definition.add_container(
            "metadata",
            image=ecs.ContainerImage.from_registry(config.metadata_service_image),
            port_mappings=[
                ecs.PortMapping(container_port=METADATA_PORT),
                ecs.PortMapping(container_port=MIGRATION_PORT),
            ],
            environment={
                "MF_METADATA_DB_HOST": self.database.db_instance_endpoint_address,
                "MF_METADATA_DB_PORT": database_port,
                "MF_METADATA_DB_NAME": DATABASE_NAME,
                "MF_METADATA_DB_SSL_MODE": "require",
            },
            secrets={
                "MF_METADATA_DB_USER": ecs.Secret.from_secrets_manager(
                    self.database.secret, "username"
                ),
                "MF_METADATA_DB_PSWD": ecs.Secret.from_secrets_manager(
                    self.database.secret, "password"
                ),
            },
            logging=ecs.LogDrivers.aws_logs(stream_prefix="metadata", log_group=log_group),
        )
        acknowledge(
            self.task_definition,
            "AwsSolutions-ECS2",
            "Only non-secret settings are plain environment variables (database host, port, "
            "name, SSL mode); the credentials are ECS secrets from Secrets Manager.",
        )
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=cluster,
            task_definition=self.task_definition,
            desired_count=config.min_tasks,
            vpc_subnets=service_subnets,
            security_groups=[service_group],
            assign_public_ip=False,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            min_healthy_percent=100,
        )
        scaling = self.service.auto_scale_task_count(
            min_capacity=config.min_tasks, max_capacity=config.max_tasks
        )
        scaling.scale_on_cpu_utilization("Cpu", target_utilization_percent=60)
        database_group.add_ingress_rule(service_group, ec2.Port.tcp(5432), "metadata service tasks")
        service_group.add_egress_rule(database_group, ec2.Port.tcp(5432), "metadata database")

        self.load_balancer = elbv2.NetworkLoadBalancer(
            self,
            "LoadBalancer",
            vpc=vpc,
            vpc_subnets=service_subnets,
            internet_facing=False,
            cross_zone_enabled=True,
            security_groups=[load_balancer_group],
            # API Gateway's VPC link arrives over PrivateLink, which a security group cannot
            # name; with the gateway off, PrivateLink traffic is filtered like any other.
            enforce_security_group_inbound_rules_on_private_link_traffic=(
                config.api_gateway == "disabled"
            ),
        )
        acknowledge(
            self.load_balancer,
            "AwsSolutions-ELB2",
            "The load balancer has only TCP listeners, for which NLB writes no access logs; "
            "VPC flow logs record its traffic.",
        )
        for name, listen_port, target_port, peer in (
            ("Metadata", SERVICE_PORT, METADATA_PORT, ec2.Peer.ipv4(client_cidr)),
            ("Migration", MIGRATION_PORT, MIGRATION_PORT, migration_group),
        ):
            listener = self.load_balancer.add_listener(name, port=listen_port)
            listener.add_targets(
                f"{name}Targets",
                port=target_port,
                targets=[
                    self.service.load_balancer_target(
                        container_name="metadata", container_port=target_port
                    )
                ],
                health_check=elbv2.HealthCheck(
                    protocol=elbv2.Protocol.HTTP, path="/ping", port=str(METADATA_PORT)
                ),
                deregistration_delay=Duration.seconds(30),
            )
            load_balancer_group.add_ingress_rule(peer, ec2.Port.tcp(listen_port), name)
            load_balancer_group.add_egress_rule(service_group, ec2.Port.tcp(target_port), name)
            service_group.add_ingress_rule(load_balancer_group, ec2.Port.tcp(target_port), name)
        # Target health checks always probe the metadata port.
        load_balancer_group.add_egress_rule(
            service_group, ec2.Port.tcp(METADATA_PORT), "health checks"
        )

        dns = self.load_balancer.load_balancer_dns_name
        self.internal_url = f"http://{dns}/"
        self.service_url = self.internal_url
        self.auth_key_secret: secretsmanager.ISecret | None = None
        self.auth_key_parameter: ssm.StringParameter | None = None
        if config.api_gateway == "api_key":
            self.service_url, self.auth_key_secret = self._api_gateway(
                dns, encryption_key, config.log_retention_days
            )
            # tools.metaflow_config finds the key through this pointer.
            self.auth_key_parameter = ssm.StringParameter(
                self,
                "AuthKeySecretParameter",
                parameter_name=auth_key_parameter_name,
                description="Secret holding METAFLOW_SERVICE_AUTH_KEY (tools.metaflow_config)",
                string_value=self.auth_key_secret.secret_arn,
            )
        migration_url = f"http://{dns}:{MIGRATION_PORT}"
        migration_group.add_egress_rule(
            load_balancer_group, ec2.Port.tcp(MIGRATION_PORT), "schema migration API"
        )
        migration = PlatformFunction(
            self,
            "Migration",
            handler_name="metaflow_migration",
            description="Brings the Metaflow metadata schema up to date on every deploy",
            environment={"MIGRATION_URL": migration_url, "MAX_WAIT_SECONDS": "600"},
            log_retention_days=config.log_retention_days,
            timeout=Duration.minutes(12),
            vpc=vpc,
            vpc_subnets=service_subnets,
            security_groups=[migration_group],
        )
        provider = cr.Provider(self, "MigrationProvider", on_event_handler=migration.function)
        acknowledge_provider_framework(provider)
        self.migration = CustomResource(
            self,
            "SchemaMigration",
            service_token=provider.service_token,
            resource_type="Custom::MetaflowSchemaMigration",
            # A new task definition (image or settings) triggers a new migration run.
            properties={
                "Image": config.metadata_service_image,
                "TaskDefinition": self.task_definition.task_definition_arn,
            },
        )
        self.migration.node.add_dependency(self.service)

    def _api_gateway(
        self, dns: str, encryption_key: kms.IKey, log_retention_days: int
    ) -> tuple[str, secretsmanager.ISecret]:
        """A REST API in front of the load balancer that requires an API key on every call.

        The key's value is generated into a secret, so `tools.metaflow_config` can hand it to
        Metaflow as METAFLOW_SERVICE_AUTH_KEY (sent as the x-api-key header).
        """
        link = apigateway.VpcLink(self, "VpcLink", targets=[self.load_balancer])
        access_logs = logs.LogGroup(
            self,
            "ApiAccessLogs",
            retention=log_retention(log_retention_days),
            encryption_key=encryption_key,
            removal_policy=RemovalPolicy.DESTROY,
        )
        api = apigateway.RestApi(
            self,
            "Api",
            description="Metaflow metadata service (API key required)",
            endpoint_types=[apigateway.EndpointType.REGIONAL],
            cloud_watch_role=False,
            deploy_options=apigateway.StageOptions(
                stage_name="api",
                access_log_destination=apigateway.LogGroupLogDestination(access_logs),
                access_log_format=apigateway.AccessLogFormat.json_with_standard_fields(
                    caller=False,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=False,
                ),
                metrics_enabled=True,
                throttling_rate_limit=200,
                throttling_burst_limit=400,
            ),
        )

        def proxy(path: str) -> apigateway.Integration:
            return apigateway.Integration(
                type=apigateway.IntegrationType.HTTP_PROXY,
                integration_http_method="ANY",
                uri=f"http://{dns}/{path}",
                options=apigateway.IntegrationOptions(
                    connection_type=apigateway.ConnectionType.VPC_LINK,
                    vpc_link=link,
                    request_parameters=(
                        {"integration.request.path.proxy": "method.request.path.proxy"}
                        if path
                        else None
                    ),
                ),
            )

        api.root.add_method("ANY", proxy(""), api_key_required=True)
        api.root.add_resource("{proxy+}").add_method(
            "ANY",
            proxy("{proxy}"),
            api_key_required=True,
            request_parameters={"method.request.path.proxy": True},
        )
        key_value = secretsmanager.Secret(
            self,
            "ApiKeyValue",
            description="Metaflow metadata API key (METAFLOW_SERVICE_AUTH_KEY)",
            encryption_key=encryption_key,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                exclude_punctuation=True, password_length=40
            ),
        )
        acknowledge(
            key_value,
            "AwsSolutions-SMG4",
            "API Gateway reads the key value when the stack deploys; a rotated secret would "
            "no longer match the deployed API key, so rotation is a redeploy.",
        )
        key = apigateway.ApiKey(
            self, "ApiKey", value=key_value.secret_value.unsafe_unwrap(), enabled=True
        )
        plan = api.add_usage_plan(
            "UsagePlan", throttle=apigateway.ThrottleSettings(rate_limit=100, burst_limit=200)
        )
        plan.add_api_key(key)
        plan.add_api_stage(stage=api.deployment_stage)

        for rule, reason in (
            (
                "AwsSolutions-APIG2",
                "A pass-through proxy to the metadata service, which validates its own "
                "requests; API Gateway has no model of Metaflow's API to check against.",
            ),
            (
                "AwsSolutions-APIG3",
                "Every call needs the API key and is throttled by the usage plan; a WAF web "
                "ACL can be attached to the stage where a policy requires one.",
            ),
            (
                "AwsSolutions-APIG4",
                "Metaflow's client authenticates with an API key (x-api-key); it cannot sign "
                "requests for IAM or present Cognito tokens.",
            ),
            (
                "AwsSolutions-COG4",
                "Metaflow's client authenticates with an API key (x-api-key); it cannot "
                "present Cognito user pool tokens.",
            ),
            (
                "AwsSolutions-APIG6",
                "Access logs of every request go to an encrypted log group; execution logging "
                "would also record request bodies with run metadata.",
            ),
        ):
            acknowledge(api, rule, reason)
        return api.url, key_value


def acknowledge_provider_framework(provider: cr.Provider) -> None:
    """The CDK's custom-resource Provider adds its own framework Lambda."""
    framework = provider.node.find_child("framework-onEvent")
    acknowledge(
        framework,
        "AwsSolutions-L1",
        "The CDK's custom-resource framework function pins its own Node.js runtime; the "
        "Provider construct offers no runtime setting.",
    )
    acknowledge(
        framework.role,
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AWSLambdaBasicExecutionRole]",
        "The CDK's custom-resource framework function only writes its own CloudWatch logs "
        "with this AWS basic execution policy.",
    )
    acknowledge_wildcard_grants(
        framework.role,
        {
            r"Resource::<.*Migration.*\.Arn>:\*": (
                "The framework may invoke every version of the one handler function it fronts."
            )
        },
    )
