"""Reading the curated ``member_interactions`` table and splitting it for training.

The table is a directory of Parquet files, possibly Hive-partitioned
(``event_date=YYYY-MM-DD/part-*.parquet``). Only the columns in :data:`REQUIRED_COLUMNS` are
read, and only the positive events are kept; the partition columns and the other columns of
the table are not needed.

Memory: the positive events are held once, as Arrow columns, while their ids are turned into
integer codes; each column is released as soon as its codes exist, so from then on the job
holds only integer arrays (16 bytes per positive event) and one copy of each distinct member
and title id. No pandas frame is built.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

POSITIVE_EVENT_TYPES = ("PLAY", "COMPLETE", "THUMBS_UP", "ADD_TO_LIST")
REQUIRED_COLUMNS = ("member_id", "title_id", "event_type", "event_time")
_ID_COLUMNS = ("member_id", "title_id")


class InputDataError(Exception):
    """Raised when the interactions channel cannot yield a training set and a holdout."""


@dataclass(frozen=True)
class Positives:
    """Positive events as integer codes: ``members[i]`` liked ``titles[i]`` at ``times[i]``.

    Codes (int32) index ``member_ids`` and ``title_ids``, the distinct ids in sorted order;
    ``times`` (int64) share one unit for all events, so they only order the events.
    """

    member_ids: list[str]
    title_ids: list[str]
    members: np.ndarray
    titles: np.ndarray
    times: np.ndarray

    def __len__(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class Interactions:
    """The positive events of a channel, and how many files and rows they were read from."""

    positives: Positives
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
    schemas = [_required_schema(path) for path in files]
    try:
        # Files written on different days may differ in timestamp unit or string type; the
        # scan casts every file to one schema that holds them all.
        schema = pa.unify_schemas(schemas, promote_options="permissive")
        dataset = ds.dataset([str(path) for path in files], schema=schema, format="parquet")
        rows = dataset.count_rows()
        table = dataset.to_table(
            columns=["member_id", "title_id", "event_time"],
            filter=ds.field("event_type").isin(POSITIVE_EVENT_TYPES)
            & ds.field("member_id").is_valid()
            & ds.field("title_id").is_valid()
            & ds.field("event_time").is_valid(),
        )
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(f"cannot read the interactions table: {_one_line(exc)}") from None

    if table.num_rows == 0:
        raise InputDataError(
            f"no positive interactions ({', '.join(POSITIVE_EVENT_TYPES)}) among {rows} rows "
            f"in {len(files)} Parquet files under {channel}"
        )
    return Interactions(positives=encode_positives(table), files=len(files), rows=rows)


def encode_positives(table: pa.Table) -> Positives:
    """Turn a table of ``member_id``, ``title_id`` and timestamp ``event_time`` into codes.

    Ids that are not strings are compared as their string form. Each column of ``table`` is
    dropped from the working table once encoded, so its buffers are freed as soon as the
    caller lets go of ``table``.
    """
    codes: dict[str, tuple[list[str], np.ndarray]] = {}
    for name in _ID_COLUMNS:
        column = table.column(name)
        if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
            column = column.cast(pa.string())
        distinct = pc.unique(column)
        distinct = distinct.take(pc.array_sort_indices(distinct))
        indices = pc.index_in(column, value_set=distinct)
        codes[name] = (distinct.to_pylist(), _to_numpy(indices, np.int32))
        del column, indices
        table = table.drop_columns([name])
    times = _to_numpy(table.column("event_time").cast(pa.int64()), np.int64)
    (member_ids, members), (title_ids, titles) = codes["member_id"], codes["title_id"]
    return Positives(member_ids, title_ids, members, titles, times)


def split_leave_last_out(positives: Positives) -> TrainingSplit:
    """Deduplicate ``positives`` per member and title, then hold out each member's latest one.

    A member-title pair counts once, at the time of its first positive event: the holdout is
    the title a member most recently started engaging with, so later events on a title the
    member already liked do not turn an old title into the one to predict. Members with at
    least two pairs give their latest pair (ties broken by the larger title id) to the
    holdout and the rest to training; members with one pair train only. Raises
    :class:`InputDataError` when no member has two pairs.
    """
    members, titles, times = _first_positive_per_pair(positives)
    # Codes follow the sorted ids, so this is the order of member id, time, then title id.
    order = np.lexsort((titles, times, members))
    members, titles = members[order], titles[order]
    del times, order
    is_last = np.ones(len(members), dtype=bool)
    is_last[:-1] = members[1:] != members[:-1]
    pair_counts = np.bincount(members, minlength=len(positives.member_ids))
    in_holdout = is_last & (pair_counts[members] >= 2)
    if not in_holdout.any():
        raise InputDataError(
            "no member has at least 2 positive interactions among "
            f"{len(positives.member_ids)} members, so there is no holdout to evaluate on"
        )
    in_train = ~in_holdout
    member_rows, member_ids = _index(members[in_train], positives.member_ids)
    title_rows, title_ids = _index(titles[in_train], positives.title_ids)
    return TrainingSplit(
        member_ids=member_ids,
        title_ids=title_ids,
        train_members=member_rows[members[in_train]],
        train_titles=title_rows[titles[in_train]],
        holdout_members=member_rows[members[in_holdout]],
        holdout_titles=title_rows[titles[in_holdout]],
    )


def _required_schema(path: Path) -> pa.Schema:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(f"cannot read Parquet file {path}: {_one_line(exc)}") from None
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        raise InputDataError(f"Parquet file {path} lacks required columns: {', '.join(missing)}")
    event_time = schema.field("event_time").type
    if not pa.types.is_timestamp(event_time):
        raise InputDataError(
            f"column event_time of Parquet file {path} is {event_time}, not a timestamp"
        )
    return pa.schema([schema.field(name) for name in REQUIRED_COLUMNS])


def _first_positive_per_pair(positives: Positives) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # One entry per member-title pair, at the pair's earliest time.
    keys = positives.members.astype(np.int64) * len(positives.title_ids) + positives.titles
    order = np.lexsort((positives.times, keys))
    sorted_keys = keys[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    events = order[first]
    return positives.members[events], positives.titles[events], positives.times[events]


def _index(codes: np.ndarray, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    # Rows for the codes that occur, in code (so id) order; codes that do not occur map to -1.
    used = np.unique(codes)
    rows = np.full(len(ids), -1, dtype=np.int64)
    rows[used] = np.arange(len(used), dtype=np.int64)
    return rows, [ids[code] for code in used.tolist()]


def _to_numpy(values: pa.ChunkedArray, dtype: type[np.integer]) -> np.ndarray:
    # The scan dropped nulls, so every chunk converts without a mask.
    return values.to_numpy().astype(dtype, copy=False)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
