"""The statements every engine reads with and the keys it merges on, in SQL that PostgreSQL and
DuckDB both run.

Engines get the same columns whichever store they read: the local engine through Arrow, the Spark
engine through JDBC with these same statements.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from poolcast.spec import FEATURE_CONTEXT_DAYS, FILL_LIMIT_DAYS, MARKET, METRICS
from poolcast.store._base import Store

METRIC_KEY = ("pool_id", "date")
METRIC_UPDATE = (*(c.name for c in METRICS), *(m.name for m in MARKET), "is_observed")
FORECAST_COLUMNS = ("pool_id", "date", "forecasted_apy", "forecasted_tvl")

# JSON fields of raw snapshots are extracted in bulk by the database, not row by row in Python.
SNAPSHOTS_SQL = """
SELECT h.pool_id,
       h.timestamp,
       CAST(h.raw_json_data->>'apy' AS DOUBLE PRECISION) AS apy,
       CAST(h.raw_json_data->>'tvlUsd' AS DOUBLE PRECISION) AS tvl_usd
FROM raw_defillama_pool_history AS h
JOIN pools AS p ON p.pool_id = h.pool_id
WHERE p.is_active AND {batch h} AND h.timestamp >= $1 AND h.timestamp < $2
"""

MARKET_SQL = """
SELECT symbol AS source,
       CAST(data_timestamp AS DATE) AS date,
       CAST(raw_json_data->'USD'->>'close' AS DOUBLE PRECISION) AS value
FROM raw_coinmarketcap_ohlcv
WHERE data_timestamp < $1
UNION ALL
SELECT 'gas' AS source, date, actual_avg_gas_gwei AS value
FROM gas_fees_daily
WHERE date < $2
"""

LATEST_DAY_SQL = """
SELECT CAST(max(h.timestamp) AS DATE) AS day
FROM raw_defillama_pool_history AS h
JOIN pools AS p ON p.pool_id = h.pool_id
WHERE p.is_active
"""


def latest_data_day(store: Store) -> dt.date | None:
    """The default as-of date: the UTC day of the latest snapshot of an active pool."""
    day = store.fetch_arrow(LATEST_DAY_SQL).column("day")[0].as_py()
    return day if day is None or isinstance(day, dt.date) else dt.date.fromisoformat(str(day))


def window_bounds(as_of: dt.date, lookback_days: int) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) timestamps of the snapshots that feed a grid ending on ``as_of``."""
    start = dt.datetime.combine(as_of - dt.timedelta(days=lookback_days - 1), dt.time())
    end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())
    return start, end


PoolBatch = tuple[str, str] | None  # the first and last pool_id of a batch; None: every pool

ACTIVE_POOLS_SQL = "SELECT pool_id FROM pools WHERE is_active ORDER BY pool_id"


def pool_batches(store: Store, size: int) -> list[PoolBatch]:
    """The active pools in batches of ``size``, each as its first and last pool_id in the store's
    own order (``[None]``: one batch of every pool). Pools are independent for the metrics and,
    but for the peer medians, for the forecast panel: a batch is read, computed and merged alone."""
    ids = store.fetch_arrow(ACTIVE_POOLS_SQL).column("pool_id")
    if len(ids) <= size:
        return [None]
    last = len(ids) - 1
    starts = range(0, len(ids), size)
    return [(ids[i].as_py(), ids[min(i + size - 1, last)].as_py()) for i in starts]


_BATCH = re.compile(r"\{batch (\w+)\}")


def statement(sql: str, params: list[object], batch: PoolBatch = None) -> tuple[str, list[object]]:
    """``sql`` (a statement of this module) and its parameters, each ``{batch X}`` in it limiting
    the table aliased X to the pools of ``batch`` (``TRUE`` for every pool). The limit sits on
    every scan, not around the statement: the databases do not push a filter on the result into
    the per-pool groups it is built from, and each batch would scan the whole table again."""
    if batch is None:
        return _BATCH.sub("TRUE", sql), params
    n = len(params)
    limited = _BATCH.sub(lambda m: f"{m[1]}.pool_id BETWEEN ${n + 1} AND ${n + 2}", sql)
    return limited, [*params, *batch]


