"""Measures how the recommender's training cost grows with the data, on 1 and 2 processes.

For each size (100,000 and 1,000,000 interactions by default) the benchmark writes a
synthetic ``member_interactions`` table in the curated zone's layout (Hive-partitioned by
day, two Parquet files a day, every column of the schema) to a temporary folder, then runs
the training job on it for ``--epochs`` epochs with small vectors: once as a single plain
process (``python train.py``, as before distribution) and once under ``torchrun`` with two
CPU processes (gloo), as the SageMaker container starts it on a two-GPU host. The catalog
stays fixed; members grow with the interactions, about 20 events each.

Per run: the wall time; the time of the data loading (reading the Parquet table and building
the training arrays), of an epoch and of the evaluation, from the time stamps of the job's
own log lines as they arrive; the training pairs per second of an epoch over all processes;
the CPU time an epoch costs all processes together (from /proc, read as the epoch's log
lines arrive); and peak memory, as the largest resident set of any one process
(``ru_maxrss`` of a wrapper that waits for that run only) and as the peak sum over the run's
processes (sampled from /proc every 50 ms).

On a shared machine other programs' load comes and goes, so the figures are the least over
the run's epochs (the first also carries the optimizer's first touch of its state) and over
``--rounds`` rounds that take turns over the sizes; memory is the most over the rounds. The
benchmark ends with the targets: peak memory under 3 GiB at 1 million interactions, and time
per epoch growing no faster than the training pairs, judged on CPU time, which other
programs disturb far less than wall time (whose ratio is printed beside it), with a margin
for the noise between identical runs.

    python tools/bench_training.py [--sizes 100000 1000000] [--epochs 3] [--rounds 2]
                                   [--embedding-dim 16]

Each run has a timeout; the whole benchmark takes about two minutes on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO_ROOT / "training" / "recommender"
TITLES = 5_000
EVENTS_PER_MEMBER = 20
DAYS = 7
FILES_PER_DAY = 2
EVENT_TYPES = ("PLAY", "COMPLETE", "THUMBS_UP", "ADD_TO_LIST", "IMPRESSION", "THUMBS_DOWN")
EVENT_TYPE_SHARES = (0.45, 0.10, 0.05, 0.05, 0.30, 0.05)
MEMORY_TARGET_BYTES = 3 * 2**30
# On a shared two-core machine, identical 1-process runs' least epoch CPU time at 100,000
# interactions ranged from 0.13 s to 0.22 s; the least of two rounds narrows that. An
# epoch-time ratio within this share above the data ratio is linear growth, measured.
MEASUREMENT_NOISE = 0.2
RUN_TIMEOUT_SECONDS = 300
SAMPLE_SECONDS = 0.05
# Printed by the job: before reading, after the split, as each epoch starts and ends, after
# the evaluation.
_READING = re.compile(r"^reading the interactions under ")
_SPLIT = re.compile(r"^\d+ members, \d+ titles, (\d+) training positives")
_EPOCH = re.compile(r"^epoch \d+/\d+$")
_LOSS = re.compile(r"^METRIC train_loss=")
_RECALL = re.compile(r"^METRIC recall_at_k=")
# Wraps one run so that ru_maxrss of its children covers that run only.
_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)\n"
    "sys.exit(code)\n"
)


@dataclass(frozen=True)
class Run:
    """The measurements of one training run."""

    interactions: int
    processes: int
    train_positives: int
    wall_seconds: float
    load_seconds: float
    epoch_seconds: float
    epoch_cpu_seconds: float
    evaluation_seconds: float
    max_process_rss: int
    peak_total_rss: int
    recall_at_k: float

    @property
    def pairs_per_second(self) -> float:
        return self.train_positives / self.epoch_seconds


def write_interactions(root: Path, count: int, seed: int) -> None:
    """Write ``count`` synthetic events as ``root/event_date=.../part-NNNNN.parquet``."""
    rng = np.random.default_rng(seed)
    members = max(count // EVENTS_PER_MEMBER, 1)
    # A long-tailed catalog: a few titles draw most of the events, as in any catalog.
    appeal = 1.0 / np.arange(1, TITLES + 1) ** 0.8
    member_ids = pa.array([f"m{index:08d}" for index in range(members)])
    title_ids = pa.array([f"t{index:06d}" for index in range(TITLES)])
    start = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp() * 1_000_000)
    times = np.sort(start + rng.integers(0, DAYS * 86_400_000_000, count))
    table = pa.table(
        {
            "event_id": pa.array([f"e{index:010d}" for index in range(count)]),
            "member_id": member_ids.take(rng.integers(0, members, count)),
            "title_id": title_ids.take(rng.choice(TITLES, count, p=appeal / appeal.sum())),
            "event_type": pa.array(EVENT_TYPES).take(
                rng.choice(len(EVENT_TYPES), count, p=EVENT_TYPE_SHARES)
            ),
            "event_time": pa.array(times, pa.timestamp("us", tz="UTC")),
            "watch_seconds": pa.array(rng.integers(60, 7200, count), pa.int32()),
            "device_type": pa.array(["tv", "mobile", "web"]).take(rng.integers(0, 3, count)),
            "country": pa.array(["US", "BR", "DE"]).take(rng.integers(0, 3, count)),
        }
    )
    days = (times - start) // 86_400_000_000
    for day in range(DAYS):
        rows = np.flatnonzero(days == day)
        folder = root / f"event_date=2024-05-{day + 1:02d}"
        folder.mkdir(parents=True)
        for part, chunk in enumerate(np.array_split(rows, FILES_PER_DAY)):
            pq.write_table(table.take(chunk), folder / f"part-{part:05d}.parquet")
    (root / "_SUCCESS").touch()


def run_training(
    channel: Path, workdir: Path, processes: int, args: argparse.Namespace, interactions: int
) -> Run:
    """Run the job with ``processes`` CPU processes and measure it."""
    job_args = [
        "train.py",
        *("--interactions", str(channel), "--model-dir", str(workdir / "model")),
        *("--output-data-dir", str(workdir / "output"), "--failure-file", str(workdir / "fail")),
        *("--checkpoint-dir", str(workdir / "checkpoints"), "--num-gpus", "0"),
        *("--epochs", str(args.epochs), "--embedding-dim", str(args.embedding_dim)),
    ]
    if processes > 1:
        # --standalone: torchrun binds a free port on localhost itself.
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes"]
        command = [*launcher, "1", "--nproc_per_node", str(processes), *job_args]
    else:
        command = [sys.executable, *job_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    marks: dict[str, list[tuple[float, float]]] = {name: [] for name in _MARKS}
    lines: list[str] = []
    process = subprocess.Popen(
        [sys.executable, "-c", _WRAPPER, *command],
        cwd=SOURCE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    timer = threading.Timer(RUN_TIMEOUT_SECONDS, process.kill)
    timer.start()
    with _sampling_tree_rss(process.pid) as peak:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            _mark(marks, lines[-1], time.perf_counter() - started, process.pid)
        returncode = process.wait()
    timer.cancel()
    wall = time.perf_counter() - started
    if returncode != 0 or not all(marks.values()):
        tail = "\n".join(lines[-5:])
        raise RuntimeError(f"{processes}-process run exited {returncode}:\n{tail}")
    maxrss = next(int(line.split()[1]) for line in lines if line.startswith("MAXRSS_KIB"))
    positives = next(int(m.group(1)) for line in lines if (m := _SPLIT.match(line)))
    metrics = json.loads((workdir / "model" / "metrics.json").read_text())
    epochs = [
        (end[0] - start[0], end[1] - start[1])
        for start, end in zip(marks["epoch"], marks["loss"], strict=True)
    ]
    return Run(
        interactions=interactions,
        processes=processes,
        train_positives=positives,
        wall_seconds=wall,
        load_seconds=marks["split"][0][0] - marks["reading"][0][0],
        epoch_seconds=min(wall for wall, _ in epochs),
        epoch_cpu_seconds=min(cpu for _, cpu in epochs),
        evaluation_seconds=marks["recall"][0][0] - marks["loss"][-1][0],
        max_process_rss=maxrss * 1024,
        peak_total_rss=peak[0],
        recall_at_k=metrics["recall_at_k"],
    )


_MARKS = {"reading": _READING, "split": _SPLIT, "epoch": _EPOCH, "loss": _LOSS, "recall": _RECALL}


def _mark(
    marks: dict[str, list[tuple[float, float]]], line: str, elapsed: float, root: int
) -> None:
    # Each mark is the wall time since the start and the CPU time of the run's processes.
    for name, pattern in _MARKS.items():
        if pattern.match(line):
            marks[name].append((elapsed, sum(_cpu_seconds(pid) for pid in _tree(root))))


@contextmanager
def _sampling_tree_rss(root: int) -> Iterator[list[int]]:
    # The peak, over time, of the summed resident sets of `root` and its descendants.
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_SECONDS):
            peak[0] = max(peak[0], sum(_rss(pid) for pid in _tree(root)))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent(entry)
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def _parent(entry: Path) -> int | None:
    try:
        # The command name in parentheses may hold spaces; the parent id follows it.
        return int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime, the 14th and 15th fields of the line, in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) * 1024 if match else 0


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def report(runs: list[Run]) -> bool:
    """Print the table and the verdict on the targets; return whether both are met."""
    print(
        f"{'interactions':>12} {'procs':>5} {'train pairs':>11} {'wall s':>7} {'load s':>7} "
        f"{'epoch s':>7} {'epoch CPU s':>11} {'eval s':>7} {'pairs/s':>9} {'max RSS/proc':>12} "
        f"{'peak RSS all':>12} {'recall@10':>9}"
    )
    for run in runs:
        print(
            f"{run.interactions:>12,} {run.processes:>5} {run.train_positives:>11,} "
            f"{run.wall_seconds:>7.1f} {run.load_seconds:>7.1f} {run.epoch_seconds:>7.2f} "
            f"{run.epoch_cpu_seconds:>11.2f} {run.evaluation_seconds:>7.1f} "
            f"{run.pairs_per_second:>9,.0f} {_gib(run.max_process_rss):>12} "
            f"{_gib(run.peak_total_rss):>12} {run.recall_at_k:>9.4f}"
        )
    largest = max(run.interactions for run in runs)
    smallest = min(run.interactions for run in runs)
    peak = max(run.peak_total_rss for run in runs if run.interactions == largest)
    memory_ok = peak < MEMORY_TARGET_BYTES
    print(f"peak memory at {largest:,} interactions: {_gib(peak)} (target < 3 GiB): ", end="")
    print("met" if memory_ok else "MISSED")
    scaling_ok = True
    for processes in sorted({run.processes for run in runs}):
        small, large = (
            next(r for r in runs if r.processes == processes and r.interactions == size)
            for size in (smallest, largest)
        )
        cpu_ratio = large.epoch_cpu_seconds / small.epoch_cpu_seconds
        wall_ratio = large.epoch_seconds / small.epoch_seconds
        data_ratio = large.train_positives / small.train_positives
        grows_linearly = cpu_ratio <= data_ratio * (1 + MEASUREMENT_NOISE)
        scaling_ok &= grows_linearly
        print(
            f"{processes} process(es), {smallest:,} -> {largest:,} interactions: x{data_ratio:.2f}"
            f" the training pairs, epoch CPU time x{cpu_ratio:.2f} (wall x{wall_ratio:.2f}): "
            + (
                f"linear within the {MEASUREMENT_NOISE:.0%} measurement noise"
                if grows_linearly
                else "FASTER THAN LINEAR"
            )
        )
    return memory_ok and scaling_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as scratch:
        channels = {size: Path(scratch) / f"interactions-{size}" for size in args.sizes}
        for size, channel in channels.items():
            generated = time.perf_counter()
            write_interactions(channel, size, args.seed)
            print(f"wrote {size:,} interactions in {time.perf_counter() - generated:.1f} s")
        # Rounds take turns over all sizes, so that a spell of load from other programs
        # does not fall on one size only.
        for round_number in range(1, args.rounds + 1):
            for (size, channel), processes in itertools.product(channels.items(), args.processes):
                workdir = Path(scratch) / f"run-{round_number}-{size}-{processes}"
                runs.append(run_training(channel, workdir, processes, args, size))
                print(
                    f"round {round_number}: {size:,} interactions, {processes} process(es): "
                    f"{runs[-1].wall_seconds:.1f} s",
                    flush=True,
                )
    return 0 if report(_best_of_rounds(runs)) else 1


def _best_of_rounds(runs: list[Run]) -> list[Run]:
    # The least time of each measurement over the rounds, and the most memory.
    best: dict[tuple[int, int], Run] = {}
    for run in runs:
        key = (run.interactions, run.processes)
        other = best.get(key, run)
        best[key] = dataclasses.replace(
            run,
            wall_seconds=min(run.wall_seconds, other.wall_seconds),
            load_seconds=min(run.load_seconds, other.load_seconds),
            epoch_seconds=min(run.epoch_seconds, other.epoch_seconds),
            epoch_cpu_seconds=min(run.epoch_cpu_seconds, other.epoch_cpu_seconds),
            evaluation_seconds=min(run.evaluation_seconds, other.evaluation_seconds),
            max_process_rss=max(run.max_process_rss, other.max_process_rss),
            peak_total_rss=max(run.peak_total_rss, other.peak_total_rss),
        )
    return list(best.values())


if __name__ == "__main__":
    sys.exit(main())
