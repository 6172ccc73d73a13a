"""Load-tests the serving app on loopback beside a minimal FastAPI app: plain, with shadow
scoring, and with members allocated to the cells of a running experiment.

Four servers run as their own processes on 127.0.0.1, each started the way the container
starts the app (same uvicorn settings): a minimal FastAPI app with one route returning a
constant JSON body of the same size as a recommendation, the recommender with an in-memory
store (Keyspaces has no local emulator), the recommender with a candidate model scoring
``--shadow-fraction`` of the members in the background, and the recommender with ABlaze's
assigner over one running experiment held in memory (45 % of members in a control cell
served by the primary, 45 % in a treatment cell served by the candidate). The models are
random ones of a realistic size, written with the training code's artifact format.

The load is open-loop and interleaved: requests leave on a fixed schedule, ``--rate`` per
second for each app, and take turns among the apps, so all of them are measured at the
same rate and under the same conditions of a shared machine. ``--clients`` workers send
them concurrently. A run sends ``--rate * --seconds`` requests to each app after a one-second
warm-up and stops by itself; every request and the run as a whole have a timeout. Besides
latency and throughput, each server's CPU time per request is read from /proc.

    python tools/bench_serving.py [--rate 60] [--clients 8] [--seconds 15]
                                  [--shadow-fraction 0.1]

The default rate keeps the three servers and the client well within two shared cores; a
rate the machine cannot sustain shows as req/s below it, and then measures queueing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as `python tools/bench_serving.py`, the script's folder is on the path, not the root.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from ablaze.allocation import (  # noqa: E402
    AllocatedCell,
    AllocatedExperiment,
    Eligibility,
    ExperimentAssigner,
)
from serving.recommender_service.app import create_app  # noqa: E402
from serving.recommender_service.experiments import AblazeAssigner, CellAssigner  # noqa: E402
from serving.recommender_service.server import serve  # noqa: E402
from serving.recommender_service.settings import read_settings  # noqa: E402
from serving.recommender_service.store import InMemoryStore  # noqa: E402
from training.recommender import artifact  # noqa: E402
from training.recommender.model import MatrixFactorization  # noqa: E402

MEMBERS = 20_000
TITLES = 5_000
EMBEDDING_DIM = 64
HISTORY_LENGTH = 10
UNKNOWN_MEMBER_SHARE = 0.05
K = 10
SEED = 11
REQUEST_TIMEOUT_SECONDS = 5.0
START_TIMEOUT_SECONDS = 90.0
P99_TARGET = 1.5
SHADOW_P99_TARGET = 1.10
ALLOCATION_P99_TARGET_MS = 2.0
EXPERIMENT = AllocatedExperiment(
    experiment_id="bench-ranker",
    salt="0123456789abcdef0123456789abcdef",
    cells=(
        AllocatedCell(name="control", model_version="1", ranges=((0, 4500),)),
        AllocatedCell(name="treatment", model_version="2", ranges=((4500, 9000),)),
    ),
    eligibility=Eligibility(),
    start=0.0,
    end=math.inf,
)
# One BLAS thread per server, as in the image: the benchmark shares two cores.
SERVER_ENVIRONMENT = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
MINIMAL_BODY = {
    "member_id": "m00000",
    "model_name": "title-recommender",
    "model_version": "1",
    "items": [{"title_id": f"t{index:05d}", "score": 0.123456789} for index in range(K)],
    "fallback": None,
    "experiment": None,
    "cell": None,
}


@dataclass
class Scenario:
    """One server under test and the latencies measured against it."""

    name: str
    kind: str
    environment: dict[str, str]
    port: int = 0
    process: subprocess.Popen | None = None
    log: Path | None = None
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def percentile(self, fraction: float) -> float:
        return float(np.quantile(self.latencies, fraction)) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help=argparse.SUPPRESS)
    serve_parser.add_argument("kind", choices=["minimal", "recommender", "experiment"])
    serve_parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second per app")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the measurement")
    parser.add_argument(
        "--shadow-fraction", type=float, default=0.1, help="members the candidate also scores"
    )
    args = parser.parse_args()
    if args.command == "serve":
        serve_app(args.kind, args.port)
        return 0
    return run_benchmark(args)


def run_benchmark(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as workdir:
        primary, candidate = write_models(Path(workdir))
        base = {
            "MODEL_NAME": "title-recommender",
            "MODEL_VERSION": "1",
            "MODEL_ARTIFACT_URI": str(primary),
        }
        with_candidate = {
            **base,
            "CANDIDATE_MODEL_VERSION": "2",
            "CANDIDATE_MODEL_ARTIFACT_URI": str(candidate),
        }
        scenarios = [
            Scenario("minimal FastAPI", "minimal", {}),
            Scenario("recommender", "recommender", base),
            Scenario(
                f"recommender, shadow {args.shadow_fraction:g}",
                "recommender",
                {**with_candidate, "SHADOW_FRACTION": str(args.shadow_fraction)},
            ),
            Scenario("recommender, experiment", "experiment", with_candidate),
        ]
        with running_servers(scenarios, Path(workdir)):
            asyncio.run(measure(scenarios, args))
    return report(scenarios, args)


def write_models(workdir: Path) -> tuple[Path, Path]:
    """Write a primary and a candidate model folder of random vectors."""
    counts = np.random.default_rng(SEED).zipf(1.5, TITLES).clip(max=1_000_000)
    folders = []
    for version in (1, 2):
        model = MatrixFactorization(
            MEMBERS, TITLES, EMBEDDING_DIM, generator=torch.Generator().manual_seed(version)
        )
        folder = workdir / f"model-{version}"
        artifact.save(
            folder,
            model=model,
            member_ids=member_ids(),
            title_ids=[f"t{index:05d}" for index in range(TITLES)],
            title_positives=counts,
            metrics={"k": K},
        )
        folders.append(folder)
    return folders[0], folders[1]


def member_ids() -> list[str]:
    return [f"m{index:05d}" for index in range(MEMBERS)]


@contextlib.contextmanager
def running_servers(scenarios: list[Scenario], workdir: Path) -> Iterator[None]:
    try:
        for scenario in scenarios:
            start_server(scenario, workdir)
        for scenario in scenarios:
            wait_until_ready(scenario)
        yield
    finally:
        for scenario in scenarios:
            if scenario.process is not None:
                scenario.process.terminate()
        for scenario in scenarios:
            if scenario.process is not None:
                try:
                    scenario.process.wait(30)
                except subprocess.TimeoutExpired:
                    scenario.process.kill()


def start_server(scenario: Scenario, workdir: Path) -> None:
    scenario.port = free_port()
    scenario.log = workdir / f"{scenario.kind}-{scenario.port}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "serve", scenario.kind]
    with scenario.log.open("w") as log:
        scenario.process = subprocess.Popen(
            [*command, "--port", str(scenario.port)],
            cwd=REPO_ROOT,
            env={**os.environ, **SERVER_ENVIRONMENT, **scenario.environment},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(scenario: Scenario) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    url = f"http://127.0.0.1:{scenario.port}"
    while time.monotonic() < deadline:
        assert scenario.process is not None
        if scenario.process.poll() is not None:
            break
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health/ready", timeout=1.0).status_code == 200:
                wait_for_candidate(scenario, url)
                check_experiment(scenario, url)
                return
        time.sleep(0.2)
    log = scenario.log.read_text() if scenario.log else ""
    raise SystemExit(f"{scenario.name} did not become ready:\n{log}")


def wait_for_candidate(scenario: Scenario, url: str) -> None:
    if "CANDIDATE_MODEL_VERSION" not in scenario.environment:
        return
    # The loader reports ready before it loads the candidate.
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not httpx.get(f"{url}/model", timeout=1.0).json()["candidate_loaded"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"{scenario.name}: the candidate model did not load")
        time.sleep(0.2)


def check_experiment(scenario: Scenario, url: str) -> None:
    """Check that the experiment's server answers in both cells, with their versions."""
    if scenario.kind != "experiment":
        return
    served = set()
    for member in member_ids()[:50]:
        body = httpx.post(f"{url}/recommendations", json={"member_id": member}, timeout=1.0).json()
        served.add((body["cell"], body["model_version"]))
    if not {("control", "1"), ("treatment", "2")} <= served:
        raise SystemExit(f"{scenario.name}: the cells were not served, only {sorted(served)}")