def read_snapshots(
    store: Store, as_of: dt.date, lookback_days: int, batch: PoolBatch = None
) -> pa.Table:
    start, end = window_bounds(as_of, lookback_days)
    return store.fetch_arrow(*statement(SNAPSHOTS_SQL, [start, end], batch))


def read_market(store: Store, as_of: dt.date) -> pa.Table:
    end = as_of + dt.timedelta(days=1)
    return store.fetch_arrow(MARKET_SQL, [dt.datetime.combine(end, dt.time()), end])


# The last day a metrics run wrote (forecast-only rows have no is_observed).
LAST_METRICS_DAY_SQL = """
SELECT max(date) AS day FROM pool_daily_metrics WHERE is_observed IS NOT NULL
"""

# The snapshots an incremental run reads, one statement that both engines run (the local engine
# through the store, the Spark engine as a JDBC subquery split by pool), so the pools it treats as
# catch-up are decided once, in the same snapshot of the data as the rows themselves:
#
# * catch-up pools, every snapshot in the lookback window: no metrics rows yet (a new pool arrives
#   with its whole history), or rows that stop before the window while new snapshots extend their
#   grid (a pool that paused for more than the fill limit and reports again). Few on a normal day.
# * every other pool, its snapshots from the context day on, plus one empty "anchor" snapshot the
#   day before the context for a pool with earlier snapshots in the lookback window: a full run's
#   grid for it starts before the context, and without the anchor the windowed grid would start at
#   its first snapshot inside the context and miss rows (all-NULL days) a full run has. An anchor
#   has no APY, so it is neither observed nor forward-filled.
#
# ``catch_up`` says which is which (the rows a run keeps, see ``keep_rows``). Parameters are
# timestamps, dates and one integer only (a JDBC subquery inlines them; see ``window_params``):
# $1/$2 lookback [start, end), $3 the day before `since`, $4 as_of, $5 fill limit, $6 context
# start, $7 the anchor's timestamp (the day before the context).
# Each pool's first/last snapshot and last row are LATERAL aggregates: PostgreSQL then reads them
# from the primary keys' indexes, pool by pool, where a GROUP BY scanned the year of snapshots and
# every metrics row (a 10,000-pool batch of a 20,000-pool store: 0.8-1.2 s instead of 2.8-3.3 s).
WINDOW_SNAPSHOTS_SQL = """
WITH snaps AS (
    SELECT p.pool_id, s.first_ts, s.last_ts
    FROM pools AS p,
         LATERAL (SELECT min(h.timestamp) AS first_ts, max(h.timestamp) AS last_ts
                  FROM raw_defillama_pool_history AS h
                  WHERE h.pool_id = p.pool_id AND h.timestamp >= $1 AND h.timestamp < $2) AS s
    WHERE p.is_active AND {batch p} AND s.first_ts IS NOT NULL
),
active AS (
    SELECT s.pool_id,
           s.first_ts,
           (c.last_row IS NULL
            OR (c.last_row < $3
                AND least(CAST($4 AS DATE), CAST(s.last_ts AS DATE) + CAST($5 AS INTEGER))
                    > c.last_row)) AS catch_up
    FROM snaps AS s,
         LATERAL (SELECT max(c.date) AS last_row
                  FROM pool_daily_metrics AS c
                  WHERE c.pool_id = s.pool_id AND c.is_observed IS NOT NULL) AS c
)
SELECT h.pool_id,
       h.timestamp,
       CAST(h.raw_json_data->>'apy' AS DOUBLE PRECISION) AS apy,
       CAST(h.raw_json_data->>'tvlUsd' AS DOUBLE PRECISION) AS tvl_usd,
       a.catch_up
FROM raw_defillama_pool_history AS h
JOIN active AS a ON a.pool_id = h.pool_id
WHERE NOT a.catch_up AND {batch h} AND h.timestamp >= $6 AND h.timestamp < $2
UNION ALL
SELECT h.pool_id,
       h.timestamp,
       CAST(h.raw_json_data->>'apy' AS DOUBLE PRECISION) AS apy,
       CAST(h.raw_json_data->>'tvlUsd' AS DOUBLE PRECISION) AS tvl_usd,
       a.catch_up
FROM raw_defillama_pool_history AS h
JOIN active AS a ON a.pool_id = h.pool_id
WHERE a.catch_up AND {batch h} AND h.timestamp >= $1 AND h.timestamp < $2
UNION ALL
SELECT a.pool_id,
       CAST($7 AS TIMESTAMP) AS timestamp,
       CAST(NULL AS DOUBLE PRECISION) AS apy,
       CAST(NULL AS DOUBLE PRECISION) AS tvl_usd,
       a.catch_up
FROM active AS a
WHERE NOT a.catch_up AND a.first_ts < $6
"""


