"""Runs the EMR bootstrap action for real, with stand-ins for the AWS CLI, sudo and curl, and
checks the lock files and jar digests it installs from."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from jobs.layout import FLINK_JARS_DIR, JOBS_ARCHIVE, NODE_CODE_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS = REPO_ROOT / "jobs"
SCRIPT = JOBS / "emr" / "install_job_code.sh"
JAR_CHECKSUMS = JOBS / "emr" / "jar-checksums.txt"
MAVEN = "https://repo1.maven.org/maven2"
JAR_URLS = (
    f"{MAVEN}/org/apache/flink/flink-connector-kafka/3.3.0-1.20/flink-connector-kafka-3.3.0-1.20.jar",
    f"{MAVEN}/org/apache/kafka/kafka-clients/3.4.0/kafka-clients-3.4.0.jar",
    "https://github.com/aws/aws-msk-iam-auth/releases/download/v2.2.0/aws-msk-iam-auth-2.2.0-all.jar",
)
JAR_NAMES = sorted(PurePosixPath(url).name for url in JAR_URLS)
# What the curl and single-file `aws s3 cp` stand-ins write for every jar.
JAR_BYTES = b"jar\n"

# `aws s3 cp --recursive ... SRC DEST` copies the deployed code from $CODE; a single-file copy
# (a jar mirrored into the artifacts bucket) writes JAR_BYTES.
STUBS = {
    "aws": '#!/bin/bash\necho "aws $*" >> "$CALLS"\n'
    'if [ "$3" = --recursive ]; then mkdir -p "${@: -1}"; cp -r "$CODE"/* "${@: -1}/"; '
    'else echo jar > "${@: -1}"; fi\n',
    "sudo": '#!/bin/bash\necho "sudo $*" >> "$CALLS"\n[ "$2" = "-m" ] && [ "$3" = pip ] '
    '&& exit 0\nexec "$@"\n',
    "python3.11": f'#!/bin/bash\nexec "{sys.executable}" "$@"\n',
    "curl": '#!/bin/bash\necho "curl ${@: -1}" >> "$CALLS"\n'
    'while [ "$1" != --output ]; do shift; done; echo jar > "$2"\n',
}


def digest_table(*, algorithm: str = "sha256", content: bytes = JAR_BYTES) -> str:
    """A jar table listing the shipped URLs, each pinned to the digest of `content`."""
    digest = hashlib.new(algorithm, content).hexdigest()
    return "".join(f"{algorithm} {digest} {url}\n" for url in JAR_URLS)


def run_bootstrap(
    tmp_path: Path, *, flink: bool, jar_table: str | None = None
) -> tuple[Path, list[str], subprocess.CompletedProcess[str]]:
    """Runs the script on a copy of the code; `jar_table` replaces jar-checksums.txt."""
    code = tmp_path / "code"
    shutil.copytree(JOBS, code / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "schemas", code / "schemas")
    if jar_table is not None:
        (code / "jobs" / "emr" / "jar-checksums.txt").write_text(jar_table)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        stub = bin_dir / name
        stub.write_text(body)
        stub.chmod(0o755)
    target = tmp_path / "ml-platform"
    calls = tmp_path / "calls.log"
    calls.touch()
    result = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            f"s3://artifacts/code/{'flink' if flink else 'spark'}/",
            str(target),
            "flink" if flink else "spark",
        ],
        env={
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "CALLS": str(calls),
            "CODE": str(code),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    return target, calls.read_text().splitlines(), result


def installed_jars(tmp_path: Path) -> list[str]:
    """The jars left in the node's jar folder (FLINK_JARS_DIR) for the job's --jars."""
    folder = tmp_path / "ml-platform" / PurePosixPath(FLINK_JARS_DIR).name
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize(
    ("flink", "lock", "binary"),
    [
        (False, "requirements-emr.lock", " --only-binary=:all:"),
        (True, "requirements-emr-flink.lock", ""),
    ],
)
def test_installs_locked_requirements_and_the_job_archive(tmp_path, flink, lock, binary):
    target, calls, result = run_bootstrap(tmp_path, flink=flink, jar_table=digest_table())
    assert result.returncode == 0, result.stderr
    assert calls[0].startswith("aws s3 cp --recursive --only-show-errors s3://artifacts/code/")
    assert (
        f"sudo python3.11 -m pip install --quiet --require-hashes --no-deps{binary} "
        f"--requirement {target}/jobs/{lock}"
    ) in calls
    # The step arguments name the archive by its path in jobs/layout.py.
    with zipfile.ZipFile(target / PurePosixPath(JOBS_ARCHIVE).name) as archive:
        names = archive.namelist()
    assert PurePosixPath(JOBS_ARCHIVE).parent == PurePosixPath(NODE_CODE_DIR)
    assert "jobs/streaming/records.py" in names
    assert "jobs/batch/interaction_etl.py" in names
    assert "jobs/layout.py" in names


@pytest.mark.parametrize(
    "arguments",
    [["s3://artifacts/code/spark/"], ["s3://artifacts/code/spark/", "/node", "hive"]],
)
def test_refuses_to_run_without_the_node_folder_and_a_known_kind(arguments):
    result = subprocess.run(
        ["bash", str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "usage: install_job_code.sh" in result.stderr


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_flink_nodes_get_the_jars_whose_digests_match(tmp_path, algorithm):
    _, calls, result = run_bootstrap(
        tmp_path, flink=True, jar_table=digest_table(algorithm=algorithm)
    )
    assert result.returncode == 0, result.stderr
    fetched = sorted(call.rsplit("/", 1)[1] for call in calls if call.startswith("curl "))
    assert fetched == JAR_NAMES
    assert installed_jars(tmp_path) == JAR_NAMES


def test_a_tampered_jar_fails_the_bootstrap_and_nothing_reaches_flink(tmp_path):
    lines = digest_table().splitlines(keepends=True)
    # The last jar downloads as JAR_BYTES but is pinned to other content.
    lines[-1] = digest_table(content=b"the published jar\n").splitlines(keepends=True)[-1]
    target, _, result = run_bootstrap(tmp_path, flink=True, jar_table="".join(lines))
    assert result.returncode != 0
    assert f"{JAR_URLS[-1]} does not match its pinned sha256 digest" in result.stderr
    assert installed_jars(tmp_path) == []
    assert not (target / "flink-lib" / PurePosixPath(JAR_URLS[-1]).name).exists()


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        (f"sha256 UNSET {JAR_URLS[0]}", "no sha256 digest configured for"),
        (f"sha256 {'0' * 63} {JAR_URLS[0]}", "no sha256 digest configured for"),
        (f"sha1 {'0' * 40} {JAR_URLS[0]}", "unsupported digest algorithm 'sha1'"),
        (f"sha256 {'0' * 64} http://repo1.maven.org/x.jar", "is neither https:// nor s3://"),
    ],
)
def test_an_unpinned_entry_is_refused_before_any_download(tmp_path, entry, error):
    table = digest_table() + entry + "\n"
    _, calls, result = run_bootstrap(tmp_path, flink=True, jar_table=table)
    assert result.returncode != 0
    assert error in result.stderr
    assert not any(call.startswith("curl ") for call in calls)
    assert installed_jars(tmp_path) == []


def test_a_jar_mirrored_into_the_artifacts_bucket_is_verified_too(tmp_path):
    digest = hashlib.sha256(JAR_BYTES).hexdigest()
    mirrored = "s3://artifacts/jars/kafka-clients-3.4.0.jar"
    _, calls, result = run_bootstrap(
        tmp_path, flink=True, jar_table=f"# mirrored\n\nsha256 {digest} {mirrored}\n"
    )
    assert result.returncode == 0, result.stderr
    assert any(call.startswith(f"aws s3 cp --only-show-errors {mirrored} ") for call in calls)
    assert installed_jars(tmp_path) == ["kafka-clients-3.4.0.jar"]


def test_the_shipped_jar_table_pins_the_three_jars_or_marks_them_unset():
    entries = [
        line.split()
        for line in JAR_CHECKSUMS.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert [url for _, _, url in entries] == list(JAR_URLS)
    for algorithm, digest, _ in entries:
        assert algorithm == "sha256"
        assert digest == "UNSET" or re.fullmatch(r"[0-9a-f]{64}", digest)
    # Published in the Bazel lock files of projects that depend on kafka-clients 3.4.0.
    assert entries[1][1] == "48f38dede69bf2ed3709e270afb6b72fac869651fc258997727dba350333ac64"


def test_spark_nodes_fetch_no_jars(tmp_path):
    _, calls, result = run_bootstrap(tmp_path, flink=False, jar_table="sha256 UNSET x\n")
    assert result.returncode == 0, result.stderr
    assert not any(call.startswith(("curl ", "aws s3 cp --only-show-errors")) for call in calls)


def test_flink_requirements_pin_pyflink_to_emr_flink():
    lines = (JOBS / "requirements-emr-flink.txt").read_text().splitlines()
    assert "-r requirements-emr.txt" in lines
    assert "apache-flink==1.20.0" in lines


# --- lock files -------------------------------------------------------------------------

PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, str]:
    """Pinned versions by canonical name; raises ValueError on any requirement that is not
    pinned with == or carries no sha256 hash, the two things pip's hash mode needs."""
    joined = re.sub(r"\\\n", " ", text)
    pins: dict[str, str] = {}
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        pin = PIN.fullmatch(requirement)
        if pin is None:
            raise ValueError(f"not pinned with ==: {line}")
        if not options or not all(HASH.fullmatch(option) for option in options):
            raise ValueError(f"not every option is a sha256 hash: {line}")
        pins[canonical(pin["name"])] = pin["version"]
    return pins


