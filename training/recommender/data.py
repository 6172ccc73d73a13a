"""Reading the curated ``member_interactions`` table and splitting it for training.

The table is a directory of Parquet files, possibly Hive-partitioned
(``event_date=YYYY-MM-DD/part-*.parquet``). Only the columns in :data:`REQUIRED_COLUMNS` are
read; the partition columns and the other columns of the table are not needed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

POSITIVE_EVENT_TYPES = ("PLAY", "COMPLETE", "THUMBS_UP", "ADD_TO_LIST")
REQUIRED_COLUMNS = ("member_id", "title_id", "event_type", "event_time")


class InputDataError(Exception):
    """Raised when the interactions channel cannot yield a training set and a holdout."""


@dataclass(frozen=True)
class Interactions:
    """The positive interactions of a channel, one row per event.

    ``positives`` has the columns ``member_id``, ``title_id`` (strings) and ``event_time``.
    """

    positives: pd.DataFrame
    files: int
    rows: int


@dataclass(frozen=True)
class TrainingSplit:
    """Indexed leave-last-out split of the deduplicated positives.

    Members and titles are indexed in sorted order of their ids; only titles with a training
    positive are indexed. ``train_members[i]`` liked ``train_titles[i]``. Each holdout member
    (one with at least two positives) has one held-out title in ``holdout_titles``, or -1 when
    that title has no training positive from anyone and so cannot be ranked.
    """

    member_ids: list[str]
    title_ids: list[str]
    train_members: np.ndarray
    train_titles: np.ndarray
    holdout_members: np.ndarray
    holdout_titles: np.ndarray

    @property
    def num_members(self) -> int:
        return len(self.member_ids)

    @property
    def num_titles(self) -> int:
        return len(self.title_ids)

    def fingerprint(self) -> str:
        """Return a digest that changes whenever the ids or any training pair change."""
        digest = hashlib.sha256()
        for ids in (self.member_ids, self.title_ids):
            digest.update("\x1f".join(ids).encode())
            digest.update(b"\x1e")
        for array in (self.train_members, self.train_titles):
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        return digest.hexdigest()


def find_parquet_files(channel: Path) -> list[Path]:
    """Return the ``*.parquet`` files under ``channel`` in sorted order.

    Files and folders whose names start with ``_`` or ``.`` (``_SUCCESS``, ``_temporary``,
    ``.crc`` files) are skipped, as Spark and Hive do. Raises :class:`InputDataError` when
    ``channel`` is not a directory, is empty, or holds no Parquet file.
    """
    if not channel.is_dir():
        raise InputDataError(f"interactions channel {channel} does not exist or is not a folder")
    if not any(channel.iterdir()):
        raise InputDataError(f"interactions channel {channel} is empty")
    files = sorted(
        path
        for path in channel.rglob("*.parquet")
        if path.is_file()
        and not any(part.startswith(("_", ".")) for part in path.relative_to(channel).parts)
    )
    if not files:
        raise InputDataError(f"interactions channel {channel} holds no Parquet files")
    return files


def read_interactions(channel: Path) -> Interactions:
    """Read the positive events of the interactions table under ``channel``.

    Every file must have the :data:`REQUIRED_COLUMNS`, with ``event_time`` a timestamp. Rows
    with a null member, title or time are dropped. Raises :class:`InputDataError` when the
    channel has no files, a file is unreadable or lacks a column, or no positive event exists.
    """
    files = find_parquet_files(channel)
    schemas = []
    for path in files:
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputDataError(f"cannot read Parquet file {path}: {_one_line(exc)}") from None
        missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
        if missing:
            raise InputDataError(
                f"Parquet file {path} lacks required columns: {', '.join(missing)}"
            )
        event_time = schema.field("event_time").type
        if not pa.types.is_timestamp(event_time):
            raise InputDataError(
                f"column event_time of Parquet file {path} is {event_time}, not a timestamp"
            )
        schemas.append(pa.schema([schema.field(name) for name in REQUIRED_COLUMNS]))

    try:
        # Files written on different days may differ in timestamp unit or string type; the
        # scan casts every file to one schema that holds them all.
        schema = pa.unify_schemas(schemas, promote_options="permissive")
        dataset = ds.dataset([str(path) for path in files], schema=schema, format="parquet")
        rows = dataset.count_rows()
        table = dataset.to_table(
            columns=["member_id", "title_id", "event_time"],
            filter=ds.field("event_type").isin(POSITIVE_EVENT_TYPES),
        )
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(f"cannot read the interactions table: {_one_line(exc)}") from None

    positives = table.to_pandas().dropna()
    if positives.empty:
        raise InputDataError(
            f"no positive interactions ({', '.join(POSITIVE_EVENT_TYPES)}) among {rows} rows "
            f"in {len(files)} Parquet files under {channel}"
        )
    positives = positives.astype({"member_id": str, "title_id": str})
    return Interactions(positives=positives.reset_index(drop=True), files=len(files), rows=rows)


def split_leave_last_out(positives: pd.DataFrame) -> TrainingSplit:
    """Deduplicate ``positives`` per member and title, then hold out each member's latest one.

    A member-title pair counts once, at the time of its first positive event: the holdout is
    the title a member most recently started engaging with, so later events on a title the
    member already liked do not turn an old title into the one to predict. Members with at
    least two pairs give their latest pair (ties broken by the larger title id) to the
    holdout and the rest to training; members with one pair train only. Raises
    :class:`InputDataError` when no member has two pairs.
    """
    pairs = (
        positives.groupby(["member_id", "title_id"], as_index=False, sort=False)["event_time"]
        .min()
        .sort_values(["member_id", "event_time", "title_id"], kind="stable")
        .reset_index(drop=True)
    )
    pair_counts = pairs.groupby("member_id")["member_id"].transform("size")
    is_last = ~pairs.duplicated("member_id", keep="last")
    in_holdout = is_last & (pair_counts >= 2)
    if not in_holdout.any():
        raise InputDataError(
            f"no member has at least 2 positive interactions among {pairs['member_id'].nunique()} "
            "members, so there is no holdout to evaluate on"
        )
    train = pairs[~in_holdout]
    holdout = pairs[in_holdout]

    member_ids = sorted(train["member_id"].unique())
    title_ids = sorted(train["title_id"].unique())
    member_index = pd.Series(np.arange(len(member_ids), dtype=np.int64), index=member_ids)
    title_index = pd.Series(np.arange(len(title_ids), dtype=np.int64), index=title_ids)
    holdout_titles = holdout["title_id"].map(title_index).fillna(-1).astype(np.int64)
    return TrainingSplit(
        member_ids=member_ids,
        title_ids=title_ids,
        train_members=train["member_id"].map(member_index).to_numpy(dtype=np.int64, copy=True),
        train_titles=train["title_id"].map(title_index).to_numpy(dtype=np.int64, copy=True),
        holdout_members=holdout["member_id"].map(member_index).to_numpy(dtype=np.int64, copy=True),
        holdout_titles=holdout_titles.to_numpy(dtype=np.int64, copy=True),
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
