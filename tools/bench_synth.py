"""Times `python app.py` for each shipped environment against a one-bucket CDK app, and how
synthesis grows with the number of served models.

Each app runs as its own process, as the CDK CLI runs it, with cdk.json's context and this
interpreter. The baseline and the environments run in turn, one of each per round, so a load
that comes and goes on the machine weighs on all of them alike; the figures are medians of the
rounds, printed as ratios to the baseline, so they compare across machines. Beside each time
stand the CPU seconds of the app's processes (Python and Node.js; steadier than the time on a
shared machine), the resources of the whole assembly and the milliseconds per resource, which
stay flat while synthesis grows linearly. The scale runs synthesize dev with 1, 10 and 50
served models and also print the largest template against CloudFormation's limits (500
resources, 1 MB).

    python tools/bench_synth.py [--runs N] [--models 1,10,50]   # --models '' skips scaling
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINE_SCRIPT = "tools/hello_app.py"
# The most prod synthesis may take, as a multiple of the baseline.
PROD_RATIO_TARGET = 3.0
RESOURCE_LIMIT = 500
TEMPLATE_BYTES_LIMIT = 1_000_000


@dataclass(frozen=True)
class App:
    label: str
    script: str
    context: dict


@dataclass(frozen=True)
class Synthesis:
    seconds: float
    cpu_seconds: float
    resources: int
    largest_resources: int
    largest_bytes: int


@dataclass(frozen=True)
class _Sample:
    seconds: float
    cpu_seconds: float
    template_resources: list[int]
    template_bytes: list[int]


def children_cpu_seconds() -> float:
    """User and system CPU time of the finished child processes and their descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def synthesize_once(app: App) -> _Sample:
    with tempfile.TemporaryDirectory() as outdir:
        env = {**os.environ, "CDK_OUTDIR": outdir, "CDK_CONTEXT_JSON": json.dumps(app.context)}
        cpu_before = children_cpu_seconds()
        started = time.perf_counter()
        run = subprocess.run(
            [sys.executable, app.script], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - started
        cpu_seconds = children_cpu_seconds() - cpu_before
        if run.returncode != 0:
            sys.exit(f"{app.label} failed to synthesize:\n{run.stderr}")
        templates = list(Path(outdir).glob("*.template.json"))
        return _Sample(
            seconds=seconds,
            cpu_seconds=cpu_seconds,
            template_resources=[len(json.loads(t.read_text())["Resources"]) for t in templates],
            template_bytes=[t.stat().st_size for t in templates],
        )


def synthesize_in_turn(apps: list[App], *, runs: int) -> dict[str, Synthesis]:
    """Median synthesis of each app over `runs` rounds, every round running each app once."""
    samples: dict[str, list[_Sample]] = {app.label: [] for app in apps}
    for _ in range(runs):
        for app in apps:
            samples[app.label].append(synthesize_once(app))
    return {label: summarize(taken) for label, taken in samples.items()}


def summarize(samples: list[_Sample]) -> Synthesis:
    last = samples[-1]
    return Synthesis(
        seconds=statistics.median(s.seconds for s in samples),
        cpu_seconds=statistics.median(s.cpu_seconds for s in samples),
        resources=sum(last.template_resources),
        largest_resources=max(last.template_resources),
        largest_bytes=max(last.template_bytes),
    )


def served_models_file(directory: Path, count: int) -> Path:
    path = directory / f"models-{count}.yaml"
    models = "".join(f"    - name: model-{index:02d}\n" for index in range(count))
    path.write_text(f"serving:\n  models:\n{models}")
    return path


def row(label: str, result: Synthesis, baseline: Synthesis) -> str:
    per_resource = 1000 * result.seconds / result.resources
    return f"{columns(label, result, baseline)}{result.resources:>11}{per_resource:>13.1f}"


def columns(label: str, result: Synthesis, baseline: Synthesis) -> str:
    return (
        f"{label:<26}{result.seconds:>10.2f}{result.seconds / baseline.seconds:>12.2f}"
        f"{result.cpu_seconds:>8.2f}"
    )


def limits(result: Synthesis) -> str:
    return (
        f"{'':<26}largest template: {result.largest_resources} resources "
        f"({100 * result.largest_resources / RESOURCE_LIMIT:.0f} % of {RESOURCE_LIMIT}), "
        f"{result.largest_bytes / 1000:.0f} kB "
        f"({100 * result.largest_bytes / TEMPLATE_BYTES_LIMIT:.0f} % of 1 MB)"
    )


def model_counts(text: str) -> list[int]:
    try:
        counts = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise SystemExit(f"--models takes comma-separated counts, not {text!r}") from None
    if any(count < 1 for count in counts):
        raise SystemExit(f"--models counts must be at least 1, not {text!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--models", default="1,10,50", help="served-model counts to scale to")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    counts = model_counts(args.models)
    context = json.loads((REPO_ROOT / "cdk.json").read_text())["context"]

    envs = [App(f"app.py env={env}", "app.py", {**context, "env": env}) for env in ("dev", "prod")]
    results = synthesize_in_turn([App("baseline", BASELINE_SCRIPT, context), *envs], runs=args.runs)
    baseline = results.pop("baseline")
    print(
        f"{'app':<26}{'median s':>10}{'x baseline':>12}{'cpu s':>8}{'resources':>11}"
        f"{'ms/resource':>13}"
    )
    print(columns("one-bucket baseline", baseline, baseline))
    for label, result in results.items():
        print(row(label, result, baseline))
    prod_ratio = results["app.py env=prod"].seconds / baseline.seconds
    verdict = "met" if prod_ratio <= PROD_RATIO_TARGET else "MISSED"
    print(f"prod / baseline: {prod_ratio:.2f} (target {PROD_RATIO_TARGET:.1f}: {verdict})")

    if not counts:
        return
    print("\nserved models (dev): largest template against CloudFormation's limits")
    with tempfile.TemporaryDirectory() as directory:
        for count in counts:
            override = served_models_file(Path(directory), count)
            app = App(
                f"app.py {count} models",
                "app.py",
                {**context, "env": "dev", "config": str(override)},
            )
            result = synthesize_in_turn([app], runs=args.runs)[app.label]
            print(row(app.label, result, baseline))
            print(limits(result))


if __name__ == "__main__":
    main()
