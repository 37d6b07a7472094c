"""The reads every engine starts from, in SQL that PostgreSQL and DuckDB both run.

Engines get the same columns whichever store they read: the local engine through Arrow, the Spark
engine through JDBC with these same statements.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from poolcast.store._base import Store

# JSON fields of raw snapshots are extracted in bulk by the database, not row by row in Python.
SNAPSHOTS_SQL = """
SELECT h.pool_id,
       h.timestamp,
       CAST(h.raw_json_data->>'apy' AS DOUBLE PRECISION) AS apy,
       CAST(h.raw_json_data->>'tvlUsd' AS DOUBLE PRECISION) AS tvl_usd
FROM raw_defillama_pool_history AS h
JOIN pools AS p ON p.pool_id = h.pool_id
WHERE p.is_active AND h.timestamp >= $1 AND h.timestamp < $2
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


def read_snapshots(store: Store, as_of: dt.date, lookback_days: int) -> pa.Table:
    start, end = window_bounds(as_of, lookback_days)
    return store.fetch_arrow(SNAPSHOTS_SQL, [start, end])


def read_market(store: Store, as_of: dt.date) -> pa.Table:
    end = as_of + dt.timedelta(days=1)
    return store.fetch_arrow(MARKET_SQL, [dt.datetime.combine(end, dt.time()), end])
