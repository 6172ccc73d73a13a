"""Platform functions: each one's asset holds only its handler folder, and the functions of a
stack share one pure-Python Powertools layer, bundled once for the whole app."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_lambda as lambda_
from aws_cdk.cx_api import CloudAssembly

from cdk_constructs import function
from cdk_constructs.function import (
    ARCHITECTURE,
    LAMBDA_ROOT,
    RUNTIME,
    PlatformFunction,
    copy_pure_python_package,
    handler_code,
    installed_origin,
)
from tests.conftest import CDK_CONTEXT

LAYER = "AWS::Lambda::LayerVersion"
FUNCTION = "AWS::Lambda::Function"
ENV = {"account": "123456789012", "region": "eu-west-1"}
# A handler alone and one with a module beside it.
HANDLERS = ("quality_gate", "canary_analysis")


@dataclass(frozen=True)
class Synthesized:
    assembly: CloudAssembly
    layer_bundlings: int

    def resources(self, stack_name: str, cfn_type: str) -> dict[str, dict]:
        template = self.assembly.get_stack_by_name(stack_name).template
        return {k: v for k, v in template["Resources"].items() if v["Type"] == cfn_type}

    def only(self, stack_name: str, cfn_type: str) -> dict:
        (found,) = self.resources(stack_name, cfn_type).values()
        return found

    def staged(self, resource: dict) -> Path:
        """The staged folder of a function's or a layer's code."""
        return Path(self.assembly.directory) / f"asset.{asset_hash(resource)}"


def asset_hash(resource: dict) -> str:
    properties = resource["Properties"]
    code = properties["Content"] if resource["Type"] == LAYER else properties["Code"]
    return code["S3Key"].removesuffix(".zip")


@pytest.fixture(scope="module")
def two_stacks(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    """Two stacks with the same two functions each, synthesized without cdk-nag, counting how
    often the layer is bundled."""
    bundled_into: list[str] = []
    bundle = function._CopyLayerPackages.try_bundle

    def counting_bundle(self, output_dir: str, options: object) -> bool:
        bundled_into.append(output_dir)
        return bundle(self, output_dir, options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(function._CopyLayerPackages, "try_bundle", counting_bundle)
        app = App(context=CDK_CONTEXT, outdir=str(tmp_path_factory.mktemp("functions")))
        for stack_name in ("First", "Second"):
            stack = Stack(app, stack_name, env=ENV)
            for handler_name in HANDLERS:
                PlatformFunction(
                    stack,
                    handler_name,
                    handler_name=handler_name,
                    description=f"The {handler_name} handler.",
                    environment={},
                    log_retention_days=7,
                )
        return Synthesized(app.synth(), layer_bundlings=len(bundled_into))


def test_a_stacks_functions_share_its_one_layer(two_stacks):
    (layer_id,) = two_stacks.resources("First", LAYER)
    layers = [f["Properties"]["Layers"] for f in two_stacks.resources("First", FUNCTION).values()]
    assert layers == [[{"Ref": layer_id}]] * len(HANDLERS)


def test_the_stacks_layers_are_one_asset_bundled_once(two_stacks):
    first = two_stacks.only("First", LAYER)
    second = two_stacks.only("Second", LAYER)
    assert asset_hash(first) == asset_hash(second)
    assert two_stacks.layer_bundlings == 1


def test_the_layer_is_for_the_functions_runtime_and_architecture(two_stacks):
    properties = two_stacks.only("First", LAYER)["Properties"]
    assert properties["CompatibleRuntimes"] == [RUNTIME.name] == ["python3.14"]
    assert properties["CompatibleArchitectures"] == [ARCHITECTURE.name] == ["arm64"]


def test_the_layer_names_the_versions_it_holds(two_stacks):
    description = two_stacks.only("First", LAYER)["Properties"]["Description"]
    assert "aws-lambda-powertools 3." in description
    assert "typing_extensions 4." in description


def test_the_layer_holds_the_packages_where_lambda_imports_them_from(two_stacks):
    root = two_stacks.staged(two_stacks.only("First", LAYER))
    assert [p.name for p in root.iterdir()] == ["python"]
    assert sorted(p.name for p in (root / "python").iterdir()) == [
        "aws_lambda_powertools",
        "typing_extensions.py",
    ]
    assert (root / "python" / "aws_lambda_powertools" / "logging" / "logger.py").is_file()


@pytest.mark.parametrize("handler_name", HANDLERS)
def test_a_functions_asset_holds_its_handler_folder_only(two_stacks, handler_name):
    logical_prefix = handler_name.replace("_", "")
    (code,) = [
        f
        for logical_id, f in two_stacks.resources("First", FUNCTION).items()
        if logical_id.startswith(logical_prefix)
    ]
    sources = sorted(p.name for p in (LAMBDA_ROOT / handler_name).glob("*.py"))
    assert sorted(p.name for p in two_stacks.staged(code).iterdir()) == sources


def test_handler_code_leaves_bytecode_out(tmp_path, monkeypatch):
    handler = tmp_path / "lambda" / "example"
    (handler / "__pycache__").mkdir(parents=True)
    (handler / "handler.py").write_text("def handler(event, context): ...\n")
    (handler / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"\0")
    (handler / "stray.pyc").write_bytes(b"\0")
    monkeypatch.setattr(function, "LAMBDA_ROOT", tmp_path / "lambda")
    app = App(context=CDK_CONTEXT, outdir=str(tmp_path / "out"))
    lambda_.Function(
        Stack(app, "Bare", env=ENV),
        "Function",
        runtime=RUNTIME,
        handler="handler.handler",
        code=handler_code("example"),
    )
    assembly = app.synth()
    (resource,) = [
        r
        for r in assembly.get_stack_by_name("Bare").template["Resources"].values()
        if r["Type"] == FUNCTION
    ]
    staged = Path(assembly.directory) / f"asset.{asset_hash(resource)}"
    assert [p.name for p in staged.iterdir()] == ["handler.py"]


def test_handler_code_refuses_a_folder_without_handler():
    with pytest.raises(ValueError, match=r"no Lambda handler at .*/no_such_handler/handler\.py"):
        handler_code("no_such_handler")


def test_installed_origin_refuses_what_is_not_installed():
    with pytest.raises(ValueError, match="no_such_package is not an installed package or module"):
        installed_origin("no_such_package")


def test_a_package_is_copied_without_bytecode(tmp_path):
    copy_pure_python_package("aws_lambda_powertools", into=tmp_path)
    copied = tmp_path / "aws_lambda_powertools"
    assert (copied / "logging" / "logger.py").is_file()
    assert not list(copied.rglob("__pycache__"))
    assert not list(copied.rglob("*.pyc"))


def test_a_module_is_copied_as_its_file(tmp_path):
    copy_pure_python_package("typing_extensions", into=tmp_path / "python")
    assert [p.name for p in (tmp_path / "python").iterdir()] == ["typing_extensions.py"]


@pytest.mark.parametrize("extension", ["_speedups.cpython-314-aarch64-linux-gnu.so", "_x.pyd"])
def test_a_package_with_compiled_code_is_refused(tmp_path, monkeypatch, extension):
    package = tmp_path / "site" / "compiled_package" / "inner"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / extension).write_bytes(b"\x7fELF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ValueError, match=f"compiled_package is not pure Python: .*{extension}"):
        copy_pure_python_package("compiled_package", into=tmp_path / "layer")
    assert not (tmp_path / "layer").exists()


def test_a_compiled_module_is_refused(tmp_path, monkeypatch):
    (tmp_path / f"fast{EXTENSION_SUFFIXES[0]}").write_bytes(b"\x7fELF")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="fast is not pure Python"):
        copy_pure_python_package("fast", into=tmp_path / "layer")


def test_every_platform_function_uses_its_stacks_layer(dev):
    layer_hashes = set()
    for template_file in dev.template_files:
        resources = json.loads(template_file.read_text())["Resources"]
        layers = {k: v for k, v in resources.items() if k.startswith("PowertoolsLayer")}
        platform_functions = [
            r
            for r in resources.values()
            if r["Type"] == FUNCTION and r["Properties"].get("Handler") == "handler.handler"
        ]
        assert len(layers) == (1 if platform_functions else 0), template_file.name
        for platform_function in platform_functions:
            assert platform_function["Properties"]["Layers"] == [{"Ref": next(iter(layers))}]
        layer_hashes |= {asset_hash(layer) for layer in layers.values()}
    assert len(layer_hashes) == 1
