"""Versioned schema migrations, one list for both stores.

Each migration is a list of statements written once with a few dialect placeholders:
``{json}`` (JSONB / JSON). Timestamps are ``TIMESTAMP`` holding UTC: a ``TIMESTAMPTZ`` would make
``date(timestamp)`` depend on the session's time zone, which is how one snapshot lands on two days.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

DIALECT_TYPES = {
    "postgres": {"json": "JSONB"},
    "duckdb": {"json": "JSON"},
}

METRIC_COLUMNS = [
    "actual_apy",
    "forecasted_apy",
    "actual_tvl",
    "forecasted_tvl",
    "rolling_apy_7d",
    "rolling_apy_30d",
    "apy_delta_today_yesterday",
    "stddev_apy_7d",
    "stddev_apy_30d",
    "stddev_apy_7d_delta",
    "stddev_apy_30d_delta",
    "eth_open",
    "btc_open",
    "gas_price_gwei",
]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]

    def render(self, dialect: str) -> list[str]:
        types = DIALECT_TYPES[dialect]
        return [s.format(**types) for s in self.statements]


_metric_cols_sql = ",\n    ".join(f"{c} DOUBLE PRECISION" for c in METRIC_COLUMNS)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "raw tables, pool_daily_metrics, forecast staging",
        (
            """CREATE TABLE IF NOT EXISTS pools (
    pool_id TEXT PRIMARY KEY,
    chain TEXT,
    project TEXT,
    symbol TEXT,
    stablecoin BOOLEAN,
    il_risk TEXT,
    exposure TEXT,
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    raw_json_data {json}
)""",
            """CREATE TABLE IF NOT EXISTS raw_defillama_pool_history (
    pool_id TEXT NOT NULL,
    timestamp TIMESTAMP NOT NULL,
    raw_json_data {json} NOT NULL,
    PRIMARY KEY (pool_id, timestamp)
)""",
            """CREATE TABLE IF NOT EXISTS raw_coinmarketcap_ohlcv (
    symbol TEXT NOT NULL,
    data_timestamp TIMESTAMP NOT NULL,
    raw_json_data {json} NOT NULL,
    PRIMARY KEY (symbol, data_timestamp)
)""",
            """CREATE TABLE IF NOT EXISTS gas_fees_daily (
    date DATE PRIMARY KEY,
    actual_avg_gas_gwei DOUBLE PRECISION NOT NULL
)""",
            f"""CREATE TABLE IF NOT EXISTS pool_daily_metrics (
    pool_id TEXT NOT NULL,
    date DATE NOT NULL,
    {_metric_cols_sql},
    is_observed BOOLEAN,
    PRIMARY KEY (pool_id, date)
)""",
            """CREATE TABLE IF NOT EXISTS pool_forecasts_staging (
    pool_id TEXT NOT NULL,
    date DATE NOT NULL,
    forecasted_apy DOUBLE PRECISION,
    forecasted_tvl DOUBLE PRECISION,
    run_id TEXT NOT NULL
)""",
            """CREATE TABLE IF NOT EXISTS ingest_quarantine (
    file TEXT NOT NULL,
    pool_id TEXT NOT NULL,
    record_index BIGINT NOT NULL,
    field TEXT NOT NULL,
    reason TEXT NOT NULL,
    raw TEXT,
    PRIMARY KEY (file, pool_id, record_index, field)
)""",
            "CREATE INDEX IF NOT EXISTS pool_daily_metrics_date_idx ON pool_daily_metrics (date)",
            "CREATE INDEX IF NOT EXISTS pools_active_idx ON pools (is_active)",
        ),
    ),
    Migration(
        2,
        "pipeline_runs: one row per stage run (poolcast.runs)",
        (
            """CREATE TABLE IF NOT EXISTS pipeline_runs (
    run_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    engine TEXT NOT NULL,
    version TEXT NOT NULL,
    parameters {json},
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    seconds DOUBLE PRECISION,
    rows_read BIGINT,
    rows_written BIGINT,
    status TEXT NOT NULL,
    error TEXT,
    details {json},
    host TEXT,
    pid INTEGER,
    PRIMARY KEY (run_id, stage)
)""",
            "CREATE INDEX IF NOT EXISTS pipeline_runs_started_idx ON pipeline_runs (started_at)",
        ),
    ),
    Migration(
        3,
        "forecasts: every horizon with its 80% interval (poolcast.model)",
        (
            # One row per pool, forecast day, metric and horizon: a rerun on the same day replaces
            # its forecasts (same data and seed: the same model_version, nothing changes).
            # horizon: '1', '7', '30' days ahead or 'mean7' (the mean of the next 7 days, whose
            # target_date is its last day); metric: 'apy' or 'tvl'.
            """CREATE TABLE IF NOT EXISTS forecasts (
    pool_id TEXT NOT NULL,
    made_on DATE NOT NULL,
    metric TEXT NOT NULL,
    horizon TEXT NOT NULL,
    target_date DATE NOT NULL,
    value DOUBLE PRECISION,
    lower DOUBLE PRECISION,
    upper DOUBLE PRECISION,
    model_version TEXT NOT NULL,
    PRIMARY KEY (pool_id, made_on, metric, horizon)
)""",
            "CREATE INDEX IF NOT EXISTS forecasts_target_idx ON forecasts (target_date)",
        ),
    ),
    Migration(
        4,
        "raw_snapshot_revisions: the values a re-delivered snapshot replaced (ingest)",
        (
            """CREATE TABLE IF NOT EXISTS raw_snapshot_revisions (
    pool_id TEXT NOT NULL,
    timestamp TIMESTAMP NOT NULL,
    revised_at TIMESTAMP NOT NULL,
    old_raw_json_data {json} NOT NULL,
    new_raw_json_data {json} NOT NULL,
    PRIMARY KEY (pool_id, timestamp, revised_at)
)""",
        ),
    ),
    Migration(
        5,
        "validate_results: the latest `poolcast validate` of each as-of day (ops.validate)",
        (
            # One row per as-of day: a rerun replaces it. checked_at is when the latest validate
            # of that day ran; unchanged_since when its verdict (each check's status) was first
            # found, which a rerun that finds the same statuses keeps.
            """CREATE TABLE IF NOT EXISTS validate_results (
    as_of DATE PRIMARY KEY,
    ok BOOLEAN NOT NULL,
    counts {json} NOT NULL,
    checks {json} NOT NULL,
    seed BIGINT,
    sample INTEGER NOT NULL,
    checked_at TIMESTAMP NOT NULL,
    unchanged_since TIMESTAMP NOT NULL,
    version TEXT NOT NULL
)""",
        ),
    ),
)


def latest_version() -> int:
    return max(m.version for m in MIGRATIONS)


# The raw tables as Arrow: what ingest writes (the keys are their primary keys).
ARROW_SCHEMAS = {
    "pools": pa.schema(
        [
            ("pool_id", pa.string()),
            ("chain", pa.string()),
            ("project", pa.string()),
            ("symbol", pa.string()),
            ("stablecoin", pa.bool_()),
            ("il_risk", pa.string()),
            ("exposure", pa.string()),
            ("is_active", pa.bool_()),
            ("raw_json_data", pa.string()),
        ]
    ),
    "raw_defillama_pool_history": pa.schema(
        [
            ("pool_id", pa.string()),
            ("timestamp", pa.timestamp("us")),
            ("raw_json_data", pa.string()),
        ]
    ),
    "raw_coinmarketcap_ohlcv": pa.schema(
        [
            ("symbol", pa.string()),
            ("data_timestamp", pa.timestamp("us")),
            ("raw_json_data", pa.string()),
        ]
    ),
    "gas_fees_daily": pa.schema([("date", pa.date32()), ("actual_avg_gas_gwei", pa.float64())]),
    "ingest_quarantine": pa.schema(
        [
            ("file", pa.string()),
            ("pool_id", pa.string()),
            ("record_index", pa.int64()),
            ("field", pa.string()),
            ("reason", pa.string()),
            ("raw", pa.string()),
        ]
    ),
    "raw_snapshot_revisions": pa.schema(
        [
            ("pool_id", pa.string()),
            ("timestamp", pa.timestamp("us")),
            ("revised_at", pa.timestamp("us")),
            ("old_raw_json_data", pa.string()),
            ("new_raw_json_data", pa.string()),
        ]
    ),
}
KEYS = {
    "pools": ["pool_id"],
    "raw_defillama_pool_history": ["pool_id", "timestamp"],
    "raw_coinmarketcap_ohlcv": ["symbol", "data_timestamp"],
    "gas_fees_daily": ["date"],
    "ingest_quarantine": ["file", "pool_id", "record_index", "field"],
    "raw_snapshot_revisions": ["pool_id", "timestamp", "revised_at"],
}
