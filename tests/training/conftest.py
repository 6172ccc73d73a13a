"""Fixtures for the recommender training tests: planted interaction data and job runs.

The data has latent structure a real recommender must find: members and titles fall into
clusters, members mostly like titles of their own cluster, and a few blockbusters that
everyone watches make popularity a fair but beatable baseline. Events also include
impressions and thumbs-down, which are not positives, and repeated positives of one title.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]

# The job ships to SageMaker as a plain source folder rather than an installed package, so
# the tests import it from the checkout whichever directory pytest was started from.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from training.recommender import train  # noqa: E402

EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("member_id", pa.string()),
        ("title_id", pa.string()),
        ("event_type", pa.string()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("watch_seconds", pa.int32()),
        ("device_type", pa.string()),
        ("country", pa.string()),
    ]
)
START = datetime(2024, 5, 1, tzinfo=UTC)
DAYS = 6
# Small enough that every run takes about a second on one core, large enough that the
# model's lead over popularity is far outside the noise of 400 holdout members.
FAST_HYPERPARAMETERS = (
    "--epochs",
    "8",
    "--embedding-dim",
    "16",
    "--learning-rate",
    "0.02",
    "--batch-size",
    "256",
    "--seed",
    "7",
)


def planted_interactions(
    seed: int = 0,
    members: int = 400,
    clusters: int = 5,
    titles_per_cluster: int = 24,
    blockbusters: int = 6,
) -> pa.Table:
    """Return events in the curated table's schema with a planted cluster structure.

    Each member likes 6 to 12 titles: four in five from their own cluster, drawn with a
    long-tailed appeal, and the rest among the blockbusters. A liked title gets a PLAY,
    sometimes followed by a COMPLETE, THUMBS_UP or ADD_TO_LIST of the same title; every member
    also gets impressions and a thumbs-down of random titles, which are not positives.
    """
    rng = np.random.default_rng(seed)
    catalog = clusters * titles_per_cluster + blockbusters
    title_ids = [f"t{index:04d}" for index in range(catalog)]
    rows: list[tuple] = []

    def add(member: str, title: int, event_type: str, time: datetime) -> None:
        watch = int(rng.integers(60, 7200)) if event_type in ("PLAY", "COMPLETE") else None
        rows.append(
            (
                f"e{len(rows):07d}",
                member,
                title_ids[title],
                event_type,
                time,
                watch,
                str(rng.choice(["tv", "mobile", "web"])),
                str(rng.choice(["US", "BR", "DE"])),
            )
        )

    # Within a cluster some titles appeal more than others, a long tail as in any catalog;
    # the titles are numbered in order of appeal.
    appeal = 1.0 / np.arange(1, titles_per_cluster + 1) ** 0.8
    appeal /= appeal.sum()
    for index in range(members):
        member = f"m{index:05d}"
        cluster = index % clusters
        own = cluster * titles_per_cluster + np.arange(titles_per_cluster)
        liked = int(rng.integers(6, 13))
        from_blockbusters = int(rng.binomial(liked, 0.2))
        chosen = np.concatenate(
            [
                rng.choice(own, liked - from_blockbusters, replace=False, p=appeal),
                rng.choice(
                    catalog - blockbusters + np.arange(blockbusters),
                    min(from_blockbusters, blockbusters),
                    replace=False,
                ),
            ]
        )
        for title in chosen:
            time = START + timedelta(seconds=int(rng.integers(0, DAYS * 86_400)))
            add(member, int(title), "PLAY", time)
            if rng.random() < 0.4:
                later = str(rng.choice(["COMPLETE", "THUMBS_UP", "ADD_TO_LIST"]))
                add(member, int(title), later, time + timedelta(minutes=30))
        for title in rng.choice(catalog, 8, replace=False):
            time = START + timedelta(seconds=int(rng.integers(0, DAYS * 86_400)))
            add(member, int(title), "IMPRESSION", time)
        title = int(rng.integers(catalog))
        add(member, title, "THUMBS_DOWN", START + timedelta(days=DAYS - 1, hours=23))
    return pa.Table.from_pylist(
        [dict(zip(EVENT_SCHEMA.names, row, strict=True)) for row in rows], schema=EVENT_SCHEMA
    )


def write_hive_partitions(table: pa.Table, root: Path, files_per_day: int = 2) -> Path:
    """Write ``table`` as ``root/event_date=YYYY-MM-DD/part-NNNNN.parquet`` plus ``_SUCCESS``.

    The files hold no ``event_date`` column, as Spark's partitioned writes do.
    """
    dates = [time.date() for time in table.column("event_time").to_pylist()]
    for day in sorted(set(dates)):
        rows = [index for index, value in enumerate(dates) if value == day]
        folder = root / f"event_date={day.isoformat()}"
        folder.mkdir(parents=True)
        for part, chunk in enumerate(np.array_split(np.array(rows), files_per_day)):
            pq.write_table(table.take(chunk), folder / f"part-{part:05d}.parquet")
    (root / "_SUCCESS").touch()
    return root


@dataclass(frozen=True)
class JobRun:
    """The outcome of one in-process run of the job."""

    exit_code: int
    stdout: str
    stderr: str
    model_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    failure_file: Path

    def metric_lines(self, name: str) -> list[float]:
        """Return the values of the ``METRIC <name>=<value>`` lines, in order."""
        prefix = f"METRIC {name}="
        return [float(line[len(prefix) :]) for line in self.stdout.splitlines() if prefix in line]


RunJob = Callable[..., JobRun]


@pytest.fixture(scope="session", autouse=True)
def _single_torch_thread() -> None:
    # Two pytest-xdist workers on two cores would otherwise each start two compute threads.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fast_args() -> tuple[str, ...]:
    """Hyperparameters that train well on the planted data in about a second."""
    return FAST_HYPERPARAMETERS


@pytest.fixture(scope="session")
def fast_epochs() -> int:
    """The ``--epochs`` of :func:`fast_args`."""
    return int(FAST_HYPERPARAMETERS[FAST_HYPERPARAMETERS.index("--epochs") + 1])


@pytest.fixture(scope="session")
def planted_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The planted interactions as a Hive-partitioned Parquet channel folder."""
    root = tmp_path_factory.mktemp("channel") / "interactions"
    return write_hive_partitions(planted_interactions(), root)


