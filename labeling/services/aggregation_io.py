"""An aggregation run's bulk data: judgments from the database into numpy arrays, and the
score and label rows that changed back out.

PostgreSQL: rows travel as binary COPY. Every column is fixed-width and NOT NULL, so a COPY
stream is an array of identical records that numpy reads in place (`np.frombuffer` with a
big-endian record dtype) -- no Python object per row. A million judgments are about 40 MB
on the way in, where tuples of Python ints and a dict per judgment took about 0.5 GB.
Other databases (SQLite, embedded mode) run the same statements through `fetchmany`.

Writes compare with the stored rows first and touch only those that changed: a rerun on
the same judgments writes nothing, and a run after a few judgments rewrites the rows whose
values moved. Changed rows go to a temporary table by COPY, then one UPDATE ... FROM and
one INSERT ... SELECT apply them.

Call everything here while holding the campaign's run lock (labeling/services/aggregation.py);
the writes also inside the transaction that holds its AggregationState row lock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from django.db import connection, transaction
from django.utils import timezone

from annotation.models import Judgment, Pair

from ..models import ItemScore, PairLabel

# Choice codes of the judgments' stream, per criterion.
CHOICE_CODES = {"a": 0, "b": 1, "tie": 2, "both_bad": 3}
NO_CHOICE = 4  # the judgment has no (known) choice for this criterion
# A score is rewritten when it moved by more than this (logit units: far below anything a
# ranking or a probability shows, far above the float noise of refitting the same data).
SCORE_CHANGE = 1e-9

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = _SIGNATURE + struct.pack(">ii", 0, 0)
_TRAILER = b"\xff\xff"
_FETCH_ROWS = 10_000

Columns = dict[str, npt.NDArray[Any]]


def _record_dtype(columns: list[tuple[str, str]]) -> np.dtype:
    """The binary COPY record of these (name, numpy type) columns: a field count, then per
    field its byte length and its big-endian value."""
    fields: list[tuple[str, str]] = [("_count", ">i2")]
    for name, kind in columns:
        fields += [(f"_{name}_length", ">i4"), (name, np.dtype(kind).newbyteorder(">").str)]
    return np.dtype(fields)


def _copy_out(
    sql: str, params: list[Any], columns: list[tuple[str, str]], rows_hint: int
) -> Columns:
    record = _record_dtype(columns)
    buffer = bytearray(len(_HEADER) + rows_hint * record.itemsize + len(_TRAILER))
    end = 0
    with (
        connection.cursor() as cursor,
        cursor.copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)", params) as copy,
    ):
        for chunk in copy:
            size = len(chunk)
            if end + size > len(buffer):  # more rows than the hint said
                buffer.extend(bytes(max(end + size - len(buffer), len(buffer))))
            buffer[end : end + size] = chunk
            end += size
    if bytes(buffer[: len(_SIGNATURE)]) != _SIGNATURE:
        raise ValueError("not a binary COPY stream")
    (extension,) = struct.unpack_from(">i", buffer, len(_SIGNATURE) + 4)
    start = len(_HEADER) + extension
    body = np.frombuffer(
        buffer, dtype=record, count=(end - len(_TRAILER) - start) // record.itemsize, offset=start
    )
    return {name: body[name].astype(kind) for name, kind in columns}


def _fetch(sql: str, params: list[Any], columns: list[tuple[str, str]], rows_hint: int) -> Columns:
    out = {name: np.empty(max(rows_hint, 1), dtype=kind) for name, kind in columns}
    end = 0
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(_FETCH_ROWS):
            if end + len(rows) > len(next(iter(out.values()))):
                out = {name: np.resize(a, 2 * (end + len(rows))) for name, a in out.items()}
            for position, (name, kind) in enumerate(columns):
                out[name][end : end + len(rows)] = np.fromiter(
                    (row[position] for row in rows), dtype=kind, count=len(rows)
                )
            end += len(rows)
    return {name: a[:end] for name, a in out.items()}


def rows_read(
    *, sql: str, params: list[Any], columns: list[tuple[str, str]], rows_hint: int = 0
) -> Columns:
    """Run ``sql`` (its select list matching ``columns``: name, numpy type; no NULLs) and
    return one array per column. ``rows_hint``, a count taken in the same snapshot, sizes
    the buffers up front."""
    if connection.vendor == "postgresql":
        return _copy_out(sql, params, columns, rows_hint)
    return _fetch(sql, params, columns, rows_hint)


# --- the judgments -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgments:
    """A campaign's active judgments, one row each: the pair, its two items (item_a < item_b
    by id), and per criterion a choice code (CHOICE_CODES, NO_CHOICE)."""

    pair: npt.NDArray[np.int64]
    item_a: npt.NDArray[np.int64]
    item_b: npt.NDArray[np.int64]
    choices: dict[int, npt.NDArray[np.int16]]  # criterion id -> codes

    def __len__(self) -> int:
        return int(self.pair.size)


def judgments_read(*, campaign_id: int, criteria: list[tuple[int, str]]) -> Judgments:
    """The campaign's active judgments as arrays, counted and streamed in one snapshot
    (REPEATABLE READ), so that the count that sizes the buffers is that of the stream."""
    postgres = connection.vendor == "postgresql"
    choice_columns, choice_params = [], []
    for n, (_, slug) in enumerate(criteria):
        key = "j.choices ->> %s" if postgres else "json_extract(j.choices, %s)"
        cases = " ".join(f"WHEN '{text}' THEN {code}" for text, code in CHOICE_CODES.items())
        choice_columns.append(f"CAST(CASE {key} {cases} ELSE {NO_CHOICE} END AS smallint) AS c{n}")
        choice_params.append(slug if postgres else f'$."{slug}"')
    judgment, pair = Judgment._meta.db_table, Pair._meta.db_table
    where = "WHERE j.campaign_id = %s AND j.status = %s"
    sql = (
        "SELECT CAST(j.pair_id AS bigint), CAST(p.item_a_id AS bigint), "
        f"CAST(p.item_b_id AS bigint){''.join(', ' + c for c in choice_columns)} "
        f"FROM {judgment} j JOIN {pair} p ON p.id = j.pair_id {where}"
    )  # in no particular order: sums of halves and ones are exact in any order
    columns = [("pair", "i8"), ("item_a", "i8"), ("item_b", "i8")]
    columns += [(f"c{n}", "i2") for n in range(len(criteria))]
    params: list[int | str] = [campaign_id, Judgment.Status.ACTIVE]
    # A transaction of its own: the count and the stream then see one snapshot. (Inside a
    # caller's transaction the isolation is the caller's; a count that is off only costs a
    # larger buffer.)
    repeatable = postgres and not connection.in_atomic_block
    with transaction.atomic():
        with connection.cursor() as cursor:
            if repeatable:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute(f"SELECT count(*) FROM {judgment} j {where}", params)
            (count,) = cursor.fetchone()
        data = rows_read(
            sql=sql, params=[*choice_params, *params], columns=columns, rows_hint=count
        )
    return Judgments(
        pair=data["pair"],
        item_a=data["item_a"],
        item_b=data["item_b"],
        choices={cid: data[f"c{n}"] for n, (cid, _) in enumerate(criteria)},
    )


# --- the results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Results:
    """Rows of one results table for one campaign: ``key`` (the item, or the pair), the
    criterion, and its two values (score and comparisons, or prefer_a and count)."""

    key: npt.NDArray[np.int64]
    criterion: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    count: npt.NDArray[np.int64]

    @classmethod
    def of(cls, *, key: Any, criterion: int, value: Any, count: Any) -> Results:
        key = np.asarray(key, dtype=np.int64)
        return cls(
            key=key,
            criterion=np.full(key.size, criterion, dtype=np.int64),
            value=np.asarray(value, dtype=np.float64),
            count=np.rint(np.asarray(count, dtype=np.float64)).astype(np.int64),
        )

    @classmethod
    def concatenate(cls, parts: list[Results]) -> Results:
        if not parts:
            return cls.of(key=[], criterion=0, value=[], count=[])
        return cls(
            key=np.concatenate([p.key for p in parts]),
            criterion=np.concatenate([p.criterion for p in parts]),
            value=np.concatenate([p.value for p in parts]),
            count=np.concatenate([p.count for p in parts]),
        )


@dataclass(frozen=True)
class _Table:
    model: Any
    key: str
    value: str
    count: str
    tolerance: float  # a value is rewritten when it moved by more than this


SCORES = _Table(ItemScore, "item_id", "score", "comparisons", SCORE_CHANGE)
LABELS = _Table(PairLabel, "pair_id", "prefer_a", "count", 0.0)
_INSERT, _UPDATE, _DELETE = 0, 1, 2
# One staged row: what to do, to which stored row (0 for an insert), with which values.
_STAGED = [
    ("op", "i2"),
    ("row_id", "i8"),
    ("key_id", "i8"),
    ("criterion_id", "i8"),
    ("val", "f8"),
    ("cnt", "i8"),
]
_STAGED_SQL = {"i2": "smallint", "i8": "bigint", "f8": "double precision"}


def _stored(table: _Table, campaign_id: int) -> tuple[npt.NDArray[np.int64], Results]:
    q = connection.ops.quote_name
    data = rows_read(
        sql=f"SELECT CAST(id AS bigint), CAST({table.key} AS bigint), "
        f"CAST(criterion_id AS bigint), CAST({q(table.value)} AS double precision), "
        f"CAST({q(table.count)} AS bigint) FROM {table.model._meta.db_table} "
        "WHERE campaign_id = %s",
        params=[campaign_id],
        columns=[(name, kind) for name, kind in _STAGED if name != "op"],
    )
    return data["row_id"], Results(
        key=data["key_id"], criterion=data["criterion_id"], value=data["val"], count=data["cnt"]
    )


def _changes(
    table: _Table, new: Results, stored_ids: npt.NDArray[np.int64], stored: Results
) -> Columns:
    """The staged rows that turn ``stored`` into ``new``: the rows that moved, the new ones,
    the ones gone."""
    updated, updated_from, inserted, deleted = [], [], [], []
    for criterion in np.union1d(new.criterion, stored.criterion):
        fresh = np.flatnonzero(new.criterion == criterion)
        fresh = fresh[np.argsort(new.key[fresh], kind="stable")]
        old = np.flatnonzero(stored.criterion == criterion)
        at = np.searchsorted(new.key[fresh], stored.key[old])
        found = np.zeros(old.size, dtype=bool)
        inside = at < fresh.size
        found[inside] = new.key[fresh[at[inside]]] == stored.key[old[inside]]
        same_new, same_old = fresh[at[found]], old[found]
        moved = np.abs(new.value[same_new] - stored.value[same_old]) > table.tolerance
        moved |= new.count[same_new] != stored.count[same_old]
        updated.append(stored_ids[same_old[moved]])
        updated_from.append(same_new[moved])
        is_new = np.ones(fresh.size, dtype=bool)
        is_new[at[found]] = False
        inserted.append(fresh[is_new])
        deleted.append(stored_ids[old[~found]])
    update_ids, update_rows, insert_rows, delete_ids = (
        np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        for parts in (updated, updated_from, inserted, deleted)
    )
    rows = np.concatenate([update_rows, insert_rows]).astype(np.int64)
    gone = np.zeros(delete_ids.size)
    return {
        "op": np.repeat(
            np.array([_UPDATE, _INSERT, _DELETE], dtype=np.int16),
            [update_ids.size, insert_rows.size, delete_ids.size],
        ),
        "row_id": np.concatenate([update_ids, np.zeros(insert_rows.size, np.int64), delete_ids]),
        "key_id": np.concatenate([new.key[rows], gone.astype(np.int64)]),
        "criterion_id": np.concatenate([new.criterion[rows], gone.astype(np.int64)]),
        "val": np.concatenate([new.value[rows], gone]),
        "cnt": np.concatenate([new.count[rows], gone.astype(np.int64)]),
    }


def _copy_in(cursor: Any, table: str, columns: list[tuple[str, str]], data: Columns) -> None:
    record = _record_dtype(columns)
    body = np.empty(len(next(iter(data.values()))), dtype=record)
    body["_count"] = len(columns)
    for name, kind in columns:
        body[f"_{name}_length"] = np.dtype(kind).itemsize
        body[name] = data[name]
    names = ", ".join(name for name, _ in columns)
    with cursor.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(_HEADER + body.tobytes() + _TRAILER)


def results_apply(*, table: _Table, campaign_id: int, new: Results) -> dict[str, int]:
    """Make the campaign's stored rows of ``table`` equal ``new``, writing only the rows that
    differ. Returns how many rows were updated, inserted and deleted. Call inside the
    transaction that holds the campaign's AggregationState row lock."""
    stored_ids, stored = _stored(table, campaign_id)
    staged = _changes(table, new, stored_ids, stored)
    counts = {
        "updated": int(np.sum(staged["op"] == _UPDATE)),
        "inserted": int(np.sum(staged["op"] == _INSERT)),
        "deleted": int(np.sum(staged["op"] == _DELETE)),
    }
    if not staged["op"].size:
        return counts
    q = connection.ops.quote_name
    main = table.model._meta.db_table
    temp = q(f"_staged_{main}")
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE {temp} ("
            + ", ".join(f"{name} {_STAGED_SQL[kind]}" for name, kind in _STAGED)
            + ")"
        )
        if connection.vendor == "postgresql":
            _copy_in(cursor, temp, _STAGED, staged)
        else:
            cursor.executemany(
                f"INSERT INTO {temp} VALUES ({', '.join(['%s'] * len(_STAGED))})",
                list(zip(*(staged[name].tolist() for name, _ in _STAGED), strict=True)),
            )
        value, count = q(table.value), q(table.count)
        cursor.execute(
            f"UPDATE {main} SET {value} = s.val, {count} = s.cnt, updated_at = %s "
            f"FROM {temp} s WHERE s.op = {_UPDATE} AND {main}.id = s.row_id",
            [now],
        )
        cursor.execute(
            f"INSERT INTO {main} ({table.key}, criterion_id, campaign_id, {value}, {count}, "
            f"updated_at) SELECT s.key_id, s.criterion_id, %s, s.val, s.cnt, %s FROM {temp} s "
            f"WHERE s.op = {_INSERT}",
            [campaign_id, now],
        )
        cursor.execute(
            f"DELETE FROM {main} WHERE id IN (SELECT s.row_id FROM {temp} s WHERE s.op = {_DELETE})"
        )
        cursor.execute(f"DROP TABLE {temp}")
    return counts
