"""The model registration step against moto's SageMaker model registry.

moto's CreateTrainingJob stores every job as Completed, with one canned final metric
(``train:progress``) and the creation time as its end, and no API changes them; the `train`
fixture sets the status, the final metrics and the end time on moto's stored job object, so
that DescribeTrainingJob, the model registry calls and their responses stay moto's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from types import ModuleType

import pytest
from moto.sagemaker.models import sagemaker_backends

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
GROUP = "ml-platform-dev-recommender"
IMAGE = f"{ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/mlp-dev-recommender-serving:1.4.0"
CODE_VERSION = "3f2c9e1d4b5a69788a7b6c5d4e3f2a1b0c9d8e7f"
ENDED_AT = dt.datetime(2024, 5, 17, 3, 14, 15, 926000, tzinfo=dt.UTC)
PACKAGE_ARN = f"arn:aws:sagemaker:{REGION}:{ACCOUNT_ID}:model-package/{GROUP}/{{}}"


@pytest.fixture
def registration(aws_client, load_handler) -> ModuleType:
    aws_client("sagemaker").create_model_package_group(ModelPackageGroupName=GROUP)
    return load_handler("model_registration")


@pytest.fixture
def train(aws_client) -> Callable[..., None]:
    """Creates a training job that ended at ENDED_AT with the given final metrics."""

    def create(
        name: str,
        metrics: dict[str, float],
        status: str = "Completed",
        channels: list[dict] | None = None,
        hyperparameters: dict[str, str] | None = None,
        failure_reason: str | None = None,
    ) -> None:
        aws_client("sagemaker").create_training_job(
            TrainingJobName=name,
            AlgorithmSpecification={
                "TrainingImage": f"{ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/trainer:1",
                "TrainingInputMode": "File",
            },
            RoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/mlp-dev-training",
            HyperParameters=hyperparameters if hyperparameters is not None else {"k": "50"},
            InputDataConfig=channels
            if channels is not None
            else [s3_channel("train", "s3://mlp-dev-features/recommender/train/")],
            OutputDataConfig={"S3OutputPath": "s3://mlp-dev-models/recommender"},
            ResourceConfig={
                "InstanceType": "ml.m5.xlarge",
                "InstanceCount": 1,
                "VolumeSizeInGB": 30,
            },
            StoppingCondition={"MaxRuntimeInSeconds": 3600},
        )
        job = sagemaker_backends[ACCOUNT_ID][REGION].training_jobs[name]
        job.training_job_status = job.secondary_status = status
        job.training_end_time = ENDED_AT
        job.final_metric_data_list = [
            {"MetricName": metric, "Value": value, "Timestamp": ENDED_AT}
            for metric, value in metrics.items()
        ]
        if failure_reason is not None:
            job.failure_reason = failure_reason

    return create


def s3_channel(name: str, uri: str) -> dict:
    return {
        "ChannelName": name,
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri}},
    }


def registration_event(job: str, **overrides) -> dict:
    return {
        "training_job_name": job,
        "model_package_group": GROUP,
        "metric": "recall_at_k",
        "metric_floor": 0.05,
        "code_version": CODE_VERSION,
        "inference_image": IMAGE,
        **overrides,
    }


def packages(aws_client, **filters) -> list[tuple[int, str]]:
    """(version, approval status) of the group's versions that pass the list filters."""
    response = aws_client("sagemaker").list_model_packages(ModelPackageGroupName=GROUP, **filters)
    return sorted(
        (summary["ModelPackageVersion"], summary["ModelApprovalStatus"])
        for summary in response["ModelPackageSummaryList"]
    )


def describe(aws_client, version: int) -> dict:
    return aws_client("sagemaker").describe_model_package(
        ModelPackageName=PACKAGE_ARN.format(version)
    )


def review(aws_client, version: int, status: str, description: str) -> None:
    """A reviewer's status change in the registry."""
    aws_client("sagemaker").update_model_package(
        ModelPackageArn=PACKAGE_ARN.format(version),
        ModelApprovalStatus=status,
        ApprovalDescription=description,
        # moto's UpdateModelPackage replaces the stored customer metadata with the call's
        # (none when left out), so the reviewer's call restates it.
        CustomerMetadataProperties=describe(aws_client, version)["CustomerMetadataProperties"],
    )


