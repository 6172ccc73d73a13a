"""Synthesizes shipped environments into a folder each, as `cdk synth -c env=<env>` would with
cdk.json's context, in one process and without the CLI, for scanners that read the templates.

    python -m tools.synth_templates --out DIR dev prod   # DIR/dev, DIR/prod
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aws_cdk import App

from platform_config import load_config
from stacks.platform import APP_OPTIONS, build_platform

REPO_ROOT = Path(__file__).resolve().parent.parent

# The CLI asks for path metadata too, so the templates are the ones `cdk deploy` would upload.
CONTEXT = {
    **json.loads((REPO_ROOT / "cdk.json").read_text())["context"],
    "aws:cdk:enable-path-metadata": True,
}


def synthesize(env: str, outdir: Path) -> None:
    app = App(context={**CONTEXT, "env": env}, outdir=str(outdir), **APP_OPTIONS)
    build_platform(app, load_config(env=env))
    app.synth()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("envs", nargs="+", metavar="env")
    args = parser.parse_args(argv)
    for env in args.envs:
        synthesize(env, args.out / env)


if __name__ == "__main__":
    main()
