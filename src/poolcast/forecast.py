"""Step 11: global LightGBM models that forecast every pool's APY 1, 7 and 30 days ahead and the
mean of the next 7 days, with calibrated 80% intervals.

The target is always a later day's APY than the features (the plan trained on the same day's APY
from features that contain it). Only observed targets train or score a model. Choices below were
made on the rolling-origin backtest (``poolcast backtest``, docs/forecasting.md), not by default:

* L1 loss on the change ``apy(t+h) - apy(t)``: L2 on the level (the plan) chases APY spikes and
  loses to "APY stays as today".
* From 7 days on, the change divided by the pool's own scale (30-day std + 5% of its APY): pools
  with 0.01% and 400% APY then teach the model the same mean reversion.
* From 7 days on, an ensemble: one booster learns the change from today's APY, another from the
  30-day mean (at 30 days a third from the 7-day mean); their mean is calibrated as one model.
  At 30 days the pool's noise regime (size of its daily moves, share of days without one) joins
  the features.
* Each fit holds out its last ``calibration_days`` (a time-based split): early stopping, a blend of
  model, naive and 7-day mean (at 1 day and for the 7-day mean also the 30-day mean) fitted there
  (shrinkage toward naive where the model has no edge), a dead zone that keeps today's APY when
  the predicted move is small (at most 0.05 scale at 1 day), and conformal 80% intervals
  from the scaled residuals there. The booster is then refitted on the whole window.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poolcast.spec import FEATURE_COLUMNS, MARKET, NOISE_FEATURES, PLAN_FEATURE_COLUMNS

Horizon = int | str  # 1, 7, 30 days ahead, or "mean7": the mean of the next 7 days
HORIZONS: tuple[Horizon, ...] = (1, 7, 30, "mean7")
MEAN7_MIN_OBSERVED = 4  # a mean of the next 7 days needs at least this many observed days
FORECASTS_KEY = ("pool_id", "made_on", "metric", "horizon")  # the forecasts table's primary key

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

# Model-side features: plain arithmetic on spec columns (any engine can compute them). How far
# today's APY is from its own recent past is what mean reversion needs; trees find it poorly.
DERIVED: dict[str, tuple[str, str, Literal["sub", "zscore"]]] = {
    "apy_minus_7d": ("actual_apy", "rolling_apy_7d", "sub"),
    "apy_minus_30d": ("actual_apy", "rolling_apy_30d", "sub"),
    "apy_change_7d": ("actual_apy", "apy_lag_7", "sub"),
    "apy_z_30d": ("apy_minus_30d", "stddev_apy_30d", "zscore"),
    # The last days' moves in the pool's own units: a one-day spike tends to revert tomorrow.
    "apy_change_3d": ("actual_apy", "apy_lag_3", "sub"),
    "apy_delta_z_7d": ("apy_delta_today_yesterday", "stddev_apy_7d", "zscore"),
    "apy_delta_z_30d": ("apy_delta_today_yesterday", "stddev_apy_30d", "zscore"),
    "apy_z_7d": ("apy_minus_7d", "stddev_apy_7d", "zscore"),
    "lag1_minus_7d": ("apy_lag_1", "rolling_apy_7d", "sub"),
    # Daily moves against the 30-day spread: about 1.4 for noise around a level, small for a
    # drifting (random-walk) APY.
    "delta_to_level_30d": ("stddev_apy_delta_30d", "stddev_apy_30d", "zscore"),
    # A pool against its peers on the same day (PEER_MEDIANS): capital moves to the better yield,
    # so an APY far above its market's or its protocol's tends to come down within weeks, and the
    # market's own level drifts back toward its month.
    "apy_minus_market": ("actual_apy", "market_apy", "sub"),
    "market_minus_30d": ("market_apy", "market_apy_30d", "sub"),
    "apy_minus_project": ("actual_apy", "project_apy", "sub"),
}

# Medians over the pools observed on a day (in a group of ``pools`` columns, if any): the peers of
# PEERS. They must see every pool of the day, so add_targets computes them once on the whole panel
# and never again on a subset (a backtest fold, one pool's rows) that already carries them.
PEER_MEDIANS: dict[str, tuple[str, tuple[str, ...]]] = {
    "market_apy": ("actual_apy", ()),
    "market_apy_30d": ("rolling_apy_30d", ()),
    "project_apy": ("actual_apy", ("project",)),
}

# ETH/BTC/gas, calendar and lagged-TVL features added nothing on the backtest: left out of
# production, which adds the derived distances instead.
_LEFT_OUT = {m.name for m in MARKET} | {"tvl_lag_1", "day_of_week", "month", "is_weekend"}
RECENT_MOVES: tuple[str, ...] = (
    "apy_change_3d",
    "apy_delta_z_7d",
    "apy_delta_z_30d",
    "apy_z_7d",
    "lag1_minus_7d",
)
NOISE_REGIME: tuple[str, ...] = (*NOISE_FEATURES, "delta_to_level_30d")  # the 30-day model's
PEERS: tuple[str, ...] = ("apy_minus_market", "market_minus_30d", "apy_minus_project")  # 7 days on
PRODUCTION_FEATURES: tuple[str, ...] = (
    *(c for c in FEATURE_COLUMNS if c not in _LEFT_OUT),
    *(d for d in DERIVED if d not in (*RECENT_MOVES, *NOISE_REGIME, *PEERS)),
)

Target = Literal["level", "change", "scaled_change"]


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
    target: Target
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
    # own blend weights and dead zone (see _blend_edges).
    blend_groups: int = 1
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
    "plan": ModelSpec("plan", PLAN_FEATURE_COLUMNS, "level", dict(PLAN_PARAMS)),
    # The measured L1-on-change model with the plan's trees and features, for comparison.
    "l1change": ModelSpec(
        "l1change", FEATURE_COLUMNS, "change", {**PLAN_PARAMS, "objective": "regression_l1"}
    ),
    "production": ModelSpec(
        "production",
        PRODUCTION_FEATURES,
        "scaled_change",
        dict(PRODUCTION_PARAMS),
        calibrate=True,
        early_stopping=30,
        float32=True,
        interval=(0.08, 0.92),
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


# Issue 5's yardstick: the production model with the plan's tree settings (800 rounds x 64
# leaves, learning rate 0.03, LightGBM's default 255 bins and 20 rows per leaf, 0.8 bagging and
# feature fraction, float64, no early stopping); the same target, features and calibration, so
# the backtest and the bench compare tree settings only.
MODELS["plantrees"] = replace(
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


def horizon_key(horizon: Horizon) -> str:
    return str(horizon)


def horizon_days(horizon: Horizon) -> int:
    """How many days after the forecast day the target reaches."""
    return 7 if horizon == "mean7" else int(horizon)


def parse_horizon(text: str | int) -> Horizon:
    if str(text) == "mean7":
        return "mean7"
    value = int(text)
    if value < 1:
        raise ValueError(f"horizon must be a positive number of days or 'mean7', not {text!r}")
    return value


def target_column(horizon: Horizon) -> str:
    return "target_mean7" if horizon == "mean7" else f"target_h{horizon}"


def add_targets(panel: pa.Table, horizons: Sequence[Horizon] = HORIZONS) -> pa.Table:
    """The panel with one target column per horizon (NULL unless observed) and ``target_tvl_h{h}``
    for the day horizons, plus ``rolling_tvl_7d`` (a TVL baseline). Replaces existing targets.
    Adds the PEER_MEDIANS the panel lacks (NULL where it lacks their column, e.g. ``project``).

    The grid has one row per pool and day, so ``lead(x, h)`` is the value h days later.
    """
    import duckdb

    names = (
        {target_column(h) for h in horizons}
        | {f"target_tvl_h{h}" for h in horizons if h != "mean7"}
        | {"rolling_tvl_7d"}
    )
    base = panel.drop_columns([c for c in panel.column_names if c in names])
    by_pool = "PARTITION BY pool_id ORDER BY date"

    def observed(k: int, col: str) -> str:
        return f"CASE WHEN lead(is_observed, {k}) OVER w THEN lead({col}, {k}) OVER w END"

    exprs = ["avg(actual_tvl) OVER (w ROWS BETWEEN 6 PRECEDING AND CURRENT ROW) AS rolling_tvl_7d"]
    # Peer medians: one GROUP BY per grouping, joined back on the day (and group).
    joins: list[str] = []
    by_groups: dict[tuple[str, ...], list[str]] = {}
    for name, (column, groups) in PEER_MEDIANS.items():
        if name in base.column_names:
            continue
        if not {column, *groups} <= set(base.column_names):
            exprs.append(f"CAST(NULL AS DOUBLE) AS {name}")
            continue
        by_groups.setdefault(groups, []).append(
            f"median(CASE WHEN is_observed THEN {column} END) AS {name}"
        )
        exprs.append(f"g{list(by_groups).index(groups)}.{name}")
    for i, (groups, medians) in enumerate(by_groups.items()):
        keys = ", ".join(("date", *groups))
        joins.append(
            # Fixed names from PEER_MEDIANS only, never user text.
            f"LEFT JOIN (SELECT {keys}, {', '.join(medians)} FROM panel "  # noqa: S608
            f"GROUP BY {keys}) AS g{i} USING ({keys})"
        )
    for h in horizons:
        if h == "mean7":
            leads = [observed(k, "actual_apy") for k in range(1, 8)]
            count = " + ".join(f"CAST(({x}) IS NOT NULL AS INTEGER)" for x in leads)
            total = " + ".join(f"coalesce({x}, 0)" for x in leads)
            exprs.append(
                f"CASE WHEN ({count}) >= {MEAN7_MIN_OBSERVED} "
                f"THEN ({total}) / ({count}) END AS target_mean7"
            )
        else:
            exprs.append(f"{observed(int(h), 'actual_apy')} AS {target_column(h)}")
            exprs.append(f"{observed(int(h), 'actual_tvl')} AS target_tvl_h{h}")
    con = duckdb.connect()
    try:
        con.register("panel", base)
        # Built only from fixed column names and integer horizons, never from user text.
        sql = (
            f"SELECT panel.*, {', '.join(exprs)} FROM panel {' '.join(joins)} "  # noqa: S608
            f"WINDOW w AS ({by_pool}) ORDER BY pool_id, date"
        )
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A panel column (or a derived feature) as float64, rounded to 1e-9.

    Rolling means and deviations differ in the last bits with summation order (engine, thread
    count); on a flat pool that turns 0 into +-1e-14, a different split and a different model.
    Nine decimals of APY or dollars are far below anything measured.
    """
    if name in DERIVED:
        a, b, op = DERIVED[name]
        x, y = _column(table, a), _column(table, b)
        if op == "sub":
            return np.round(x - y, 9)
        return np.round(x / (np.nan_to_num(y, nan=0.0) + 1e-3), 9)
    if name in PEER_MEDIANS and name not in table.column_names:
        raise ValueError(
            f"{name} is a median over every pool of a day: pass the whole panel through "
            "add_targets before selecting rows from it"
        )
    values = pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False)
    return np.round(values.astype(np.float64), 9)


