"""The dense metrics engine gives the rows the SQL definition gives, and its bits do not depend on
where the computed range starts (what incremental runs rely on)."""

from __future__ import annotations

import datetime as dt
import math
import random

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from poolcast.engines import _dense
from poolcast.engines._dense import compute_metrics
from poolcast.engines.local import compute_metrics_sql

START = dt.date(2024, 1, 1)


@st.composite
def panels(draw: st.DrawFn) -> tuple[pa.Table, pa.Table, dt.date]:
    rows = []
    span = 1
    for p in range(draw(st.integers(1, 5))):
        start = draw(st.integers(0, 30))
        length = draw(st.integers(1, 90))
        for i in range(length):
            kind = draw(st.sampled_from(["day", "day", "day", "gap", "two", "null"]))
            if kind == "gap" and 0 < i < length - 1:
                continue
            ts = dt.datetime.combine(START + dt.timedelta(days=start + i), dt.time(23))
            apy = None if kind == "null" else draw(st.floats(0, 500, allow_nan=False))
            rows.append((f"p{p:02d}", ts, apy, draw(st.floats(0, 1e9, allow_nan=False))))
            if kind == "two":
                rows.append((f"p{p:02d}", ts - dt.timedelta(hours=5), 1.0, 2.0))
        span = max(span, start + length)
    rows = draw(st.permutations(rows))
    as_of = START + dt.timedelta(days=draw(st.integers(0, span + 40)))
    snapshots = pa.table(
        {
            "pool_id": pa.array([r[0] for r in rows], pa.string()),
            "timestamp": pa.array([r[1] for r in rows], pa.timestamp("us")),
            "apy": pa.array([r[2] for r in rows], pa.float64()),
            "tvl_usd": pa.array([r[3] for r in rows], pa.float64()),
        }
    )
    days = [START - dt.timedelta(days=3) + dt.timedelta(days=i) for i in range(0, span + 60, 2)]
    market = pa.table(
        {
            "source": pa.array(["ETH"] * len(days) + ["gas"] * len(days), pa.string()),
            "date": pa.array(days + days, pa.date32()),
            "value": pa.array([3000.0 + i for i in range(2 * len(days))], pa.float64()),
        }
    )
    return snapshots, market, as_of


def _same(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)  # type: ignore[arg-type]
    return a == b


@settings(max_examples=150, deadline=None)
@given(panels())
def test_dense_engine_matches_the_sql_definition(panel: tuple[pa.Table, pa.Table, dt.date]) -> None:
    snapshots, market, as_of = panel
    want = compute_metrics_sql(snapshots, market, as_of)
    got = compute_metrics(snapshots, market, as_of)
    assert got.schema == want.schema
    assert got.num_rows == want.num_rows
    for g, w in zip(got.to_pylist(), want.to_pylist(), strict=True):
        assert all(_same(g[k], w[k]) for k in w), (g, w)


@settings(max_examples=60, deadline=None)
@given(panels(), st.integers(1, 60))
def test_bits_do_not_depend_on_where_the_range_starts(
    panel: tuple[pa.Table, pa.Table, dt.date], cut: int
) -> None:
    """Dropping early snapshots changes no bit of the rows whose windows they cannot reach."""
    snapshots, market, as_of = panel
    full = compute_metrics(snapshots, market, as_of, threads=1)
    since = START + dt.timedelta(days=cut + 61)
    start = pa.scalar(
        dt.datetime.combine(START + dt.timedelta(days=cut), dt.time()), pa.timestamp("us")
    )
    part = compute_metrics(
        snapshots.filter(pc.greater_equal(snapshots["timestamp"], start)), market, as_of
    )
    day = pa.scalar(since, pa.date32())
    full_rows = full.filter(pc.greater_equal(full["date"], day)).to_pylist()
    part_rows = {
        (r["pool_id"], r["date"]): r
        for r in part.filter(pc.greater_equal(part["date"], day)).to_pylist()
    }
    for row in full_rows:
        other = part_rows.get((row["pool_id"], row["date"]))
        if other is not None:  # a pool's grid may start later without its early snapshots
            assert other == row


def _bits(table: pa.Table) -> list[tuple]:
    """Rows with floats as their IEEE bit patterns: equality here is bit for bit."""
    import struct

    def key(v: object) -> object:
        return struct.pack("<d", v) if isinstance(v, float) else v

    return [tuple(key(v) for v in row.values()) for row in table.to_pylist()]


@settings(max_examples=60, deadline=None)
@given(panels(), st.randoms(use_true_random=False), st.integers(1, 3))
def test_bits_do_not_depend_on_row_order_or_chunking(
    panel: tuple[pa.Table, pa.Table, dt.date], rnd: random.Random, chunk: int
) -> None:
    """Rows arrive in any order (stores return them unsorted) and pools are split into chunks of
    any size: the output is the same, bit for bit."""
    snapshots, market, as_of = panel
    want = _bits(compute_metrics(snapshots, market, as_of, threads=1))
    order = list(range(snapshots.num_rows))
    rnd.shuffle(order)
    shuffled = snapshots.take(pa.array(order, pa.int64()))
    by_pool = snapshots.sort_by([("pool_id", "ascending"), ("timestamp", "ascending")])
    saved = _dense.CHUNK_POOLS
    try:
        _dense.CHUNK_POOLS = chunk
        assert _bits(compute_metrics(shuffled, market, as_of, threads=2)) == want
        assert _bits(compute_metrics(by_pool, market, as_of, threads=2)) == want
    finally:
        _dense.CHUNK_POOLS = saved


def test_of_equal_timestamps_the_later_row_wins() -> None:
    """Two snapshots of one pool at the same instant (no primary key in an Arrow input): the later
    input row counts, as a stable sort by time would have it; the latest time always wins."""
    at = dt.datetime(2024, 1, 1, 23)
    snapshots = pa.table(
        {
            "pool_id": ["a", "a", "a", "b", "b"],
            "timestamp": pa.array(
                [at, at, at - dt.timedelta(hours=1), at, at + dt.timedelta(seconds=1)],
                pa.timestamp("us"),
            ),
            "apy": [1.0, 2.0, 3.0, 4.0, 5.0],
            "tvl_usd": [10.0, 20.0, 30.0, 40.0, 50.0],
        }
    )
    market = pa.table(
        {
            "source": pa.array([], pa.string()),
            "date": pa.array([], pa.date32()),
            "value": pa.array([], pa.float64()),
        }
    )
    out = compute_metrics(snapshots, market, at.date()).to_pylist()
    assert [(r["pool_id"], r["actual_apy"], r["actual_tvl"]) for r in out] == [
        ("a", 2.0, 20.0),
        ("b", 5.0, 50.0),
    ]
