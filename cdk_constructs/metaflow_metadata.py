"""Metaflow Metadata Service container: the upstream service on Fargate with PostgreSQL."""

from __future__ import annotations

import json

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
from aws_cdk import aws_wafv2 as wafv2
from aws_cdk import custom_resources as cr
from constructs import Construct

from cdk_constructs.base import (
    PlatformContainer,
    acknowledge,
    acknowledge_wildcard_grants,
    log_retention,
    skip_checkov,
)
from cdk_constructs.function import (
    LAMBDA_ROOT,
    PlatformFunction,
    encrypt_deploy_handler_logs,
    skip_checkov_for_deploy_handler,
)
from platform_config.model import MetaflowConfig

METADATA_PORT = 8080
MIGRATION_PORT = 8082
SERVICE_PORT = 80
DATABASE_NAME = "metaflow"
SERVICE_DATABASE_USER = "metaflow_service"
DATABASE_USER_CONTAINER = "db-user"
# Run by the one-off task as `python3 -c`; kept beside the handler that starts the task.
DATABASE_USER_SCRIPT = LAMBDA_ROOT / "metaflow_migration" / "create_service_user.py"
API_STAGE = "api"


class MetaflowMetadataService(PlatformContainer):
    """`netflixoss/metaflow_metadata_service` behind an internal network load balancer.

    Secure defaults:
    - PostgreSQL in the isolated data subnets, encrypted with the service's own rotating KMS
      key (which also encrypts the credentials secrets and the logs), TLS forced
      (`rds.force_ssl`, and the service connects with `sslmode=require`), automated backups;
      Multi-AZ and deletion protection per config/environment;
    - the service logs in as its own database user (`metaflow_service`: the metadata
      database only, no role or database creation), made on deploy by a one-off task that
      alone holds the master credentials, which rotate every 30 days; all credentials are
      generated in Secrets Manager and injected as ECS secrets, never as plain environment
      variables;
    - tasks in private subnets without public IPs; the database admits only the tasks and the
      user task, the tasks admit only the load balancer, and the load balancer admits only
      the clients named with `allow_clients` (the Batch jobs), `metaflow.client_cidrs`, the
      migration function (migration port only) and, with a gateway, its VPC link;
    - the schema migration runs on every deploy that changes the task definition and fails
      the deploy if the schema is not current afterwards;
    - with `api_gateway: private` or `public`, a REST API in front of the load balancer (VPC
      link) that requires an API key on every call, throttles and writes encrypted access
      logs; `private` is reachable only through its own `execute-api` VPC endpoint (resource
      policy on `aws:SourceVpce`), `public` only from `api_allowed_cidrs` (resource policy on
      `aws:SourceIp`) and behind a WAF web ACL with a per-source rate limit and AWS's common
      and known-bad-inputs rule sets;
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
        vpc_cidr: str,
        service_subnets: ec2.SubnetSelection,
        database_subnets: ec2.SubnetSelection,
        auth_key_parameter_name: str,
        protect: bool,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        # Its own key: the secret's grants edit the key policy, which must live in this stack.
        self.key = encryption_key = kms.Key(
            self,
            "Key",
            description="Encrypts the Metaflow metadata database, its secrets and its logs",
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
        user_task_group = group(
            "DatabaseUserTaskSecurityGroup", "One-off task that makes the metadata database user"
        )
        for tasks in (service_group, user_task_group):
            # Tasks pull the image from Docker Hub and reach Secrets Manager and CloudWatch.
            tasks.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.HTTPS, "image pull, AWS APIs")

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
            monitoring_interval=Duration.seconds(60),
            parameters={"rds.force_ssl": "1"},
        )
        # The secret holds the only copy of the master credentials, so it lives as long as the
        # database (the RDS L2 leaves it at DESTROY whatever the instance's policy). The
        # instance's `secret` is the attachment; the secret itself is found by id.
        self.database.node.find_child("Secret").apply_removal_policy(removal_policy)
        acknowledge(
            self.database,
            "AwsSolutions-RDS11",
            "The database sits in isolated subnets and admits only the service tasks' "
            "security group; a non-default port would add no protection.",
        )
        acknowledge(
            self.database.node.find_child("MonitoringRole"),
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonRDSEnhancedMonitoringRole]",
            "AWS's enhanced-monitoring policy lets RDS write this instance's OS metrics to "
            "CloudWatch Logs, nothing else.",
        )
        skip_checkov(
            self.database,
            "CKV_AWS_161",
            "The metadata service image logs in with a password only; it has its own "
            "non-master user whose secret ECS injects, and TLS is forced.",
        )
        if not config.db_multi_az:
            skip_checkov(
                self.database,
                "CKV_AWS_157",
                "metaflow.db_multi_az is off in this environment to save cost (prod turns it on).",
            )
        # Only the one-off user task logs in as master, reading the secret when it starts, so
        # the master password can rotate freely.
        self.database.add_rotation_single_user(
            automatically_after=Duration.days(30), vpc_subnets=service_subnets
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
        self.service_database_secret = secretsmanager.Secret(
            self,
            "ServiceDatabaseSecret",
            description="The Metaflow metadata service's own PostgreSQL user (not the master)",
            encryption_key=encryption_key,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=json.dumps({"username": SERVICE_DATABASE_USER}),
                generate_string_key="password",
                exclude_punctuation=True,
                password_length=40,
            ),
            removal_policy=removal_policy,
        )
        acknowledge(
            self.service_database_secret,
            "AwsSolutions-SMG4",
            "ECS hands the password to the service's tasks when they start, so a rotation "
            "would break their new connections; rotating is a new value, one run of the user "
            "task and a new service deployment (README).",
        )
        database_group.add_ingress_rule(service_group, ec2.Port.tcp(5432), "metadata service tasks")
        database_group.add_ingress_rule(user_task_group, ec2.Port.tcp(5432), "database user task")
        for tasks in (service_group, user_task_group):
            tasks.add_egress_rule(database_group, ec2.Port.tcp(5432), "metadata database")

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
        image = ecs.ContainerImage.from_registry(config.metadata_service_image)
        database_settings = {
            "MF_METADATA_DB_HOST": self.database.db_instance_endpoint_address,
            "MF_METADATA_DB_PORT": self.database.db_instance_endpoint_port,
            "MF_METADATA_DB_NAME": DATABASE_NAME,
            "MF_METADATA_DB_SSL_MODE": "require",
        }
        self.task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=config.service_cpu,
            memory_limit_mib=config.service_memory_mib,
            runtime_platform=_LINUX_X86,
        )
        self.task_definition.add_container(
            "metadata",
            image=image,
            port_mappings=[
                ecs.PortMapping(container_port=METADATA_PORT),
                ecs.PortMapping(container_port=MIGRATION_PORT),
            ],
            environment=database_settings,
            secrets=_credentials(
                self.service_database_secret, "MF_METADATA_DB_USER", "MF_METADATA_DB_PSWD"
            ),
            logging=ecs.LogDrivers.aws_logs(stream_prefix="metadata", log_group=log_group),
        )
        acknowledge(
            self.task_definition,
            "AwsSolutions-ECS2",
            "Only non-secret settings are plain environment variables (database host, port, "
            "name, SSL mode); the credentials are ECS secrets from Secrets Manager.",
        )
        self.database_user = self._database_user(
            cluster=cluster,
            image=image,
            database_settings=database_settings,
            log_group=log_group,
            subnet_ids=vpc.select_subnets(
                subnet_group_name=service_subnets.subnet_group_name
            ).subnet_ids,
            security_group=user_task_group,
            log_retention_days=config.log_retention_days,
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
        # Tasks log in as the service user, which must exist before the first one starts.
        self.service.node.add_dependency(self.database_user)
        scaling = self.service.auto_scale_task_count(
            min_capacity=config.min_tasks, max_capacity=config.max_tasks
        )
        scaling.scale_on_cpu_utilization("Cpu", target_utilization_percent=60)

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
        skip_checkov(
            self.load_balancer,
            "CKV_AWS_91",
            "The load balancer has only TCP listeners, for which NLB writes no access logs; "
            "VPC flow logs record its traffic.",
        )
        for name, listen_port, target_port in (
            ("Metadata", SERVICE_PORT, METADATA_PORT),
            ("Migration", MIGRATION_PORT, MIGRATION_PORT),
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
            load_balancer_group.add_egress_rule(service_group, ec2.Port.tcp(target_port), name)
            service_group.add_ingress_rule(load_balancer_group, ec2.Port.tcp(target_port), name)
        # Target health checks always probe the metadata port.
        load_balancer_group.add_egress_rule(
            service_group, ec2.Port.tcp(METADATA_PORT), "health checks"
        )
        load_balancer_group.add_ingress_rule(
            migration_group, ec2.Port.tcp(MIGRATION_PORT), "schema migration function"
        )
        for cidr in config.client_cidrs:
            load_balancer_group.add_ingress_rule(
                ec2.Peer.ipv4(cidr), ec2.Port.tcp(SERVICE_PORT), "metaflow.client_cidrs"
            )

        dns = self.load_balancer.load_balancer_dns_name
        self.internal_url = f"http://{dns}/"
        self.service_url = self.internal_url
        self.auth_key_secret: secretsmanager.ISecret | None = None
        self.auth_key_parameter: ssm.StringParameter | None = None
        # The gateway's key and usage plan, which a key rotation works with (README).
        self.api_key_id: str | None = None
        self.usage_plan_id: str | None = None
        self.api: apigateway.RestApi | None = None
        if config.api_gateway != "disabled":
            self.service_url, self.auth_key_secret = self._api_gateway(
                dns=dns,
                config=config,
                encryption_key=encryption_key,
                vpc=vpc,
                vpc_cidr=vpc_cidr,
                endpoint_subnets=service_subnets,
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
        acknowledge_provider_framework(provider, self.key, what="runs the schema migration")
        skip_checkov(
            migration.function,
            "CKV_AWS_116",
            "Only the migration custom resource's provider invokes it, synchronously, and fails "
            "the deployment on its error; a dead-letter queue catches only async invocations.",
        )
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

    def allow_clients(self, connectable: ec2.IConnectable, description: str) -> None:
        """Admits `connectable` (a security group, or anything that has one) to the metadata
        API port of the load balancer, e.g. the Batch compute environments of the client."""
        self.load_balancer.connections.allow_from(
            connectable, ec2.Port.tcp(SERVICE_PORT), description
        )

    def _database_user(
        self,
        *,
        cluster: ecs.ICluster,
        image: ecs.ContainerImage,
        database_settings: dict[str, str],
        log_group: logs.ILogGroup,
        subnet_ids: list[str],
        security_group: ec2.ISecurityGroup,
        log_retention_days: int,
    ) -> CustomResource:
        """The deploy-time step that creates or updates the service's database user.

        A one-off task of the service's image runs `create_service_user.py` as the master user
        (the only task the master credentials go to); the custom resource starts it and fails
        the deploy unless it exits 0. A new image or secret is a new task definition revision,
        hence a new run.
        """
        task = ecs.FargateTaskDefinition(
            self, "DatabaseUserTask", cpu=256, memory_limit_mib=512, runtime_platform=_LINUX_X86
        )
        task.add_container(
            DATABASE_USER_CONTAINER,
            image=image,
            command=["python3", "-c", DATABASE_USER_SCRIPT.read_text(encoding="utf-8")],
            environment=database_settings,
            secrets={
                **_credentials(self.database.secret, "MASTER_USER", "MASTER_PASSWORD"),
                **_credentials(self.service_database_secret, "SERVICE_USER", "SERVICE_PASSWORD"),
            },
            logging=ecs.LogDrivers.aws_logs(stream_prefix="db-user", log_group=log_group),
        )
        acknowledge(
            task,
            "AwsSolutions-ECS2",
            "Only non-secret settings are plain environment variables (database host, port, "
            "name, SSL mode); both credential pairs are ECS secrets from Secrets Manager.",
        )
        function = PlatformFunction(
            self,
            "DatabaseUser",
            handler_name="metaflow_migration",
            description="Runs the task that makes the Metaflow metadata service's database user",
            environment={"MAX_WAIT_SECONDS": "600"},
            log_retention_days=log_retention_days,
            timeout=Duration.minutes(12),
        ).function
        task.grant_run(function)
        function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["ecs:DescribeTasks"],
                resources=[
                    Stack.of(self).format_arn(
                        service="ecs", resource="task", resource_name=f"{cluster.cluster_name}/*"
                    )
                ],
            )
        )
        acknowledge_wildcard_grants(
            function.role,
            {
                r"Resource::arn:.*:ecs:.*:task/<.*Cluster.*>/\*": (
                    "DescribeTasks on the tasks of the metadata service's own cluster: the "
                    "one-off task's id is only known once RunTask has started it."
                ),
            },
        )
        provider = cr.Provider(self, "DatabaseUserProvider", on_event_handler=function)
        acknowledge_provider_framework(provider, self.key, what="makes the service's database user")
        skip_checkov(
            function,
            "CKV_AWS_116",
            "Only the database-user custom resource's provider invokes it, synchronously, and "
            "fails the deployment on its error; a dead-letter queue catches only async calls.",
        )
        return CustomResource(
            self,
            "DatabaseUserResource",
            service_token=provider.service_token,
            resource_type="Custom::MetaflowDatabaseUser",
            properties={
                "Cluster": cluster.cluster_arn,
                "TaskDefinition": task.task_definition_arn,
                "Subnets": subnet_ids,
                "SecurityGroups": [security_group.security_group_id],
                "ContainerName": DATABASE_USER_CONTAINER,
            },
        )

    def _api_gateway(
        self,
        *,
        dns: str,
        config: MetaflowConfig,
        encryption_key: kms.IKey,
        vpc: ec2.IVpc,
        vpc_cidr: str,
        endpoint_subnets: ec2.SubnetSelection,
    ) -> tuple[str, secretsmanager.ISecret]:
        """A REST API in front of the load balancer that requires an API key on every call,
        private (through its own VPC endpoint) or public (from the allowed networks, behind a
        web ACL) per `config.api_gateway`; returns its URL and the secret holding the key.

        The key's value is generated into a secret, so `tools.metaflow_config` can hand it to
        Metaflow as METAFLOW_SERVICE_AUTH_KEY (sent as the x-api-key header).
        """
        if config.api_gateway == "private":
            endpoint = self._api_endpoint(vpc, vpc_cidr, endpoint_subnets, config.client_cidrs)
            endpoint_configuration = apigateway.EndpointConfiguration(
                types=[apigateway.EndpointType.PRIVATE], vpc_endpoints=[endpoint]
            )
            # Invoke only through this VPC's endpoint, whoever holds the key.
            refused = {"StringNotEquals": {"aws:SourceVpce": endpoint.vpc_endpoint_id}}
        else:
            endpoint_configuration = apigateway.EndpointConfiguration(
                types=[apigateway.EndpointType.REGIONAL]
            )
            refused = {"NotIpAddress": {"aws:SourceIp": config.api_allowed_cidrs}}
        link = apigateway.VpcLink(self, "VpcLink", targets=[self.load_balancer])
        access_logs = logs.LogGroup(
            self,
            "ApiAccessLogs",
            retention=log_retention(config.log_retention_days),
            encryption_key=encryption_key,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.api = api = apigateway.RestApi(
            self,
            "Api",
            description=f"Metaflow metadata service ({config.api_gateway}, API key required)",
            endpoint_configuration=endpoint_configuration,
            policy=_invoke_policy(refused),
            cloud_watch_role=False,
            deploy_options=apigateway.StageOptions(
                stage_name=API_STAGE,
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
                tracing_enabled=True,
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
            "The secret mirrors an API Gateway key; a rotation function cannot add the "
            "matching key to the usage plan, so rotation is the README's procedure (new key on "
            "the plan, new secret value, clients refreshed, old key disabled).",
        )
        key = apigateway.ApiKey(
            self, "ApiKey", value=key_value.secret_value.unsafe_unwrap(), enabled=True
        )
        plan = api.add_usage_plan(
            "UsagePlan", throttle=apigateway.ThrottleSettings(rate_limit=100, burst_limit=200)
        )
        plan.add_api_key(key)
        self.api_key_id, self.usage_plan_id = key.key_id, plan.usage_plan_id
        skip_checkov(
            api.deployment_stage,
            "CKV_AWS_120",
            "Metadata reads must see the latest runs and steps; a cache would serve stale run "
            "state to Metaflow clients.",
        )
        plan.add_api_stage(stage=api.deployment_stage)

        # A changed resource policy only takes effect with a new deployment.
        api.latest_deployment.add_to_logical_id({"mode": config.api_gateway, "refused": refused})
        reasons = {
            "AwsSolutions-APIG2": (
                "A pass-through proxy to the metadata service, which validates its own "
                "requests; API Gateway has no model of Metaflow's API to check against."
            ),
            "AwsSolutions-APIG4": (
                "Metaflow's client authenticates with an API key (x-api-key); it cannot sign "
                "requests for IAM or present Cognito tokens."
            ),
            "AwsSolutions-COG4": (
                "Metaflow's client authenticates with an API key (x-api-key); it cannot "
                "present Cognito user pool tokens."
            ),
            "AwsSolutions-APIG6": (
                "Access logs of every request go to an encrypted log group; execution logging "
                "would also record request bodies with run metadata."
            ),
        }
        if config.api_gateway == "public":
            self._web_acl(api.deployment_stage, config.api_rate_limit_per_5min)
            url = api.url
        else:
            reasons["AwsSolutions-APIG3"] = (
                "A private API: its resource policy refuses every call that does not come "
                "through this VPC's own execute-api endpoint; the public mode has a web ACL."
            )
            # The endpoint-specific name resolves to the endpoint from the VPC and from
            # networks connected to it, with or without private DNS.
            region, suffix = Stack.of(self).region, Stack.of(self).url_suffix
            url = (
                f"https://{api.rest_api_id}-{endpoint.vpc_endpoint_id}.execute-api."
                f"{region}.{suffix}/{API_STAGE}/"
            )
        for rule, reason in reasons.items():
            acknowledge(api, rule, reason)
        return url, key_value

    def _api_endpoint(
        self,
        vpc: ec2.IVpc,
        vpc_cidr: str,
        subnets: ec2.SubnetSelection,
        client_cidrs: list[str],
    ) -> ec2.InterfaceVpcEndpoint:
        """The private API's own `execute-api` endpoint, admitting HTTPS from the VPC and the
        configured client networks."""
        group = ec2.SecurityGroup(
            self,
            "ApiEndpointSecurityGroup",
            vpc=vpc,
            description="HTTPS to the execute-api endpoint of the Metaflow metadata API",
            allow_all_outbound=False,
        )
        group.add_ingress_rule(ec2.Peer.ipv4(vpc_cidr), ec2.Port.HTTPS, "clients in the VPC")
        for cidr in client_cidrs:
            group.add_ingress_rule(ec2.Peer.ipv4(cidr), ec2.Port.HTTPS, "metaflow.client_cidrs")
        return ec2.InterfaceVpcEndpoint(
            self,
            "ApiEndpoint",
            vpc=vpc,
            service=ec2.InterfaceVpcEndpointAwsService.APIGATEWAY,
            subnets=subnets,
            security_groups=[group],
            open=False,
            # Private DNS would send every execute-api name in the VPC to this endpoint,
            # cutting the VPC off from public APIs; the URL names the endpoint instead.
            private_dns_enabled=False,
        )

    def _web_acl(self, stage: apigateway.Stage, rate_limit: int) -> None:
        """A WAF web ACL on the public API's stage: a per-source rate limit, then AWS's common
        and known-bad-inputs rule sets."""

        def visibility(name: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
            return wafv2.CfnWebACL.VisibilityConfigProperty(
                cloud_watch_metrics_enabled=True, metric_name=name, sampled_requests_enabled=True
            )

        def managed(name: str, priority: int, **options) -> wafv2.CfnWebACL.RuleProperty:
            return wafv2.CfnWebACL.RuleProperty(
                name=name,
                priority=priority,
                override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
                statement=wafv2.CfnWebACL.StatementProperty(
                    managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                        vendor_name="AWS", name=name, **options
                    )
                ),
                visibility_config=visibility(name),
            )

        acl = wafv2.CfnWebACL(
            self,
            "ApiWebAcl",
            scope="REGIONAL",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=visibility("MetaflowMetadataApi"),
            rules=[
                wafv2.CfnWebACL.RuleProperty(
                    name="RateLimitPerSource",
                    priority=0,
                    action=wafv2.CfnWebACL.RuleActionProperty(block={}),
                    statement=wafv2.CfnWebACL.StatementProperty(
                        rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                            limit=rate_limit, aggregate_key_type="IP", evaluation_window_sec=300
                        )
                    ),
                    visibility_config=visibility("RateLimitPerSource"),
                ),
                managed(
                    "AWSManagedRulesCommonRuleSet",
                    1,
                    # Metaflow posts a task's artifact and metadata lists in one request,
                    # which can pass this rule's 8 KB body limit: counted, not blocked.
                    rule_action_overrides=[
                        wafv2.CfnWebACL.RuleActionOverrideProperty(
                            name="SizeRestrictions_BODY",
                            action_to_use=wafv2.CfnWebACL.RuleActionProperty(count={}),
                        )
                    ],
                ),
                managed("AWSManagedRulesKnownBadInputsRuleSet", 2),
            ],
        )
        wafv2.CfnWebACLAssociation(
            self, "ApiWebAclAssociation", resource_arn=stage.stage_arn, web_acl_arn=acl.attr_arn
        )


_LINUX_X86 = ecs.RuntimePlatform(
    cpu_architecture=ecs.CpuArchitecture.X86_64,
    operating_system_family=ecs.OperatingSystemFamily.LINUX,
)


def _credentials(
    secret: secretsmanager.ISecret, user_variable: str, password_variable: str
) -> dict[str, ecs.Secret]:
    """A database secret's username and password as two ECS secrets."""
    return {
        user_variable: ecs.Secret.from_secrets_manager(secret, "username"),
        password_variable: ecs.Secret.from_secrets_manager(secret, "password"),
    }