def _matrix(panel: pa.Table, features: Sequence[str], dtype: type = np.float64) -> np.ndarray:
    if not features:
        return np.empty((panel.num_rows, 0), dtype=dtype)
    return np.column_stack([_column(panel, f) for f in features]).astype(dtype)


Scale = Literal["std30", "std7"]


def scale(rows: pa.Table, by: Scale = "std30") -> np.ndarray:
    """A pool's own yardstick for APY moves: its 30-day (or 7-day) std plus 5% of its APY, never
    zero."""
    std = np.nan_to_num(_column(rows, f"stddev_apy_{by[3:]}d"), nan=0.0)
    return std + 0.05 * np.abs(np.nan_to_num(_column(rows, "actual_apy"), nan=0.0)) + 0.01


def training_rows(
    panel: pa.Table, train_days: int, horizon: Horizon = 1, *, end: dt.date | None = None
) -> pa.Table:
    """Rows with an observed target from the last ``train_days`` forecast days, sorted by pool and
    date, with ``age``: days between the row and the latest day whose target is known.

    Without ``end``, anchored on each pool's latest observed day: where every pool reports daily
    this is the plan's ``date >= today - TRAIN_DAYS``; a pool that paused still teaches the model
    its latest days. With ``end`` (a backtest cutoff), only targets observed by ``end`` count.
    """
    days = horizon_days(horizon)
    target = target_column(horizon)
    if target not in panel.column_names:
        panel = add_targets(panel, [horizon])
    if end is None:
        observed = panel.filter(pc.field("is_observed"))
        last = observed.group_by("pool_id").aggregate([("date", "max")])
        joined = panel.join(last, "pool_id")
        anchor = pc.cast(joined.column("date_max"), pa.timestamp("s"))
    else:
        joined = panel.append_column("date_max", pa.array([end] * panel.num_rows, pa.date32()))
        anchor = pc.cast(joined.column("date_max"), pa.timestamp("s"))
    last_origin = pc.subtract(anchor, pa.scalar(dt.timedelta(days=days), pa.duration("s")))
    age = pc.divide(
        pc.cast(
            pc.subtract(last_origin, pc.cast(joined.column("date"), pa.timestamp("s"))), pa.int64()
        ),
        86_400,
    )
    joined = joined.append_column("age", age)
    mask = pc.and_(
        pc.and_(pc.greater_equal(age, 0), pc.less(age, train_days)),
        pc.and_(pc.is_valid(joined.column(target)), pc.is_valid(joined.column("actual_apy"))),
    )
    rows = joined.filter(mask).drop_columns(["date_max"])
    return rows.sort_by([("pool_id", "ascending"), ("date", "ascending")])


