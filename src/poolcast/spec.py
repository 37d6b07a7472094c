"""Every metric and feature, declared once as data. Each engine compiles these declarations.

Semantics (the same in every engine; `docs/architecture.md` has the long form):

* The grid: one row per active pool and UTC day, from the pool's first snapshot inside the lookback
  window to the as-of date, or to ``fill_limit_days`` after its last snapshot if it stopped earlier.
  A day with several snapshots keeps the latest one (DefiLlama's own /chart rule).
* ``ffill``: the last non-null value within the ``window`` rows up to and including the day
  (a bounded forward fill: a pool that stops reporting is not carried forever).
* ``mean`` / ``std`` / ``median``: average / sample standard deviation / median (the mean of the
  middle two for an even count) of the non-null values in the trailing ``window`` rows including
  the day. A partial window (early in a series) uses the rows it has; ``std`` of a single value is
  NULL.
* ``delta``: the value minus the previous day's value (NULL on a pool's first day).
* ``unchanged``: 1.0 where the value is zero (below 1e-9 in size), else 0.0; NULL stays NULL.
* ``lag`` / ``lead``: the value ``window`` days before / after on the same pool's grid.
* Market columns (``eth_open``, ``btc_open``, ``gas_price_gwei``) live on a global calendar:
  the source's last value on or before the day minus ``shift`` days.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal[
    "ffill", "mean", "std", "median", "delta", "unchanged", "lag", "lead", "dow", "month", "weekend"
]

FILL_LIMIT_DAYS = 30


@dataclass(frozen=True)
class Column:
    """``name`` = ``kind`` of ``source`` over ``window`` days, per pool, ordered by date."""

    name: str
    kind: Kind
    source: str
    window: int = 1


@dataclass(frozen=True)
class Market:
    """A global daily series: ``name`` = last ``source`` value on or before (day - ``shift``)."""

    name: str
    source: str  # "ETH" / "BTC" close price from raw_coinmarketcap_ohlcv, or "gas"
    shift: int


# Step 7 (calculate_pool_metrics): in order; a column may use the ones above it.
METRICS: tuple[Column, ...] = (
    Column("actual_apy", "ffill", "apy", FILL_LIMIT_DAYS),
    Column("actual_tvl", "ffill", "tvl_usd", FILL_LIMIT_DAYS),
    Column("rolling_apy_7d", "mean", "actual_apy", 7),
    Column("rolling_apy_30d", "mean", "actual_apy", 30),
    Column("stddev_apy_7d", "std", "actual_apy", 7),
    Column("stddev_apy_30d", "std", "actual_apy", 30),
    Column("apy_delta_today_yesterday", "delta", "actual_apy"),
    Column("stddev_apy_7d_delta", "delta", "stddev_apy_7d"),
    Column("stddev_apy_30d_delta", "delta", "stddev_apy_30d"),
)

# Previous day's close: today's candle is not final when the 23:00 snapshot is taken.
MARKET: tuple[Market, ...] = (
    Market("eth_open", "ETH", 1),
    Market("btc_open", "BTC", 1),
    Market("gas_price_gwei", "gas", 0),
)

# Step 11 (forecast_pools): the plan's FEATURE_COLS plus today's own APY and TVL, which are
# legitimate inputs now that the target is a later day's APY.
FEATURES: tuple[Column, ...] = (
    Column("apy_lag_1", "lag", "actual_apy", 1),
    Column("apy_lag_3", "lag", "actual_apy", 3),
    Column("apy_lag_7", "lag", "actual_apy", 7),
    Column("tvl_lag_1", "lag", "actual_tvl", 1),
    Column("day_of_week", "dow", "date"),  # ISO: Monday = 1 .. Sunday = 7
    Column("month", "month", "date"),
    Column("is_weekend", "weekend", "date"),
    # A pool's noise regime: how large its daily moves are, and how often it does not move at all.
    # Where daily moves are large against the 30-day spread the APY is noise around a level; where
    # it seldom moves, today's APY is the best guess a month out (docs/forecasting.md).
    Column("stddev_apy_delta_7d", "std", "apy_delta_today_yesterday", 7),
    Column("stddev_apy_delta_30d", "std", "apy_delta_today_yesterday", 30),
    Column("apy_unchanged", "unchanged", "apy_delta_today_yesterday"),
    Column("unchanged_share_30d", "mean", "apy_unchanged", 30),
    # The pool's usual level of the last two weeks: unlike the 7-day mean, a spike of a few days
    # does not move it. An ensemble base (forecast.MODELS), not a tree feature.
    Column("median_apy_14d", "median", "actual_apy", 14),
)

# Rows a forecast needs behind its first training day for every feature window.
FEATURE_CONTEXT_DAYS = (
    max(c.window for c in FEATURES if c.kind in ("std", "mean", "median", "lag")) + 1
)

# The noise regime, for the 30-day model only (forecast.MODELS): at 1 and 7 days it did not help.
NOISE_FEATURES: tuple[str, ...] = (
    "stddev_apy_delta_7d",
    "stddev_apy_delta_30d",
    "unchanged_share_30d",
)

# Levels an ensemble member learns the move from (forecast.ModelSpec.bases), not tree features.
BASES_ONLY: tuple[str, ...] = ("median_apy_14d",)

FEATURE_COLUMNS: tuple[str, ...] = (
    "actual_apy",
    "actual_tvl",
    "rolling_apy_7d",
    "rolling_apy_30d",
    "stddev_apy_7d",
    "stddev_apy_30d",
    "apy_delta_today_yesterday",
    "eth_open",
    "btc_open",
    "gas_price_gwei",
    *(f.name for f in FEATURES if f.name not in (*NOISE_FEATURES, *BASES_ONLY, "apy_unchanged")),
)

# The plan's FEATURE_COLS exactly, for the plan's model kept as a named option.
PLAN_FEATURE_COLUMNS: tuple[str, ...] = (
    "rolling_apy_7d",
    "rolling_apy_30d",
    "stddev_apy_7d",
    "stddev_apy_30d",
    "apy_delta_today_yesterday",
    "eth_open",
    "btc_open",
    "gas_price_gwei",
    "day_of_week",
    "month",
    "is_weekend",
    "apy_lag_1",
    "apy_lag_3",
    "apy_lag_7",
    "tvl_lag_1",
)

# Forecast target: APY `horizon` days later, counted only where a snapshot was observed that day.
TARGET_SOURCE = "actual_apy"

# Context a metric needs behind a day: the longest window plus the forward-fill reach.
HISTORY_DAYS = max(c.window for c in METRICS if c.kind in ("mean", "std")) + FILL_LIMIT_DAYS


def metric_names() -> list[str]:
    return [c.name for c in METRICS] + [m.name for m in MARKET]
