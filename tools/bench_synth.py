"""Times `python app.py` for each shipped environment against a one-bucket CDK app, and how
synthesis grows with the number of served models.

Each app runs as its own process, as the CDK CLI runs it, with cdk.json's context; the
figures are medians of several runs, printed as ratios to the baseline measured in this run,
so they compare across machines. The scale runs synthesize dev with 1, 10 and 50 served
models and print, beside the time, seconds per resource and the largest template against
CloudFormation's limits (500 resources, 1 MB).

    python tools/bench_synth.py [--runs N] [--models 1,10,50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESOURCE_LIMIT = 500
TEMPLATE_BYTES_LIMIT = 1_000_000


@dataclass(frozen=True)
class Synthesis:
    seconds: float
    resources: int
    largest_resources: int
    largest_bytes: int


def synthesize(script: str, context: dict, runs: int) -> Synthesis:
    samples = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as outdir:
            env = {**os.environ, "CDK_OUTDIR": outdir, "CDK_CONTEXT_JSON": json.dumps(context)}
            started = time.perf_counter()
            subprocess.run([sys.executable, script], cwd=REPO_ROOT, env=env, check=True)
            samples.append(time.perf_counter() - started)
            templates = list(Path(outdir).glob("*.template.json"))
            counts = [len(json.loads(t.read_text())["Resources"]) for t in templates]
            sizes = [t.stat().st_size for t in templates]
    return Synthesis(statistics.median(samples), sum(counts), max(counts), max(sizes))


def served_models_file(directory: Path, count: int) -> Path:
    path = directory / f"models-{count}.yaml"
    models = "".join(f"    - name: model-{index:02d}\n" for index in range(count))
    path.write_text(f"serving:\n  models:\n{models}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per app (median is reported)")
    parser.add_argument("--models", default="1,10,50", help="served-model counts to scale to")
    args = parser.parse_args()
    context = json.loads((REPO_ROOT / "cdk.json").read_text())["context"]

    baseline = synthesize("tools/hello_app.py", context, args.runs)
    print(f"{'app':<26}{'median s':>10}{'x baseline':>12}{'resources':>11}{'ms/resource':>13}")
    print(f"{'one-bucket baseline':<26}{baseline.seconds:>10.2f}{1.0:>12.2f}")

    def report(label: str, result: Synthesis) -> None:
        per_resource = 1000 * result.seconds / result.resources
        print(
            f"{label:<26}{result.seconds:>10.2f}{result.seconds / baseline.seconds:>12.2f}"
            f"{result.resources:>11}{per_resource:>13.1f}"
        )

    for env in ("dev", "prod"):
        report(f"app.py env={env}", synthesize("app.py", {**context, "env": env}, args.runs))

    print("\nserved models (dev): largest template against CloudFormation's limits")
    with tempfile.TemporaryDirectory() as directory:
        for count in (int(c) for c in args.models.split(",")):
            override = served_models_file(Path(directory), count)
            result = synthesize(
                "app.py", {**context, "env": "dev", "config": str(override)}, args.runs
            )
            report(f"app.py {count} models", result)
            print(
                f"{'':<26}largest template: {result.largest_resources} resources "
                f"({100 * result.largest_resources / RESOURCE_LIMIT:.0f} % of {RESOURCE_LIMIT}), "
                f"{result.largest_bytes / 1000:.0f} kB "
                f"({100 * result.largest_bytes / TEMPLATE_BYTES_LIMIT:.0f} % of 1 MB)"
            )


if __name__ == "__main__":
    main()
