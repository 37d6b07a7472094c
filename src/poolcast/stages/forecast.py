"""Step 11: train the global models (or reuse a recent one), forecast every active pool, merge."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from typing import TYPE_CHECKING

import pyarrow.compute as pc

from poolcast.log import progress
from poolcast.settings import Settings
from poolcast.stages._common import StageResult, new_run_id, open_engine
from poolcast.stages.locks import locked
from poolcast.stages.retry import retried
from poolcast.store import Store, StoreError

if TYPE_CHECKING:
    from poolcast.model import ForecastModel
    from poolcast.model.compute import Compute, Frame


def recent_model(
    settings: Settings,
    model: str,
    panel: Frame,
    model_dir: str,
    compute: Compute | None = None,
) -> str | None:
    """In the daily (incremental) mode, the newest saved ``model`` artifact in ``model_dir`` whose
    training data ends at most ``retrain_days`` before the panel's latest observed day. Both
    engines use this rule, each in its own model folder."""
    if not settings.incremental or settings.retrain_days <= 0:
        return None
    from poolcast.model.artifacts import saved_metadata
    from poolcast.model.compute import LocalCompute

    compute = compute if compute is not None else LocalCompute()
    observed = compute.per_pools(panel, lambda t: t.filter(pc.field("is_observed")))
    window = compute.date_range(observed)
    if window is None:
        return None
    latest = window[1]
    best: tuple[str, str] | None = None
    for location, text in saved_metadata(model_dir, model):
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
    """Train the global models (or load ``settings.model_path``), forecast every active pool 1, 7
    and 30 days ahead and the next 7 days' mean, merge: the next day into pool_daily_metrics,
    every horizon with its 80% interval into ``forecasts``, in one transaction."""
    from poolcast.engines import PanelBatches
    from poolcast.model import ForecastModel, forecast_table
    from poolcast.model.batches import BatchedCompute
    from poolcast.model.compute import LocalCompute, with_targets
    from poolcast.model.features import HORIZONS

    store.require_schema()
    started = time.perf_counter()
    with open_engine(store, settings, "forecast") as engine, contextlib.ExitStack() as cleanup:
        result = StageResult("forecast", engine.name, new_run_id())
        with engine.step("reading the panel"):
            panel = engine.forecast_panel(horizon=30)
            compute = engine.compute() or LocalCompute()
            if isinstance(panel, PanelBatches):  # more pools than one batch: kept on disk
                compute = BatchedCompute()
                cleanup.callback(compute.close)  # its files, however the stage ends
                panel = compute.frame(panel.parts, panel.empty, panel.peers)
            # Targets and peer medians once, for training and predicting alike: each pass copies
            # the whole panel (at 20,000 pools a run's peak was two such copies at once). Kept:
            # every step reads it (a panel in pool batches is built once, batch by batch).
            panel = compute.keep(with_targets(compute, panel, HORIZONS))
            result.rows_read = compute.count(panel)
            if result.rows_read == 0:
                raise StoreError("pool_daily_metrics is empty: run `poolcast metrics` first")
        model_dir = engine.model_dir()
        model_path = settings.model_path
        if not model_path:
            with engine.step("looking for a recent model"):
                model_path = recent_model(settings, model, panel, model_dir, compute)
        trained = not model_path
        fitted: ForecastModel
        if model_path:
            with engine.step("loading the model"):
                fitted = ForecastModel.load(str(model_path), compute=compute)
        else:
            with engine.step("training"):
                untrained = ForecastModel(
                    model, train_days=settings.train_days, seed=settings.seed, compute=compute
                )
                with progress("training", total=len(untrained.horizons)) as bar:
                    fitted = untrained.fit(panel, on_horizon=bar.advance)
            with engine.step("saving the model"):
                model_path = fitted.save(model_dir)
        with engine.step("predicting and writing"):
            # One row per pool and horizon: the next day into pool_daily_metrics through the
            # plan's staging table, every horizon into ``forecasts``, in one transaction.
            table, horizons = forecast_table(fitted, panel), fitted.forecasts(panel)
            if isinstance(compute, BatchedCompute):
                table, horizons = compute.collect(table), compute.collect(horizons)
            written = engine.write_forecasts(table, horizons, result.run_id)
            compute.release(panel)
        extra = engine.details()
    result.rows_written = written.rows
    result.details = {
        "forecasts": written.forecasts,
        "horizon_rows": written.horizon_rows,
        "train_rows": fitted.horizons_[1].n_train_,
        "model": str(model_path),
        "model_version": fitted.version_,
        "trained": trained,
        **extra,
    }
    result.seconds = time.perf_counter() - started
    return result