def input_pins(path: Path) -> dict[str, str]:
    """The == pins of a requirements file, following its -r includes."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            pins |= input_pins(path.parent / line[3:].strip())
        elif pin := PIN.fullmatch(line):
            pins[canonical(pin["name"])] = pin["version"]
    return pins


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("fastavro==1.13.1\n", "not every option is a sha256 hash"),
        ("fastavro==1.13.1 \\\n    --hash=md5:0123\n", "not every option is a sha256 hash"),
        (f"fastavro>=1.13 --hash=sha256:{'a' * 64}\n", "not pinned with =="),
        (f"-e ./local --hash=sha256:{'a' * 64}\n", "not pinned with =="),
    ],
)
def test_the_lock_parser_rejects_a_line_without_a_sha256_hash_or_pin(line, error):
    with pytest.raises(ValueError, match=error):
        parse_lock(line)


@pytest.mark.parametrize(
    ("lock", "source"),
    [
        ("requirements-emr.lock", "requirements-emr.txt"),
        ("requirements-emr-flink.lock", "requirements-emr-flink.txt"),
    ],
)
def test_each_lock_hashes_every_package_and_keeps_its_inputs_pins(lock, source):
    locked = parse_lock((JOBS / lock).read_text())
    wanted = input_pins(JOBS / source)
    assert {name: locked.get(name) for name in wanted} == wanted
    # Hash mode installs nothing unlisted, so every dependency is in the lock, the
    # Spark-node packages with the versions Flink nodes get.
    if lock == "requirements-emr-flink.lock":
        spark = parse_lock((JOBS / "requirements-emr.lock").read_text())
        assert {name: locked.get(name) for name in spark} == spark


def test_the_local_flink_venv_pins_what_flink_nodes_install():
    locked = parse_lock((JOBS / "requirements-emr-flink.lock").read_text())
    local = input_pins(REPO_ROOT / "tests" / "flink" / "requirements.txt")
    shared = {name: version for name, version in local.items() if name in locked}
    assert shared == {name: locked[name] for name in shared}
    assert set(locked) <= set(local)
