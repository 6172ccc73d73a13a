"""Metaflow Client container: the AWS side of `@batch` steps and `step-functions create`."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_batch as batch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk_constructs.base import PlatformContainer, acknowledge, acknowledge_wildcard_grants
from platform_config.model import MetaflowConfig

DATASTORE_PREFIX = "metaflow"


class MetaflowClient(PlatformContainer):
    """AWS Batch compute, roles, state table and the generated client configuration.

    Secure defaults:
    - CPU (Fargate, Spot per config) and GPU (EC2 GPU types, spot per config) compute in the
      private compute subnets only, behind a security group that admits nothing;
    - one job role for Batch tasks with access to the Metaflow datastore prefix of the
      artifacts bucket only; Step Functions, EventBridge and data-scientist permissions are
      scoped to this platform's queues, state machine prefix and table;
    - the Step Functions state table is encrypted with the platform key, with point-in-time
      recovery and TTL;
    - the client configuration is published in SSM with every required key filled, so the
      service URL is never empty.
    """

    container = "metaflow-client"
    stereotype = "workflow-sdk"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: MetaflowConfig,
        name_prefix: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        artifacts_bucket: s3.IBucket,
        encryption_key: kms.IKey,
        service_url: str,
        internal_service_url: str,
        config_parameter_name: str,
        protect: bool,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.state_machine_prefix = f"{name_prefix}-metaflow"
        security_group = ec2.SecurityGroup(
            self,
            "ComputeSecurityGroup",
            vpc=vpc,
            description="Metaflow Batch jobs: outbound only",
            allow_all_outbound=True,
        )

        cpu_compute = batch.FargateComputeEnvironment(
            self,
            "CpuCompute",
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[security_group],
            spot=config.cpu_queue.spot,
            maxv_cpus=config.cpu_queue.max_vcpus,
        )
        gpu_compute = batch.ManagedEc2EcsComputeEnvironment(
            self,
            "GpuCompute",
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[security_group],
            instance_types=[ec2.InstanceType(name) for name in config.gpu_queue.instance_types],
            use_optimal_instance_classes=False,
            images=[batch.EcsMachineImage(image_type=batch.EcsMachineImageType.ECS_AL2023_NVIDIA)],
            spot=config.gpu_queue.spot,
            allocation_strategy=(
                batch.AllocationStrategy.SPOT_PRICE_CAPACITY_OPTIMIZED
                if config.gpu_queue.spot
                else batch.AllocationStrategy.BEST_FIT_PROGRESSIVE
            ),
            minv_cpus=0,
            maxv_cpus=config.gpu_queue.max_vcpus,
        )
        acknowledge(
            gpu_compute.instance_role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonEC2ContainerServiceforEC2Role]",
            "AWS's ECS container-instance policy is what Batch's EC2 hosts need to register "
            "with their ECS cluster and pull job images.",
        )
        self.cpu_queue = batch.JobQueue(
            self,
            "CpuQueue",
            job_queue_name=f"{name_prefix}-metaflow-cpu",
            compute_environments=[
                batch.OrderedComputeEnvironment(compute_environment=cpu_compute, order=1)
            ],
        )
        self.gpu_queue = batch.JobQueue(
            self,
            "GpuQueue",
            job_queue_name=f"{name_prefix}-metaflow-gpu",
            compute_environments=[
                batch.OrderedComputeEnvironment(compute_environment=gpu_compute, order=1)
            ],
        )

        datastore = f"{DATASTORE_PREFIX}/*"
        self.job_role = iam.Role(
            self,
            "JobRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Metaflow @batch tasks: the datastore prefix only",
        )
        artifacts_bucket.grant_read_write(self.job_role, datastore)
        self.execution_role = iam.Role(
            self,
            "FargateExecutionRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Pulls images and ships logs for Metaflow Fargate jobs",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name(
                    "service-role/AmazonECSTaskExecutionRolePolicy"
                )
            ],
        )
        acknowledge(
            self.execution_role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonECSTaskExecutionRolePolicy]",
            "AWS's task execution policy only pulls container images and writes the job's "
            "log stream; it grants no data access.",
        )

        self.state_table = dynamodb.TableV2(
            self,
            "StepFunctionsState",
            partition_key=dynamodb.Attribute(name="pathspec", type=dynamodb.AttributeType.STRING),
            time_to_live_attribute="ttl",
            encryption=dynamodb.TableEncryptionV2.customer_managed_key(encryption_key),
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            deletion_protection=protect,
            removal_policy=removal_policy,
        )

        region, account = stack.region, stack.account
        state_machines = (
            f"arn:{stack.partition}:states:{region}:{account}:stateMachine:"
            f"{self.state_machine_prefix}*"
        )
        self.step_functions_role = iam.Role(
            self,
            "StepFunctionsRole",
            assumed_by=iam.ServicePrincipal("states.amazonaws.com"),
            description="Runs Metaflow flows deployed with step-functions create",
        )
        self.step_functions_role.add_to_policy(self._submit_jobs_statement())
        self.step_functions_role.add_to_policy(
            iam.PolicyStatement(
                # Batch accepts no resource-level scoping for these.
                actions=["batch:DescribeJobs", "batch:TerminateJob"],
                resources=["*"],
            )
        )
        self.step_functions_role.add_to_policy(
            iam.PolicyStatement(
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                resources=[
                    f"arn:{stack.partition}:events:{region}:{account}:rule/"
                    "StepFunctionsGetEventsForBatchJobsRule"
                ],
            )
        )
        self.state_table.grant_read_write_data(self.step_functions_role)
        self.job_role.grant_pass_role(self.step_functions_role)
        self.execution_role.grant_pass_role(self.step_functions_role)

        self.events_role = iam.Role(
            self,
            "EventsRole",
            assumed_by=iam.ServicePrincipal("events.amazonaws.com"),
            description="Lets EventBridge schedules start Metaflow state machines",
        )
        self.events_role.add_to_policy(
            iam.PolicyStatement(actions=["states:StartExecution"], resources=[state_machines])
        )

        self.scientist_policy = self._scientist_policy(
            name_prefix, artifacts_bucket, encryption_key, state_machines, datastore
        )

        self.client_config = {
            "METAFLOW_DEFAULT_DATASTORE": "s3",
            "METAFLOW_DATASTORE_SYSROOT_S3": artifacts_bucket.s3_url_for_object(DATASTORE_PREFIX),
            "METAFLOW_DATATOOLS_S3ROOT": artifacts_bucket.s3_url_for_object(
                f"{DATASTORE_PREFIX}/data"
            ),
            "METAFLOW_DEFAULT_METADATA": "service",
            "METAFLOW_SERVICE_URL": service_url,
            # Batch tasks run inside the VPC and always use the load balancer directly.
            "METAFLOW_SERVICE_INTERNAL_URL": internal_service_url,
            "METAFLOW_BATCH_JOB_QUEUE": self.cpu_queue.job_queue_arn,
            "METAFLOW_ECS_S3_ACCESS_IAM_ROLE": self.job_role.role_arn,
            "METAFLOW_ECS_FARGATE_EXECUTION_ROLE": self.execution_role.role_arn,
            "METAFLOW_SFN_IAM_ROLE": self.step_functions_role.role_arn,
            "METAFLOW_SFN_STATE_MACHINE_PREFIX": self.state_machine_prefix,
            "METAFLOW_SFN_DYNAMO_DB_TABLE": self.state_table.table_name,
            "METAFLOW_EVENTS_SFN_ACCESS_IAM_ROLE": self.events_role.role_arn,
        }
        self.config_parameter = ssm.StringParameter(
            self,
            "ClientConfig",
            parameter_name=config_parameter_name,
            description="Metaflow client configuration (python -m tools.metaflow_config)",
            string_value=stack.to_json_string(self.client_config),
        )

        acknowledge_wildcard_grants(
            self.step_functions_role,
            {
                r"Resource::arn:.*:batch:.*:job-definition/\*": (
                    "Metaflow registers a job definition per step at deploy time, with names "
                    "only known then; submission is limited to this platform's queues."
                ),
                r"Resource::\*": (
                    "batch:DescribeJobs and batch:TerminateJob support no resource-level "
                    "permissions."
                ),
                r"Action::(kms:(GenerateDataKey|ReEncrypt)|dynamodb:.*)\*": (
                    "The CDK's DynamoDB data grant on the one state table and its key."
                ),
            },
        )
        acknowledge_wildcard_grants(
            self.events_role,
            {
                r"Resource::arn:.*:states:.*:stateMachine:.*-metaflow\*": (
                    "Metaflow names each flow's state machine under this platform's prefix at "
                    "deploy time; the wildcard covers that prefix only."
                )
            },
        )
        acknowledge_wildcard_grants(
            self.job_role,
            {
                r"Action::(s3:(GetObject|GetBucket|List|Abort|DeleteObject)|"
                r"kms:(GenerateDataKey|ReEncrypt))\*": (
                    "The CDK's S3 read-write grant on the datastore prefix and the platform key."
                ),
                rf"Resource::.*/{DATASTORE_PREFIX}/\*": (
                    "Tasks read and write artifacts as objects under the Metaflow datastore "
                    "prefix only."
                ),
            },
        )

    def _submit_jobs_statement(self) -> iam.PolicyStatement:
        """Submitting Batch jobs, to this platform's two queues only."""
        stack = Stack.of(self)
        return iam.PolicyStatement(
            actions=["batch:SubmitJob"],
            resources=[
                self.cpu_queue.job_queue_arn,
                self.gpu_queue.job_queue_arn,
                f"arn:{stack.partition}:batch:{stack.region}:{stack.account}:job-definition/*",
            ],
        )

    def _scientist_policy(
        self,
        name_prefix: str,
        artifacts_bucket: s3.IBucket,
        encryption_key: kms.IKey,
        state_machines: str,
        datastore: str,
    ) -> iam.ManagedPolicy:
        stack = Stack.of(self)
        region, account, partition = stack.region, stack.account, stack.partition
        policy = iam.ManagedPolicy(
            self,
            "DataScientistPolicy",
            managed_policy_name=f"{name_prefix}-metaflow-data-scientist",
            description="Run Metaflow flows on Batch and schedule them with Step Functions",
            statements=[
                self._submit_jobs_statement(),
                iam.PolicyStatement(
                    # Batch accepts no resource-level scoping for these.
                    actions=[
                        "batch:DescribeJobs",
                        "batch:TerminateJob",
                        "batch:ListJobs",
                        "batch:DescribeJobQueues",
                        "batch:DescribeComputeEnvironments",
                        "batch:DescribeJobDefinitions",
                        "batch:RegisterJobDefinition",
                    ],
                    resources=["*"],
                ),
                iam.PolicyStatement(
                    actions=["logs:GetLogEvents"],
                    resources=[
                        f"arn:{partition}:logs:{region}:{account}:log-group:/aws/batch/job:*"
                    ],
                ),
                iam.PolicyStatement(
                    actions=[
                        "states:CreateStateMachine",
                        "states:UpdateStateMachine",
                        "states:DescribeStateMachine",
                        "states:StartExecution",
                        "states:ListExecutions",
                        "states:DeleteStateMachine",
                    ],
                    resources=[state_machines],
                ),
                iam.PolicyStatement(
                    actions=["states:DescribeExecution", "states:StopExecution"],
                    resources=[
                        f"arn:{partition}:states:{region}:{account}:execution:"
                        f"{self.state_machine_prefix}*"
                    ],
                ),
                iam.PolicyStatement(
                    actions=[
                        "events:PutRule",
                        "events:PutTargets",
                        "events:DescribeRule",
                        "events:DeleteRule",
                        "events:RemoveTargets",
                    ],
                    resources=[
                        f"arn:{partition}:events:{region}:{account}:rule/"
                        f"{self.state_machine_prefix}*"
                    ],
                ),
                iam.PolicyStatement(
                    actions=["iam:PassRole"],
                    resources=[
                        self.job_role.role_arn,
                        self.execution_role.role_arn,
                        self.step_functions_role.role_arn,
                        self.events_role.role_arn,
                    ],
                ),
            ],
        )
        artifacts_bucket.grant_read_write(policy, datastore)
        encryption_key.grant_encrypt_decrypt(policy)
        self.state_table.grant_read_write_data(policy)
        prefix = self.state_machine_prefix
        acknowledge_wildcard_grants(
            policy,
            {
                r"Resource::arn:.*:batch:.*:job-definition/\*": (
                    "Metaflow registers a job definition per step with names known only at "
                    "run time; submission is limited to this platform's queues."
                ),
                r"Resource::\*": (
                    "These Batch describe, list, terminate and register actions support no "
                    "resource-level permissions."
                ),
                r"Resource::arn:.*:logs:.*:log-group:/aws/batch/job:\*": (
                    "Reading the log streams of Batch jobs, which all share AWS Batch's log group."
                ),
                rf"Resource::arn:.*:(states:.*:(stateMachine|execution)|events:.*:rule/)"
                rf":?{prefix}\*": (
                    "State machines, executions and schedule rules that Metaflow names under "
                    "this platform's prefix when a flow is deployed."
                ),
                r"Action::(s3:(GetObject|GetBucket|List|Abort|DeleteObject)|"
                r"kms:(GenerateDataKey|ReEncrypt)|dynamodb:.*)\*": (
                    "The CDK's grant action groups on the datastore prefix, the platform key "
                    "and the one state table."
                ),
                rf"Resource::.*/{DATASTORE_PREFIX}/\*": (
                    "Flows read and write artifacts under the Metaflow datastore prefix only."
                ),
            },
        )
        return policy
