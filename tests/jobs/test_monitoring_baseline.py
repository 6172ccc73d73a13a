"""Tests for jobs.monitoring.baseline: the format check, and reading a baseline from a model
folder or model.tar.gz on the local disk or on S3 (moto)."""

from __future__ import annotations

import copy
import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from jobs.monitoring.baseline import (
    Baseline,
    BaselineError,
    FeatureBaseline,
    parse_baseline,
    read_baseline,
)
from jobs.monitoring.statistics import Histogram

REGION = "eu-west-1"
BUCKET = "ml-platform-artifacts"
DOCUMENT = {
    "format": 1,
    "features": {
        "history_length": {"edges": [3.0, 8.0], "proportions": [0.2, 0.5, 0.3], "missing_share": 0},
        "history_popularity": {"edges": [], "proportions": [1.0], "missing_share": 0.25},
    },
    "top_score": {"edges": [0.5], "proportions": [0.4, 0.6]},
    "sample_size": {"history_length": 400, "history_popularity": 400, "top_score": 380},
    "written_by": "a later format's extra key, ignored",
}
BASELINE = Baseline(
    features={
        "history_length": FeatureBaseline(
            histogram=Histogram(edges=(3.0, 8.0), proportions=(0.2, 0.5, 0.3)), missing_share=0
        ),
        "history_popularity": FeatureBaseline(
            histogram=Histogram(edges=(), proportions=(1.0,)), missing_share=0.25
        ),
    },
    top_score=Histogram(edges=(0.5,), proportions=(0.4, 0.6)),
    sample_size={"history_length": 400, "history_popularity": 400, "top_score": 380},
)


def changed(path: str, value: Any) -> dict[str, Any]:
    """DOCUMENT with the dotted ``path`` set to ``value`` (or removed for ``...``)."""
    document = copy.deepcopy(DOCUMENT)
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return document


def test_parses_a_valid_baseline():
    assert parse_baseline(DOCUMENT) == BASELINE


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "the baseline is not a JSON object"),
        (changed("format", 2), "format is 2; this reader knows format 1"),
        (changed("format", True), "format is True; this reader knows format 1"),
        (changed("format", ...), "format is None; this reader knows format 1"),
        (changed("features", []), "features is not a JSON object"),
        (
            changed("features.top_score", DOCUMENT["top_score"]),
            "features: 'top_score' is the prediction's name, not an input's",
        ),
        (
            changed("features.history_length.edges", [8.0, 3.0]),
            "features.history_length: edges must be strictly increasing",
        ),
        (
            changed("features.history_length.proportions", [0.5, 0.5]),
            "features.history_length: 2 proportions for 2 edges; there must be one more",
        ),
        (
            changed("features.history_length.edges", ["3"]),
            "features.history_length.edges is not a list of numbers",
        ),
        (
            changed("features.history_popularity.missing_share", 1.5),
            "features.history_popularity.missing_share is not a number between 0 and 1",
        ),
        (
            changed("features.history_popularity.missing_share", ...),
            "features.history_popularity.missing_share is not a number between 0 and 1",
        ),
        (changed("top_score", ...), "top_score is not a JSON object"),
        (
            changed("top_score.proportions", [0.4, 0.4]),
            "top_score: proportions add up to 0.8, not 1",
        ),
        (changed("sample_size", 400), "sample_size is not a JSON object"),
        (
            changed("sample_size.top_score", ...),
            "sample_size.top_score is not an integer >= 0",
        ),
        (
            changed("sample_size.history_length", 4.5),
            "sample_size.history_length is not an integer >= 0",
        ),
    ],
)
def test_refuses_an_invalid_baseline_naming_the_key(document, message):
    with pytest.raises(BaselineError, match=f"^{re.escape(message)}"):
        parse_baseline(document)


# --- reading from a model artifact ---------------------------------------------------------


