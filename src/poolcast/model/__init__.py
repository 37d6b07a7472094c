"""Step 11's forecast model: global LightGBM models that forecast every pool's APY 1, 7 and 30
days ahead and the mean of the next 7 days, with calibrated 80% intervals.

Rooms: :mod:`~poolcast.model.features` (horizons, targets, derived features, training rows),
:mod:`~poolcast.model.calibration` (blend, dead zone, intervals), :mod:`~poolcast.model.specs`
(``ModelSpec`` and production's registry ``MODELS``), :mod:`~poolcast.model.trainer` (what trains
a booster), :mod:`~poolcast.model.forecaster` (one horizon), :mod:`~poolcast.model.forecast_model`
(every horizon, the artifact) and :mod:`~poolcast.model.artifacts` (local or ``gs://`` folders).

The names below are imported on first use: importing this package loads neither lightgbm nor
google-cloud-storage.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from poolcast.model.artifacts import saved_metadata
    from poolcast.model.features import (
        HORIZONS,
        Horizon,
        add_targets,
        horizon_days,
        horizon_key,
        latest_rows,
        parse_horizon,
        target_column,
        training_rows,
    )
    from poolcast.model.forecast_model import (
        ForecastModel,
        choose_tvl_baseline,
        forecast_table,
    )
    from poolcast.model.forecaster import Forecaster
    from poolcast.model.specs import MODELS, ModelSpec
    from poolcast.model.trainer import LocalTrainer, Trained

_WHERE = {
    "saved_metadata": "artifacts",
    "HORIZONS": "features",
    "Horizon": "features",
    "add_targets": "features",
    "horizon_days": "features",
    "horizon_key": "features",
    "latest_rows": "features",
    "parse_horizon": "features",
    "target_column": "features",
    "training_rows": "features",
    "ForecastModel": "forecast_model",
    "choose_tvl_baseline": "forecast_model",
    "forecast_table": "forecast_model",
    "Forecaster": "forecaster",
    "MODELS": "specs",
    "ModelSpec": "specs",
    "LocalTrainer": "trainer",
    "Trained": "trainer",
}

__all__ = [
    "HORIZONS",
    "MODELS",
    "ForecastModel",
    "Forecaster",
    "Horizon",
    "LocalTrainer",
    "ModelSpec",
    "Trained",
    "add_targets",
    "choose_tvl_baseline",
    "forecast_table",
    "horizon_days",
    "horizon_key",
    "latest_rows",
    "parse_horizon",
    "saved_metadata",
    "target_column",
    "training_rows",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
