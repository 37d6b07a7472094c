"""Research models: the plan's model and the experiments the backtest compares production with.

They are not production's: :mod:`poolcast.model` knows only ``MODELS`` (production and its
baselines). The backtest, the headroom bounds, the parity check and the CLI offer these too, by
passing ``ALL_MODELS`` (``{**MODELS, **RESEARCH_MODELS}``) to the model; so does loading a saved
artifact of one of them.
"""

from __future__ import annotations

from dataclasses import replace

from poolcast.model.specs import MODELS, PLAN_PARAMS, PRODUCTION_PARAMS, ModelSpec
from poolcast.spec import FEATURE_COLUMNS, PLAN_FEATURE_COLUMNS

# Issue 5's yardstick: the production model with the plan's tree settings (800 rounds x 64
# leaves, learning rate 0.03, LightGBM's default 255 bins and 20 rows per leaf, 0.8 bagging and
# feature fraction, float64, no early stopping); the same target, features and calibration, so
# the backtest and the bench compare tree settings only.
_PLANTREES = replace(
    MODELS["production"],
    name="plantrees",
    params={
        **PRODUCTION_PARAMS,
        **{k: v for k, v in PLAN_PARAMS.items() if k != "objective"},
        "max_bin": 255,
        "min_data_in_leaf": 20,
    },
    early_stopping=0,
    float32=False,
    # the plan's trees at every horizon: without production's per-horizon boosting budgets
    per_horizon={
        h: {k: v for k, v in over.items() if k != "params"}
        for h, over in MODELS["production"].per_horizon.items()
    },
)

RESEARCH_MODELS: dict[str, ModelSpec] = {
    "plan": ModelSpec("plan", PLAN_FEATURE_COLUMNS, "level", dict(PLAN_PARAMS)),
    # The measured L1-on-change model with the plan's trees and features, for comparison.
    "l1change": ModelSpec(
        "l1change", FEATURE_COLUMNS, "change", {**PLAN_PARAMS, "objective": "regression_l1"}
    ),
    "plantrees": _PLANTREES,
}

# Every model a backtest or a saved artifact may name.
ALL_MODELS: dict[str, ModelSpec] = {**MODELS, **RESEARCH_MODELS}