def latest_rows(panel: pa.Table) -> pa.Table:
    """Each pool's row on its latest observed day: the features a forecast starts from."""
    observed = panel.filter(pc.field("is_observed"))
    last = observed.group_by("pool_id").aggregate([("date", "max")])
    joined = observed.join(last, "pool_id")
    keep = pc.equal(joined.column("date"), joined.column("date_max"))
    return joined.filter(keep).drop_columns(["date_max"]).sort_by("pool_id")


def _conformal(residuals: np.ndarray, levels: tuple[float, float]) -> tuple[float, float]:
    """Split-conformal quantiles of scaled residuals at ``levels`` (finite-sample ranks)."""
    r = np.sort(residuals[np.isfinite(residuals)])
    if r.size == 0:
        return (0.0, 0.0)
    n = r.size
    lo = int(np.floor(levels[0] * (n + 1))) - 1
    hi = int(np.ceil(levels[1] * (n + 1))) - 1
    return (float(r[min(max(lo, 0), n - 1)]), float(r[min(max(hi, 0), n - 1)]))


BLEND_GRID = np.round(np.arange(0.0, 1.0001, 0.1), 2)
# Fewer calibration rows per blend group than this and the calibration fits one blend for all.
MIN_BLEND_GROUP_ROWS = 50
# Widen the dead zone only while it costs no calibration MAE: a wider zone that costs 0.5% turned
# 60 of 88 pools into ties with naive at 1 day (a win for no pool).
DEAD_ZONE_TOLERANCE = 1.0


def _blend(
    model: np.ndarray,
    naive: np.ndarray,
    anchors: np.ndarray,
    scl: np.ndarray,
    weights: Sequence[float],
    dead_zone: float,
) -> np.ndarray:
    """``naive + w0 (model - naive) + sum_k w_k (anchor_k - naive)``, today's APY inside the dead
    zone. ``anchors``: one column per baseline (7-day mean, 30-day mean)."""
    value = naive + weights[0] * (model - naive)
    for k in range(anchors.shape[1]):
        value = value + weights[k + 1] * (anchors[:, k] - naive)
    return np.where(np.abs(value - naive) < dead_zone * scl, naive, value)


def _fit_blend(
    y: np.ndarray,
    model: np.ndarray,
    naive: np.ndarray,
    anchors: np.ndarray,
    scl: np.ndarray,
    dead_zones: Sequence[float] = (0.0,),
) -> tuple[tuple[float, ...], float]:
    """Weights of the model and the anchors over naive (a 0.1 grid, summing to at most 1), then
    the widest dead zone that costs nothing: where the model has no edge the forecast falls back
    to today's APY."""
    best: tuple[float, tuple[float, ...]] | None = None
    for combo in itertools.product(BLEND_GRID, repeat=1 + anchors.shape[1]):
        if sum(combo) > 1.0 + 1e-9:
            continue
        weights = tuple(float(w) for w in combo)
        mae = float(np.mean(np.abs(_blend(model, naive, anchors, scl, weights, 0.0) - y)))
        if best is None or mae < best[0] - 1e-12:
            best = (mae, weights)
    assert best is not None
    mae0, weights = best
    zone = 0.0
    for dz in dead_zones:
        mae = float(np.mean(np.abs(_blend(model, naive, anchors, scl, weights, dz) - y)))
        if mae <= mae0 * DEAD_ZONE_TOLERANCE:
            zone = dz
    return weights, zone


def _stack_weight(ratio: float | None, edge: tuple[float, float] | None) -> float:
    """The own model's weight in a stacked mean (each stacked horizon weighs 1); see
    ``ModelSpec.stack_edge``."""
    if edge is None or ratio is None:
        return 1.0
    full, none = edge
    return float(np.clip((none - ratio) / (none - full), 0.0, 1.0))


def _blend_edges(apy: np.ndarray, groups: int) -> tuple[float, ...]:
    """Today's-APY edges between ``groups`` equal-sized blend groups of calibration rows.

    One blend fitted in APY points is the high-APY pools' blend: their moves carry the MAE. On
    a low-APY pool the model's edge is smaller, and its own blend leans on naive more (often all
    the way). Quantile edges need no threshold of their own, and every group gets enough rows.
    """
    apy = apy[np.isfinite(apy)]
    if groups <= 1 or apy.size < groups * MIN_BLEND_GROUP_ROWS:
        return ()
    edges = tuple(float(e) for e in np.quantile(apy, np.arange(1, groups) / groups))
    counts = np.bincount(np.searchsorted(edges, apy, side="right"), minlength=groups)
    return edges if counts.min() >= MIN_BLEND_GROUP_ROWS else ()


def _blend_group(apy: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges, dtype=np.float64), apy, side="right")


