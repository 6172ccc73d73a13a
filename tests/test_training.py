"""TrainingService: GPU SageMaker training from the workflow, least privilege, registry."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from aws_cdk import App, Environment, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match, Template

from cdk_constructs.training_service import (
    METRIC_NAMES,
    TRAINING_CODE,
    TrainingService,
    dlc_image,
    source_tarball,
)
from platform_config.instance_types import SAGEMAKER_TRAINING_GPUS
from platform_config.model import TrainingConfig
from tests.test_orchestrator import (
    all_states,
    definition,
    role_statements,
    workflow_role_statements,
)


def test_training_code_tarball_is_reproducible(tmp_path):
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    first = source_tarball(TRAINING_CODE, first_dir)
    second = source_tarball(TRAINING_CODE, second_dir)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(first.read_bytes()), mode="r:gz") as archive:
        names = archive.getnames()
    assert "train.py" in names
    assert "requirements.txt" in names
    assert not any("__pycache__" in name for name in names)


@pytest.mark.parametrize(
    ("region", "account"),
    [("us-east-1", "763104351884"), ("eu-west-1", "763104351884"), ("ap-east-1", "871362719292")],
)
def test_dlc_images_resolve_by_region_without_credentials(region, account):
    assert dlc_image(region, "pytorch-training", "t") == (
        f"{account}.dkr.ecr.{region}.amazonaws.com/pytorch-training:t"
    )


def workflow_states(synth) -> dict:
    return all_states(definition(synth, "train-recommender")["States"])


def training_state(synth) -> dict:
    return workflow_states(synth)["train"]


def test_workflow_runs_training_after_features_then_registers(each_env):
    top = definition(each_env, "train-recommender")["States"]
    (train_branch,) = [
        b for b in top[top["spark-features"]["Next"]]["Branches"] if b["StartAt"] == "train"
    ]
    states = workflow_states(each_env)
    assert states["train"]["Next"] == "register-model"
    assert states["register-model"]["End"] is True
    assert set(train_branch["States"]) == {"train", "register-model"}
    assert states["train"]["Resource"].endswith(":states:::sagemaker:createTrainingJob.sync")


def test_training_job_runs_on_the_configured_gpu_with_limits(each_env):
    arguments = training_state(each_env)["Arguments"]
    training = each_env.config.training
    resources = arguments["ResourceConfig"]
    assert resources["InstanceType"] == training.instance_type
    assert resources["InstanceCount"] == training.instance_count
    assert resources["VolumeSizeInGB"] == training.volume_gib
    assert resources["VolumeKmsKeyId"] == "REF"
    stopping = arguments["StoppingCondition"]
    assert stopping["MaxRuntimeInSeconds"] == training.max_runtime_minutes * 60
    assert arguments["EnableManagedSpotTraining"] is training.use_spot
    assert stopping["MaxWaitTimeInSeconds"] == training.max_wait_minutes * 60
    assert arguments["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    assert arguments["EnableNetworkIsolation"] is training.network_isolation
    assert arguments["EnableInterContainerTrafficEncryption"] is True
    assert arguments["OutputDataConfig"]["KmsKeyId"] == "REF"
    assert len(arguments["VpcConfig"]["Subnets"]) == len(each_env.config.availability_zones)


def test_metrics_are_defined_so_they_reach_cloudwatch_and_the_registry(each_env):
    definitions = training_state(each_env)["Arguments"]["AlgorithmSpecification"][
        "MetricDefinitions"
    ]
    assert [d["Name"] for d in definitions] == list(METRIC_NAMES)
    for metric in definitions:
        assert metric["Regex"] == f"METRIC {metric['Name']}=([0-9.eE+-]+)"


def test_training_reads_its_channels_from_the_curated_zone(each_env):
    channels = training_state(each_env)["Arguments"]["InputDataConfig"]
    uris = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in channels}
    assert set(uris) == {"interactions", "features"}
    assert uris["interactions"].endswith("/member_interactions/")
    assert uris["features"].endswith("/features/member_features/")
    hyperparameters = training_state(each_env)["Arguments"]["HyperParameters"]
    assert hyperparameters["sagemaker_program"] == "train.py"
    assert hyperparameters["epochs"] == str(each_env.config.training.epochs)


def test_training_runs_one_process_per_gpu_under_torchrun(each_env):
    training = each_env.config.training
    hyperparameters = training_state(each_env)["Arguments"]["HyperParameters"]
    # The container's switch for torchrun, JSON-encoded as the SageMaker SDK sends it.
    assert json.loads(hyperparameters["sagemaker_torch_distributed_enabled"]) is True
    assert hyperparameters["batch-size"] == str(training.batch_size)
    # Nothing overrides the container's default of one process per GPU, and no other
    # launcher (SMDDP, MPI) competes with torchrun.
    launchers = {name for name in hyperparameters if name.startswith("sagemaker_")}
    assert launchers == {
        "sagemaker_program",
        "sagemaker_submit_directory",
        "sagemaker_torch_distributed_enabled",
    }
    gpus = training.instance_count * SAGEMAKER_TRAINING_GPUS[training.instance_type]
    assert training.batch_size >= gpus


def test_single_host_training_accepts_no_inbound_traffic(each_env):
    assert each_env.config.training.instance_count == 1
    groups = each_env.template("orchestration").find_resources(
        "AWS::EC2::SecurityGroup",
        {"Properties": {"GroupDescription": Match.string_like_regexp("Recommender training")}},
    )
    ((group_id, group),) = groups.items()
    assert "SecurityGroupIngress" not in group["Properties"]
    ingress = each_env.template("orchestration").find_resources("AWS::EC2::SecurityGroupIngress")
    assert group_id not in json.dumps(ingress)


def bare_training_service(config: TrainingConfig) -> tuple[Stack, TrainingService]:
    """The service alone in a bare stack (us-east-1) with a two-zone isolated VPC."""
    stack = Stack(App(), "Bare", env=Environment(account="123456789012", region="us-east-1"))
    vpc = ec2.Vpc(
        stack,
        "Vpc",
        max_azs=2,
        nat_gateways=0,
        subnet_configuration=[
            ec2.SubnetConfiguration(name="compute", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        ],
    )
    service = TrainingService(
        stack,
        "Training",
        config=config,
        name_prefix="ml-platform-test",
        vpc=vpc,
        subnets=ec2.SubnetSelection(subnet_group_name="compute"),
        curated_bucket=s3.Bucket(stack, "Curated"),
        artifacts_bucket=s3.Bucket(stack, "Artifacts"),
        encryption_key=kms.Key(stack, "Key"),
        input_prefixes={"interactions": "member_interactions/"},
        model_package_group="ml-platform-test-recommender",
        log_retention_days=7,
    )
    return stack, service


def test_hosts_of_a_multi_host_job_reach_each_other_and_nothing_else():
    config = TrainingConfig(instance_type="ml.g5.12xlarge", instance_count=2, batch_size=2048)
    stack, service = bare_training_service(config)
    state = service.training_task(stack, "Task", "train").to_state_json()
    assert state["Arguments"]["ResourceConfig"]["InstanceCount"] == 2
    assert state["Arguments"]["HyperParameters"]["batch-size"] == "2048"
    template = Template.from_stack(stack)
    group_id = stack.resolve(service.security_group.security_group_id)["Fn::GetAtt"][0]
    rules = template.find_resources("AWS::EC2::SecurityGroupIngress")
    (rule,) = rules.values()
    assert rule["Properties"] == {
        "Description": "Between the hosts of one training job",
        "GroupId": {"Fn::GetAtt": [group_id, "GroupId"]},
        "IpProtocol": "-1",
        "SourceSecurityGroupId": {"Fn::GetAtt": [group_id, "GroupId"]},
    }


def test_on_demand_training_neither_waits_for_spot_nor_checkpoints():
    config = TrainingConfig(use_spot=False, max_runtime_minutes=90, max_wait_minutes=None)
    stack, service = bare_training_service(config)
    state = service.training_task(stack, "Task", "train").to_state_json()
    arguments = state["Arguments"]
    assert arguments["StoppingCondition"] == {"MaxRuntimeInSeconds": 90 * 60}
    assert "EnableManagedSpotTraining" not in arguments
    assert "CheckpointConfig" not in arguments
    # The state's own limit follows the job's runtime, not a spot wait it never has.
    assert service.longest_job_seconds == 90 * 60
    assert state["TimeoutSeconds"] == 90 * 60 + 30 * 60


DIGEST = "sha256:" + "0123456789abcdef" * 4
REGISTRY = "111122223333.dkr.ecr.us-east-1.amazonaws.com"


@pytest.mark.parametrize(
    ("image_uri", "repository"),
    [
        (f"{REGISTRY}/recommender@{DIGEST}", "recommender"),
        (f"{REGISTRY}/recommender:2026.1@{DIGEST}", "recommender"),
        (f"{REGISTRY}/team/recommender@{DIGEST}", "team/recommender"),
        (f"{REGISTRY}/team/recommender:latest", "team/recommender"),
    ],
)
def test_a_custom_image_runs_exactly_as_given_and_only_its_repository_is_pulled(
    image_uri, repository
):
    stack, service = bare_training_service(TrainingConfig(image_uri=image_uri))
    arguments = service.training_task(stack, "Task", "train").to_state_json()["Arguments"]
    assert arguments["AlgorithmSpecification"]["TrainingImage"] == image_uri
    resources = Template.from_stack(stack).to_json()["Resources"]
    pulls = [
        statement["Resource"]
        for resource in resources.values()
        if resource["Type"] == "AWS::IAM::Policy"
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]
        if "ecr:BatchGetImage" in _actions(statement)
    ]
    assert pulls == [
        {
            "Fn::Join": [
                "",
                [
                    "arn:",
                    {"Ref": "AWS::Partition"},
                    f":ecr:us-east-1:111122223333:repository/{repository}",
                ],
            ]
        }
    ]


def test_an_image_outside_ecr_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^not an ECR image URI .*'docker.io/pytorch:2'$"):
        bare_training_service(TrainingConfig(image_uri="docker.io/pytorch:2"))


def training_role_statements(synth) -> list[dict]:
    """The statements of the role SageMaker assumes for training jobs."""
    roles = synth.template("orchestration").find_resources("AWS::IAM::Role")
    (role_id,) = [
        lid
        for lid, role in roles.items()
        if "sagemaker.amazonaws.com" in json.dumps(role["Properties"]["AssumeRolePolicyDocument"])
    ]
    return role_statements(synth.template_json("orchestration"), role_id)


def test_training_role_reads_inputs_writes_only_its_models_prefix(each_env):
    statements = training_role_statements(each_env)
    env = each_env.config.env_name
    writes = [
        s for s in statements if any(a.startswith(("s3:Put", "s3:Delete")) for a in _actions(s))
    ]
    (write,) = writes
    assert json.dumps(write["Resource"]).count(f"models/ml-platform-{env}-recommender/*") >= 1
    assert f"mlp-{env}-curated-" not in json.dumps(write["Resource"])
    reads = json.dumps([s["Resource"] for s in statements if "s3:GetObject*" in _actions(s)])
    assert "/member_interactions/*" in reads
    assert "/features/member_features/*" in reads
    assert f"mlp-{env}-raw-" not in json.dumps(statements)
    ecr = [s for s in statements if "ecr:BatchGetImage" in _actions(s)]
    assert "repository/pytorch-training" in json.dumps(ecr)


def _actions(statement: dict) -> list[str]:
    actions = statement["Action"]
    return actions if isinstance(actions, list) else [actions]


def test_state_machine_may_start_only_recommender_training_jobs(each_env):
    statements = workflow_role_statements(each_env, "train-recommender")
    (create,) = [s for s in statements if "sagemaker:CreateTrainingJob" in _actions(s)]
    assert f"training-job/ml-platform-{each_env.config.env_name}-recommender-*" in json.dumps(
        create["Resource"]
    )
    assert any("iam:PassRole" in _actions(s) for s in statements)


def test_registration_step_carries_the_approval_policy(each_env):

    payload = workflow_states(each_env)["register-model"]["Arguments"]
    assert payload["model_package_group"] == f"ml-platform-{each_env.config.env_name}-recommender"
    assert payload["metric"] == "recall_at_k"
    assert payload["metric_floor"] == each_env.config.training.approval_metric_floor
    assert payload["training_job_name"] == "{% $states.input.training_job_name %}"
    assert "pytorch-inference" in payload["inference_image"]


def test_model_package_group_is_retained_in_prod(dev, prod):
    for synth, policy in ((dev, "Delete"), (prod, "Retain")):
        (group,) = (
            synth.template("data").find_resources("AWS::SageMaker::ModelPackageGroup").values()
        )
        assert group["DeletionPolicy"] == policy
        assert group["Properties"]["ModelPackageGroupName"] == (
            f"ml-platform-{synth.config.env_name}-recommender"
        )


def test_training_network_interfaces_stay_in_the_platform_vpc(each_env):
    for statement in training_role_statements(each_env):
        mutating = [
            action
            for action in _actions(statement)
            if action.startswith("ec2:") and not action.startswith("ec2:Describe")
        ]
        if not mutating:
            continue
        resources = json.dumps(statement["Resource"])
        assert '"*"' not in resources
        if "network-interface/*" in resources:
            assert "ec2:Vpc" in statement["Condition"]["ArnEquals"]
        else:
            assert mutating == ["ec2:CreateNetworkInterface"]
            assert "subnet/" in resources
            assert "security-group/" in resources
