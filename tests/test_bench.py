"""The benchmark harness on its smoke scenario (so it never rots), and its baseline's semantics.

No timing assertions: speed is measured by `make bench`, not asserted here.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from poolcast.engines.local import compute_metrics
from poolcast.ops.generate import generate
from poolcast.store import open_store
from poolcast.store.queries import latest_data_day, read_market, read_snapshots

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

REQUIRED = {
    "commit",
    "scenario",
    "pools",
    "days",
    "stage",
    "engine",
    "store",
    "wall_s",
    "cpu_s",
    "peak_rss_mb",
    "speedup_vs_baseline",
}


@pytest.mark.slow
def test_smoke_scenario_writes_every_stage_on_both_stores(tmp_path: Path, pg_url: str) -> None:
    out = tmp_path / "results"
    env = {
        **os.environ,
        "BENCH_SCENARIOS": "smoke",
        "BENCH_REPEAT": "1",
        "BENCH_SPARK": "0",
        "BENCH_DIR": str(tmp_path / "work"),
        "BENCH_OUT": str(out),
        "BENCH_PG_URL": pg_url,
    }
    subprocess.run([sys.executable, str(BENCH / "run.py")], env=env, check=True, timeout=600)

    rows = json.loads((out / "latest.json").read_text())
    assert all(REQUIRED <= row.keys() for row in rows)
    stages = {(r["stage"], r["store"]) for r in rows}
    for store in ("duckdb", "postgres"):
        for stage in (
            "generate",
            "store_read_raw",
            "store_write_metrics",
            "train_all_horizons",
            "run_full",
            "run_incremental",
        ):
            assert (stage, store) in stages
    local = next(r for r in rows if r["stage"] == "metrics" and r["engine"] == "local")
    base = next(r for r in rows if r["stage"] == "metrics" and r["engine"] == "pandas-loop")
    assert local["speedup_vs_baseline"] == pytest.approx(base["wall_s"] / local["wall_s"], rel=0.05)
    assert all(r["wall_s"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    assert "| metrics | local |" in (out / "latest.md").read_text()
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _close(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)  # type: ignore[arg-type]
    return a == b


def test_baseline_computes_what_the_local_engine_computes(tmp_path: Path) -> None:
    """A speed-up is only meaningful if both sides compute the same table."""
    import baseline_pandas

    with open_store(str(tmp_path / "s.duckdb")) as store:
        store.init_schema()
        generate(store, 60, 150, seed=3)
        as_of = latest_data_day(store)
        assert as_of is not None
        snapshots, market = read_snapshots(store, as_of, 365), read_market(store, as_of)
    local = compute_metrics(snapshots, market, as_of).to_pylist()
    frame = baseline_pandas.compute_metrics(snapshots, market, as_of)
    base = pa.Table.from_pandas(frame, preserve_index=False).to_pylist()
    assert len(base) == len(local)
    for got, want in zip(base, local, strict=True):
        for column, value in want.items():
            other = got[column]
            if isinstance(other, float) and math.isnan(other):
                other = None  # pandas writes a missing value as NaN
            if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
                other = other.date() if isinstance(other, dt.datetime) else other
            assert _close(other, value), (want["pool_id"], want["date"], column, other, value)


def test_a_baseline_measured_on_a_sample_of_pools_says_so() -> None:
    """Above BENCH_BASELINE_POOLS the baseline runs on every k-th pool and is scaled: the sample
    is every k-th pool id, and the table marks the row and states what was measured."""
    import _child
    import run

    snapshots = pa.table(
        {
            "pool_id": [f"p{i % 10}" for i in range(40)],
            "timestamp": pa.array([dt.datetime(2024, 1, 1 + i // 10) for i in range(40)]),
        }
    )
    sample, kept, total = _child._every_kth_pool(snapshots, 3)
    assert (kept, total) == (4, 10)
    assert sorted(set(sample.column("pool_id").to_pylist())) == ["p0", "p3", "p6", "p9"]
    row = {
        "scenario": "100k",
        "pools": 100_000,
        "days": 365,
        "stage": "metrics",
        "engine": "pandas-loop",
        "store": "-",
        "wall_s": 355.0,
        "cpu_s": 350.0,
        "peak_rss_mb": 2700.0,
        "runs": 1,
        "speedup_vs_baseline": None,
        "baseline_pools": 20_000,
        "scale": 5.0,
        "measured_wall_s": 71.0,
        "measured_cpu_s": 70.0,
    }
    text = run.markdown([row])
    assert "| pandas-loop * |" in text
    assert "measured on 20,000 of 100,000 pools (every 5th by pool_id)" in text
