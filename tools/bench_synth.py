"""Times `python app.py` for each shipped environment against a one-bucket CDK app.

Each app runs as its own process, as the CDK CLI runs it, with cdk.json's context; the
figures are medians of several runs, printed as ratios to the baseline measured in this run,
so they compare across machines.

    python tools/bench_synth.py [--runs N]
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
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def time_app(script: str, context: dict, runs: int) -> float:
    samples = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as outdir:
            env = {**os.environ, "CDK_OUTDIR": outdir, "CDK_CONTEXT_JSON": json.dumps(context)}
            started = time.perf_counter()
            subprocess.run([sys.executable, script], cwd=REPO_ROOT, env=env, check=True)
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per app (median is reported)")
    args = parser.parse_args()
    context = json.loads((REPO_ROOT / "cdk.json").read_text())["context"]

    baseline = time_app("tools/hello_app.py", context, args.runs)
    print(f"{'app':<24}{'median s':>10}{'x baseline':>12}")
    print(f"{'one-bucket baseline':<24}{baseline:>10.2f}{1.0:>12.2f}")
    for env in ("dev", "prod"):
        seconds = time_app("app.py", {**context, "env": env}, args.runs)
        print(f"{'app.py env=' + env:<24}{seconds:>10.2f}{seconds / baseline:>12.2f}")


if __name__ == "__main__":
    main()
