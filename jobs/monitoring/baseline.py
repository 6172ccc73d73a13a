"""The drift baseline of a model version, read from the version's model artifact.

Training writes ``baseline.json`` into the model folder, so it travels inside
``model.tar.gz`` with each version; ``training/recommender/baseline.py`` defines the format
and how the figures are computed. In short (format 1)::

    {"format": 1,
     "features": {"<input>": {"edges": [...], "proportions": [...], "missing_share": s}},
     "top_score": {"edges": [...], "proportions": [...]},
     "sample_size": {"<input>": n, "top_score": n}}

with the edges and proportions of :class:`jobs.monitoring.statistics.Histogram`. Training runs
on SageMaker with only its own folder and the monitor on EMR with only the ``jobs`` package,
so the two share this format rather than code; the training tests parse what training writes
with :func:`parse_baseline`. Keys this reader does not know are ignored, so later formats may
add some without breaking it; a change of meaning takes a new ``format`` number.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from jobs.monitoring.statistics import Histogram, is_finite_number

BASELINE_FILE = "baseline.json"
FORMAT = 1
TOP_SCORE = "top_score"
_S3_SCHEMES = ("s3://", "s3a://")


class BaselineError(Exception):
    """The baseline cannot be read or is not valid; the message names the place and fault."""


@dataclass(frozen=True)
class FeatureBaseline:
    """One input's distribution in training: its non-null values, and its share of nulls."""

    histogram: Histogram
    missing_share: float


@dataclass(frozen=True)
class Baseline:
    """A version's baseline: its inputs by name, its top score, and the sizes behind them."""

    features: Mapping[str, FeatureBaseline]
    top_score: Histogram
    sample_size: Mapping[str, int]


def parse_baseline(document: Any) -> Baseline:
    """Return the baseline of a parsed ``baseline.json``; raise :class:`BaselineError` naming
    the first key that is missing or invalid."""
    if not isinstance(document, dict):
        raise BaselineError("the baseline is not a JSON object")
    version = document.get("format")
    # `type() is int` because True == 1 in Python.
    if type(version) is not int or version != FORMAT:
        raise BaselineError(f"format is {version!r}; this reader knows format {FORMAT}")
    features = _object(document.get("features"), "features")
    if TOP_SCORE in features:
        raise BaselineError(f"features: {TOP_SCORE!r} is the prediction's name, not an input's")
    parsed = {name: _feature(value, f"features.{name}") for name, value in sorted(features.items())}
    sizes = _object(document.get("sample_size"), "sample_size")
    sample_size = {name: _sample_size(sizes.get(name), name) for name in (*parsed, TOP_SCORE)}
    return Baseline(
        features=parsed,
        top_score=_histogram(document.get(TOP_SCORE), TOP_SCORE),
        sample_size=sample_size,
    )


def read_baseline(uri: str, *, s3_client: Any | None = None) -> Baseline:
    """Read the baseline of the model artifact at ``uri``.

    ``uri`` is a ``model.tar.gz`` or a model folder, on S3 (``s3://`` or ``s3a://``, read
    with ``s3_client``) or on the local disk (a path or ``file://``). S3 URIs that end with
    ``/`` and local directories are folders; anything else is an archive, of which only
    ``baseline.json`` is read, streaming, without unpacking the rest. Raises
    :class:`BaselineError` when the artifact or its baseline cannot be read or is invalid.
    """
    text = _read_s3(uri, s3_client) if uri.startswith(_S3_SCHEMES) else _read_local(uri)
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise BaselineError(f"{uri}: {BASELINE_FILE} is not JSON: {_one_line(exc)}") from None
    try:
        return parse_baseline(document)
    except BaselineError as exc:
        raise BaselineError(f"{uri}: {BASELINE_FILE}: {exc}") from None


def s3_client(region: str) -> Any:
    """An S3 client for :func:`read_baseline` in ``region``."""
    import boto3

    return boto3.client("s3", region_name=region)


def _read_local(uri: str) -> bytes:
    path = Path(uri.removeprefix("file://"))
    try:
        if not path.is_dir():
            with path.open("rb") as archive:
                return _from_archive(archive, uri)
        if not (path / BASELINE_FILE).is_file():
            raise BaselineError(f"{uri} holds no {BASELINE_FILE}")
        return (path / BASELINE_FILE).read_bytes()
    except OSError as exc:
        raise BaselineError(f"cannot read {uri}: {_one_line(exc)}") from None


def _read_s3(uri: str, s3_client: Any | None) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    if s3_client is None:
        raise ValueError(f"reading {uri} needs an S3 client")
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    is_folder = key == "" or key.endswith("/")
    if is_folder:
        key = f"{key}{BASELINE_FILE}"
    try:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return body.read() if is_folder else _from_archive(body, uri)
        finally:
            body.close()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            missing = f"holds no {BASELINE_FILE}" if is_folder else "does not exist"
            raise BaselineError(f"{uri} {missing}") from None
        raise BaselineError(f"cannot read {uri}: {_one_line(exc)}") from None
    except BotoCoreError as exc:
        raise BaselineError(f"cannot read {uri}: {_one_line(exc)}") from None


def _from_archive(stream: IO[bytes], uri: str) -> bytes:
    # "r|gz" reads the archive as a stream, front to back, so nothing but the members before
    # baseline.json is decompressed and nothing is written to disk.
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as archive:
            for member in archive:
                if member.isfile() and posixpath.normpath(member.name) == BASELINE_FILE:
                    extracted = archive.extractfile(member)
                    assert extracted is not None  # a regular file always has content
                    return extracted.read()
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        raise BaselineError(f"{uri} is not a readable .tar.gz: {_one_line(exc)}") from None
    raise BaselineError(f"{uri} holds no {BASELINE_FILE}")


def _feature(value: Any, where: str) -> FeatureBaseline:
    document = _object(value, where)
    missing_share = document.get("missing_share")
    if not (is_finite_number(missing_share) and 0 <= missing_share <= 1):
        raise BaselineError(f"{where}.missing_share is not a number between 0 and 1")
    return FeatureBaseline(histogram=_histogram(document, where), missing_share=missing_share)


def _histogram(value: Any, where: str) -> Histogram:
    document = _object(value, where)
    fields = {}
    for name in ("edges", "proportions"):
        numbers = document.get(name)
        if not isinstance(numbers, list) or not all(is_finite_number(item) for item in numbers):
            raise BaselineError(f"{where}.{name} is not a list of numbers")
        fields[name] = tuple(float(item) for item in numbers)
    try:
        return Histogram(**fields)
    except ValueError as exc:
        raise BaselineError(f"{where}: {exc}") from None


def _sample_size(value: Any, name: str) -> int:
    if type(value) is not int or value < 0:
        raise BaselineError(f"sample_size.{name} is not an integer >= 0")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BaselineError(f"{where} is not a JSON object")
    return value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
