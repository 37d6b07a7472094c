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

from poolcast.spec import HISTORY_DAYS
from poolcast.store import Store
from poolcast.store.queries import LAST_METRICS_DAY_SQL, RecomputeWindow


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