def test_first_model_is_approved_and_registered_with_its_lineage(
    registration, train, aws_client, lambda_context
):
    train(
        "recommender-2024-05-17",
        {"recall_at_k": 0.12, "validation:ndcg@10": 0.3125, "train:loss": 0.5},
        channels=[
            s3_channel("train", "s3://mlp-dev-features/recommender/train/"),
            s3_channel("validation", "s3://mlp-dev-features/recommender/validation/"),
        ],
        hyperparameters={"k": "50", "learning_rate": "0.001"},
    )

    result = registration.handler(registration_event("recommender-2024-05-17"), lambda_context)

    reason = "recall_at_k 0.12 meets the floor 0.05 and no approved version has one"
    assert result == {
        "model_package_arn": PACKAGE_ARN.format(1),
        "model_package_version": 1,
        "approval_status": "Approved",
        "reason": reason,
        "metric": {"name": "recall_at_k", "value": 0.12},
        "created": True,
    }
    package = describe(aws_client, 1)
    assert package["ModelPackageGroupName"] == GROUP
    assert package["ModelApprovalStatus"] == "Approved"
    assert package["ApprovalDescription"] == reason
    assert package["ModelPackageDescription"] == (
        f"recall_at_k 0.12 from training job recommender-2024-05-17 at code version {CODE_VERSION}"
    )
    assert package["InferenceSpecification"] == {
        "Containers": [
            {
                "Image": IMAGE,
                "ModelDataUrl": (
                    "s3://mlp-dev-models/recommender/recommender-2024-05-17/output/model.tar.gz"
                ),
            }
        ],
        "SupportedContentTypes": ["application/json"],
        "SupportedResponseMIMETypes": ["application/json"],
    }
    assert package["MetadataProperties"] == {
        "CommitId": CODE_VERSION,
        "GeneratedBy": (
            f"arn:aws:sagemaker:{REGION}:{ACCOUNT_ID}:training-job/recommender-2024-05-17"
        ),
    }
    assert package["CustomerMetadataProperties"] == {
        "training_job_name": "recommender-2024-05-17",
        "training_date": "2024-05-17T03:14:15Z",
        "code_version": CODE_VERSION,
        "input_data_uris": (
            "train=s3://mlp-dev-features/recommender/train/ "
            "validation=s3://mlp-dev-features/recommender/validation/"
        ),
        "metric_recall_at_k": "0.12",
        "metric_train:loss": "0.5",
        "metric_validation:ndcg@10": "0.3125",
        "hyperparameter_k": "50",
        "hyperparameter_learning_rate": "0.001",
        "approval_reason": reason,
    }
    assert "ModelMetrics" not in package


def test_approves_only_models_above_the_floor_that_beat_the_best_approved_version(
    registration, train, aws_client, lambda_context
):
    def register(job: str, recall: float) -> dict:
        train(job, {"recall_at_k": recall})
        return registration.handler(registration_event(job), lambda_context)

    first = register("recommender-1", 0.12)
    worse = register("recommender-2", 0.10)
    below_floor = register("recommender-3", 0.041)
    better = register("recommender-4", 0.15)
    # Compared with the best Approved version (4), not the first or the latest approved.
    between = register("recommender-5", 0.13)
    tie = register("recommender-6", 0.15)

    expected = [
        (1, "Approved", "recall_at_k 0.12 meets the floor 0.05 and no approved version has one"),
        (2, "PendingManualApproval", "recall_at_k 0.1 does not beat approved version 1 at 0.12"),
        (3, "PendingManualApproval", "recall_at_k 0.041 is below the floor 0.05"),
        (4, "Approved", "recall_at_k 0.15 beats approved version 1 at 0.12"),
        (5, "PendingManualApproval", "recall_at_k 0.13 does not beat approved version 4 at 0.15"),
        (6, "PendingManualApproval", "recall_at_k 0.15 does not beat approved version 4 at 0.15"),
    ]
    results = [first, worse, below_floor, better, between, tie]
    assert [
        (r["model_package_version"], r["approval_status"], r["reason"]) for r in results
    ] == expected
    assert all(r["created"] for r in results)
    for version, status, reason in expected:
        package = describe(aws_client, version)
        assert package["ModelApprovalStatus"] == status
        assert package["ApprovalDescription"] == reason
        assert package["CustomerMetadataProperties"]["approval_reason"] == reason
        assert package["CustomerMetadataProperties"]["training_job_name"] == (
            f"recommender-{version}"
        )
    assert packages(aws_client, ModelApprovalStatus="Approved") == [
        (1, "Approved"),
        (4, "Approved"),
    ]
    assert [version for version, _ in packages(aws_client)] == [1, 2, 3, 4, 5, 6]


def test_a_version_a_reviewer_approved_counts_as_approved(
    registration, train, aws_client, lambda_context
):
    train("recommender-1", {"recall_at_k": 0.30})
    train("recommender-2", {"recall_at_k": 0.20})
    registration.handler(registration_event("recommender-1", metric_floor=0.5), lambda_context)
    review(aws_client, 1, "Approved", "approved after an A/B test")

    result = registration.handler(registration_event("recommender-2"), lambda_context)

    assert result["approval_status"] == "PendingManualApproval"
    assert result["reason"] == "recall_at_k 0.2 does not beat approved version 1 at 0.3"


