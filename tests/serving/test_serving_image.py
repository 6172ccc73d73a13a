"""The serving image's recipe, checked by reading it: no Docker engine is needed.

The Dockerfile must build from a pinned slim Python 3.11, install only pinned requirements,
copy the training code the app loads models with and ABlaze (whose allocation assigns members
to cells), run as a non-root user, expose 8080 and check its own health. The requirements
must cover every package the app and ABlaze import, at the versions the tests run with.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVING = REPO_ROOT / "serving"
ABLAZE = REPO_ROOT / "ablaze"
# The files of the training code that the app imports (artifact.py and what it imports, and
# the monitored inputs of the prediction log).
TRAINING_MODULES = ("artifact.py", "model.py", "inputs.py")


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (SERVING / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def arguments(keyword: str) -> list[str]:
    return [args for key, args in instructions() if key == keyword]


def pinned_version(requirement: Requirement) -> Version:
    [specifier] = requirement.specifier
    return Version(specifier.version)


def requirements(path: Path) -> dict[str, Requirement]:
    lines = path.read_text().splitlines()
    parsed = [Requirement(line) for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(r.name): r for r in parsed}


def serving_requirements() -> dict[str, Requirement]:
    return requirements(SERVING / "requirements.txt")


def test_base_image_is_a_pinned_slim_python_311() -> None:
    [base] = arguments("FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", base), base


def test_the_image_runs_as_a_non_root_user() -> None:
    keywords = [key for key, _ in instructions()]
    [user] = arguments("USER")
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) >= 1000
    # Nothing after USER runs as root again.
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_the_image_exposes_8080_checks_health_and_starts_the_app() -> None:
    assert arguments("EXPOSE") == ["8080"]
    [healthcheck] = arguments("HEALTHCHECK")
    assert re.search(r"--interval=\d+s", healthcheck)
    assert re.search(r"--timeout=\d+s", healthcheck)
    assert healthcheck.endswith('CMD ["python", "-m", "serving.recommender_service.healthcheck"]')
    assert arguments("CMD") == ['["python", "-m", "serving.recommender_service"]']
    assert (SERVING / "recommender_service" / "healthcheck.py").is_file()
    assert (SERVING / "recommender_service" / "__main__.py").is_file()


def test_the_image_installs_the_pinned_requirements_and_copies_the_code() -> None:
    [install] = [args for args in arguments("RUN") if "pip install" in args]
    assert install.endswith("-r serving/requirements.txt")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in install
    copies = arguments("COPY")
    assert "serving/requirements.txt serving/requirements.txt" in copies
    assert "training/recommender/ training/recommender/" in copies
    assert "training/__init__.py training/__init__.py" in copies
    assert "ablaze/ ablaze/" in copies
    assert "serving/ serving/" in copies
    # The build context is the repository root; the ignore file keeps out all but these.
    ignored = (SERVING / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :][:5] == [
        "*",
        "!serving/",
        "!training/__init__.py",
        "!training/recommender/",
        "!ablaze/",
    ]


def test_ablazes_requirements_are_a_subset_of_servings() -> None:
    # The image installs serving's requirements only, and runs ABlaze's code with them.
    serving = serving_requirements()
    for name, requirement in requirements(ABLAZE / "requirements.txt").items():
        assert name in serving, f"serving/requirements.txt lacks {requirement}"
        assert serving[name].specifier == requirement.specifier, name


def test_every_requirement_is_pinned_exactly() -> None:
    for name, requirement in serving_requirements().items():
        [specifier] = requirement.specifier
        assert specifier.operator == "==", name
        assert not requirement.marker, name


def test_the_pins_are_the_versions_the_tests_run_with() -> None:
    pinned = {name: pinned_version(r) for name, r in serving_requirements().items()}
    for name, version in pinned.items():
        assert Version(importlib.metadata.version(name)) == version, name
    development = {
        canonicalize_name(requirement.name): pinned_version(requirement)
        for line in (REPO_ROOT / "requirements-dev.txt").read_text().splitlines()
        if line and not line.startswith(("#", "-r"))
        for requirement in [Requirement(line)]
    }
    # The image's torch is the CPU build of the same release (2.13.0+cpu against 2.13.0).
    for name in pinned.keys() & development.keys():
        assert pinned[name].public == development[name].public, name


def test_the_requirements_cover_every_import_and_its_dependencies() -> None:
    pinned = serving_requirements()
    sources = [*(SERVING / "recommender_service").glob("*.py"), *ABLAZE.glob("*.py")]
    sources += [REPO_ROOT / "training" / "recommender" / name for name in TRAINING_MODULES]
    distributions = importlib.metadata.packages_distributions()
    for source in sources:
        for module in imported_modules(source):
            first_party = module in ("serving", "training", "ablaze")
            # artifact.py imports its sibling model.py by plain name in script mode.
            sibling = (source.parent / f"{module}.py").is_file()
            if module in sys.stdlib_module_names or first_party or sibling:
                continue
            names = {canonicalize_name(name) for name in distributions[module]}
            assert names & pinned.keys(), f"{source.name} imports {module}"
    for name in pinned:
        for dependency in importlib.metadata.requires(name) or []:
            requirement = Requirement(dependency)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                assert canonicalize_name(requirement.name) in pinned, f"{name} needs {dependency}"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules
