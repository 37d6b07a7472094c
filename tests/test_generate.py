"""Synthetic data: the raw tables and JSON shapes ingest writes, the sample's statistics, seeded."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest

from poolcast.ops.generate import _chunks, _pool_ids, generate
from poolcast.store import Store
from poolcast.store.queries import latest_data_day, read_snapshots

END = dt.date(2025, 6, 5)


def _history(pools: int, days: int, seed: int, chunk_rows: int) -> pa.Table:
    ids = _pool_ids(np.random.default_rng(seed), pools)
    return pa.concat_tables(list(_chunks(ids, days, END, seed, chunk_rows)))


def test_same_seed_same_rows_whatever_the_chunk_size() -> None:
    a = _history(1_200, 60, seed=7, chunk_rows=5_000)
    b = _history(1_200, 60, seed=7, chunk_rows=10**9)
    assert a.equals(b)
    assert not a.equals(_history(1_200, 60, seed=8, chunk_rows=10**9))


def test_records_have_the_chart_api_shape_and_the_sample_statistics() -> None:
    table = _history(1_000, 365, seed=1, chunk_rows=10**9)
    records = [json.loads(r) for r in table.column("raw_json_data").to_pylist()]
    assert set(records[0]) == {
        "apy",
        "apyBase",
        "apyBase7d",
        "apyReward",
        "il7d",
        "timestamp",
        "tvlUsd",
    }
    assert all(r["timestamp"].endswith("Z") for r in records[:1000])
    apy = np.array([r["apy"] for r in records])
    tvl = np.array([r["tvlUsd"] for r in records])
    assert 3.0 < np.median(apy) < 7.0  # the sample: 4.9
    assert 0.03 < np.mean(apy == 0) < 0.12  # the sample: 6.4 % zero
    assert apy.max() > 100  # spikes
    assert 1e5 < np.median(tvl) < 1e7 and tvl.min() >= 1_000
    pools = table.column("pool_id").to_numpy(zero_copy_only=False)
    days = table.column("timestamp").cast(pa.date32()).to_numpy(zero_copy_only=False)
    pairs = {(p, d) for p, d in zip(pools, days, strict=True)}
    assert len(pairs) < table.num_rows  # several snapshots on some days
    firsts = {}
    for p, d in pairs:
        firsts[p] = min(firsts.get(p, d), d)
    late = np.mean([d > np.datetime64(END - dt.timedelta(days=364)) for d in firsts.values()])
    assert 0.2 < late < 0.6  # pools start on different days
    per_pool = {p: 0 for p in firsts}
    for p, _ in pairs:
        per_pool[p] += 1
    assert len(pairs) < 0.99 * sum(  # gaps inside series
        (np.datetime64(END) - firsts[p]).astype(int) + 1 for p in firsts
    )


@pytest.mark.parametrize("pools", [40])
def test_writes_through_the_store_and_a_rerun_changes_nothing(store: Store, pools: int) -> None:
    report = generate(store, pools, 90, seed=3)
    assert report.written["raw_defillama_pool_history"] == report.snapshots > 0
    assert report.written["pools"] == pools
    assert latest_data_day(store) == END
    snapshots = read_snapshots(store, END, 90)
    assert snapshots.num_rows == report.snapshots
    assert snapshots.column("apy").null_count == 0
    again = generate(store, pools, 90, seed=3)
    assert sum(again.written.values()) == 0


def test_appending_into_an_empty_history_writes_what_merging_writes(store: Store) -> None:
    """An empty history table takes plain appends; one with rows takes merges: same rows."""
    from poolcast.store import open_store

    other = open_store(":memory:")
    other.init_schema()
    try:
        other.execute(
            "INSERT INTO raw_defillama_pool_history VALUES ('zz-placeholder', "
            "TIMESTAMP '2000-01-01 00:00:00', '{}')"
        )
        merged = generate(other, 30, 40, seed=5)
        other.execute("DELETE FROM raw_defillama_pool_history WHERE pool_id = 'zz-placeholder'")
        appended = generate(store, 30, 40, seed=5)
        assert appended.written == merged.written
        sql = (
            "SELECT pool_id, timestamp, CAST(raw_json_data AS TEXT) AS raw "
            "FROM raw_defillama_pool_history ORDER BY pool_id, timestamp"
        )
        a, b = store.fetch_arrow(sql), other.fetch_arrow(sql)
        assert a.num_rows == appended.snapshots > 0
        assert [json.loads(r) for r in a.column("raw").to_pylist()] == [
            json.loads(r) for r in b.column("raw").to_pylist()
        ]
        assert a.select(["pool_id", "timestamp"]).equals(b.select(["pool_id", "timestamp"]))
    finally:
        other.close()
