"""Registers a trained model in the SageMaker Model Registry: the last state of the training
workflow, run once the SageMaker training job (``.sync``) has finished.

Input (the state's payload)::

    {"training_job_name": "...",
     "model_package_group": "ml-platform-dev-recommender",   # the group's name, not its ARN
     "metric": "recall_at_k",                  # the final metric that decides approval
     "metric_floor": 0.05,                     # a number in [0, 1]
     "code_version": "<git sha or asset hash>",
     "inference_image": "<ECR image URI for serving>"}

It describes the training job and adds a version to the model package group: the job's model
artifacts served by ``inference_image`` (``application/json`` in and out), with
``MetadataProperties`` ``CommitId`` = code_version and ``GeneratedBy`` = the job's ARN, and
these customer metadata properties:

- ``training_job_name``; ``training_date``: the job's end, ``YYYY-MM-DDTHH:MM:SSZ``;
- ``code_version``; ``input_data_uris``: ``channel=s3://...`` per S3 channel, space-separated;
- ``metric_<name>`` for every final metric, the value as Python's ``repr`` of the float;
- ``approval_reason``: the decision below, which outlives a reviewer's later
  ``ApprovalDescription``;
- ``hyperparameter_<name>`` for the job's hyperparameters, while the 50 properties allow
  (one is left for ``deployment``, which delivery records when it rolls the version out).

The API only takes letters, digits, spaces and ``_.:/=+-@`` in those keys and values (no commas
or quotes), up to 128 characters a key and 256 a value: other characters become ``_`` and
longer texts are cut, a list of channels before the first channel that does not fit, with
``+N more`` at its end. The training job keeps the exact values.

No ``ModelMetrics``: that field only points to reports in S3, and the metrics are in the
customer metadata.

Approval: the version is ``Approved`` when the metric is at least ``metric_floor`` and beats,
strictly, the best ``metric_<name>`` among the group's Approved versions (Approved versions
without a finite one, such as those registered by hand, are not compared); otherwise it is
``PendingManualApproval`` for a reviewer. It is created as ``PendingManualApproval`` and then
given its status and the reason (``ApprovalDescription``, which CreateModelPackage does not
take), so an approval is a single Pending -> Approved change, as when a reviewer approves.

Output::

    {"model_package_arn", "model_package_version", "approval_status", "reason",
     "metric": {"name", "value"},
     "created": true | false}       # false: the job was registered before, nothing new

One version per training job: a version in the group whose ``training_job_name`` is this job
is returned as it is (its current status and description) and nothing is created; one left
without a decision, ``PendingManualApproval`` without an ``ApprovalDescription`` by a run that
stopped between the two calls, is given its decision first. The create also carries a client
token derived from the group and the job.

Errors (the Lambda error type is the class name, which Step Functions matches on):

- ``InvalidInput``: the input is malformed; the message names the field. Nothing is called.
- ``TrainingNotComplete``: the job's status is not ``Completed``; the message names it.
- ``MetricMissing``: the decisive metric is not among the job's final metrics, or is NaN or
  infinite.

IAM, with ARNs ``arn:aws:sagemaker:<region>:<account>:...``:

- ``sagemaker:DescribeTrainingJob`` on ``training-job/<job>``;
- ``sagemaker:ListModelPackages`` on ``*`` (SageMaker's List actions take no resource-level
  permissions);
- ``sagemaker:CreateModelPackage`` on ``model-package-group/<group>`` and
  ``model-package/<group>/*``;
- ``sagemaker:DescribeModelPackage`` and ``sagemaker:UpdateModelPackage`` on
  ``model-package/<group>/*``.

SageMaker reads the model artifacts and pulls the image only when the version is deployed,
with the serving role.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

import boto3
from aws_lambda_powertools import Logger

logger = Logger(service="model-registration")
sagemaker = boto3.client("sagemaker")

APPROVED = "Approved"
PENDING = "PendingManualApproval"
CONTENT_TYPE = "application/json"
# Training job and model package group names share this pattern in the SageMaker API.
RESOURCE_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
MAX_METRIC_NAME_LENGTH = 255
MAX_CODE_VERSION_LENGTH = 1024  # MetadataProperties.CommitId
MAX_IMAGE_LENGTH = 255
MAX_DESCRIPTION_LENGTH = 1024
MAX_METADATA_PROPERTIES = 50
# Added after registration: approval_reason here, and delivery's record of the rollout.
RESERVED_METADATA_PROPERTIES = ("approval_reason", "deployment")
MAX_METADATA_KEY_LENGTH = 128
MAX_METADATA_VALUE_LENGTH = 256
METADATA_PUNCTUATION = frozenset("_.:/=+-@")
# A version of this job was created after the job ended; the margin absorbs clock skew.
LOOKUP_MARGIN = dt.timedelta(hours=1)


class InvalidInput(ValueError):  # noqa: N818 - the error name callers match on
    """The input is malformed; the message names the field."""


class TrainingNotComplete(Exception):  # noqa: N818 - the error name callers match on
    """The training job has not completed; the message names its status."""


class MetricMissing(Exception):  # noqa: N818 - the error name callers match on
    """The decisive metric is not among the training job's final metrics."""


