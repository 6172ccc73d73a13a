"""Loading a model version from ``MODEL_ARTIFACT_URI`` into a :class:`Ranker`.

The URI is either a local model folder or ``s3://bucket/key.tar.gz``, the ``model.tar.gz``
SageMaker uploads after training: it is downloaded into a temporary folder and unpacked with
tarfile's ``data`` filter, which refuses absolute paths, ``..``, links that leave the folder
and device files. The folder's files are read with the training code's own
:mod:`training.recommender.artifact`, and the temporary folder is deleted once the vectors
are in memory.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from serving.recommender_service.logs import one_line
from serving.recommender_service.ranker import Ranker
from serving.recommender_service.settings import split_s3_uri
from training.recommender import artifact


class ModelLoadError(Exception):
    """The model version cannot be served; the message says why in one line."""


def load_ranker(uri: str, *, s3_client: Any | None = None) -> Ranker:
    """Return a :class:`Ranker` for the model at ``uri``; raise :class:`ModelLoadError`.

    ``s3_client`` is created on first need for an ``s3://`` URI.
    """
    location = split_s3_uri(uri)
    try:
        if location is None:
            return Ranker(artifact.load(Path(uri)))
        with tempfile.TemporaryDirectory(prefix="model-") as workdir:
            model_dir = _download_and_unpack(
                s3_client or boto3.client("s3"), *location, Path(workdir)
            )
            return Ranker(artifact.load(model_dir))
    except artifact.ArtifactError as exc:
        raise ModelLoadError(str(exc)) from None


def _download_and_unpack(s3_client: Any, bucket: str, key: str, workdir: Path) -> Path:
    tarball = workdir / "model.tar.gz"
    try:
        s3_client.download_file(bucket, key, str(tarball))
    except (BotoCoreError, ClientError) as exc:
        raise ModelLoadError(f"cannot download s3://{bucket}/{key}: {one_line(exc)}") from None
    model_dir = workdir / "model"
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            archive.extractall(model_dir, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ModelLoadError(f"cannot unpack s3://{bucket}/{key}: {one_line(exc)}") from None
    return model_dir
