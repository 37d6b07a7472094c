"""The local engine: the spec compiled to vectorized code over Arrow tables.

Metrics run on dense per-pool matrices (``_dense``, numpy, chunked over threads); the same spec
compiled to DuckDB SQL window functions (``compute_metrics_sql``) is the readable definition the
dense engine is tested against, and builds the forecast features. No loop over pools. Input and
output are Arrow, so it works the same whichever store the data came from.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from poolcast.engines import ForecastsWritten, MetricInputs, PanelBatches
from poolcast.spec import (
    APY_TARGET,
    FEATURES,
    FILL_LIMIT_DAYS,
    MARKET,
    METRICS,
    Column,
    peer_columns,
)
from poolcast.store import Store
from poolcast.store.queries import (
    FORECASTS_KEY,
    METRIC_KEY,
    METRIC_UPDATE,
    PoolBatch,
    RecomputeWindow,
    pool_batches,
    read_market,
    read_panel,
    read_snapshots,
    read_window_snapshots,
    write_forecasts,
)

if TYPE_CHECKING:
    from poolcast.settings import Settings

_BY_POOL = "PARTITION BY pool_id ORDER BY date"
_MERGE_ROWS = 500_000  # rows per merge statement of the metrics stage


def _frame(rows: int) -> str:
    return f"ROWS BETWEEN {rows} PRECEDING AND CURRENT ROW"


def compile_column(c: Column) -> str:
    """One spec column as a DuckDB SQL expression."""
    src = c.source
    if c.kind == "ffill":
        return f"last_value({src} IGNORE NULLS) OVER ({_BY_POOL} {_frame(c.window)})"
    # mean/std aggregate the frame's own list: the same window values always give the same bits,
    # wherever the row sits in its partition (a windowed avg() sums segment-tree nodes, so a row's
    # last bits depend on where the partition starts; incremental runs would then differ from full).
    if c.kind == "mean":
        return f"list_avg(list({src}) OVER ({_BY_POOL} {_frame(c.window - 1)}))"
    if c.kind == "std":
        return f"list_stddev_samp(list({src}) OVER ({_BY_POOL} {_frame(c.window - 1)}))"
    if c.kind == "median":
        return f"list_median(list({src}) OVER ({_BY_POOL} {_frame(c.window - 1)}))"
    if c.kind == "delta":
        return f"{src} - lag({src}, 1) OVER ({_BY_POOL})"
    if c.kind == "unchanged":
        return f"CAST(abs({src}) < 1e-9 AS DOUBLE)"
    if c.kind == "lag":
        return f"lag({src}, {c.window}) OVER ({_BY_POOL})"
    if c.kind == "dow":
        return f"CAST(isodow({src}) AS INTEGER)"
    if c.kind == "month":
        return f"CAST(month({src}) AS INTEGER)"
    if c.kind == "weekend":
        return f"CAST(isodow({src}) >= 6 AS INTEGER)"
    raise ValueError(f"unknown column kind {c.kind!r} for {c.name}")


def layered_select(source: str, columns: Sequence[Column], known: set[str]) -> str:
    """Chain of SELECTs: a column that uses another one is computed one level above it."""
    level: dict[str, int] = dict.fromkeys(known, 0)
    for c in columns:
        level[c.name] = level.get(c.source, 0) + 1
    sql = f"SELECT * FROM {source}"
    for depth in range(1, max((level[c.name] for c in columns), default=0) + 1):
        exprs = ", ".join(
            f"{compile_column(c)} AS {c.name}" for c in columns if level[c.name] == depth
        )
        sql = f"SELECT *, {exprs} FROM ({sql}) AS l{depth}"
    return sql


def _market_joins() -> tuple[str, str]:
    cols = ", ".join(f"m{i}.value AS {m.name}" for i, m in enumerate(MARKET))
    joins = " ".join(
        f"LEFT JOIN market_ff AS m{i} ON m{i}.source = '{m.source}' "
        f"AND m{i}.date = g.date - {m.shift}"
        for i, m in enumerate(MARKET)
    )
    return cols, joins


def compute_metrics(
    snapshots: pa.Table,
    market: pa.Table,
    as_of: dt.date,
    *,
    threads: int | None = None,
) -> pa.Table:
    """Step 7 for every pool at once, on dense per-pool matrices (``_dense``): the same rows and
    columns as ``compute_metrics_sql``, about 5x less CPU at 20,000 pools (docs/performance.md)."""
    from poolcast.engines._dense import compute_metrics as dense

    return dense(snapshots, market, as_of, threads=threads)


def compute_metrics_sql(
    snapshots: pa.Table,
    market: pa.Table,
    as_of: dt.date,
    *,
    threads: int | None = None,
) -> pa.Table:
    """Step 7 for every pool at once, as DuckDB SQL window functions: the readable definition
    that the dense engine is tested against.

    ``snapshots``: pool_id, timestamp, apy, tvl_usd (already limited to the lookback window).
    ``market``: source, date, value. Returns pool_id, date, the spec's metric and market columns,
    and is_observed (a snapshot was taken that day), sorted by pool and date.
    """
    con = duckdb.connect()
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.register("snapshots", snapshots)
        con.register("market", market)
        metric_sql = layered_select("base", METRICS, {"apy", "tvl_usd"})
        market_cols, market_joins = _market_joins()
        metric_names = ", ".join(c.name for c in METRICS)
        sql = f"""