class Forecaster:
    """One model for one horizon: a global LightGBM model (or a baseline), fitted on all pools."""

    def __init__(
        self,
        model: str = "production",
        *,
        horizon: Horizon = 1,
        train_days: int = 60,
        seed: int = 42,
        num_threads: int = 0,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.horizon = horizon
        self.train_days = train_days
        self.seed = seed
        self.num_threads = num_threads
        self.params = params

    def _spec(self) -> ModelSpec:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {sorted(MODELS)}")
        return MODELS[self.model].for_horizon(self.horizon)

    def lgb_params(self) -> dict[str, Any]:
        spec = self._spec()
        return {
            **spec.params,
            **(self.params or {}),
            "seed": self.seed,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": self.num_threads,
            "verbosity": -1,
        }

    def _scale(self, rows: pa.Table) -> np.ndarray:
        return scale(rows, self._spec().scale)

    def _target_scale(self, rows: pa.Table) -> np.ndarray:
        power = self._spec().scale_power
        scl = self._scale(rows)
        return scl if power == 1.0 else np.round(scl**power, 9)

    # -- the target in the model's own units ----------------------------------------------------
    _member = 0  # the ensemble member (index into bases_) that _to_target/_from_target serve
    # Binned training sets shared by the members of one _train_members call, by (rows, valid).
    _binned: dict[tuple[int, int | None], tuple[lgb.Dataset, lgb.Dataset | None]] | None = None

    def _weights(self, rows: pa.Table) -> np.ndarray | None:
        """Row weights in the loss (all under 1), or None where every row counts alike.

        Under 1, LightGBM's weighted percentile (an L1 leaf's value) is the weighted median row
        itself: from 1 up it interpolates, on a segment LightGBM 4 (this engine) chose
        differently from LightGBM 3.3 (SynapseML's), and the engines' 7-day forecasts were 9%
        apart. Only ratios of weights matter to the splits and the median.
        """
        spec = self._spec()
        if not (spec.weight_power or spec.half_life) or rows.num_rows == 0:
            return None
        weight = np.ones(rows.num_rows)
        if spec.weight_power:
            weight *= self._scale(rows) ** spec.weight_power
        if spec.half_life:
            weight *= 0.5 ** (_column(rows, "age") / spec.half_life)
        return np.round(weight / (2.0 * weight.max()), 12)

    def _base(self, rows: pa.Table) -> np.ndarray:
        """The member's starting point: its base column, today's APY where that is missing."""
        naive = _column(rows, "actual_apy")
        bases = getattr(self, "bases_", None) or self._spec().bases
        if bases[self._member] == "actual_apy":
            return naive
        value = _column(rows, bases[self._member])
        return np.where(np.isfinite(value), value, naive)

    def _to_target(self, rows: pa.Table, y: np.ndarray) -> np.ndarray:
        target = self._spec().target
        if target == "level":
            return y
        change = y - self._base(rows)
        change = change / self._target_scale(rows) if target == "scaled_change" else change
        return np.round(change, 9)  # L1 follows each residual's sign: no last-bit noise

    def _from_target(self, rows: pa.Table, raw: np.ndarray) -> np.ndarray:
        target = self._spec().target
        if target == "level":
            return raw
        change = raw * self._target_scale(rows) if target == "scaled_change" else raw
        return change + self._base(rows)

    def _train_members(
        self, rows: pa.Table, rounds: Sequence[int], valid: pa.Table | None = None
    ) -> list[lgb.Booster]:
        """One booster per base (``_train`` is the engine's: local LightGBM or SynapseML)."""
        boosters = []
        self._binned = {}
        try:
            for i in range(len(self.bases_)):
                self._member = i
                boosters.append(self._train(rows, rounds[i], valid))
        finally:
            self._member = 0
            self._binned = None
        return boosters

    @property
    def booster_(self) -> lgb.Booster | None:
        """The first member's booster (from today's APY): its text is ``h<horizon>.txt``."""
        members = getattr(self, "members_", None)
        return members[0] if members else None

    def _train(self, rows: pa.Table, rounds: int, valid: pa.Table | None = None) -> lgb.Booster:
        spec = self._spec()
        dtype = np.float32 if spec.float32 else np.float64
        y = self._to_target(rows, _column(rows, target_column(self.horizon)))
        use_valid = valid is not None and valid.num_rows > 0 and bool(spec.early_stopping)
        yv = (
            self._to_target(valid, _column(valid, target_column(self.horizon)))
            if valid is not None and use_valid
            else None
        )
        key = (id(rows), id(valid) if use_valid else None)
        if self._binned is not None and key in self._binned:
            # Another ensemble member on the same rows: the bins are the same, only labels differ.
            data, valid_data = self._binned[key]
            data.set_label(y)
            if valid_data is not None:
                valid_data.set_label(yv)
        else:
            data = lgb.Dataset(
                _matrix(rows, spec.features, dtype),
                label=y,
                weight=self._weights(rows),
                feature_name=list(spec.features),
                free_raw_data=True,
                params={"max_bin": spec.params.get("max_bin", 255)},
            )
            valid_data = None
            if valid is not None and use_valid:
                valid_data = lgb.Dataset(
                    _matrix(valid, spec.features, dtype),
                    label=yv,
                    weight=self._weights(valid),
                    reference=data,
                )
            if self._binned is not None:
                self._binned[key] = (data, valid_data)
        params = self.lgb_params()
        params.pop("num_iterations", None)
        params["num_threads"] = self.fit_threads_
        callbacks: list[Callable[..., Any]] = []
        valid_sets = []
        if valid_data is not None:
            valid_sets = [valid_data]
            callbacks = [lgb.early_stopping(spec.early_stopping, verbose=False)]
        return lgb.train(
            params, data, num_boost_round=rounds, valid_sets=valid_sets, callbacks=callbacks
        )

    def fit(
        self,
        panel: pa.Table,
        *,
        end: dt.date | None = None,
        stacked: Mapping[Horizon, Forecaster] | None = None,
    ) -> Forecaster:
        """Train on the last ``train_days`` of observed targets (up to ``end`` when given).

        ``stacked``: forecasters of the spec's ``stack`` horizons already fitted on the same panel
        and ``end`` (a :class:`ForecastModel`'s); the others are fitted here.
        """
        spec = self._spec()
        started = time.perf_counter()
        self.stacked_: dict[Horizon, Forecaster] = {}
        rows = training_rows(panel, self.train_days, self.horizon, end=end)
        if rows.num_rows < 10:
            raise ValueError(
                f"only {rows.num_rows} training rows with an observed {self.horizon}-day-ahead APY "
                f"in the last {self.train_days} days; ingest more history or raise TRAIN_DAYS"
            )
        threads = self.num_threads or (
            # OpenMP threads cost more than they give on small sets (and spin under contention).
            1 if rows.num_rows < 200_000 else (os.cpu_count() or 1)
        )
        self.fit_threads_ = threads
        self.features_ = spec.features
        self.n_train_ = rows.num_rows
        dates = rows.column("date")
        self.train_window_ = (pc.min(dates).as_py(), pc.max(dates).as_py())
        self.fingerprint_ = _fingerprint(rows, spec.features, target_column(self.horizon))
        self.bases_ = spec.bases
        self.members_: list[lgb.Booster] = []
        self.anchors_ = spec.anchors
        # (weights, dead zone) per blend group; the groups split today's APY at blend_edges_.
        self.blend_edges_: tuple[float, ...] = ()
        self.blends_: list[tuple[tuple[float, ...], float]] = [
            ((1.0,) + (0.0,) * len(spec.anchors), 0.0)
        ]
        self.quantiles_: tuple[float, float] | None = None
        self.calibration_: dict[str, Any] = {}
        rounds = [int(self.lgb_params().get("num_iterations", 100))] * len(self.bases_)
        if spec.calibrate:
            calib = rows.filter(pc.less(rows.column("age"), spec.calibration_days))
            early = rows.filter(pc.greater_equal(rows.column("age"), spec.calibration_days))
            if calib.num_rows and early.num_rows >= 10:
                self._calibrate(early, calib, rounds)
                if self.best_iterations_:
                    rounds = self.best_iterations_
        if spec.baseline is None:
            self.members_ = self._train_members(rows, rounds)
        self.member_rounds_ = rounds if spec.baseline is None else [0] * len(rounds)
        self.rounds_ = self.member_rounds_[0]
        self.stack_weight_ = _stack_weight(self.calibration_.get("ratio"), spec.stack_edge)
        # After calibration, which judged this model's own forecasts.
        for h in spec.stack:
            given = (stacked or {}).get(h)
            self.stacked_[h] = given or _forecaster(type(self), self, h).fit(panel, end=end)
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def _calibrate(self, early: pa.Table, calib: pa.Table, rounds: Sequence[int]) -> None:
        """Fit on the early part, judge on the held-out last days: blend, dead zone, intervals."""
        spec = self._spec()
        self.best_iterations_: list[int] = []
        y = _column(calib, target_column(self.horizon))
        naive = _column(calib, "actual_apy")
        scl = self._scale(calib)
        if spec.baseline is None:
            self.members_ = self._train_members(early, rounds, valid=calib)
            self.best_iterations_ = [
                b.best_iteration or r for b, r in zip(self.members_, rounds, strict=True)
            ]
            model = self._raw_predict(calib, self.best_iterations_)
            anchors = self._anchors(calib)
            self.blend_edges_ = _blend_edges(naive, spec.blend_groups)
            group = _blend_group(naive, self.blend_edges_)
            self.blends_ = [
                _fit_blend(y[m], model[m], naive[m], anchors[m], scl[m], spec.dead_zones)
                for m in (group == k for k in range(len(self.blend_edges_) + 1))
            ]
        point = self.predict(calib)
        residual = (y - point) / scl
        self.quantiles_ = _conformal(residual, spec.interval)
        self.calibration_ = {
            "n": int(calib.num_rows),
            "mae": float(np.mean(np.abs(y - point))),
            "naive_mae": float(np.mean(np.abs(y - naive))),
            "blend_edges": list(self.blend_edges_),
            "weights": [list(w) for w, _ in self.blends_],
            "dead_zone": [z for _, z in self.blends_],
            "best_iteration": self.best_iterations_[0] if self.best_iterations_ else None,
            "quantiles": list(self.quantiles_),
        }
        self.calibration_["ratio"] = (
            self.calibration_["mae"] / self.calibration_["naive_mae"]
            if self.calibration_["naive_mae"]
            else None
        )

    def _anchors(self, rows: pa.Table) -> np.ndarray:
        """The blend's baselines (today's APY where one is missing), one column each."""
        naive = _column(rows, "actual_apy")
        cols = [_column(rows, a) for a in self.anchors_]
        if not cols:
            return np.empty((rows.num_rows, 0))
        return np.column_stack([np.where(np.isfinite(c), c, naive) for c in cols])

    def _raw_predict(self, rows: pa.Table, iterations: Sequence[int] | None = None) -> np.ndarray:
        spec = self._spec()
        if spec.baseline is not None:
            value = _column(rows, spec.baseline)
            return np.where(np.isfinite(value), value, _column(rows, "actual_apy"))
        assert self.members_, "the forecaster is not fitted"
        dtype = np.float32 if spec.float32 else np.float64
        matrix = _matrix(rows, self.features_, dtype)
        values = []
        try:
            for i, booster in enumerate(self.members_):
                self._member = i
                raw = booster.predict(
                    matrix,
                    num_iteration=iterations[i] if iterations else None,
                    num_threads=self.fit_threads_,
                )
                values.append(self._from_target(rows, np.asarray(raw, dtype=np.float64)))
        finally:
            self._member = 0
        return values[0] if len(values) == 1 else np.mean(values, axis=0)

    def predict(self, rows: pa.Table) -> np.ndarray:
        """Point forecasts for the given origin rows."""
        own = self._own_predict(rows)
        stacked = self.stacked_
        if not stacked:
            return own
        others = [f.predict(rows) for f in stacked.values()]
        w = self.stack_weight_
        if w == 1.0:  # the plain mean: the same bits as before stack weights
            return np.mean([own, *others], axis=0)
        return (w * own + np.sum(others, axis=0)) / (w + len(others))

    def _own_predict(self, rows: pa.Table) -> np.ndarray:
        model = self._raw_predict(rows)
        spec = self._spec()
        if spec.baseline is not None or not spec.calibrate:
            return model  # a baseline, or a model as trained (the plan's)
        naive = _column(rows, "actual_apy")
        anchors = self._anchors(rows)
        scl = self._scale(rows)
        group = _blend_group(naive, self.blend_edges_)
        value = np.empty_like(model)
        for k, (weights, zone) in enumerate(self.blends_):
            m = group == k
            value[m] = _blend(model[m], naive[m], anchors[m], scl[m], weights, zone)
        # A pool whose APY has not moved for 30 days gives no evidence of a move: keep it.
        flat = _column(rows, "stddev_apy_30d") == 0.0
        return np.where(flat, naive, value)

    def predict_interval(self, rows: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point forecast and its 80% interval (NaN bounds for a model without calibration)."""
        point = self.predict(rows)
        if self.quantiles_ is None:
            nan = np.full(point.shape, np.nan)
            return point, nan, nan
        scl = self._scale(rows)
        return point, point + self.quantiles_[0] * scl, point + self.quantiles_[1] * scl

    def model_text(self) -> str:
        return self.booster_.model_to_string() if self.booster_ is not None else ""

    def member_texts(self) -> list[str]:
        """The other members' native models (bases after the first), in order."""
        return [b.model_to_string() for b in getattr(self, "members_", [])[1:]]

    def metadata(self) -> dict[str, Any]:
        spec = self._spec()
        return {
            "model": asdict(spec) | {"params": self.lgb_params()},
            "horizon": self.horizon,
            "features": list(self.features_),
            "train_days": self.train_days,
            "train_window": [d.isoformat() for d in self.train_window_],
            "n_train": self.n_train_,
            "rounds": self.rounds_,
            "members": [
                {"base": b, "rounds": r}
                for b, r in zip(self.bases_, self.member_rounds_, strict=True)
            ],
            "data_fingerprint": self.fingerprint_,
            "blend_anchors": list(self.anchors_),
            "blend_edges": list(self.blend_edges_),
            "blend_weights": [list(w) for w, _ in self.blends_],
            "dead_zone": [z for _, z in self.blends_],
            "interval_quantiles": list(self.quantiles_) if self.quantiles_ else None,
            "calibration": self.calibration_,
            "stack": [horizon_key(h) for h in self.stacked_],
            "stack_weight": self.stack_weight_,
        }

    def save(self, directory: str | Path) -> Path:
        """Native LightGBM text plus metadata; the folder is named by the model's content hash."""
        if self.stacked_:
            raise ValueError(
                f"the {self.horizon} forecast averages other horizons' models: save its "
                "ForecastModel, which holds them all"
            )
        text = self.model_text()
        version = hashlib.sha256(text.encode()).hexdigest()[:16]
        out = Path(directory) / f"{self.model}-h{self.horizon}-{version}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.txt").write_text(text)
        for i, member in enumerate(self.member_texts(), start=1):
            (out / f"model.b{i}.txt").write_text(member)
        meta = {"version": version, **self.metadata()}
        (out / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        self.version_ = version
        return out

    @classmethod
    def _restore(cls, meta: dict[str, Any], text: str, members: Sequence[str] = ()) -> Forecaster:
        """A fitted forecaster from its saved metadata and model texts (no training)."""
        horizon = parse_horizon(meta["horizon"])
        self = cls(
            meta["model"]["name"],
            horizon=horizon,
            train_days=meta["train_days"],
            seed=int(meta["model"]["params"].get("seed", 42)),
        )
        self.fit_threads_ = 1
        self.features_ = tuple(meta["features"])
        self.n_train_ = meta["n_train"]
        first, last = meta["train_window"]
        self.train_window_ = (dt.date.fromisoformat(first), dt.date.fromisoformat(last))
        self.fingerprint_ = meta["data_fingerprint"]
        self.rounds_ = meta["rounds"]
        # Artifacts from before ensembles had one member, from today's APY.
        saved = meta.get("members") or [{"base": "actual_apy", "rounds": self.rounds_}]
        self.bases_ = tuple(m["base"] for m in saved)
        self.member_rounds_ = [m["rounds"] for m in saved]
        # Artifacts from before the anchors were a setting blended the 7-day mean only.
        self.anchors_ = tuple(meta.get("blend_anchors", ["rolling_apy_7d"]))
        # Artifacts from before blend groups held one blend: a flat weight list and one zone.
        weights, zones = meta["blend_weights"], meta["dead_zone"]
        if not isinstance(zones, list):
            weights, zones = [weights], [zones]
        self.blend_edges_ = tuple(float(e) for e in meta.get("blend_edges", []))
        self.blends_ = [
            (tuple(float(w) for w in ws), float(z)) for ws, z in zip(weights, zones, strict=True)
        ]
        q = meta["interval_quantiles"]
        self.quantiles_ = (q[0], q[1]) if q else None
        self.calibration_ = meta["calibration"]
        # Artifacts from before stack_edge weighed their own model like each stacked horizon.
        self.stack_weight_ = float(meta.get("stack_weight", 1.0))
        texts = [text, *members] if text else []
        self.members_ = [lgb.Booster(model_str=t) for t in texts]
        self.stacked_ = {}  # ForecastModel.load wires the saved ``stack`` horizons
        return self


def _forecaster(
    cls: type[Forecaster], like: Forecaster | ForecastModel, horizon: Horizon
) -> Forecaster:
    """An unfitted ``cls`` for ``horizon`` with the model, window, seed and threads of ``like``."""
    return cls(
        like.model,
        horizon=horizon,
        train_days=like.train_days,
        seed=like.seed,
        num_threads=like.num_threads,
        params=like.params,
    )


def _fingerprint(rows: pa.Table, features: Sequence[str], target: str) -> str:
    """A hash of exactly the data the model saw (store-independent: no schema metadata)."""
    cols = [
        c
        for c in dict.fromkeys(("pool_id", "date", "actual_apy", *features, target))
        if c in rows.column_names
    ]
    table = pa.table({n: rows.column(n) for n in cols})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def forecast_table(model: Forecaster | ForecastModel, panel: pa.Table) -> pa.Table:
    """One next-day forecast per pool: pool_id, date (latest observed day + horizon),
    forecasted_apy, forecasted_tvl (the TVL forecast that backtested better; TVL carried from that
    day, the plan's baseline, for a single :class:`Forecaster`)."""
    if not {"rolling_tvl_7d", *PEER_MEDIANS} <= set(panel.column_names):
        panel = add_targets(panel, [1])
    rows = latest_rows(panel)
    if isinstance(model, ForecastModel):
        one = model.horizons_[1]
        tvl = model.tvl_forecast(rows, 1)
    else:
        one, tvl = model, _column(rows, "actual_tvl")
    dates = pc.add(
        pc.cast(rows.column("date"), pa.timestamp("s")),
        pa.scalar(dt.timedelta(days=horizon_days(one.horizon)), pa.duration("s")),
    )
    return pa.table(
        {
            "pool_id": rows.column("pool_id"),
            "date": pc.cast(dates, pa.date32()),
            "forecasted_apy": pa.array(one.predict(rows), pa.float64()),
            "forecasted_tvl": pa.array(tvl, pa.float64()),
        }
    )


# -- the multi-horizon production model and its artifacts ------------------------------------------


def _tvl_baseline(rows: pa.Table, how: str) -> np.ndarray:
    naive = _column(rows, "actual_tvl")
    if how == "naive":
        return naive
    mean = _column(rows, "rolling_tvl_7d")
    return np.where(np.isfinite(mean), mean, naive)


def choose_tvl_baseline(
    panel: pa.Table, horizon: int, train_days: int, *, end: dt.date | None = None
) -> dict[str, Any]:
    """TVL forecast by whichever baseline had the lower MAE over the training window."""
    if (
        "rolling_tvl_7d" not in panel.column_names
        or f"target_tvl_h{horizon}" not in panel.column_names
    ):
        panel = add_targets(panel, [horizon])
    rows = training_rows(panel, train_days, horizon, end=end)
    y = _column(rows, f"target_tvl_h{horizon}")
    ok = np.isfinite(y)
    maes = {
        how: float(np.mean(np.abs(_tvl_baseline(rows, how)[ok] - y[ok]))) if ok.any() else None
        for how in ("naive", "mean7d")
    }
    valid = {k: v for k, v in maes.items() if v is not None}
    best = min(valid, key=lambda k: valid[k]) if valid else "naive"
    return {"baseline": best, "mae": maes, "n": int(ok.sum())}


class ForecastModel:
    """The production forecast: one :class:`Forecaster` per horizon, saved and loaded as one."""

    backtest_: dict[str, Any] | None = None  # a loaded artifact's backtest summary
    # What trains each horizon's booster: the Spark engine sets its SynapseML-backed subclass.
    forecaster_cls: type[Forecaster] = Forecaster

    def __init__(
        self,
        model: str = "production",
        *,
        horizons: Sequence[Horizon] = HORIZONS,
        train_days: int = 60,
        seed: int = 42,
        num_threads: int = 0,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.horizons = tuple(horizons)
        self.train_days = train_days
        self.seed = seed
        self.num_threads = num_threads
        self.params = params

    def fit(
        self,
        panel: pa.Table,
        *,
        end: dt.date | None = None,
        on_horizon: Callable[[], object] | None = None,
    ) -> ForecastModel:
        """Fit every horizon on the panel's targets observed up to ``end``; ``on_horizon`` is
        called after each horizon (a progress bar's ``advance``)."""
        if 1 not in self.horizons:
            raise ValueError("the horizons must include 1: forecasted_apy is the next-day forecast")
        self._check_stacks()
        panel = add_targets(panel, self.horizons)
        self.horizons_: dict[Horizon, Forecaster] = {}
        self.tvl_: dict[str, dict[str, Any]] = {}
        self.skipped_: dict[str, str] = {}
        for h in self.horizons:
            forecaster = _forecaster(self.forecaster_cls, self, h)
            try:
                self.horizons_[h] = forecaster.fit(panel, end=end, stacked=self.horizons_)
            except ValueError as exc:
                if h == 1:
                    raise
                # A short history still gets its next-day forecast; longer horizons wait.
                self.skipped_[horizon_key(h)] = str(exc)
                if on_horizon is not None:
                    on_horizon()
                continue
            if h != "mean7":
                self.tvl_[horizon_key(h)] = choose_tvl_baseline(
                    panel, int(h), self.train_days, end=end
                )
            if on_horizon is not None:
                on_horizon()
        self.version_ = self._version()
        return self

    def _check_stacks(self) -> None:
        """A horizon that averages others' forecasts needs them fitted (and saved) before it."""
        for h in self.horizons:
            spec = MODELS[self.model].for_horizon(h) if self.model in MODELS else None
            before = self.horizons[: self.horizons.index(h)]
            if spec is not None and not set(spec.stack) <= set(before):
                raise ValueError(
                    f"horizon {h} of {self.model} averages horizons {list(spec.stack)}: list them "
                    f"before it (horizons {list(self.horizons)})"
                )

    def _version(self) -> str:
        digest = hashlib.sha256()
        for h, f in self.horizons_.items():
            for text in (f.model_text(), *f.member_texts()):
                digest.update(horizon_key(h).encode() + b"\0" + text.encode() + b"\0")
            digest.update(json.dumps(f.metadata(), sort_keys=True, default=str).encode())
        digest.update(json.dumps(self.tvl_, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def tvl_forecast(self, rows: pa.Table, horizon: Horizon) -> np.ndarray:
        choice = self.tvl_.get(horizon_key(horizon), {"baseline": "naive"})
        return _tvl_baseline(rows, choice["baseline"])

    def forecasts(self, panel: pa.Table) -> pa.Table:
        """Every horizon for every pool, from its latest observed day: the ``forecasts`` table's
        rows (metric ``apy`` with its 80% interval, metric ``tvl`` without one)."""
        panel = add_targets(panel, [h for h in self.horizons if h != "mean7"] or [1])
        rows = latest_rows(panel)
        made_on = rows.column("date")
        parts = []
        for h, f in self.horizons_.items():
            value, lower, upper = f.predict_interval(rows)
            target_date = pc.cast(
                pc.add(
                    pc.cast(made_on, pa.timestamp("s")),
                    pa.scalar(dt.timedelta(days=horizon_days(h)), pa.duration("s")),
                ),
                pa.date32(),
            )
            base = {
                "pool_id": rows.column("pool_id"),
                "made_on": made_on,
                "target_date": target_date,
            }
            n = rows.num_rows
            parts.append(
                pa.table(
                    {
                        **base,
                        "metric": pa.array(["apy"] * n),
                        "horizon": pa.array([horizon_key(h)] * n),
                        "value": pa.array(value, pa.float64()),
                        "lower": pa.array(
                            np.where(np.isfinite(lower), lower, np.nan),
                            pa.float64(),
                            from_pandas=True,
                        ),
                        "upper": pa.array(
                            np.where(np.isfinite(upper), upper, np.nan),
                            pa.float64(),
                            from_pandas=True,
                        ),
                        "model_version": pa.array([self.version_] * n),
                    }
                )
            )
            if h != "mean7":
                parts.append(
                    pa.table(
                        {
                            **base,
                            "metric": pa.array(["tvl"] * n),
                            "horizon": pa.array([horizon_key(h)] * n),
                            "value": pa.array(self.tvl_forecast(rows, h), pa.float64()),
                            "lower": pa.nulls(n, pa.float64()),
                            "upper": pa.nulls(n, pa.float64()),
                            "model_version": pa.array([self.version_] * n),
                        }
                    )
                )
        return pa.concat_tables(parts).sort_by(
            [("pool_id", "ascending"), ("metric", "ascending"), ("horizon", "ascending")]
        )

    def metadata(self, backtest: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "format": "poolcast-forecast-model/1",
            "version": self.version_,
            "model": self.model,
            "seed": self.seed,
            "train_days": self.train_days,
            "features": list(
                dict.fromkeys(f for fc in self.horizons_.values() for f in fc.features_)
            ),
            # The model-side features any horizon uses, with their formulas.
            "derived_features": {
                k: list(v)
                for k, v in DERIVED.items()
                if any(k in f.features_ for f in self.horizons_.values())
            },
            "peer_medians": {k: [c, list(g)] for k, (c, g) in PEER_MEDIANS.items()},
            "lightgbm": lgb.__version__,
            "horizons": {horizon_key(h): f.metadata() for h, f in self.horizons_.items()},
            "tvl": self.tvl_,
            "skipped_horizons": getattr(self, "skipped_", {}),
            # Each fit's own time-based holdout (its last calibration days), a one-cutoff backtest.
            "backtest": backtest
            if backtest is not None
            else {horizon_key(h): f.calibration_ for h, f in self.horizons_.items()},
        }

    def files(self, backtest: dict[str, Any] | None = None) -> dict[str, bytes]:
        """The artifact's files: ``h<horizon>.txt`` native LightGBM models and ``metadata.json``."""
        out = {f"h{horizon_key(h)}.txt": f.model_text().encode() for h, f in self.horizons_.items()}
        for h, f in self.horizons_.items():
            for i, text in enumerate(f.member_texts(), start=1):
                out[f"h{horizon_key(h)}.b{i}.txt"] = text.encode()
        out["metadata.json"] = json.dumps(
            self.metadata(backtest), indent=2, sort_keys=True, default=str
        ).encode()
        return out

    def save(self, location: str | Path, backtest: dict[str, Any] | None = None) -> str:
        """Write the artifact under a local folder or a ``gs://bucket/prefix``; returns where."""
        name = f"{self.model}-{self.version_}"
        files = self.files(backtest)
        base = str(location).rstrip("/")
        if base.startswith("gs://"):
            bucket, prefix = _split_gs(f"{base}/{name}")
            client = _gcs_client()
            for fname, data in files.items():
                client.bucket(bucket).blob(f"{prefix}/{fname}").upload_from_string(data)
            return f"gs://{bucket}/{prefix}"
        out = Path(base) / name
        out.mkdir(parents=True, exist_ok=True)
        for fname, data in files.items():
            (out / fname).write_bytes(data)
        return str(out)

    @classmethod
    def load(cls, location: str | Path) -> ForecastModel:
        """An artifact written by :meth:`save` (local folder or ``gs://``), ready to forecast."""
        base = str(location).rstrip("/")
        if base.startswith("gs://"):
            bucket, prefix = _split_gs(base)
            blobs = _gcs_client().bucket(bucket)

            def read(name: str) -> str:
                return blobs.blob(f"{prefix}/{name}").download_as_bytes().decode()
        else:
            if not Path(base, "metadata.json").is_file():
                raise FileNotFoundError(f"no model artifact at {base} (metadata.json missing)")

            def read(name: str) -> str:
                return Path(base, name).read_text()

        meta = json.loads(read("metadata.json"))
        if meta.get("format") != "poolcast-forecast-model/1":
            raise ValueError(f"{base} is not a poolcast forecast model artifact")
        self = cls(
            meta["model"],
            horizons=[parse_horizon(h) for h in meta["horizons"]],
            train_days=meta["train_days"],
            seed=meta["seed"],
        )
        self.horizons_ = {
            parse_horizon(k): Forecaster._restore(
                m,
                read(f"h{k}.txt"),
                [read(f"h{k}.b{i}.txt") for i in range(1, len(m.get("members") or [None]))],
            )
            for k, m in meta["horizons"].items()
        }
        for k, m in meta["horizons"].items():
            # Artifacts from before stacking have no ``stack``: each horizon forecasts alone.
            for s in m.get("stack", []):
                if parse_horizon(s) not in self.horizons_:
                    raise ValueError(f"{base}: horizon {k} averages horizon {s}, which is missing")
                self.horizons_[parse_horizon(k)].stacked_[parse_horizon(s)] = self.horizons_[
                    parse_horizon(s)
                ]
        self.tvl_ = meta["tvl"]
        self.version_ = meta["version"]
        self.backtest_ = meta.get("backtest")
        return self


def _split_gs(uri: str) -> tuple[str, str]:
    rest = uri[len("gs://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"not a gs:// path: {uri!r}")
    return bucket, prefix.strip("/")


def _gcs_client() -> Any:
    from poolcast.deploy.gcs import make_client

    return make_client(os.environ.get("PROJECT_ID") or os.environ.get("GOOGLE_CLOUD_PROJECT"))