@dataclass(frozen=True)
class RecomputeWindow:
    """Rows from ``since`` to the as-of date are recomputed from snapshots from ``context``."""

    since: dt.date
    context: dt.date


def window_params(window: RecomputeWindow, as_of: dt.date, lookback_days: int) -> list[object]:
    """``WINDOW_SNAPSHOTS_SQL``'s parameters: dates, timestamps and one integer (no text)."""
    start, end = window_bounds(as_of, lookback_days)
    context = dt.datetime.combine(window.context, dt.time())
    return [
        start,
        end,
        window.since - dt.timedelta(days=1),
        as_of,
        FILL_LIMIT_DAYS,
        context,
        context - dt.timedelta(days=1),
    ]


def read_window_snapshots(
    store: Store,
    window: RecomputeWindow,
    as_of: dt.date,
    lookback_days: int,
    batch: PoolBatch = None,
) -> tuple[pa.Table, pa.Array]:
    """The snapshots the window needs (``WINDOW_SNAPSHOTS_SQL``), and the catch-up pools, whose
    rows must all be kept."""
    params = window_params(window, as_of, lookback_days)
    table = store.fetch_arrow(*statement(WINDOW_SNAPSHOTS_SQL, params, batch))
    flags = table.column("catch_up")
    pools = pc.unique(table.column("pool_id").filter(pc.fill_null(flags, False)).combine_chunks())
    return table.drop_columns(["catch_up"]), pools


# Each pool's latest observed day is a LATERAL aggregate for the same reason.
PANEL_SQL = """
SELECT m.*, p.project  -- the project: peers for forecast.PEER_MEDIANS
FROM pools AS p,
     LATERAL (SELECT max(o.date) AS last_day
              FROM pool_daily_metrics AS o
              WHERE o.pool_id = p.pool_id AND o.is_observed) AS l,
     pool_daily_metrics AS m
WHERE p.is_active AND {batch p} AND m.pool_id = p.pool_id
  AND m.date > l.last_day - CAST($1 AS INTEGER)
"""


def read_panel(
    store: Store,
    train_days: int,
    horizon: int = 1,
    batch: PoolBatch = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """pool_daily_metrics rows a forecast needs, for active pools (``PANEL_SQL``): every column,
    or only ``columns`` (names of poolcast's own, never user text)."""
    sql, params = statement(PANEL_SQL, panel_params(train_days, horizon), batch)
    if columns is not None:
        sql = f"SELECT {', '.join(columns)} FROM ({sql}) AS c"  # noqa: S608
    return store.fetch_arrow(sql, params)


def panel_params(train_days: int, horizon: int) -> list[object]:
    """``PANEL_SQL``'s parameter: each pool's rows from ``train_days + horizon`` days before its
    latest observed day, and the context every feature window of the first training row needs."""
    return [train_days + horizon + FEATURE_CONTEXT_DAYS]


FORECASTS_KEY = ("pool_id", "made_on", "metric", "horizon")  # the forecasts table's primary key


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