def _run_job(workdir: Path, channel: Path, args: Sequence[str], fresh: bool) -> JobRun:
    paths = {
        "model_dir": workdir / "model",
        "output_data_dir": workdir / "output" / "data",
        "checkpoint_dir": workdir / "checkpoints",
        "failure_file": workdir / "output" / "failure",
    }
    if fresh:
        workdir.mkdir(parents=True)
    argv = [
        "--interactions",
        str(channel),
        *(item for key, path in paths.items() for item in (f"--{key.replace('_', '-')}", path)),
        *args,
    ]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        exit_code = train.main([str(item) for item in argv])
    return JobRun(exit_code, stdout.getvalue(), stderr.getvalue(), **paths)


@pytest.fixture
def run_job(tmp_path: Path, planted_channel: Path) -> RunJob:
    """Run the job in-process with its folders under a fresh directory per call.

    ``run_job(*args, channel=..., workdir=...)`` passes ``args`` after the folder options;
    ``channel`` defaults to the planted data and reusing a ``workdir`` reuses its
    checkpoints.
    """
    count = 0

    def run(*args: str, channel: Path = planted_channel, workdir: Path | None = None) -> JobRun:
        nonlocal count
        fresh = workdir is None
        if workdir is None:
            count += 1
            workdir = tmp_path / f"run-{count}"
        return _run_job(workdir, channel, args, fresh)

    return run


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, planted_channel: Path) -> JobRun:
    """One successful run on the planted data, shared by the tests that only read it."""
    workdir = tmp_path_factory.mktemp("trained") / "job"
    return _run_job(workdir, planted_channel, FAST_HYPERPARAMETERS, fresh=True)
