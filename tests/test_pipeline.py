"""Metrics then forecast, end to end on both stores with the real sample data."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from poolcast.settings import Settings
from poolcast.stages import forecast_stage, metrics_stage
from poolcast.store import Store


def _one(store: Store, sql: str) -> dict:
    return store.fetch_arrow(sql).to_pylist()[0]


def test_run_gives_one_row_per_pool_day_and_a_forecast_per_active_pool(
    sample_store: Store, settings: Settings
) -> None:
    result = metrics_stage(sample_store, settings)
    assert result.details["as_of"] == "2025-11-13"
    counts = _one(
        sample_store,
        "SELECT count(*) AS n, count(DISTINCT pool_id || CAST(date AS TEXT)) AS keys, "
        "count(DISTINCT pool_id) AS pools FROM pool_daily_metrics",
    )
    assert counts["n"] == counts["keys"] == result.rows_written == result.details["rows"]
    assert counts["pools"] == 99
    # rolling metrics are filled wherever the window holds a value
    assert (
        _one(
            sample_store,
            "SELECT count(*) AS n FROM pool_daily_metrics "
            "WHERE actual_apy IS NOT NULL AND rolling_apy_7d IS NULL",
        )["n"]
        == 0
    )

    forecast = forecast_stage(sample_store, settings)
    assert forecast.details["forecasts"] == 99
    per_pool = sample_store.fetch_arrow(
        "SELECT pool_id, count(*) AS n FROM pool_daily_metrics "
        "WHERE forecasted_apy IS NOT NULL GROUP BY pool_id"
    ).to_pylist()
    assert len(per_pool) == 99 and {r["n"] for r in per_pool} == {1}
    # each forecast is for the day after the pool's latest observed day
    late = _one(
        sample_store,
        "SELECT count(*) AS n FROM pool_daily_metrics AS f JOIN ("
        "  SELECT pool_id, max(date) AS last_day FROM pool_daily_metrics WHERE is_observed "
        "  GROUP BY pool_id) AS l ON l.pool_id = f.pool_id "
        "WHERE f.forecasted_apy IS NOT NULL AND f.date <> l.last_day + 1",
    )
    assert late["n"] == 0


def test_metrics_rerun_keeps_forecasts_and_changes_nothing(
    sample_store: Store, settings: Settings
) -> None:
    metrics_stage(sample_store, settings)
    forecast_stage(sample_store, settings)
    before = sample_store.fetch_arrow("SELECT * FROM pool_daily_metrics ORDER BY pool_id, date")
    assert metrics_stage(sample_store, settings).rows_written == 0
    assert forecast_stage(sample_store, settings).rows_written == 0
    after = sample_store.fetch_arrow("SELECT * FROM pool_daily_metrics ORDER BY pool_id, date")
    assert after.equals(before)
    assert _one(sample_store, "SELECT count(*) AS n FROM pool_forecasts_staging")["n"] == 0


def test_as_of_limits_the_grid(sample_store: Store, settings: Settings) -> None:
    settings.as_of = dt.date(2025, 1, 31)
    settings.lookback_days = 30
    result = metrics_stage(sample_store, settings)
    span = _one(sample_store, "SELECT min(date) AS lo, max(date) AS hi FROM pool_daily_metrics")
    assert span == {"lo": dt.date(2025, 1, 2), "hi": dt.date(2025, 1, 31)}
    assert result.details["days"] == 30


def test_daily_mode_reuses_a_recent_model_and_retrains_when_old(
    sample_store: Store, settings: Settings, tmp_path: Path
) -> None:
    metrics_stage(sample_store, settings)
    first = forecast_stage(sample_store, settings)
    assert first.details["trained"] is True
    settings.incremental = True
    reused = forecast_stage(sample_store, settings)
    assert reused.details["trained"] is False
    assert reused.details["model"] == first.details["model"]
    assert reused.rows_written == 0  # the same model on the same data: nothing changes
    settings.retrain_days = 0
    assert forecast_stage(sample_store, settings).details["trained"] is True
    # a model whose training data ends too long before the latest day is not reused
    old_dir = tmp_path / "old-models"
    shutil.copytree(first.details["model"], old_dir / Path(first.details["model"]).name)
    meta_file = next(old_dir.glob("*/metadata.json"))
    meta = json.loads(meta_file.read_text())
    meta["horizons"]["1"]["train_window"][1] = "2025-01-01"
    meta_file.write_text(json.dumps(meta))
    settings.retrain_days = 7
    settings.model_dir = str(old_dir)
    assert forecast_stage(sample_store, settings).details["trained"] is True


def test_metrics_in_pool_batches_are_the_rows_of_one_batch(
    sample_store: Store, settings: Settings
) -> None:
    settings.batch_pools = 7  # 99 pools: 15 batches, the last one of 1 pool
    batched = metrics_stage(sample_store, settings)
    assert batched.details["batches"] == 15
    assert batched.rows_written == batched.details["rows"]
    settings.batch_pools = 1_000
    whole = metrics_stage(sample_store, settings)
    assert "batches" not in whole.details
    assert whole.rows_written == 0  # one batch of every pool finds every row as it is
    assert {k: whole.details[k] for k in ("pools", "days", "rows")} == {
        k: batched.details[k] for k in ("pools", "days", "rows")
    }
    settings.batch_pools = 10
    settings.incremental = True
    daily = metrics_stage(sample_store, settings)
    assert daily.details["batches"] == 10 and daily.rows_written == 0


def test_a_failed_batch_leaves_the_metrics_as_they_were(
    sample_store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from poolcast.engines.local import LocalEngine

    compute = LocalEngine.compute_metrics
    calls = []

    def third_fails(self: LocalEngine, *args: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed in batch 3")
        return compute(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalEngine, "compute_metrics", third_fails)
    settings.batch_pools = 20
    with pytest.raises(RuntimeError, match="batch 3"):
        metrics_stage(sample_store, settings)
    assert _one(sample_store, "SELECT count(*) AS n FROM pool_daily_metrics")["n"] == 0