WITH daily AS (
    SELECT pool_id, CAST(timestamp AS DATE) AS date, apy, tvl_usd
    FROM snapshots
    QUALIFY row_number() OVER (
        PARTITION BY pool_id, CAST(timestamp AS DATE) ORDER BY timestamp DESC) = 1
),
bounds AS (
    SELECT pool_id, min(date) AS first_day,
           least(CAST($as_of AS DATE), max(date) + {FILL_LIMIT_DAYS}) AS last_day
    FROM daily GROUP BY pool_id
),
grid AS (
    SELECT pool_id, CAST(unnest(generate_series(first_day, last_day, INTERVAL 1 DAY)) AS DATE)
           AS date
    FROM bounds
),
base AS (
    SELECT g.pool_id, g.date, d.apy, d.tvl_usd, d.apy IS NOT NULL AS is_observed
    FROM grid AS g LEFT JOIN daily AS d ON d.pool_id = g.pool_id AND d.date = g.date
),
metrics AS ({metric_sql}),
calendar AS (
    SELECT CAST(unnest(generate_series(
        (SELECT least(min(date), CAST($as_of AS DATE)) FROM market), CAST($as_of AS DATE),
        INTERVAL 1 DAY)) AS DATE) AS date
),
market_ff AS (
    SELECT s.source, c.date,
           last_value(m.value IGNORE NULLS) OVER (
               PARTITION BY s.source ORDER BY c.date
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS value
    FROM calendar AS c CROSS JOIN (SELECT DISTINCT source FROM market) AS s
    LEFT JOIN market AS m ON m.source = s.source AND m.date = c.date
)
SELECT g.pool_id, g.date, {metric_names}, {market_cols}, g.is_observed
FROM metrics AS g {market_joins}
ORDER BY g.pool_id, g.date
"""
        return con.sql(sql, params={"as_of": as_of}).to_arrow_table()
    finally:
        con.close()


def compute_features(metrics: pa.Table, *, horizons: Sequence[int] = (1,)) -> pa.Table:
    """The forecast panel: metrics plus the spec's features, and for each horizon h the spec's
    ``APY_TARGET`` (``target_h{h}``)."""
    con = duckdb.connect()
    try:
        con.register("metrics", metrics)
        targets = ", ".join(
            f"CASE WHEN lead(is_observed, {h}) OVER ({_BY_POOL}) "
            f"THEN lead({APY_TARGET.source}, {h}) OVER ({_BY_POOL}) END AS {APY_TARGET.column(h)}"
            for h in horizons
        )
        sql = layered_select("metrics", FEATURES, set(metrics.column_names))
        return con.sql(
            f"SELECT *, {targets} FROM ({sql}) AS f ORDER BY pool_id, date"
        ).to_arrow_table()
    finally:
        con.close()


def keep_rows(metrics: pa.Table, window: RecomputeWindow, catch_up: pa.Array) -> pa.Table:
    """The rows an incremental run merges: from ``since`` on, and all rows of catch-up pools."""
    keep = pc.greater_equal(metrics.column("date"), pa.scalar(window.since, pa.date32()))
    if len(catch_up):
        keep = pc.or_(keep, pc.is_in(metrics.column("pool_id"), catch_up))
    return metrics.filter(keep)


class LocalEngine:
    """The local engine's operations for the stages (:mod:`poolcast.stages`): Arrow read from the
    store in bulk, computed in this process, merged by the store itself."""

    name = "local"

    def __init__(self, store: Store, settings: Settings, stage: str) -> None:
        self.store = store
        self.settings = settings
        self.stage = stage
        self._days: set[dt.date] = set()  # the metrics' days over every batch so far

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def step(self, name: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    # -- metrics -----
    def pool_batches(self) -> list[PoolBatch]:
        return pool_batches(self.store, self.settings.batch_pools)

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return self.store.transaction()

    def read_metric_inputs(
        self, as_of: dt.date, window: RecomputeWindow | None, batch: PoolBatch = None
    ) -> MetricInputs:
        lookback = self.settings.lookback_days
        catch_up = None
        if window is None:
            snapshots = read_snapshots(self.store, as_of, lookback, batch)
        else:
            snapshots, catch_up = read_window_snapshots(self.store, window, as_of, lookback, batch)
        market = read_market(self.store, as_of)
        rows = snapshots.num_rows
        return MetricInputs(snapshots, market, rows, rows + market.num_rows, catch_up)

    def compute_metrics(
        self, inputs: MetricInputs, as_of: dt.date, window: RecomputeWindow | None
    ) -> pa.Table:
        metrics = compute_metrics(inputs.snapshots, inputs.market, as_of)
        return metrics if window is None else keep_rows(metrics, window, inputs.catch_up)

    def summarize(self, metrics: pa.Table) -> dict[str, int]:
        """Pools and rows of this batch; days: of every batch so far (batches share days)."""
        self._days.update(metrics.column("date").unique().to_pylist())
        return {
            "pools": len(metrics.column("pool_id").unique()),
            "days": len(self._days),
            "rows": metrics.num_rows,
        }

    def merge_metrics(self, metrics: pa.Table) -> int:
        # In slices, one transaction: the store's merge then holds one slice's staging and index
        # work at a time (at 20,000 pools DuckDB's peak fell by 600 MB), and commits all or none.
        with self.store.transaction():
            return sum(
                self.store.merge(
                    "pool_daily_metrics",
                    metrics.slice(start, _MERGE_ROWS),
                    METRIC_KEY,
                    update=METRIC_UPDATE,
                )
                for start in range(0, metrics.num_rows, _MERGE_ROWS)
            )

    # -- forecast -----
    def forecast_panel(self, horizon: int = 30) -> pa.Table | PanelBatches:
        """pool_daily_metrics rows a forecast needs (active pools), with the spec's features: one
        table, or above ``batch_pools`` pools the batches to build it from."""
        train_days = self.settings.train_days
        batches = pool_batches(self.store, self.settings.batch_pools)
        if batches == [None]:
            return compute_features(read_panel(self.store, train_days, horizon))

        def part(batch: PoolBatch) -> pa.Table:
            return compute_features(read_panel(self.store, train_days, horizon, batch))

        first = batches[0]
        assert first is not None
        return PanelBatches(
            tuple(functools.partial(part, b) for b in batches),
            part((first[0], first[0])).slice(0, 0),  # one pool's columns
            read_panel(self.store, train_days, horizon, columns=peer_columns()),
        )

    def model_dir(self) -> str:
        return str(self.settings.model_dir)

    def compute(self) -> Any:
        return None  # the model's own: Arrow tables and lightgbm.train in this process

    def write_forecasts(
        self, forecasts: pa.Table, horizons: pa.Table, run_id: str
    ) -> ForecastsWritten:
        with self.store.transaction():
            rows = write_forecasts(self.store, forecasts, run_id)
            rows += self.store.merge("forecasts", horizons, FORECASTS_KEY)
        return ForecastsWritten(rows, forecasts.num_rows, horizons.num_rows)

    def details(self) -> dict[str, Any]:
        return {}