def test_approved_versions_without_the_metric_are_not_compared(
    registration, train, aws_client, lambda_context
):
    sagemaker = aws_client("sagemaker")
    sagemaker.create_model_package(
        ModelPackageGroupName=GROUP,
        InferenceSpecification={"Containers": [{"Image": IMAGE}]},
        ModelApprovalStatus="Approved",
    )
    sagemaker.create_model_package(
        ModelPackageGroupName=GROUP,
        InferenceSpecification={"Containers": [{"Image": IMAGE}]},
        ModelApprovalStatus="Approved",
        CustomerMetadataProperties={"metric_recall_at_k": "not a number"},
    )
    train("recommender-3", {"recall_at_k": 0.07})

    result = registration.handler(registration_event("recommender-3"), lambda_context)

    assert result["model_package_version"] == 3
    assert result["approval_status"] == "Approved"
    assert result["reason"] == (
        "recall_at_k 0.07 meets the floor 0.05 and no approved version has one"
    )


def test_the_same_training_job_is_registered_once(registration, train, aws_client, lambda_context):
    train("recommender-1", {"recall_at_k": 0.12})
    event = registration_event("recommender-1")

    first = registration.handler(event, lambda_context)
    second = registration.handler(event, lambda_context)

    assert first["created"] is True
    assert second == {**first, "created": False}
    assert packages(aws_client) == [(1, "Approved")]


def test_a_registered_job_reports_its_versions_current_status(
    registration, train, aws_client, lambda_context
):
    train("recommender-1", {"recall_at_k": 0.12})
    event = registration_event("recommender-1")
    registration.handler(event, lambda_context)
    review(aws_client, 1, "Rejected", "regressed on the holdout cohort")

    result = registration.handler(event, lambda_context)

    assert result == {
        "model_package_arn": PACKAGE_ARN.format(1),
        "model_package_version": 1,
        "approval_status": "Rejected",
        "reason": "regressed on the holdout cohort",
        "metric": {"name": "recall_at_k", "value": 0.12},
        "created": False,
    }
    assert packages(aws_client) == [(1, "Rejected")]


def test_a_rerun_completes_a_version_created_without_its_decision(
    registration, train, aws_client, lambda_context, monkeypatch
):
    train("recommender-1", {"recall_at_k": 0.12})
    event = registration_event("recommender-1")

    def interrupted(**kwargs):
        raise TimeoutError("the function timed out")

    with monkeypatch.context() as patch:
        patch.setattr(registration.sagemaker, "update_model_package", interrupted)
        with pytest.raises(TimeoutError):
            registration.handler(event, lambda_context)
    assert packages(aws_client) == [(1, "PendingManualApproval")]
    assert "ApprovalDescription" not in describe(aws_client, 1)

    result = registration.handler(event, lambda_context)

    reason = "recall_at_k 0.12 meets the floor 0.05 and no approved version has one"
    assert result == {
        "model_package_arn": PACKAGE_ARN.format(1),
        "model_package_version": 1,
        "approval_status": "Approved",
        "reason": reason,
        "metric": {"name": "recall_at_k", "value": 0.12},
        "created": False,
    }
    assert packages(aws_client) == [(1, "Approved")]
    assert describe(aws_client, 1)["CustomerMetadataProperties"]["approval_reason"] == reason


def test_customer_metadata_keeps_to_the_api_character_set_and_limits(
    registration, train, aws_client, lambda_context
):
    long_prefix = "s3://mlp-dev-features/recommender/" + "d" * 60
    train(
        "recommender-1",
        {"recall_at_k": 0.12, "loss (train)": 0.25, "precision,at,5": 0.5},
        channels=[
            s3_channel("train", f"{long_prefix}/train/"),
            {
                "ChannelName": "embeddings",
                "DataSource": {
                    "FileSystemDataSource": {
                        "FileSystemId": "fs-0123456789abcdef0",
                        "FileSystemAccessMode": "ro",
                        "FileSystemType": "EFS",
                        "DirectoryPath": "/embeddings",
                    }
                },
            },
            s3_channel("validation", f"{long_prefix}/validation/"),
            s3_channel("test", f"{long_prefix}/test/"),
            s3_channel("holdout", f"{long_prefix}/holdout/"),
        ],
        hyperparameters={f"param_{i:02}": str(i) for i in range(60)},
    )
    code_version = "v" * 300

    registration.handler(
        registration_event("recommender-1", code_version=code_version), lambda_context
    )

    package = describe(aws_client, 1)
    metadata = package["CustomerMetadataProperties"]
    assert metadata["input_data_uris"] == (
        f"train={long_prefix}/train/ validation={long_prefix}/validation/ +2 more"
    )
    assert metadata["code_version"] == "v" * 256
    assert package["MetadataProperties"]["CommitId"] == code_version
    assert metadata["metric_loss _train_"] == "0.25"
    assert metadata["metric_precision_at_5"] == "0.5"
    # 7 fixed and metric properties, 41 hyperparameters, then approval_reason; one left for
    # delivery's deployment record.
    assert len(metadata) == 49
    assert [key for key in metadata if key.startswith("hyperparameter_")] == [
        f"hyperparameter_param_{i:02}" for i in range(41)
    ]
    assert all(len(key) <= 128 and len(value) <= 256 for key, value in metadata.items())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_decisive_metric_that_is_not_a_number_is_not_registered(
    registration, train, aws_client, lambda_context, value
):
    train("recommender-1", {"recall_at_k": value})

    with pytest.raises(registration.MetricMissing) as error:
        registration.handler(registration_event("recommender-1"), lambda_context)

    assert (
        str(error.value)
        == f"recall_at_k of training job recommender-1 is {value!r}, not a finite number"
    )
    assert packages(aws_client) == []


