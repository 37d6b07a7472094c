"""`run --incremental` gives exactly the table a full rebuild gives, on both stores."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spark_support import spark_fixture  # noqa: F401 - the `spark` session fixture

from poolcast.settings import Settings
from poolcast.spec import HISTORY_DAYS
from poolcast.stages import metrics_stage
from poolcast.stages.incremental import recompute_window
from poolcast.store import Store, open_store

from conftest import fresh_pg_schema_url

START = dt.date(2024, 1, 1)
LOOKBACK = 3650  # covers every generated day: a full rebuild sees the whole history too


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[tuple[str, dt.datetime, float, float]], list[int]]:
    """Snapshots of a few pools (starts, stops, gaps, several per day) and the days after which
    a run happens: the first run is full, each later one incremental."""
    rows = []
    span = 0
    for p in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, 40))
        length = draw(st.integers(1, 200))
        gap = draw(st.sampled_from([0.0, 0.1, 0.5]))
        values = draw(st.lists(st.floats(0, 50, allow_nan=False), min_size=length, max_size=length))
        skips = draw(st.lists(st.floats(0, 1), min_size=length, max_size=length))
        # A pause longer than the history a window needs: the pool stops, then reports again.
        pause_at = draw(st.integers(0, length))
        pause = range(pause_at, pause_at + draw(st.sampled_from([0, 0, 70, 100])))
        for i, (apy, skip) in enumerate(zip(values, skips, strict=True)):
            if 0 < i < length - 1 and (skip < gap or i in pause):
                continue
            day = dt.datetime.combine(START + dt.timedelta(days=start + i), dt.time(23))
            rows.append((f"pool-{p}", day, round(apy, 3), 1000.0 + i))
            if skip > 0.9:  # an earlier snapshot the same day (the later one wins)
                rows.append((f"pool-{p}", day - dt.timedelta(hours=12), round(apy / 2, 3), 7.0))
        span = max(span, start + length)
    cuts = sorted(set(draw(st.lists(st.integers(0, span - 1), min_size=1, max_size=3))))
    return rows, cuts


def _write_market(store: Store) -> None:
    days = [START - dt.timedelta(days=1) + dt.timedelta(days=i) for i in range(200)]
    store.merge(
        "gas_fees_daily",
        pa.table(
            {
                "date": pa.array(days, pa.date32()),
                "actual_avg_gas_gwei": [5.0 + i % 7 for i in range(200)],
            }
        ),
        ["date"],
    )
    ohlcv = pa.table(
        {
            "symbol": ["ETH"] * 150,
            "data_timestamp": pa.array(
                [dt.datetime.combine(d, dt.time()) for d in days[:150]], pa.timestamp("us")
            ),
            "raw_json_data": [json.dumps({"USD": {"close": 3000.0 + i}}) for i in range(150)],
        }
    )
    store.merge("raw_coinmarketcap_ohlcv", ohlcv, ["symbol", "data_timestamp"], casts=_casts(store))


def _casts(store: Store) -> dict[str, str]:
    return {"raw_json_data": "JSONB" if store.dialect == "postgres" else "JSON"}


def _write_snapshots(store: Store, rows: list[tuple[str, dt.datetime, float, float]]) -> None:
    pools = sorted({r[0] for r in rows})
    store.merge(
        "pools",
        pa.table(
            {
                "pool_id": pa.array(pools, pa.string()),
                "is_active": pa.array([True] * len(pools), pa.bool_()),
            }
        ),
        ["pool_id"],
        on_conflict="ignore",
    )
    if rows:
        table = pa.table(
            {
                "pool_id": [r[0] for r in rows],
                "timestamp": pa.array([r[1] for r in rows], pa.timestamp("us")),
                "raw_json_data": [json.dumps({"apy": r[2], "tvlUsd": r[3]}) for r in rows],
            }
        )
        store.merge(
            "raw_defillama_pool_history", table, ["pool_id", "timestamp"], casts=_casts(store)
        )


def _metrics(store: Store) -> list[dict]:
    return store.fetch_arrow("SELECT * FROM pool_daily_metrics ORDER BY pool_id, date").to_pylist()


def _open_new(kind: str, tmp: Path, pg_base: str | None) -> Store:
    if kind == "duckdb":
        url = str(Path(tempfile.mkdtemp(dir=tmp)) / "s.duckdb")
    else:
        assert pg_base
        url = fresh_pg_schema_url(pg_base)
    store = open_store(url)
    store.init_schema()
    _write_market(store)
    return store


@pytest.fixture(params=["duckdb", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    base = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return request.param, base


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=histories())
def test_incremental_runs_equal_a_full_rebuild(
    data: tuple[list, list[int]], store_kind: tuple[str, str | None], tmp_path: Path
) -> None:
    rows, cuts = data
    kind, base = store_kind
    full_settings = Settings(lookback_days=LOOKBACK)
    daily = full_settings.model_copy(update={"incremental": True})
    incremental, full = _open_new(kind, tmp_path, base), _open_new(kind, tmp_path, base)
    try:
        loaded: set[int] = set()
        for n, cut in enumerate([*cuts, None]):
            # Runs at noon: a day's 11:00 snapshot is in, its 23:00 one arrives with the next batch.
            end = (
                None
                if cut is None
                else dt.datetime.combine(START + dt.timedelta(days=cut), dt.time(12))
            )
            batch = [
                i for i, r in enumerate(rows) if i not in loaded and (end is None or r[1] < end)
            ]
            _write_snapshots(incremental, [rows[i] for i in batch])
            loaded.update(batch)
            if not loaded:
                continue
            metrics_stage(incremental, daily if n else full_settings)
        _write_snapshots(full, rows)
        metrics_stage(full, full_settings)
        assert _metrics(incremental) == _metrics(full)
    finally:
        incremental.close()
        full.close()


def test_a_late_snapshot_of_the_last_day_is_picked_up(store: Store) -> None:
    """The last computed day is recomputed: its snapshots may have been partial."""
    _write_market(store)
    day = dt.datetime.combine(START, dt.time(10))
    _write_snapshots(store, [("p", day + dt.timedelta(days=i), 5.0, 1.0) for i in range(70)])
    base = Settings(lookback_days=LOOKBACK)
    metrics_stage(store, base)
    last = day + dt.timedelta(days=69, hours=12)
    _write_snapshots(store, [("p", last, 9.0, 1.0)])
    result = metrics_stage(store, base.model_copy(update={"incremental": True}))
    assert result.details["since"] == last.date().isoformat()
    got = (
        store.fetch_arrow(
            "SELECT actual_apy FROM pool_daily_metrics WHERE date = $1", [last.date()]
        )
        .column("actual_apy")[0]
        .as_py()
    )
    assert got == 9.0


def test_window_reads_only_the_history_the_windows_need(store: Store) -> None:
    _write_market(store)
    day = dt.datetime.combine(START, dt.time(23))
    _write_snapshots(store, [("p", day + dt.timedelta(days=i), 5.0, 1.0) for i in range(120)])
    as_of = START + dt.timedelta(days=119)
    assert recompute_window(store, as_of, LOOKBACK) is None  # nothing computed yet: full run
    metrics_stage(store, Settings(lookback_days=LOOKBACK))
    window = recompute_window(store, as_of + dt.timedelta(days=1), LOOKBACK)
    assert window is not None
    assert window.since == as_of
    assert window.context == as_of - dt.timedelta(days=HISTORY_DAYS)
    # A lookback shorter than the context: the whole window is the context, a full run.
    assert recompute_window(store, as_of, HISTORY_DAYS) is None


# -- the daily mode on the Spark engine ----------------------------------------------------------
def _spark_history() -> list[tuple[str, dt.datetime, float, float]]:
    """Pools that exercise every path of a window: history before the context (grid anchors),
    gaps, a late snapshot of the last computed day, a pool that pauses past the fill limit and
    reports again in the new batch, and a pool that arrives with its whole history."""
    rows = []

    def at(day: int, hour: int = 23) -> dt.datetime:
        return dt.datetime.combine(START + dt.timedelta(days=day), dt.time(hour))

    for i in range(131):  # values with long binary expansions: the bits are what is compared
        rows.append(("steady", at(i), 4.0 + (i * 0.37) % 3.1 + i / 7, 1e6 + i * 13.3))
        if i % 3 == 0:
            rows.append(("gappy", at(i), 9.0 - (i * 0.61) % 2.3, 5e5 - i * 7.1))
        if i <= 30 or i >= 129:
            rows.append(("paused", at(i), 2.0 + i / 9, 3e5))
        if i >= 90:
            rows.append(("new", at(i), 6.0 + (i * 0.29) % 1.7, 2e5 + i))
    rows.append(("steady", at(128, 11), 1.23, 999.0))  # the 23:00 one arrives with the next batch
    return rows


@pytest.mark.spark
def test_spark_incremental_equals_a_spark_full_rebuild(
    spark: object, store_kind: tuple[str, str | None], tmp_path: Path
) -> None:
    """Spark's daily mode: after a new batch of snapshots, the table equals a full Spark rebuild
    bit for bit (rows, NULLs, every float's bits), and a rerun writes nothing."""
    kind, base = store_kind
    rows = _spark_history()
    cut = dt.datetime.combine(START + dt.timedelta(days=128), dt.time(12))
    full_settings = Settings(lookback_days=LOOKBACK, engine="spark")
    daily = full_settings.model_copy(update={"incremental": True})
    incremental, full = _open_new(kind, tmp_path, base), _open_new(kind, tmp_path, base)
    try:
        _write_snapshots(incremental, [r for r in rows if r[1] < cut and r[0] != "new"])
        metrics_stage(incremental, full_settings)
        _write_snapshots(incremental, rows)
        result = metrics_stage(incremental, daily)
        assert result.engine == "spark"
        assert result.details["since"] == "2024-05-08"  # the last computed day (day 128)
        # The window's rows plus the catch-up pools' whole grids, not every row.
        assert result.details["rows"] < _count(incremental) - 100
        _write_snapshots(full, rows)
        metrics_stage(full, full_settings)
        assert _metrics(incremental) == _metrics(full)
        assert metrics_stage(incremental, daily).rows_written == 0
    finally:
        incremental.close()
        full.close()


def _count(store: Store) -> int:
    n = store.fetch_arrow("SELECT count(*) AS n FROM pool_daily_metrics").column("n")[0]
    return int(n.as_py())


def test_recent_model_is_found_under_a_gs_model_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Dataproc jobs save models under gs://: the daily mode's reuse rule lists them there."""
    import poolcast.model.artifacts
    from poolcast.stages.forecast import recent_model

    def meta(end: str, model: str = "production") -> bytes:
        return json.dumps(
            {"model": model, "horizons": {"1": {"train_window": ["2025-01-01", end]}}}
        ).encode()

    class Blob:
        def __init__(self, name: str, data: bytes) -> None:
            self.name, self.data = name, data

        def download_as_bytes(self) -> bytes:
            return self.data

    blobs = [
        Blob("m/spark/production-a/metadata.json", meta("2025-05-30")),
        Blob("m/spark/production-a/h1.txt", b"tree"),
        Blob("m/spark/production-b/metadata.json", meta("2025-06-03")),
        Blob("m/spark/production-c/metadata.json", meta("2025-04-01")),  # too old
        Blob("m/spark/production-d/metadata.json", b"not json"),
        Blob("m/spark/production-e/nested/metadata.json", meta("2025-06-04")),
    ]

    class Client:
        def list_blobs(self, bucket: str, prefix: str) -> list[Blob]:
            assert bucket == "bkt"
            return [b for b in blobs if b.name.startswith(prefix)]

    monkeypatch.setattr(poolcast.model.artifacts, "_gcs_client", Client)
    panel = pa.table(
        {"date": pa.array([dt.date(2025, 6, 5)], pa.date32()), "is_observed": [True]}
    )
    daily = Settings(incremental=True, retrain_days=7)
    found = recent_model(daily, "production", panel, "gs://bkt/m/spark/")
    assert found == "gs://bkt/m/spark/production-b"
    assert recent_model(daily, "plan", panel, "gs://bkt/m/spark") is None
    assert recent_model(Settings(retrain_days=7), "production", panel, "gs://bkt/m/spark") is None