async def measure(scenarios: list[Scenario], args: argparse.Namespace) -> None:
    bodies = request_bodies()
    # Every worker has at most one request in flight, so it never waits for a connection.
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        await load(client, scenarios, bodies, args, seconds=1.0, record=False)
        await load(client, scenarios, bodies, args, seconds=args.seconds, record=True)


def request_bodies() -> list[bytes]:
    rng = np.random.default_rng(SEED)
    known = member_ids()
    bodies = []
    for index in range(4096):
        unknown = rng.random() < UNKNOWN_MEMBER_SHARE
        member = f"new-{index}" if unknown else known[int(rng.integers(MEMBERS))]
        bodies.append(json.dumps({"member_id": member, "k": K}).encode())
    return bodies


async def load(
    client: httpx.AsyncClient,
    scenarios: list[Scenario],
    bodies: list[bytes],
    args: argparse.Namespace,
    *,
    seconds: float,
    record: bool,
) -> None:
    """Send ``rate * seconds`` requests to each app on schedule, the apps taking turns."""
    urls = [f"http://127.0.0.1:{s.port}/recommendations" for s in scenarios]
    headers = {"content-type": "application/json"}
    total_rate = args.rate * len(scenarios)
    total = int(total_rate * seconds)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.01
    latencies: list[list[float]] = [[] for _ in scenarios]
    errors = [0] * len(scenarios)

    async def worker(first: int) -> None:
        for index in range(first, total, args.clients):
            delay = start + index / total_rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            app = index % len(scenarios)
            body = bodies[(index // len(scenarios)) % len(bodies)]
            sent = time.perf_counter()
            try:
                response = await client.post(urls[app], content=body, headers=headers)
            except httpx.HTTPError:
                errors[app] += 1
                continue
            latencies[app].append(time.perf_counter() - sent)
            errors[app] += response.status_code != 200

    cpu_before = [cpu_seconds(s) for s in scenarios]
    began = time.perf_counter()
    # Bounded even if a server stalls: every request has a timeout, and so does the run.
    await asyncio.wait_for(
        asyncio.gather(*(worker(index) for index in range(args.clients))),
        timeout=seconds * 3 + REQUEST_TIMEOUT_SECONDS,
    )
    if not record:
        return
    elapsed = time.perf_counter() - began
    for index, scenario in enumerate(scenarios):
        scenario.latencies = latencies[index]
        scenario.errors = errors[index]
        scenario.seconds = elapsed
        scenario.cpu_seconds = cpu_seconds(scenario) - cpu_before[index]


def cpu_seconds(scenario: Scenario) -> float:
    """CPU time the server process has used so far (user + system), from /proc."""
    assert scenario.process is not None
    stat = Path(f"/proc/{scenario.process.pid}/stat").read_text()
    # The fields after the command name, which is in parentheses and may hold spaces.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(scenarios: list[Scenario], args: argparse.Namespace) -> int:
    print(
        f"{args.rate:g} requests/s to each app for {args.seconds:g} s from {args.clients} "
        f"clients; models of {MEMBERS} members x {TITLES} titles x {EMBEDDING_DIM} dims"
    )
    print(
        f"{'app':<28}{'requests':>9}{'errors':>7}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'CPU ms/req':>11}"
    )
    for s in scenarios:
        count = len(s.latencies)
        print(
            f"{s.name:<28}{count:>9}{s.errors:>7}{count / s.seconds:>8.1f}"
            f"{s.percentile(0.5):>8.2f}{s.percentile(0.99):>8.2f}"
            f"{s.cpu_seconds * 1000 / max(count, 1):>11.2f}"
        )
    minimal, plain, shadow, experiment = scenarios
    real_ratio = plain.percentile(0.99) / minimal.percentile(0.99)
    shadow_ratio = shadow.percentile(0.99) / plain.percentile(0.99)
    print(f"recommender p99 / minimal p99: {real_ratio:.2f} (target <= {P99_TARGET})")
    print(f"shadow p99 / no-shadow p99:    {shadow_ratio:.2f} (target <= {SHADOW_P99_TARGET})")
    print(
        f"p99 with allocation {experiment.percentile(0.99):.2f} ms, without "
        f"{plain.percentile(0.99):.2f} ms: "
        f"{experiment.percentile(0.99) - plain.percentile(0.99):+.2f} ms "
        f"(target <= +{ALLOCATION_P99_TARGET_MS:g} ms)"
    )
    return 1 if any(s.errors for s in scenarios) else 0


def serve_app(kind: str, port: int) -> None:
    """The server side of the benchmark, run in its own process."""
    if kind == "minimal":
        app = minimal_app()
    else:
        app = recommender_app(cell_assigner=experiment_assigner() if kind == "experiment" else None)
    serve(app, host="127.0.0.1", port=port)


def minimal_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health/ready")
    async def ready() -> dict:
        return {"status": "ready"}

    @app.post("/recommendations")
    async def recommendations() -> dict:
        return MINIMAL_BODY

    return app


def experiment_assigner() -> CellAssigner:
    """ABlaze's assigner over the one running experiment, loaded from memory."""
    return AblazeAssigner(ExperimentAssigner(loader=lambda: [EXPERIMENT]))


def recommender_app(*, cell_assigner: CellAssigner | None) -> FastAPI:
    rng = np.random.default_rng(SEED)
    titles = [f"t{index:05d}" for index in range(TITLES)]
    histories = {
        member: [titles[int(index)] for index in rng.integers(TITLES, size=HISTORY_LENGTH)]
        for member in member_ids()
    }
    store = InMemoryStore(histories=histories)
    return create_app(
        read_settings(os.environ),
        store_factory=lambda settings: store,
        cell_assigner=cell_assigner,
    )


if __name__ == "__main__":
    sys.exit(main())
