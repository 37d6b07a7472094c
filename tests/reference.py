"""A plain, loop-per-pool reference of the metric semantics in `poolcast.spec`.

Slow on purpose and written straight from the spec's docstring, so the engines can be checked
against something that shares none of their code.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Iterable
from typing import Any

from poolcast.spec import FEATURES, FILL_LIMIT_DAYS, MARKET, METRICS

Row = dict[str, Any]


def _window(values: list[float | None], i: int, size: int) -> list[float]:
    return [v for v in values[max(0, i - size + 1) : i + 1] if v is not None]


def _apply(kind: str, source: list[Any], window: int) -> list[Any]:
    out: list[Any] = []
    for i in range(len(source)):
        if kind == "ffill":
            recent = [v for v in source[max(0, i - window) : i + 1] if v is not None]
            out.append(recent[-1] if recent else None)
        elif kind == "mean":
            vals = _window(source, i, window)
            out.append(sum(vals) / len(vals) if vals else None)
        elif kind == "std":
            vals = _window(source, i, window)
            out.append(statistics.stdev(vals) if len(vals) >= 2 else None)
        elif kind == "median":
            vals = _window(source, i, window)
            out.append(statistics.median(vals) if vals else None)
        elif kind == "delta":
            prev = source[i - 1] if i else None
            out.append(source[i] - prev if source[i] is not None and prev is not None else None)
        elif kind == "unchanged":
            out.append(None if source[i] is None else float(abs(source[i]) < 1e-9))
        elif kind == "lag":
            out.append(source[i - window] if i >= window else None)
        elif kind == "dow":
            out.append(source[i].isoweekday())
        elif kind == "month":
            out.append(source[i].month)
        elif kind == "weekend":
            out.append(int(source[i].isoweekday() >= 6))
        else:
            raise ValueError(kind)
    return out


def reference_metrics(
    snapshots: Iterable[tuple[str, dt.datetime, float | None, float | None]],
    market: Iterable[tuple[str, dt.date, float]],
    as_of: dt.date,
) -> list[Row]:
    latest: dict[tuple[str, dt.date], tuple[dt.datetime, float | None, float | None]] = {}
    for pool, ts, apy, tvl in snapshots:
        key = (pool, ts.date())
        if key not in latest or ts > latest[key][0]:
            latest[key] = (ts, apy, tvl)
    market_by_source: dict[str, list[tuple[dt.date, float]]] = {}
    for source, day, value in market:
        market_by_source.setdefault(source, []).append((day, value))

    def market_value(source: str, day: dt.date) -> float | None:
        values = [(d, v) for d, v in market_by_source.get(source, []) if d <= day and d <= as_of]
        values = [(d, v) for d, v in values if v is not None]
        return max(values)[1] if values else None

    rows: list[Row] = []
    for pool in sorted({p for p, _ in latest}):
        days = sorted(d for p, d in latest if p == pool)
        last = min(as_of, days[-1] + dt.timedelta(days=FILL_LIMIT_DAYS))
        grid = [days[0] + dt.timedelta(days=i) for i in range((last - days[0]).days + 1)]
        cols: dict[str, list[Any]] = {
            "apy": [latest.get((pool, d), (None, None, None))[1] for d in grid],
            "tvl_usd": [latest.get((pool, d), (None, None, None))[2] for d in grid],
        }
        for c in METRICS:
            cols[c.name] = _apply(c.kind, cols[c.source], c.window)
        for i, day in enumerate(grid):
            row: Row = {"pool_id": pool, "date": day}
            row.update({c.name: cols[c.name][i] for c in METRICS})
            for m in MARKET:
                row[m.name] = market_value(m.source, day - dt.timedelta(days=m.shift))
            row["is_observed"] = cols["apy"][i] is not None
            rows.append(row)
    return rows


def close(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Equal, both NULL, or within `rel` of the larger magnitude (floor 1: APY is in percent)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= rel * max(abs(a), abs(b), 1.0)
    return bool(a == b)


def reference_features(metrics: list[Row]) -> list[Row]:
    """``metrics`` (reference_metrics' rows) with every spec feature added, pool by pool."""
    out: list[Row] = []
    for pool in sorted({r["pool_id"] for r in metrics}):
        rows = [dict(r) for r in metrics if r["pool_id"] == pool]
        cols: dict[str, list[Any]] = {k: [r[k] for r in rows] for k in rows[0]}
        for c in FEATURES:
            cols[c.name] = _apply(c.kind, cols[c.source], c.window)
            for r, v in zip(rows, cols[c.name], strict=True):
                r[c.name] = v
        out.extend(rows)
    return out