@pytest.mark.parametrize(
    ("status", "failure_reason", "message"),
    [
        ("InProgress", None, "training job recommender-1 is InProgress, not Completed"),
        (
            "Failed",
            "AlgorithmError: out of memory",
            "training job recommender-1 is Failed, not Completed: AlgorithmError: out of memory",
        ),
        ("Stopped", None, "training job recommender-1 is Stopped, not Completed"),
    ],
)
def test_an_unfinished_training_job_is_not_registered(
    registration, train, aws_client, lambda_context, status, failure_reason, message
):
    train("recommender-1", {"recall_at_k": 0.12}, status=status, failure_reason=failure_reason)

    with pytest.raises(registration.TrainingNotComplete) as error:
        registration.handler(registration_event("recommender-1"), lambda_context)

    assert str(error.value) == message
    assert packages(aws_client) == []


def test_a_job_without_the_decisive_metric_is_not_registered(
    registration, train, aws_client, lambda_context
):
    train("recommender-1", {"train:loss": 0.5, "ndcg_at_k": 0.3})

    with pytest.raises(registration.MetricMissing) as error:
        registration.handler(registration_event("recommender-1"), lambda_context)

    assert str(error.value) == (
        "recall_at_k is not among the final metrics of training job recommender-1: "
        "ndcg_at_k, train:loss"
    )
    assert packages(aws_client) == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"training_job_name": None}, "training_job_name"),
        ({"training_job_name": ""}, "training_job_name"),
        ({"training_job_name": "recommender_1"}, "training_job_name"),
        ({"training_job_name": "r" * 64}, "training_job_name"),
        ({"model_package_group": None}, "model_package_group"),
        ({"model_package_group": ""}, "model_package_group"),
        (
            {"model_package_group": f"arn:aws:sagemaker:{REGION}:{ACCOUNT_ID}:x"},
            "model_package_group",
        ),
        ({"metric": None}, "metric"),
        ({"metric": ""}, "metric"),
        ({"metric": 7}, "metric"),
        ({"metric": "m" * 256}, "metric"),
        ({"metric_floor": None}, "metric_floor"),
        ({"metric_floor": "0.05"}, "metric_floor"),
        ({"metric_floor": True}, "metric_floor"),
        ({"metric_floor": -0.01}, "metric_floor"),
        ({"metric_floor": 1.5}, "metric_floor"),
        ({"metric_floor": float("nan")}, "metric_floor"),
        ({"code_version": None}, "code_version"),
        ({"code_version": ""}, "code_version"),
        ({"code_version": "3f2c 9e1d"}, "code_version"),
        ({"code_version": "c" * 1025}, "code_version"),
        ({"inference_image": None}, "inference_image"),
        ({"inference_image": ""}, "inference_image"),
        ({"inference_image": f"{IMAGE} latest"}, "inference_image"),
        ({"inference_image": "i" * 256}, "inference_image"),
    ],
)
def test_invalid_input_is_rejected_before_any_call(
    registration, aws_client, lambda_context, monkeypatch, overrides, field
):
    def unexpected(**kwargs):
        raise AssertionError("no training job should be described")

    monkeypatch.setattr(registration.sagemaker, "describe_training_job", unexpected)
    event = {
        key: value
        for key, value in registration_event("recommender-1", **overrides).items()
        if value is not None
    }

    with pytest.raises(registration.InvalidInput) as error:
        registration.handler(event, lambda_context)

    assert str(error.value).startswith(f"{field} must be")
    assert packages(aws_client) == []


@pytest.mark.parametrize("event", [[], "recommender-1", None])
def test_an_input_that_is_not_an_object_is_rejected(registration, lambda_context, event):
    with pytest.raises(registration.InvalidInput, match="the input must be a JSON object"):
        registration.handler(event, lambda_context)
