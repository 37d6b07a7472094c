"""The stages a user runs: metrics (step 7) and forecast (step 11), on either engine.

Each stage reads the store in bulk, computes, and writes through one transactional merge.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from poolcast.locks import locked
from poolcast.observe import progress
from poolcast.retry import retried
from poolcast.settings import Settings
from poolcast.spec import FEATURE_CONTEXT_DAYS, MARKET, METRICS
from poolcast.store import Store, StoreError
from poolcast.store.queries import latest_data_day, read_market, read_snapshots

METRIC_KEY = ("pool_id", "date")
METRIC_UPDATE = (*(c.name for c in METRICS), *(m.name for m in MARKET), "is_observed")
FORECAST_COLUMNS = ("pool_id", "date", "forecasted_apy", "forecasted_tvl")

PANEL_SQL = """
SELECT m.*, p.project  -- the project: peers for forecast.PEER_MEDIANS
FROM pool_daily_metrics AS m
JOIN (
    SELECT pool_id, max(date) AS last_day
    FROM pool_daily_metrics
    WHERE is_observed
    GROUP BY pool_id
) AS l ON l.pool_id = m.pool_id
JOIN pools AS p ON p.pool_id = m.pool_id
WHERE p.is_active AND m.date > l.last_day - CAST($1 AS INTEGER)
"""


@dataclass
class StageResult:
    stage: str
    engine: str
    run_id: str
    seconds: float = 0.0
    rows_read: int = 0
    rows_written: int = 0
    details: dict[str, Any] = field(default_factory=dict)


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def resolve_as_of(store: Store, settings: Settings) -> dt.date:
    if settings.as_of:
        return settings.as_of
    day = latest_data_day(store)
    if day is None:
        raise StoreError(
            f"no pool snapshots in {store.safe_url()}: run `poolcast ingest PATH` first"
        )
    return day


@retried
@locked("metrics")
def metrics_stage(store: Store, settings: Settings) -> StageResult:
    """Step 7: the daily grid and its rolling metrics for every active pool, merged in one go."""
    store.require_schema()
    if settings.engine == "spark":
        from poolcast.engines import spark

        return spark.metrics_stage(store, settings)
    from poolcast.engines.local import compute_metrics

    started = time.perf_counter()
    result = StageResult("metrics", "local", new_run_id())
    as_of = resolve_as_of(store, settings)
    window = None
    if settings.incremental:
        from poolcast.incremental import keep_rows, read_window_snapshots, recompute_window

        window = recompute_window(store, as_of, settings.lookback_days)
    with progress("metrics", total=3, doing="reading snapshots") as bar:  # a terminal only
        if window is None:
            snapshots = read_snapshots(store, as_of, settings.lookback_days)
        else:
            snapshots, catch_up = read_window_snapshots(
                store, window, as_of, settings.lookback_days
            )
        market = read_market(store, as_of)
        bar.advance(doing=f"computing {snapshots.num_rows:,} snapshots")
        metrics = compute_metrics(snapshots, market, as_of)
        if window is not None:
            metrics = keep_rows(metrics, window, catch_up)
        bar.advance(doing=f"merging {metrics.num_rows:,} rows")
        result.rows_written = store.merge(
            "pool_daily_metrics", metrics, METRIC_KEY, update=METRIC_UPDATE
        )
        bar.advance(doing="done")
    result.rows_read = snapshots.num_rows + market.num_rows
    result.details = {
        "as_of": as_of.isoformat(),
        "pools": len(metrics.column("pool_id").unique()),
        "days": len(metrics.column("date").unique()),
        "rows": metrics.num_rows,
        **({"since": window.since.isoformat()} if window is not None else {}),
    }
    result.seconds = time.perf_counter() - started
    return result


def read_panel(store: Store, settings: Settings, horizon: int = 1) -> pa.Table:
    """pool_daily_metrics rows a forecast needs, for active pools."""
    # Each pool's rows from `train_days + horizon` days before its latest observed day, and the
    # context every feature window of the first training row needs.
    return store.fetch_arrow(PANEL_SQL, [settings.train_days + horizon + FEATURE_CONTEXT_DAYS])


def write_forecasts(store: Store, forecasts: pa.Table, run_id: str) -> int:
    """Through the plan's staging table, then one transactional merge (the plan never merged).

    Only the forecast columns of pool_daily_metrics change; a row that does not exist yet (the day
    after a pool's latest data) is created with just its forecast.
    """
    staged = forecasts.select(list(FORECAST_COLUMNS)).append_column(
        "run_id", pa.array([run_id] * forecasts.num_rows, pa.string())
    )
    with store.transaction():
        store.merge("pool_forecasts_staging", staged, key=())
        written = store.merge_from(
            "pool_daily_metrics",
            "pool_forecasts_staging",
            FORECAST_COLUMNS,
            METRIC_KEY,
            update=("forecasted_apy", "forecasted_tvl"),
            where="s.run_id = $1",
            params=[run_id],
        )
        store.execute("DELETE FROM pool_forecasts_staging WHERE run_id = $1", [run_id])
    return written


def _saved_metadata(model_dir: str, model: str) -> Iterator[tuple[str, str]]:
    """(artifact location, metadata.json text) of each saved ``model`` artifact directly under
    ``model_dir``: a local folder or a ``gs://bucket/prefix`` (where the Dataproc jobs save)."""
    base = str(model_dir).rstrip("/")
    if not base.startswith("gs://"):
        for meta_file in Path(base).glob(f"{model}-*/metadata.json"):
            try:
                yield str(meta_file.parent), meta_file.read_text()
            except OSError:
                continue
        return
    from poolcast.forecast import _gcs_client, _split_gs

    bucket, prefix = _split_gs(base)
    lead = f"{prefix}/" if prefix else ""
    client = _gcs_client()
    for blob in client.list_blobs(bucket, prefix=f"{lead}{model}-"):
        name = blob.name[len(lead) :]
        folder, _, file = name.partition("/")
        if file == "metadata.json":
            yield f"gs://{bucket}/{lead}{folder}", blob.download_as_bytes().decode()


def _recent_model(
    settings: Settings, model: str, panel: pa.Table, model_dir: str | None = None
) -> str | None:
    """In the daily (incremental) mode, the newest saved ``model`` artifact in ``model_dir``
    (default ``settings.model_dir``) whose training data ends at most ``retrain_days`` before the
    panel's latest observed day. Both engines use this rule, each in its own model folder."""
    if not settings.incremental or settings.retrain_days <= 0:
        return None
    import json

    import pyarrow.compute as pc

    observed = panel.filter(pc.field("is_observed"))
    if observed.num_rows == 0:
        return None
    latest = pc.max(observed.column("date")).as_py()
    best: tuple[str, str] | None = None
    for location, text in _saved_metadata(model_dir or settings.model_dir, model):
        try:
            meta = json.loads(text)
            end = dt.date.fromisoformat(meta["horizons"]["1"]["train_window"][1])
        except (ValueError, KeyError, TypeError):
            continue  # not an artifact we can judge: train instead
        if meta.get("model") == model and (latest - end).days <= settings.retrain_days:
            if best is None or end.isoformat() > best[0]:
                best = (end.isoformat(), location)
    return best[1] if best else None


@retried
@locked("forecast")
def forecast_stage(store: Store, settings: Settings, model: str = "production") -> StageResult:
    """Step 11: train the global models (or load ``settings.model_path``), forecast every active
    pool 1, 7 and 30 days ahead and the next 7 days' mean, merge: the next day into
    pool_daily_metrics, every horizon with its 80% interval into ``forecasts``."""
    store.require_schema()
    if settings.engine == "spark":
        from poolcast.engines import spark

        return spark.forecast_stage(store, settings)
    from poolcast.engines.local import compute_features
    from poolcast.forecast import FORECASTS_KEY, ForecastModel, forecast_table

    started = time.perf_counter()
    result = StageResult("forecast", "local", new_run_id())
    metrics = read_panel(store, settings, horizon=30)
    if metrics.num_rows == 0:
        raise StoreError("pool_daily_metrics is empty: run `poolcast metrics` first")
    panel = compute_features(metrics)
    reusable = None if settings.model_path else _recent_model(settings, model, panel)
    if settings.model_path or reusable:
        model_path = str(settings.model_path or reusable)
        fitted = ForecastModel.load(model_path)
    else:
        untrained = ForecastModel(model, train_days=settings.train_days, seed=settings.seed)
        with progress("training", total=len(untrained.horizons)) as bar:  # a terminal only
            fitted = untrained.fit(panel, on_horizon=bar.advance)
        model_path = fitted.save(settings.model_dir)
    forecasts = forecast_table(fitted, panel)
    horizons = fitted.forecasts(panel)
    result.rows_read = metrics.num_rows
    with store.transaction():
        result.rows_written = write_forecasts(store, forecasts, result.run_id)
        result.rows_written += store.merge("forecasts", horizons, FORECASTS_KEY)
    result.details = {
        "forecasts": forecasts.num_rows,
        "horizon_rows": horizons.num_rows,
        "train_rows": fitted.horizons_[1].n_train_,
        "model": str(model_path),
        "model_version": fitted.version_,
        "trained": not (settings.model_path or reusable),
    }
    result.seconds = time.perf_counter() - started
    return result
