"""The ABlaze image's recipe, checked by reading it: no Docker engine is needed.

The Dockerfile must build from a pinned slim Python 3.11, install only pinned requirements,
run as a non-root user, expose 8080 and check its own health. The requirements must cover
every package the service imports (and their dependencies) at the versions the tests run
with, which are the serving image's where the two share a package.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

from ablaze_helpers import REPO_ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ABLAZE = REPO_ROOT / "ablaze"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ABLAZE / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def arguments(keyword: str) -> list[str]:
    return [args for key, args in instructions() if key == keyword]


def pinned(path: Path) -> dict[str, Version]:
    requirements = [
        Requirement(line)
        for line in path.read_text().splitlines()
        if line and not line.startswith(("#", "-r"))
    ]
    versions = {}
    for requirement in requirements:
        [specifier] = requirement.specifier
        assert specifier.operator == "==", requirement
        assert not requirement.marker, requirement
        versions[canonicalize_name(requirement.name)] = Version(specifier.version)
    return versions


def test_base_image_is_a_pinned_slim_python_311() -> None:
    [base] = arguments("FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", base), base
    serving_base = (REPO_ROOT / "serving" / "Dockerfile").read_text()
    assert f"FROM {base}\n" in serving_base


def test_the_image_runs_as_a_non_root_user() -> None:
    keywords = [key for key, _ in instructions()]
    [user] = arguments("USER")
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) >= 1000
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_the_image_exposes_8080_checks_health_and_starts_the_service() -> None:
    assert arguments("EXPOSE") == ["8080"]
    [healthcheck] = arguments("HEALTHCHECK")
    assert re.search(r"--interval=\d+s", healthcheck)
    assert healthcheck.endswith('CMD ["python", "-m", "ablaze.healthcheck"]')
    assert arguments("CMD") == ['["python", "-m", "ablaze"]']
    assert (ABLAZE / "healthcheck.py").is_file()
    assert (ABLAZE / "__main__.py").is_file()


def test_the_image_installs_the_pinned_requirements_and_copies_the_service() -> None:
    [install] = [args for args in arguments("RUN") if "pip install" in args]
    assert install.endswith("-r ablaze/requirements.txt")
    assert arguments("COPY") == [
        "ablaze/requirements.txt ablaze/requirements.txt",
        "ablaze/ ablaze/",
    ]
    ignored = (ABLAZE / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :][:2] == ["*", "!ablaze/"]


def test_the_pins_are_the_versions_the_tests_run_with() -> None:
    ours = pinned(ABLAZE / "requirements.txt")
    for name, version in ours.items():
        assert Version(importlib.metadata.version(name)) == version, name
    serving = pinned(REPO_ROOT / "serving" / "requirements.txt")
    for name in ours.keys() & serving.keys():
        assert ours[name] == serving[name], name


def test_the_requirements_cover_every_import_and_its_dependencies() -> None:
    ours = pinned(ABLAZE / "requirements.txt")
    distributions = importlib.metadata.packages_distributions()
    for source in ABLAZE.glob("*.py"):
        for module in imported_modules(source):
            if module in sys.stdlib_module_names or module == "ablaze":
                continue
            names = {canonicalize_name(name) for name in distributions[module]}
            assert names & ours.keys(), f"{source.name} imports {module}"
    for name in ours:
        for dependency in importlib.metadata.requires(name) or []:
            requirement = Requirement(dependency)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                assert canonicalize_name(requirement.name) in ours, f"{name} needs {dependency}"


def test_the_allocation_module_needs_only_the_standard_library() -> None:
    # Serving imports it on every request path; it must not drag dependencies in.
    modules = imported_modules(ABLAZE / "allocation.py")
    assert all(module in sys.stdlib_module_names for module in modules), modules


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules
