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
* ``lag``: the value ``window`` days before on the same pool's grid.
* Market columns (``eth_open``, ``btc_open``, ``gas_price_gwei``) live on a global calendar:
  the source's last value on or before the day minus ``shift`` days.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal[
    "ffill", "mean", "std", "median", "delta", "unchanged", "lag", "dow", "month", "weekend"
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
    # does not move it. An ensemble base (model.specs.MODELS), not a tree feature.
    Column("median_apy_14d", "median", "actual_apy", 14),
)

# Rows a forecast needs behind its first training day for every feature window.
FEATURE_CONTEXT_DAYS = (
    max(c.window for c in FEATURES if c.kind in ("std", "mean", "median", "lag")) + 1
)

# The noise regime, for the 30-day model only (model.specs.MODELS): at 1 and 7 days it did not
# help.
NOISE_FEATURES: tuple[str, ...] = (
    "stddev_apy_delta_7d",
    "stddev_apy_delta_30d",
    "unchanged_share_30d",
)

# Levels an ensemble member learns the move from (model.specs.ModelSpec.bases), not tree
# features.
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


@dataclass(frozen=True)
class Target:
    """``column(h)`` = ``source`` ``h`` days after the row's day on the same pool's grid, counted
    only where a snapshot was observed that day (NULL otherwise: a carried-forward value is no
    observation). The engines compile it as ``CASE WHEN lead(is_observed, h) THEN lead(source, h)
    END`` over the pool's rows in date order."""

    prefix: str
    source: str

    def column(self, horizon: int) -> str:
        return f"{self.prefix}{horizon}"


@dataclass(frozen=True)
class MeanTarget:
    """``name`` = the mean of ``target``'s values 1..``days`` days later, where at least
    ``min_observed`` of them were observed (NULL otherwise)."""

    name: str
    target: Target
    days: int
    min_observed: int


# Step 11's forecast target: APY ``h`` days later, observed that day (``target_h{h}``).
APY_TARGET = Target("target_h", "actual_apy")
# The TVL a day-``h`` TVL baseline is scored against (``target_tvl_h{h}``).
TVL_TARGET = Target("target_tvl_h", "actual_tvl")
# The mean of the next 7 days' APY (``target_mean7``), from at least 4 observed days.
MEAN7_TARGET = MeanTarget("target_mean7", APY_TARGET, 7, 4)

# Model-side features: plain arithmetic on spec columns (any engine can compute them; the model
# computes them, poolcast.model.features). How far today's APY is from its own recent past is what
# mean reversion needs; trees find it poorly. ``sub``: a - b; ``zscore``: a / (b + 1e-3).
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

# ``name`` = the median of ``column`` over the pools observed on a day (in a group of these
# ``pools`` columns, if any): the peers of the PEERS features. They must see every pool of the
# day, so the model computes them once on the whole panel and never again on a subset (a backtest
# fold, one pool's rows) that already carries them.
PEER_MEDIANS: dict[str, tuple[str, tuple[str, ...]]] = {
    "market_apy": ("actual_apy", ()),
    "market_apy_30d": ("rolling_apy_30d", ()),
    "project_apy": ("actual_apy", ("project",)),
}

# Context a metric needs behind a day: the longest window plus the forward-fill reach.
HISTORY_DAYS = max(c.window for c in METRICS if c.kind in ("mean", "std")) + FILL_LIMIT_DAYS


def peer_columns() -> list[str]:
    """The columns the PEER_MEDIANS are computed from."""
    columns = {"date", "is_observed"}
    for column, groups in PEER_MEDIANS.values():
        columns |= {column, *groups}
    return sorted(columns)


def metric_names() -> list[str]:
    return [c.name for c in METRICS] + [m.name for m in MARKET]


# Plausible values, the same for ingest (refused) and validate (flagged).
APY_FLOOR = -100.0  # a position cannot lose more than all of it
TVL_CEILING = 1e12  # no single pool holds a trillion dollars