def archive_bytes(members: dict[str, bytes]) -> bytes:
    """A model.tar.gz holding ``members`` in the given order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


BASELINE_BYTES = json.dumps(DOCUMENT).encode()
# As SageMaker packs a model folder: the weights, then the other files, under "./".
MODEL_ARCHIVE = archive_bytes(
    {"./model.pt": b"\0" * 100_000, "./baseline.json": BASELINE_BYTES, "./metrics.json": b"{}"}
)


def test_reads_the_baseline_of_a_local_model_folder(tmp_path: Path):
    (tmp_path / "baseline.json").write_bytes(BASELINE_BYTES)

    assert read_baseline(str(tmp_path)) == BASELINE
    assert read_baseline(f"file://{tmp_path}") == BASELINE


def test_reads_only_the_baseline_out_of_a_local_model_archive(tmp_path: Path):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(MODEL_ARCHIVE)

    assert read_baseline(str(archive)) == BASELINE
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.tar.gz"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (archive_bytes({"model.pt": b"weights"}), "{uri} holds no baseline.json"),
        (
            archive_bytes({"old/baseline.json": BASELINE_BYTES}),
            "{uri} holds no baseline.json",
        ),
        (b"not gzip", "{uri} is not a readable .tar.gz: "),
        (MODEL_ARCHIVE[:200], "{uri} is not a readable .tar.gz: "),
        (
            archive_bytes({"baseline.json": b"{"}),
            "{uri}: baseline.json is not JSON: Expecting property name",
        ),
        (
            archive_bytes({"baseline.json": json.dumps(changed("format", 0)).encode()}),
            "{uri}: baseline.json: format is 0; this reader knows format 1",
        ),
    ],
)
def test_a_local_archive_without_a_valid_baseline_is_an_error(
    tmp_path: Path, content: bytes, message: str
):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(content)
    uri = str(archive)

    with pytest.raises(BaselineError, match=f"^{re.escape(message.format(uri=uri))}"):
        read_baseline(uri)


def test_a_folder_without_a_baseline_is_an_error(tmp_path: Path):
    (tmp_path / "metrics.json").write_text("{}")

    with pytest.raises(BaselineError, match=f"^{re.escape(str(tmp_path))} holds no baseline.json$"):
        read_baseline(str(tmp_path))


def test_a_missing_artifact_is_an_error(tmp_path: Path):
    missing = tmp_path / "model.tar.gz"

    with pytest.raises(BaselineError, match=r"^cannot read .*model\.tar\.gz: .*No such file"):
        read_baseline(str(missing))


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A mocked bucket with a model archive and a model folder, and a client for it."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        client.put_object(Bucket=BUCKET, Key="models/v1/model.tar.gz", Body=MODEL_ARCHIVE)
        client.put_object(Bucket=BUCKET, Key="models/v2/baseline.json", Body=BASELINE_BYTES)
        client.put_object(Bucket=BUCKET, Key="models/v3/model.tar.gz", Body=b"not gzip")
        yield client


@pytest.mark.parametrize(
    "uri",
    [
        f"s3://{BUCKET}/models/v1/model.tar.gz",
        f"s3a://{BUCKET}/models/v1/model.tar.gz",
        f"s3://{BUCKET}/models/v2/",
    ],
)
def test_reads_the_baseline_of_an_artifact_on_s3(s3: Any, uri: str):
    assert read_baseline(uri, s3_client=s3) == BASELINE


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            f"s3://{BUCKET}/models/v9/model.tar.gz",
            f"s3://{BUCKET}/models/v9/model.tar.gz does not exist",
        ),
        (f"s3://{BUCKET}/models/v1/", f"s3://{BUCKET}/models/v1/ holds no baseline.json"),
        (
            f"s3://{BUCKET}/models/v3/model.tar.gz",
            f"s3://{BUCKET}/models/v3/model.tar.gz is not a readable .tar.gz: ",
        ),
        ("s3://no-such-bucket/model.tar.gz", "cannot read s3://no-such-bucket/model.tar.gz: "),
    ],
)
def test_an_artifact_on_s3_without_a_baseline_is_an_error(s3: Any, uri: str, message: str):
    with pytest.raises(BaselineError, match=f"^{re.escape(message)}"):
        read_baseline(uri, s3_client=s3)
