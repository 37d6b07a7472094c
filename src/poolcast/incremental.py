"""The daily mode: which days a metrics run must recompute, and the snapshots that suffice for them.

A metric of day d depends only on snapshots of days d - HISTORY_DAYS + 1 .. d (trailing windows,
a bounded forward fill), so after new snapshots arrive only the days from the last computed day
(its snapshots may have been partial) to the as-of date can change. An incremental run reads
``HISTORY_DAYS`` days of context before them, computes with the same engine as a full run, keeps
the rows from ``since`` on and merges them; the merge updates only rows whose values differ.

The result equals a full rebuild over the same lookback window. One boundary is deliberate: days
before ``since`` keep the values of the run that wrote them, whereas a full rebuild whose lookback
window has moved recomputes its own first days from a truncated history.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from poolcast.spec import FILL_LIMIT_DAYS, HISTORY_DAYS
from poolcast.store import Store
from poolcast.store.queries import window_bounds

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
WINDOW_SNAPSHOTS_SQL = """
WITH snaps AS (
    SELECT h.pool_id, min(h.timestamp) AS first_ts, max(h.timestamp) AS last_ts
    FROM raw_defillama_pool_history AS h
    JOIN pools AS p ON p.pool_id = h.pool_id
    WHERE p.is_active AND h.timestamp >= $1 AND h.timestamp < $2
    GROUP BY h.pool_id
),
computed AS (
    SELECT pool_id, max(date) AS last_row
    FROM pool_daily_metrics
    WHERE is_observed IS NOT NULL
    GROUP BY pool_id
),
active AS (
    SELECT s.pool_id,
           s.first_ts,
           (c.last_row IS NULL
            OR (c.last_row < $3
                AND least(CAST($4 AS DATE), CAST(s.last_ts AS DATE) + CAST($5 AS INTEGER))
                    > c.last_row)) AS catch_up
    FROM snaps AS s LEFT JOIN computed AS c ON c.pool_id = s.pool_id
)
SELECT h.pool_id,
       h.timestamp,
       CAST(h.raw_json_data->>'apy' AS DOUBLE PRECISION) AS apy,
       CAST(h.raw_json_data->>'tvlUsd' AS DOUBLE PRECISION) AS tvl_usd,
       a.catch_up
FROM raw_defillama_pool_history AS h
JOIN active AS a ON a.pool_id = h.pool_id
WHERE NOT a.catch_up AND h.timestamp >= $6 AND h.timestamp < $2
UNION ALL
SELECT h.pool_id,
       h.timestamp,
       CAST(h.raw_json_data->>'apy' AS DOUBLE PRECISION) AS apy,
       CAST(h.raw_json_data->>'tvlUsd' AS DOUBLE PRECISION) AS tvl_usd,
       a.catch_up
FROM raw_defillama_pool_history AS h
JOIN active AS a ON a.pool_id = h.pool_id
WHERE a.catch_up AND h.timestamp >= $1 AND h.timestamp < $2
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


def _as_date(value: object) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def recompute_window(store: Store, as_of: dt.date, lookback_days: int) -> RecomputeWindow | None:
    """The days an incremental run recomputes, or None when nothing was computed yet."""
    last = _as_date(store.fetch_arrow(LAST_METRICS_DAY_SQL).column("day")[0].as_py())
    if last is None:
        return None
    lookback_start = as_of - dt.timedelta(days=lookback_days - 1)
    since = max(min(last, as_of), lookback_start)
    context = max(since - dt.timedelta(days=HISTORY_DAYS), lookback_start)
    if context <= lookback_start:
        return None  # the context is the whole window: a full run is the same work
    return RecomputeWindow(since, context)


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
    store: Store, window: RecomputeWindow, as_of: dt.date, lookback_days: int
) -> tuple[pa.Table, pa.Array]:
    """The snapshots the window needs (``WINDOW_SNAPSHOTS_SQL``), and the catch-up pools, whose
    rows must all be kept."""
    table = store.fetch_arrow(WINDOW_SNAPSHOTS_SQL, window_params(window, as_of, lookback_days))
    flags = table.column("catch_up")
    pools = pc.unique(table.column("pool_id").filter(pc.fill_null(flags, False)).combine_chunks())
    return table.drop_columns(["catch_up"]), pools


def keep_rows(metrics: pa.Table, window: RecomputeWindow, catch_up: pa.Array) -> pa.Table:
    """The rows an incremental run merges: from ``since`` on, and all rows of catch-up pools."""
    keep = pc.greater_equal(metrics.column("date"), pa.scalar(window.since, pa.date32()))
    if len(catch_up):
        keep = pc.or_(keep, pc.is_in(metrics.column("pool_id"), catch_up))
    return metrics.filter(keep)
