"""Runs the EMR bootstrap action for real, with stand-ins for the AWS CLI, sudo and curl."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from jobs.layout import JOBS_ARCHIVE, NODE_CODE_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "jobs" / "emr" / "install_job_code.sh"

# `aws s3 cp --recursive ... SRC DEST` copies the deployed code, which here is the repo itself.
STUBS = {
    "aws": f'#!/bin/bash\necho "aws $*" >> "$CALLS"\nmkdir -p "${{@: -1}}"\n'
    f'cp -r "{REPO_ROOT}/jobs" "{REPO_ROOT}/schemas" "${{@: -1}}/"\n',
    "sudo": '#!/bin/bash\necho "sudo $*" >> "$CALLS"\n[ "$2" = "-m" ] && [ "$3" = pip ] '
    '&& exit 0\nexec "$@"\n',
    "python3.11": f'#!/bin/bash\nexec "{sys.executable}" "$@"\n',
    "curl": '#!/bin/bash\necho "curl ${@: -1}" >> "$CALLS"\n'
    'while [ "$1" != --output ]; do shift; done; echo jar > "$2"\n',
}


def run_bootstrap(tmp_path: Path, *, flink: bool) -> tuple[Path, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        stub = bin_dir / name
        stub.write_text(body)
        stub.chmod(0o755)
    flink_home = tmp_path / "flink"
    if flink:
        (flink_home / "lib").mkdir(parents=True)
    target = tmp_path / "ml-platform"
    calls = tmp_path / "calls.log"
    subprocess.run(
        ["bash", str(SCRIPT), "s3://artifacts/code/flink/", str(target)],
        env={
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "CALLS": str(calls),
            "FLINK_HOME_DIR": str(flink_home),
        },
        check=True,
        timeout=60,
    )
    return target, calls.read_text().splitlines()


@pytest.mark.parametrize("flink", [False, True])
def test_installs_code_requirements_and_the_job_archive(tmp_path, flink):
    target, calls = run_bootstrap(tmp_path, flink=flink)
    assert calls[0].startswith("aws s3 cp --recursive --only-show-errors s3://artifacts/code/")
    requirements = "requirements-emr-flink.txt" if flink else "requirements-emr.txt"
    assert f"sudo python3.11 -m pip install --quiet --requirement {target}/jobs/{requirements}" in (
        calls
    )
    # The step arguments name the archive by its path in jobs/layout.py.
    with zipfile.ZipFile(target / PurePosixPath(JOBS_ARCHIVE).name) as archive:
        names = archive.namelist()
    assert PurePosixPath(JOBS_ARCHIVE).parent == PurePosixPath(NODE_CODE_DIR)
    assert "jobs/streaming/records.py" in names
    assert "jobs/batch/interaction_etl.py" in names
    assert "jobs/layout.py" in names


def test_refuses_to_run_without_the_node_folder():
    result = subprocess.run(
        ["bash", str(SCRIPT), "s3://artifacts/code/spark/"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "usage: install_job_code.sh" in result.stderr


def test_flink_nodes_get_the_unshaded_connector_its_client_and_msk_iam(tmp_path):
    _, calls = run_bootstrap(tmp_path, flink=True)
    fetched = sorted(call.rsplit("/", 1)[1] for call in calls if call.startswith("curl "))
    assert fetched == [
        "aws-msk-iam-auth-2.2.0-all.jar",
        "flink-connector-kafka-3.3.0-1.20.jar",
        "kafka-clients-3.4.0.jar",
    ]
    installed = sorted(p.name for p in (tmp_path / "flink" / "lib").iterdir())
    assert installed == fetched


def test_spark_nodes_fetch_no_jars(tmp_path):
    _, calls = run_bootstrap(tmp_path, flink=False)
    assert not any(call.startswith("curl ") for call in calls)


def test_flink_requirements_pin_pyflink_to_emr_flink():
    lines = (REPO_ROOT / "jobs" / "requirements-emr-flink.txt").read_text().splitlines()
    assert "-r requirements-emr.txt" in lines
    assert "apache-flink==1.20.0" in lines
