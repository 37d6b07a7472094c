"""What the models read: horizons, targets, derived features and peer medians, training rows and
matrices.

The declarations live in :mod:`poolcast.spec` (``DERIVED``, ``PEER_MEDIANS``, the targets); this
module computes them on an Arrow panel, once per fit, so every engine's panel gets the same.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poolcast.spec import (
    APY_TARGET,
    DERIVED,
    FEATURE_COLUMNS,
    MARKET,
    MEAN7_TARGET,
    NOISE_FEATURES,
    PEER_MEDIANS,
    TVL_TARGET,
)

Horizon = int | str  # 1, 7, 30 days ahead, or "mean7": the mean of the next 7 days
HORIZONS: tuple[Horizon, ...] = (1, 7, 30, "mean7")
MEAN7_MIN_OBSERVED = MEAN7_TARGET.min_observed  # observed days a mean of the next 7 days needs

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


def horizon_key(horizon: Horizon) -> str:
    return str(horizon)


def horizon_days(horizon: Horizon) -> int:
    """How many days after the forecast day the target reaches."""
    return MEAN7_TARGET.days if horizon == "mean7" else int(horizon)


def parse_horizon(text: str | int) -> Horizon:
    if str(text) == "mean7":
        return "mean7"
    value = int(text)
    if value < 1:
        raise ValueError(f"horizon must be a positive number of days or 'mean7', not {text!r}")
    return value


def target_column(horizon: Horizon) -> str:
    return MEAN7_TARGET.name if horizon == "mean7" else APY_TARGET.column(int(horizon))


def add_peer_medians(panel: pa.Table, peers: pa.Table | None = None) -> pa.Table:
    """The panel with the PEER_MEDIANS it lacks: each a median over the observed pools of a day
    (and group), NULL where the panel lacks its column (e.g. ``project``). Needs every pool of
    each day it holds, or ``peers``: the ``spec.peer_columns`` of every pool (the panel's rows
    are then any of its pools)."""
    exprs: list[str] = []
    joins: list[str] = []
    by_groups: dict[tuple[str, ...], list[str]] = {}
    for name, (column, groups) in PEER_MEDIANS.items():
        if name in panel.column_names:
            continue
        if not {column, *groups} <= set(panel.column_names):
            exprs.append(f"CAST(NULL AS DOUBLE) AS {name}")
            continue
        by_groups.setdefault(groups, []).append(
            f"median(CASE WHEN is_observed THEN {column} END) AS {name}"
        )
        exprs.append(f"g{list(by_groups).index(groups)}.{name}")
    if not exprs:
        return panel
    for i, (groups, medians) in enumerate(by_groups.items()):
        keys = ", ".join(("date", *groups))
        joins.append(
            # Fixed names from PEER_MEDIANS only, never user text.
            f"LEFT JOIN (SELECT {keys}, {', '.join(medians)} FROM peers "  # noqa: S608
            f"GROUP BY {keys}) AS g{i} USING ({keys})"
        )
    return _append_computed(
        panel, f"{', '.join(exprs)} FROM panel {' '.join(joins)}", peers=peers
    )


def _append_computed(table: pa.Table, query: str, peers: pa.Table | None = None) -> pa.Table:
    """``table`` with the columns of ``SELECT {query}`` appended, in the table's own row order
    (the query reads ``panel``, the table, and ``peers``: ``peers`` or the table itself).

    DuckDB reads only the columns the query names and returns only the new ones: the table's other
    columns are not copied (at 20,000 pools a copy of the forecast panel is 600-750 MB, and DuckDB
    held as much again while building it)."""
    import duckdb

    rows = pa.array(np.arange(table.num_rows, dtype=np.int64))
    con = duckdb.connect()
    try:
        con.register("panel", table.append_column("_row", rows))
        con.register("peers", peers if peers is not None else table)
        new = con.sql(f"SELECT {query} ORDER BY panel._row").to_arrow_table()  # noqa: S608
    finally:
        con.close()
    for name in new.column_names:
        table = table.append_column(name, new.column(name))
    return table


def _in_pool_date_order(table: pa.Table) -> bool:
    pools, dates = table.column("pool_id"), table.column("date")
    if table.num_rows < 2:
        return True
    head, tail = pools.slice(0, len(pools) - 1), pools.slice(1)
    before = pc.less(tail, head)
    same = pc.equal(tail, head)
    dates_back = pc.less_equal(dates.slice(1), dates.slice(0, len(dates) - 1))
    return not pc.any(pc.or_(before, pc.and_(same, dates_back))).as_py()


def target_columns(horizons: Sequence[Horizon]) -> set[str]:
    """The columns :func:`add_targets` adds besides the peer medians."""
    return (
        {target_column(h) for h in horizons}
        | {TVL_TARGET.column(int(h)) for h in horizons if h != "mean7"}
        | {"rolling_tvl_7d"}
    )


def add_targets(panel: pa.Table, horizons: Sequence[Horizon] = HORIZONS) -> pa.Table:
    """The panel with one target column per horizon (NULL unless observed, ``spec.APY_TARGET``
    and ``spec.MEAN7_TARGET``) and ``spec.TVL_TARGET`` for the day horizons, plus
    ``rolling_tvl_7d`` (a TVL baseline). Replaces existing targets. Adds the PEER_MEDIANS the
    panel lacks (:func:`add_peer_medians`; a panel that has them needs only whole pools).

    The grid has one row per pool and day, so ``lead(x, h)`` is the value h days later.
    """
    names = target_columns(horizons)
    base = add_peer_medians(panel.drop_columns([c for c in panel.column_names if c in names]))
    by_pool = "PARTITION BY pool_id ORDER BY date"

    def observed(k: int, col: str) -> str:
        return f"CASE WHEN lead(is_observed, {k}) OVER w THEN lead({col}, {k}) OVER w END"

    exprs = ["avg(actual_tvl) OVER (w ROWS BETWEEN 6 PRECEDING AND CURRENT ROW) AS rolling_tvl_7d"]
    for h in horizons:
        if h == "mean7":
            mean = MEAN7_TARGET
            leads = [observed(k, mean.target.source) for k in range(1, mean.days + 1)]
            count = " + ".join(f"CAST(({x}) IS NOT NULL AS INTEGER)" for x in leads)
            total = " + ".join(f"coalesce({x}, 0)" for x in leads)
            exprs.append(
                f"CASE WHEN ({count}) >= {mean.min_observed} "
                f"THEN ({total}) / ({count}) END AS {mean.name}"
            )
        else:
            for target in (APY_TARGET, TVL_TARGET):
                exprs.append(f"{observed(int(h), target.source)} AS {target.column(int(h))}")
    # Built only from fixed column names and integer horizons, never from user text.
    out = _append_computed(base, f"{', '.join(exprs)} FROM panel WINDOW w AS ({by_pool})")
    # Sorted by pool and date, as the engines' panels already are (then no copy).
    return out if _in_pool_date_order(out) else _sorted(out, ["pool_id", "date"])


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
        # A pool never observed gets a null anchor: its rows are dropped.
        anchor = pc.cast(_latest_observed(panel, panel.column("pool_id")), pa.timestamp("s"))
    else:
        anchor = pc.cast(pa.array([end] * panel.num_rows, pa.date32()), pa.timestamp("s"))
    last_origin = pc.subtract(anchor, pa.scalar(dt.timedelta(days=days), pa.duration("s")))
    age = pc.divide(
        pc.cast(
            pc.subtract(last_origin, pc.cast(panel.column("date"), pa.timestamp("s"))), pa.int64()
        ),
        86_400,
    )
    mask = pc.and_(
        pc.and_(pc.greater_equal(age, 0), pc.less(age, train_days)),
        pc.and_(pc.is_valid(panel.column(target)), pc.is_valid(panel.column("actual_apy"))),
    )
    return _sorted(panel.append_column("age", age).filter(mask), ["pool_id", "date"])


def sample_rows(rows: pa.Table, fraction: float, seed: int = 0) -> pa.Table:
    """Each (pool, day) row kept with probability ``fraction``, decided by a hash of the pool, the
    day and ``seed`` alone: the same rows on every engine, in any row order and on every rerun."""
    if fraction >= 1.0 or not rows.num_rows:
        return rows
    pools = pc.dictionary_encode(rows.column("pool_id")).combine_chunks()
    names = pools.dictionary.to_pylist()
    pool_hash = np.array([zlib.crc32(str(p).encode()) for p in names], dtype=np.uint64)
    day = pc.cast(rows.column("date"), pa.int32()).to_numpy(zero_copy_only=False)
    key = (pool_hash[pools.indices.to_numpy(zero_copy_only=False)] << np.uint64(32)) ^ (
        day.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B9)
    )
    # splitmix64's finalizer: neighbouring keys land far apart.
    key = (key ^ (key >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    key = (key ^ (key >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    key = key ^ (key >> np.uint64(31))
    uniform = (key >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return rows.filter(pa.array(uniform < fraction))


def _latest_observed(table: pa.Table, pools: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Each of ``pools``' latest observed day in ``table`` (null: never observed), looked up on
    the key columns alone: a join would copy every column of the wide panel."""
    keys = table.select(["pool_id", "date", "is_observed"]).filter(pc.field("is_observed"))
    last = keys.group_by("pool_id").aggregate([("date", "max")])
    return pc.take(last.column("date_max"), pc.index_in(pools, value_set=last.column("pool_id")))


def _sorted(rows: pa.Table, keys: Sequence[str]) -> pa.Table:
    order = pc.sort_indices(rows.select(keys), [(k, "ascending") for k in keys]).to_numpy()
    if np.array_equal(order, np.arange(rows.num_rows)):
        return rows  # already in order, as the engines' panels are: no copy
    return rows.take(order)


def latest_rows(panel: pa.Table) -> pa.Table:
    """Each pool's row on its latest observed day: the features a forecast starts from."""
    observed = panel.filter(pc.field("is_observed"))
    keep = pc.equal(observed.column("date"), _latest_observed(observed, observed.column("pool_id")))
    return _sorted(observed.filter(keep), ["pool_id"])