def _required_string(event: dict[str, Any], field: str) -> str:
    value = event.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field} must be a non-empty string, got {value!r}")
    return value


def _resource_name(event: dict[str, Any], field: str) -> str:
    value = _required_string(event, field)
    if not RESOURCE_NAME.fullmatch(value):
        raise InvalidInput(
            f"{field} must be 1 to 63 letters, digits and hyphens, starting and ending with a "
            f"letter or digit, got {value!r}"
        )
    return value


def _token(event: dict[str, Any], field: str, max_length: int) -> str:
    """A non-empty printable string without whitespace."""
    value = _required_string(event, field)
    if len(value) > max_length or not value.isprintable() or any(c.isspace() for c in value):
        raise InvalidInput(
            f"{field} must be at most {max_length} printable characters without whitespace, "
            f"got {value!r}"
        )
    return value


def _metric_name(event: dict[str, Any]) -> str:
    value = _required_string(event, "metric")
    if len(value) > MAX_METRIC_NAME_LENGTH or not value.isprintable():
        raise InvalidInput(
            f"metric must be at most {MAX_METRIC_NAME_LENGTH} printable characters, got {value!r}"
        )
    return value


def _floor(event: dict[str, Any]) -> float:
    value = event.get("metric_floor")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidInput(f"metric_floor must be a number between 0 and 1, got {value!r}")
    return float(value)


def _metadata_text(text: str, limit: int) -> str:
    """`text` in the character set of customer metadata keys and values, cut to `limit`."""
    allowed = "".join(
        c if c in METADATA_PUNCTUATION or unicodedata.category(c)[0] in "LNZ" else "_" for c in text
    )
    return allowed[:limit]


def _metric_key(name: str) -> str:
    return _metadata_text(f"metric_{name}", MAX_METADATA_KEY_LENGTH)


def _join_within(parts: list[str], limit: int) -> str:
    """`parts` joined by spaces; when too long, the leading parts that fit and "+N more"."""
    text = " ".join(parts)
    kept = len(parts)
    while len(text) > limit:
        kept -= 1
        text = " ".join([*parts[:kept], f"+{len(parts) - kept} more"])
    return text


def _input_data_uris(job: dict[str, Any]) -> str:
    parts = []
    for channel in job.get("InputDataConfig", []):
        uri = channel.get("DataSource", {}).get("S3DataSource", {}).get("S3Uri")
        if uri:
            parts.append(f"{channel['ChannelName']}={uri}")
    return _join_within(parts, MAX_METADATA_VALUE_LENGTH)


def _customer_metadata(
    job: dict[str, Any], metrics: dict[str, float], decisive: str, code_version: str
) -> dict[str, str]:
    """The version's customer metadata, leaving room for the properties added later."""
    ended_at = job["TrainingEndTime"].astimezone(dt.UTC)
    entries = [
        ("training_job_name", job["TrainingJobName"]),
        ("training_date", ended_at.strftime("%Y-%m-%dT%H:%M:%SZ")),
        ("code_version", code_version),
        ("input_data_uris", _input_data_uris(job)),
        # The decisive metric first, so that no other name can take its key.
        *((f"metric_{name}", repr(metrics[name])) for name in [decisive, *sorted(metrics)]),
        *(
            (f"hyperparameter_{name}", value)
            for name, value in sorted(job.get("HyperParameters", {}).items())
        ),
    ]
    metadata: dict[str, str] = {}
    dropped = []
    for raw_key, raw_value in entries:
        key = _metadata_text(raw_key, MAX_METADATA_KEY_LENGTH)
        value = _metadata_text(raw_value, MAX_METADATA_VALUE_LENGTH)
        if key in metadata or not value:
            continue
        if len(metadata) == MAX_METADATA_PROPERTIES - len(RESERVED_METADATA_PROPERTIES):
            dropped.append(key)
            continue
        metadata[key] = value
    if dropped:
        logger.warning("Customer metadata full, properties left out", extra={"dropped": dropped})
    return metadata


