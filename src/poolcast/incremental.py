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
from poolcast.store.queries import read_snapshots, window_bounds

# The last day a metrics run wrote (forecast-only rows have no is_observed).
LAST_METRICS_DAY_SQL = """
SELECT max(date) AS day FROM pool_daily_metrics WHERE is_observed IS NOT NULL
"""

# Active pools with a snapshot inside the lookback window but before the context: their grid
# starts earlier than the context, which the local grid must know (see `_anchors`).
EARLIER_POOLS_SQL = """
SELECT p.pool_id
FROM pools AS p
WHERE p.is_active AND EXISTS (
    SELECT 1 FROM raw_defillama_pool_history AS h
    WHERE h.pool_id = p.pool_id AND h.timestamp >= $1 AND h.timestamp < $2
)
"""


# Pools a window cannot bring up to date: no metrics rows yet (a new pool arrives with its whole
# history), or rows that stop before the window while new snapshots extend their grid (a pool that
# paused for more than the fill limit and reports again). They are recomputed over the whole
# lookback; they are few on a normal day.
# $1/$2: lookback [start, end) timestamps, $3: the day before `since`, $4: as_of, $5: fill limit.
CATCH_UP_SQL = """
WITH snaps AS (
    SELECT h.pool_id, max(h.timestamp) AS last_ts
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
catch_up AS (
    SELECT s.pool_id
    FROM snaps AS s LEFT JOIN computed AS c ON c.pool_id = s.pool_id
    WHERE c.last_row IS NULL
       OR (c.last_row < $3
           AND least(CAST($4 AS DATE), CAST(s.last_ts AS DATE) + CAST($5 AS INTEGER)) > c.last_row)
)
SELECT h.pool_id,
       h.timestamp,
       CAST(h.raw_json_data->>'apy' AS DOUBLE PRECISION) AS apy,
       CAST(h.raw_json_data->>'tvlUsd' AS DOUBLE PRECISION) AS tvl_usd
FROM raw_defillama_pool_history AS h
JOIN catch_up AS u ON u.pool_id = h.pool_id
WHERE h.timestamp >= $1 AND h.timestamp < $2
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


def _anchors(store: Store, window: RecomputeWindow, as_of: dt.date, lookback_days: int) -> pa.Table:
    """One empty snapshot the day before the context for each pool with earlier snapshots.

    A full run's grid for such a pool starts before the context; without the anchor the local grid
    would start at its first snapshot inside the context and miss rows (all-NULL days) a full run
    has. An anchor has no APY, so it is neither observed nor forward-filled.
    """
    start, _ = window_bounds(as_of, lookback_days)
    context = dt.datetime.combine(window.context, dt.time())
    pools = store.fetch_arrow(EARLIER_POOLS_SQL, [start, context]).column("pool_id")
    day_before = context - dt.timedelta(days=1)
    return pa.table(
        {
            "pool_id": pa.array(pools, pa.string()),
            "timestamp": pa.array([day_before] * len(pools), pa.timestamp("us")),
            "apy": pa.nulls(len(pools), pa.float64()),
            "tvl_usd": pa.nulls(len(pools), pa.float64()),
        }
    )


def read_window_snapshots(
    store: Store, window: RecomputeWindow, as_of: dt.date, lookback_days: int
) -> tuple[pa.Table, pa.Array]:
    """The snapshots the window needs, and the pools whose rows must all be kept.

    Most pools: snapshots from the context day to ``as_of`` plus a grid anchor. Catch-up pools
    (see ``CATCH_UP_SQL``): every snapshot in the lookback window.
    """
    start, end = window_bounds(as_of, lookback_days)
    since_eve = window.since - dt.timedelta(days=1)
    catch_up = store.fetch_arrow(CATCH_UP_SQL, [start, end, since_eve, as_of, FILL_LIMIT_DAYS])
    days = (as_of - window.context).days + 1
    snapshots = read_snapshots(store, as_of, days)
    anchors = _anchors(store, window, as_of, lookback_days)
    parts = [snapshots, anchors.cast(snapshots.schema)]
    pools = pc.unique(catch_up.column("pool_id").combine_chunks())
    if len(pools):
        parts = [t.filter(pc.invert(pc.is_in(t.column("pool_id"), pools))) for t in parts]
        parts.append(catch_up.cast(snapshots.schema))
    return pa.concat_tables(parts), pools


def keep_rows(metrics: pa.Table, window: RecomputeWindow, catch_up: pa.Array) -> pa.Table:
    """The rows an incremental run merges: from ``since`` on, and all rows of catch-up pools."""
    keep = pc.greater_equal(metrics.column("date"), pa.scalar(window.since, pa.date32()))
    if len(catch_up):
        keep = pc.or_(keep, pc.is_in(metrics.column("pool_id"), catch_up))
    return metrics.filter(keep)
