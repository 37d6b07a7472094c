"""Step 11: train the global models (or reuse a recent one), forecast every active pool, merge."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from poolcast.log import progress
from poolcast.settings import Settings
from poolcast.stages._common import StageResult, new_run_id, open_engine
from poolcast.stages.locks import locked
from poolcast.stages.retry import retried
from poolcast.store import Store, StoreError
from poolcast.store.queries import write_forecasts

if TYPE_CHECKING:
    from poolcast.model import ForecastModel


def recent_model(settings: Settings, model: str, panel: pa.Table, model_dir: str) -> str | None:
    """In the daily (incremental) mode, the newest saved ``model`` artifact in ``model_dir`` whose
    training data ends at most ``retrain_days`` before the panel's latest observed day. Both
    engines use this rule, each in its own model folder."""
    if not settings.incremental or settings.retrain_days <= 0:
        return None
    from poolcast.model.artifacts import saved_metadata

    observed = panel.filter(pc.field("is_observed"))
    if observed.num_rows == 0:
        return None
    latest = pc.max(observed.column("date")).as_py()
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
    from poolcast.model import FORECASTS_KEY, ForecastModel, forecast_table

    store.require_schema()
    started = time.perf_counter()
    with open_engine(store, settings, "forecast") as engine:
        result = StageResult("forecast", engine.name, new_run_id())
        with engine.step("reading the panel"):
            panel = engine.forecast_panel(horizon=30)
            if panel.num_rows == 0:
                raise StoreError("pool_daily_metrics is empty: run `poolcast metrics` first")
        model_dir = engine.model_dir()
        model_path = settings.model_path
        if not model_path:
            with engine.step("looking for a recent model"):
                model_path = recent_model(settings, model, panel, model_dir)
        trained = not model_path
        fitted: ForecastModel
        if model_path:
            with engine.step("loading the model"):
                fitted = ForecastModel.load(str(model_path))
        else:
            with engine.step("training"):
                untrained = ForecastModel(
                    model, train_days=settings.train_days, seed=settings.seed,
                    trainer=engine.trainer(),
                )
                with progress("training", total=len(untrained.horizons)) as bar:
                    fitted = untrained.fit(panel, on_horizon=bar.advance)
            with engine.step("saving the model"):
                model_path = fitted.save(model_dir)
        with engine.step("predicting"):
            forecasts = forecast_table(fitted, panel)
            horizons = fitted.forecasts(panel)
        extra = engine.details()
    # One row per pool and horizon: the store's own bulk path into the plan's staging table, then
    # one transaction for both tables.
    with store.transaction():
        result.rows_written = write_forecasts(store, forecasts, result.run_id)
        result.rows_written += store.merge("forecasts", horizons, FORECASTS_KEY)
    result.rows_read = panel.num_rows
    result.details = {
        "forecasts": forecasts.num_rows,
        "horizon_rows": horizons.num_rows,
        "train_rows": fitted.horizons_[1].n_train_,
        "model": str(model_path),
        "model_version": fitted.version_,
        "trained": trained,
        **extra,
    }
    result.seconds = time.perf_counter() - started
    return result