def _finite(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _packages(group: str, **filters: Any) -> Iterator[dict[str, Any]]:
    """The full description of each version in the group that passes the list filters."""
    pages = sagemaker.get_paginator("list_model_packages").paginate(
        ModelPackageGroupName=group, **filters
    )
    for page in pages:
        for summary in page["ModelPackageSummaryList"]:
            yield sagemaker.describe_model_package(ModelPackageName=summary["ModelPackageArn"])


def _registered(group: str, job: dict[str, Any]) -> dict[str, Any] | None:
    after = job["TrainingEndTime"] - LOOKUP_MARGIN
    for package in _packages(group, CreationTimeAfter=after):
        metadata = package.get("CustomerMetadataProperties", {})
        if metadata.get("training_job_name") == job["TrainingJobName"]:
            return package
    return None


def _best_approved(group: str, metric: str) -> tuple[float, int] | None:
    """The best (value, version) of the metric among the group's Approved versions."""
    key = _metric_key(metric)
    best = None
    for package in _packages(group, ModelApprovalStatus=APPROVED):
        value = _finite(package.get("CustomerMetadataProperties", {}).get(key))
        if value is None:
            logger.warning(
                "Approved version without a finite metric, not compared",
                extra={"model_package_arn": package["ModelPackageArn"], "key": key},
            )
            continue
        candidate = (value, package["ModelPackageVersion"])
        if best is None or candidate > best:
            best = candidate
    return best


def _decide(
    metric: str, value: float, floor: float, best: tuple[float, int] | None
) -> tuple[str, str]:
    """The approval status for the new version and the reason for it."""
    if value < floor:
        return PENDING, f"{metric} {value!r} is below the floor {floor!r}"
    if best is None:
        reason = f"{metric} {value!r} meets the floor {floor!r} and no approved version has one"
        return APPROVED, reason
    best_value, version = best
    if value > best_value:
        return APPROVED, f"{metric} {value!r} beats approved version {version} at {best_value!r}"
    return PENDING, f"{metric} {value!r} does not beat approved version {version} at {best_value!r}"


def _record_decision(
    arn: str, status: str, reason: str, metadata: dict[str, str]
) -> dict[str, Any]:
    # The whole map is restated with approval_reason added, so the call leaves the same
    # properties whether the service merges the map into the stored one or replaces it.
    sagemaker.update_model_package(
        ModelPackageArn=arn,
        ModelApprovalStatus=status,
        ApprovalDescription=reason,
        CustomerMetadataProperties={
            **metadata,
            "approval_reason": _metadata_text(reason, MAX_METADATA_VALUE_LENGTH),
        },
    )
    return sagemaker.describe_model_package(ModelPackageName=arn)


def _result(package: dict[str, Any], metric: str, value: float, created: bool) -> dict[str, Any]:
    metadata = package.get("CustomerMetadataProperties", {})
    return {
        "model_package_arn": package["ModelPackageArn"],
        "model_package_version": package["ModelPackageVersion"],
        "approval_status": package["ModelApprovalStatus"],
        "reason": package.get("ApprovalDescription") or metadata.get("approval_reason", ""),
        "metric": {"name": metric, "value": value},
        "created": created,
    }


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise InvalidInput(f"the input must be a JSON object, got {type(event).__name__}")
    job_name = _resource_name(event, "training_job_name")
    group = _resource_name(event, "model_package_group")
    metric = _metric_name(event)
    floor = _floor(event)
    code_version = _token(event, "code_version", MAX_CODE_VERSION_LENGTH)
    image = _token(event, "inference_image", MAX_IMAGE_LENGTH)
    logger.append_keys(training_job_name=job_name, model_package_group=group)

    job = sagemaker.describe_training_job(TrainingJobName=job_name)
    status = job["TrainingJobStatus"]
    if status != "Completed":
        detail = f": {job['FailureReason']}" if job.get("FailureReason") else ""
        raise TrainingNotComplete(f"training job {job_name} is {status}, not Completed{detail}")
    metrics = {item["MetricName"]: item["Value"] for item in job.get("FinalMetricDataList", [])}
    if metric not in metrics:
        raise MetricMissing(
            f"{metric} is not among the final metrics of training job {job_name}: "
            f"{', '.join(sorted(metrics)) or 'none'}"
        )
    value = metrics[metric]
    if not math.isfinite(value):
        # Nothing can be compared with it, and the state output (JSON) could not carry it.
        raise MetricMissing(
            f"{metric} of training job {job_name} is {value!r}, not a finite number"
        )
    metadata = _customer_metadata(job, metrics, metric, code_version)

    package = _registered(group, job)
    if package is not None and (
        package["ModelApprovalStatus"] != PENDING or package.get("ApprovalDescription")
    ):
        result = _result(package, metric, value, created=False)
        logger.info("Training job already registered", extra={"registration": result})
        return result

    approval_status, reason = _decide(metric, value, floor, _best_approved(group, metric))
    if package is None:
        arn = sagemaker.create_model_package(
            ModelPackageGroupName=group,
            ModelPackageDescription=(
                f"{metric} {value!r} from training job {job_name} at code version {code_version}"
            )[:MAX_DESCRIPTION_LENGTH],
            InferenceSpecification={
                "Containers": [
                    {"Image": image, "ModelDataUrl": job["ModelArtifacts"]["S3ModelArtifacts"]}
                ],
                "SupportedContentTypes": [CONTENT_TYPE],
                "SupportedResponseMIMETypes": [CONTENT_TYPE],
            },
            ModelApprovalStatus=PENDING,
            MetadataProperties={"CommitId": code_version, "GeneratedBy": job["TrainingJobArn"]},
            CustomerMetadataProperties=metadata,
            ClientToken=hashlib.sha256(f"{group}\n{job_name}".encode()).hexdigest()[:36],
        )["ModelPackageArn"]
        logger.info("Model package created", extra={"model_package_arn": arn})
    else:
        arn = package["ModelPackageArn"]
        logger.warning(
            "Completing a registration left without a decision", extra={"model_package_arn": arn}
        )
    registered = _record_decision(arn, approval_status, reason, metadata)
    result = _result(registered, metric, value, created=package is None)
    logger.info("Model registered", extra={"registration": result})
    return result
