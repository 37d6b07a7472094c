"""A plain, loop-per-pool reference of the metric and feature semantics in `poolcast.spec`.

Slow on purpose and written straight from the spec's docstring, so the engines can be checked
against something that shares none of their code: the tests compare the engines with it, and
`poolcast validate` recomputes a sample of pools from the raw tables with it.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any, SupportsFloat

from poolcast.spec import FEATURES, FILL_LIMIT_DAYS, MARKET, METRICS

Row = dict[str, Any]
# A raw snapshot: pool_id, timestamp, apy, tvl_usd.
Snapshot = tuple[str, dt.datetime, float | None, float | None]
# A market quote: source ("ETH", "BTC", "gas"), day, value, and optionally when it was quoted
# (of several quotes of one source on one day the latest counts; without timestamps, the last
# one given).
Quote = tuple[str, dt.date, float | None] | tuple[str, dt.date, float | None, dt.datetime]

REL_TOL = 1e-9


def rolling(kind: str, source: Sequence[Any], window: int) -> list[Any]:
    """One spec column of one pool, ``kind`` of ``source`` (the pool's grid, in date order)."""
    out: list[Any] = []
    for i, value in enumerate(source):
        if kind == "ffill":  # the last value up to `window` days back
            recent = [v for v in source[max(0, i - window) : i + 1] if v is not None]
            out.append(recent[-1] if recent else None)
        elif kind in ("mean", "std", "median"):
            vals = [v for v in source[max(0, i - window + 1) : i + 1] if v is not None]
            if kind == "mean":
                out.append(sum(vals) / len(vals) if vals else None)
            elif kind == "std":
                out.append(statistics.stdev(vals) if len(vals) >= 2 else None)
            else:
                out.append(statistics.median(vals) if vals else None)
        elif kind == "delta":
            prev = source[i - 1] if i else None
            out.append(value - prev if value is not None and prev is not None else None)
        elif kind == "unchanged":
            out.append(None if value is None else float(abs(value) < 1e-9))
        elif kind == "lag":
            out.append(source[i - window] if i >= window else None)
        elif kind == "dow":  # ISO: Monday = 1 .. Sunday = 7
            out.append(value.isoweekday())
        elif kind == "month":
            out.append(value.month)
        elif kind == "weekend":
            out.append(int(value.isoweekday() >= 6))
        else:
            raise ValueError(f"the reference does not know column kind {kind!r}")
    return out


class _Series:
    """One market source: its days in order and each day's value."""

    def __init__(self, quotes: dict[dt.date, tuple[dt.datetime, float]]) -> None:
        self.days = sorted(quotes)
        self.values = [quotes[d][1] for d in self.days]

    def on_or_before(self, day: dt.date) -> float | None:
        """The value of the last day on or before ``day``."""
        i = bisect.bisect_right(self.days, day)
        return self.values[i - 1] if i else None


def _market(market: Iterable[Quote], as_of: dt.date) -> dict[str, _Series]:
    """Each source's series up to ``as_of``: per day its latest non-null quote."""
    chosen: dict[str, dict[dt.date, tuple[dt.datetime, float]]] = {}
    for quote in market:
        source, day, value = quote[0], quote[1], quote[2]
        if value is None or day > as_of:
            continue
        ts = quote[3] if len(quote) > 3 else dt.datetime.min
        days = chosen.setdefault(source, {})
        if day not in days or ts >= days[day][0]:
            days[day] = (ts, value)
    return {source: _Series(days) for source, days in chosen.items()}


def _pool_rows(
    pool: str, latest: dict[dt.date, tuple[float | None, float | None]],
    market: dict[str, _Series], as_of: dt.date,
) -> list[Row]:
    """One pool's grid and metric rows, from its latest snapshot per day."""
    first = min(latest)
    last = min(as_of, max(latest) + dt.timedelta(days=FILL_LIMIT_DAYS))
    grid = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    columns: dict[str, list[Any]] = {
        "apy": [latest[d][0] if d in latest else None for d in grid],
        "tvl_usd": [latest[d][1] if d in latest else None for d in grid],
    }
    for c in METRICS:
        columns[c.name] = rolling(c.kind, columns[c.source], c.window)
    rows: list[Row] = []
    for i, day in enumerate(grid):
        row: Row = {"pool_id": pool, "date": day}
        row.update({c.name: columns[c.name][i] for c in METRICS})
        for m in MARKET:
            series = market.get(m.source)
            row[m.name] = series.on_or_before(day - dt.timedelta(days=m.shift)) if series else None
        row["is_observed"] = columns["apy"][i] is not None
        rows.append(row)
    return rows


def reference_metrics(
    snapshots: Iterable[Snapshot], market: Iterable[Quote], as_of: dt.date
) -> list[Row]:
    """Every pool's metric rows (pool_id, date, the spec's metric and market columns,
    is_observed), ordered by pool and date."""
    latest: dict[str, dict[dt.date, tuple[dt.datetime, float | None, float | None]]] = {}
    for pool, ts, apy, tvl in snapshots:
        days = latest.setdefault(pool, {})
        if ts.date() not in days or ts > days[ts.date()][0]:
            days[ts.date()] = (ts, apy, tvl)
    series = _market(market, as_of)
    rows: list[Row] = []
    for pool in sorted(latest):
        by_day = {d: (apy, tvl) for d, (_, apy, tvl) in latest[pool].items()}
        rows.extend(_pool_rows(pool, by_day, series, as_of))
    return rows


def reference_features(metrics: list[Row]) -> list[Row]:
    """``metrics`` (reference_metrics' rows) with every spec feature added, pool by pool."""
    out: list[Row] = []
    for pool in sorted({r["pool_id"] for r in metrics}):
        rows = [dict(r) for r in metrics if r["pool_id"] == pool]
        cols: dict[str, list[Any]] = {k: [r[k] for r in rows] for k in rows[0]}
        for c in FEATURES:
            cols[c.name] = rolling(c.kind, cols[c.source], c.window)
            for r, v in zip(rows, cols[c.name], strict=True):
                r[c.name] = v
        out.extend(rows)
    return out


def close(a: Any, b: Any, rel: float = REL_TOL) -> bool:
    """Both NULL, or equal: numbers within ``rel`` of the larger magnitude (floor 1: APY is in
    percent; NaN equals nothing), booleans by truth, anything else exactly."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    if isinstance(a, SupportsFloat) and isinstance(b, SupportsFloat):
        x, y = float(a), float(b)
        if math.isnan(x) or math.isnan(y):
            return False
        return abs(x - y) <= rel * max(abs(x), abs(y), 1.0)
    return bool(a == b)