def _invoke_policy(refused: dict) -> iam.PolicyDocument:
    """The API's resource policy: invoke for any caller with the API key, except the calls
    that match `refused` (API Gateway's pattern of an allow and a conditional deny)."""
    invoke = {
        "principals": [iam.AnyPrincipal()],
        "actions": ["execute-api:Invoke"],
        "resources": ["execute-api:/*"],
    }
    return iam.PolicyDocument(
        statements=[
            iam.PolicyStatement(**invoke),
            iam.PolicyStatement(effect=iam.Effect.DENY, conditions=refused, **invoke),
        ]
    )


def acknowledge_provider_framework(provider: cr.Provider, key: kms.IKey, *, what: str) -> None:
    """The CDK's custom-resource Provider adds its own framework Lambda (which `what`); its
    log group is encrypted with `key`, which admits CloudWatch Logs."""
    framework = provider.node.find_child("framework-onEvent")
    skip_checkov_for_deploy_handler(framework, what=what)
    skip_checkov(
        framework,
        "CKV_AWS_173",
        "The CDK sets only the user function's name in the framework's environment; no secret.",
    )
    encrypt_deploy_handler_logs(framework, key)
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
            r"Resource::<.*(Migration|DatabaseUser).*\.Arn>:\*": (
                "The framework may invoke every version of the one handler function it fronts."
            )
        },
    )
