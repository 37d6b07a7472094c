"""Model specifications: what each model learns and how it is fitted, and the registry of the
models production and the backtest's baselines use (``MODELS``).

Research models (the plan's, experiments) live in :mod:`poolcast.evaluation.research`; code that
offers them passes ``{**MODELS, **RESEARCH_MODELS}`` to the model explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from poolcast.model.features import (
    NOISE_REGIME,
    PEERS,
    PRODUCTION_FEATURES,
    Horizon,
    Scale,
    horizon_key,
)

# The plan's LightGBM parameters (Task 2.3), as LightGBM's own names.
PLAN_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "num_leaves": 64,
    "num_iterations": 800,
    "learning_rate": 0.03,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 5,
}

# Smaller trees, coarser bins and early stopping: the issue-5 training-time target at equal error.
PRODUCTION_PARAMS: dict[str, Any] = {
    **PLAN_PARAMS,
    "objective": "regression_l1",
    "num_leaves": 15,
    "num_iterations": 300,  # an upper bound: early stopping on the calibration split picks fewer
    "learning_rate": 0.05,
    "min_data_in_leaf": 50,
    "max_bin": 63,
    # No row or feature sampling: with it the backtest moved by 0.02-0.04 from seed to seed (a
    # noise as large as the choices it judges) and was no better on average.
    "bagging_fraction": 1.0,
    "bagging_freq": 0,
    "feature_fraction": 1.0,
}

TargetKind = Literal["level", "change", "scaled_change"]


@dataclass(frozen=True)
class ModelSpec:
    """What a model learns and how it is fitted.

    ``target``: ``level`` learns APY(t+h); ``change`` learns APY(t+h) - APY(t) and adds today's APY
    back (flat pools stay flat); ``scaled_change`` learns that change divided by :func:`scale`.
    ``baseline``: no booster, the forecast is this panel column (``actual_apy``: naive).
    ``calibrate``: hold out the last ``calibration_days`` for early stopping, blend weights, the
    dead zone and conformal intervals. ``per_horizon``: overrides of these fields by horizon key.
    """

    name: str
    features: tuple[str, ...]
    target: TargetKind
    params: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    calibrate: bool = False
    calibration_days: int = 14
    early_stopping: int = 0
    float32: bool = False
    # Quantile levels of the calibration residuals that bound the 80% interval: conformal's own
    # (0.1, 0.9) under-covers out of sample (APY regimes drift), so production widens them.
    interval: tuple[float, float] = (0.1, 0.9)
    # The yardstick of a scaled change, of the dead zone and of the intervals (see scale()).
    scale: Scale = "std30"
    dead_zones: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3)
    # Baselines the calibration blends with the model (over naive), e.g. the 30-day mean: a
    # mean-reversion anchor.
    anchors: tuple[str, ...] = ("rolling_apy_7d",)
    # A scaled change is divided by scale ** scale_power (1: every pool counts alike in the loss,
    # 0: the plain change, where the pools with the largest moves dominate).
    scale_power: float = 1.0
    # A change target is learned from each of these columns (one booster each; the forecast
    # before calibration is their mean): from today's APY and from the 30-day mean, two models
    # that read the pool's level differently and err differently.
    bases: tuple[str, ...] = ("actual_apy",)
    # The point forecast is the mean of this model's own and these horizons' forecasts (fitted on
    # the same rows up to the same day); the interval keeps its calibrated width around it.
    stack: tuple[Horizon, ...] = ()
    # (full, none): the own model's share of that mean falls linearly from whole at the first
    # calibration MAE ratio (vs naive) to nothing at the second, so where the model had little
    # edge on its calibration days the stacked horizons carry the forecast (None: always whole).
    stack_edge: tuple[float, float] | None = None
    # Each training row weighs scale ** weight_power in the loss, halved every half_life days back
    # (0: off). With a scaled change and power 1 the L1 loss is in APY points again while the
    # trees still split on moves in the pool's own units.
    weight_power: float = 0.0
    half_life: float = 0.0
    # The calibration rows split at quantiles of today's APY into this many groups, each with its
    # own blend weights and dead zone (see calibration._blend_edges).
    blend_groups: int = 1
    # At most this many training rows (0: all): above it a seeded hash sample of (pool, day) rows,
    # the same on every engine (features.sample_rows). A 15-leaf model learns no more from more.
    max_rows: int = 0
    per_horizon: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_horizon(self, horizon: Horizon) -> ModelSpec:
        over = self.per_horizon.get(horizon_key(horizon), {})
        params = {**self.params, **over.get("params", {})}
        return replace(self, **{k: v for k, v in over.items() if k != "params"}, params=params)


# Blend anchors: the 7-day mean (every calibrated model), and the 30-day mean besides it.
MEAN_REVERSION: tuple[str, ...] = ("rolling_apy_7d", "rolling_apy_30d")
# Ensemble bases from 7 days on: the change from today's APY and from the 30-day mean.
TODAY_AND_MONTH: tuple[str, ...] = ("actual_apy", "rolling_apy_30d")
# At 7 days and for the 7-day mean a third member learns the change from the pool's 14-day
# median, a level that a spike of a few days does not move: the typical pool (under 50% APY)
# gained most. Its window sits on a plateau (10 and 21 days scored alike; 7 days lost the spiky
# pools, whose forecasts followed their spikes).
TODAY_MONTH_AND_USUAL: tuple[str, ...] = (*TODAY_AND_MONTH, "median_apy_14d")
# An ensemble gets the boosting budget of one model (members x rounds <= 300, a faster learning
# rate): at 20,000 pools, where early stopping seldom stops, the whole training stays within issue
# 5's full-run time. On the sample the budget cost 30 days about 0.01 against 300 rounds each.
_THREE_MEMBERS: dict[str, Any] = {"params": {"learning_rate": 0.1, "num_iterations": 100}}
# A month out the edge is small and its validation curve flat: early stopping picked 1-3 rounds
# on one engine and 100 on the other for the same data. Ten fixed rounds, a strong shrinkage the
# blend then weighs, backtested better than early stopping on both origin sets.
_TEN_ROUNDS: dict[str, Any] = {
    "early_stopping": 0,
    "params": {"learning_rate": 0.1, "num_iterations": 10},
}

MODELS: dict[str, ModelSpec] = {
    "naive": ModelSpec("naive", (), "level", baseline="actual_apy", calibrate=True),
    "mean7d": ModelSpec("mean7d", (), "level", baseline="rolling_apy_7d", calibrate=True),
    "production": ModelSpec(
        "production",
        PRODUCTION_FEATURES,
        "scaled_change",
        dict(PRODUCTION_PARAMS),
        calibrate=True,
        early_stopping=30,
        float32=True,
        interval=(0.08, 0.92),
        # About 5,000 pools' 60 days. At 20,000 pools (1.1 M rows a horizon) the capped fits took
        # 0.4x the forecast stage's time with no loss on a held-out week (docs/forecasting.md).
        max_rows=300_000,
        per_horizon={
            # One day ahead, scaling by a spiky pool's std makes the model bet on reversions that
            # come later than tomorrow: the plain change wins there. Tomorrow's move is small
            # against the 30-day scale, so dead zones of 0.1-0.3 scale cost the calibration days
            # no MAE and get picked, yet leave a quarter of the pools tied with naive (no wins).
            # Four weeks of calibration: the blend weights of 14 days were noisy.
            "1": {
                "target": "change",
                "dead_zones": (0.0, 0.05),
                "anchors": MEAN_REVERSION,
                "calibration_days": 28,
                "interval": (0.1, 0.9),
            },
            # The 30-day mean as a second anchor: where the 7-day mean still carries a recent
            # spike, the 30-day level is where a low-APY pool's next week tends to go.
            # From 7 days on, the pool against its peers (PEERS): a yield far above the market's
            # or its protocol's is competed away within weeks. At 1 day they only added noise.
            # The mean of the next 7 days lies between tomorrow's APY and day 7's: the 1- and
            # 7-day forecasts averaged with this model's own err less than it does alone.
            "mean7": {
                "anchors": MEAN_REVERSION,
                "bases": TODAY_MONTH_AND_USUAL,
                "features": (*PRODUCTION_FEATURES, *PEERS),
                "stack": (1, 7),
                "blend_groups": 2,
                **_THREE_MEMBERS,
            },
            # One blend for the pools under the calibration days' median APY, one for those over
            # it: the low half's own blend leans on naive (often wholly), the high half's on the
            # model. At 1 day a second blend lost never-seen pools; at 30 days it was mixed.
            # Two blends at 7 days fit on 28 calibration days (14 per blend was noisy).
            # Weighted by the pool's scale: the loss counts APY points, as the backtest does, so
            # a quiet pool's tiny scaled wiggles no longer pull its forecast off today's APY.
            # A weighted L1 round costs LightGBM about 5x an unweighted one at 20,000 pools (each
            # leaf's weighted median sorts its rows; the plain median only selects): 30 rounds
            # per member kept issue 5's time; on the sample the cap moved the backtest <= 0.006.
            # Three members x 20 rounds keep the two members' 60 boosting rounds.
            "7": {
                "bases": TODAY_MONTH_AND_USUAL,
                "features": (*PRODUCTION_FEATURES, *PEERS),
                "weight_power": 1.0,
                "blend_groups": 2,
                "calibration_days": 28,
                "params": {"learning_rate": 0.1, "num_iterations": 20},
            },
            # 30-day residuals drift most between calibration window and future. A month out, the
            # pool's noise regime (size of its daily moves, share of days without a move) says
            # how much of today's distance from its level will still be there.
            # Averaged with the 7-day forecast: the 30-day calibration days end a month before
            # the fit, the 7-day model's three weeks later; alone the 30-day model overshoots.
            # For the same reason its training rows halve in weight every 10 days back (15 left
            # the typical pool's median error just over naive's; 7 lost pools seen on one set).
            # Where its own model had little edge on those stale days (calibration MAE ratio over
            # 0.7), the 7-day forecast takes over, wholly from 0.9: in late 2024 (set E,
            # docs/forecasting.md) the own model had lost the edge it showed in 2025.
            "30": {
                "interval": (0.05, 0.95),
                "half_life": 10.0,
                "stack": (7,),
                "stack_edge": (0.7, 0.9),
                "features": (*PRODUCTION_FEATURES, *PEERS, *NOISE_REGIME),
                "bases": (*TODAY_AND_MONTH, "rolling_apy_7d"),
                **_TEN_ROUNDS,
            },
        },
    ),
}
