"""What `poolcast report` reads from the store: the forecast table, data freshness, the pools'
panels, yesterday's errors, quarantined input and the validate summary, as JSON-ready data.

Every function takes the report's as-of day (the latest successful metrics run's, or ``--as-of``)
and reads nothing after it, so a report of an older day tells what was known then.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from poolcast.settings import Settings
from poolcast.store import Store

# A pool is stale when it has no data in the 7 days up to the as-of day (validate's stale_pools).
STALE_DAYS = 7
HORIZONS = ("1", "7", "mean7", "30")
# At most this many rows in the forecast table (largest predicted moves first): a report of
# 100k pools stays a file a browser opens.
TABLE_ROWS = 500
# Panels need this many observed days in their window, so that a pool that just started or has
# just matured (a Pendle PT with ten days of 0 %) does not take the place of a real history.
PANEL_MIN_DAYS = 14


def rows(store: Store, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    return store.fetch_arrow(sql, params).to_pylist()


def iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def num(value: Any) -> float | None:
    """JSON has no NaN or infinity: they become null (gaps in a line)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def label(p: dict[str, Any]) -> str:
    return " / ".join(str(p[k]) for k in ("symbol", "project", "chain") if p.get(k))


def has_table(store: Store, name: str) -> bool:
    try:
        store.fetch_arrow(f"SELECT 1 FROM {name} WHERE 1 = 0")  # noqa: S608 - constant names
    except Exception:  # noqa: BLE001 - a store from before the migration that adds it
        store._rollback_quietly()
        return False
    return True


# -- summary and freshness ---------------------------------------------------------------------
def summary(store: Store, as_of: dt.date) -> dict[str, Any]:
    [row] = rows(
        store,
        """SELECT COUNT(DISTINCT pool_id) AS pools, MIN(date) AS first_day, MAX(date) AS last_day,
                  COUNT(*) AS rows,
                  COUNT(DISTINCT CASE WHEN date = $1 AND is_observed THEN pool_id END)
                      AS reporting_on_as_of
           FROM pool_daily_metrics WHERE date <= $1""",
        [as_of],
    )
    [active] = rows(store, "SELECT COUNT(*) AS n FROM pools WHERE is_active")
    return {
        "pools": row["pools"], "active_pools": active["n"], "rows": row["rows"],
        "first_day": iso(row["first_day"]), "last_day": iso(row["last_day"]),
        "reporting_on_as_of": row["reporting_on_as_of"],
    }


def freshness(store: Store, as_of: dt.date) -> dict[str, Any]:
    """Each active pool's latest observed day up to the as-of day, and which are stale."""
    found = rows(
        store,
        """SELECT p.pool_id, p.symbol, p.project, p.chain, MAX(m.date) AS last_day
           FROM pools AS p
           LEFT JOIN pool_daily_metrics AS m
             ON m.pool_id = p.pool_id AND m.is_observed AND m.date <= $1
           WHERE p.is_active
           GROUP BY p.pool_id, p.symbol, p.project, p.chain
           ORDER BY last_day NULLS FIRST, p.pool_id""",
        [as_of],
    )
    by_day: dict[str, list[int]] = {}
    pools = []
    for r in found:
        last = r["last_day"]
        age = (as_of - last).days if last is not None else None
        stale = age is None or age >= STALE_DAYS
        pools.append({"pool_id": r["pool_id"], "label": label(r), "last_day": iso(last),
                      "age_days": age, "stale": stale})
        key = iso(last) or "never"
        counts = by_day.setdefault(key, [0, 0])
        counts[1 if stale else 0] += 1
    stale_pools = [p for p in pools if p["stale"]]
    return {
        "stale_days": STALE_DAYS,
        "since": (as_of - dt.timedelta(days=STALE_DAYS - 1)).isoformat(),
        "active": len(pools),
        "fresh": len(pools) - len(stale_pools),
        "stale": len(stale_pools),
        # [day, fresh pools, stale pools] whose latest data is that day, oldest first
        "by_day": [[day, n[0], n[1]] for day, n in sorted(by_day.items())],
        "stale_pools": stale_pools[:50],  # the oldest first
    }


# -- the forecast table ------------------------------------------------------------------------
def forecast_table(store: Store, as_of: dt.date, limit: int = TABLE_ROWS) -> dict[str, Any]:
    """Each active pool's latest APY forecasts (made on or before the as-of day) with their 80%
    intervals, next to its last APY: the largest predicted moves first."""
    if not has_table(store, "forecasts"):
        return {"rows": [], "total": 0, "shown": 0, "horizons": list(HORIZONS)}
    found = rows(
        store,
        """WITH latest AS (
               SELECT pool_id, MAX(made_on) AS made_on FROM forecasts
               WHERE metric = 'apy' AND made_on <= $1 GROUP BY pool_id
           )
           SELECT f.pool_id, f.made_on, f.horizon, f.target_date, f.value, f.lower, f.upper,
                  f.model_version, p.symbol, p.project, p.chain,
                  m.actual_apy, m.actual_tvl
           FROM forecasts AS f
           JOIN latest AS l ON l.pool_id = f.pool_id AND l.made_on = f.made_on
           JOIN pools AS p ON p.pool_id = f.pool_id
           LEFT JOIN pool_daily_metrics AS m ON m.pool_id = f.pool_id AND m.date = f.made_on
           WHERE f.metric = 'apy' AND p.is_active
           ORDER BY f.pool_id, f.horizon""",
        [as_of],
    )
    table: dict[str, dict[str, Any]] = {}
    for r in found:
        entry = table.setdefault(r["pool_id"], {
            "pool_id": r["pool_id"], "symbol": r["symbol"], "project": r["project"],
            "chain": r["chain"], "tvl": num(r["actual_tvl"]), "apy": num(r["actual_apy"]),
            "apy_date": iso(r["made_on"]), "age_days": (as_of - r["made_on"]).days,
            "model_version": r["model_version"], "h": {},
        })
        entry["h"][str(r["horizon"])] = {
            "date": iso(r["target_date"]), "value": num(r["value"]),
            "lower": num(r["lower"]), "upper": num(r["upper"]),
        }
    out = list(table.values())
    for e in out:
        e["stale"] = e["age_days"] >= STALE_DAYS
        moves = [
            (abs(h["value"] - e["apy"]), h["value"] - e["apy"], k)
            for k, h in e["h"].items()
            if h["value"] is not None and e["apy"] is not None
        ]
        best = max(moves, default=None)
        e["move"] = best[1] if best else None
        e["move_horizon"] = best[2] if best else None
    out.sort(key=lambda e: (-(abs(e["move"]) if e["move"] is not None else -1), e["pool_id"]))
    return {"rows": out[:limit], "total": len(out), "shown": min(limit, len(out)),
            "horizons": list(HORIZONS)}


# -- pool panels -------------------------------------------------------------------------------
def panels(store: Store, as_of: dt.date, top: int, days: int) -> dict[str, Any]:
    """The ``top`` active pools by TVL among those with at least ``PANEL_MIN_DAYS`` observed
    days in the shared window (the ``days`` days up to the as-of day), each with its APY, the
    next-day forecasts stored for those days and its latest multi-horizon forecasts."""
    start = as_of - dt.timedelta(days=days - 1)
    pools = rows(
        store,
        """WITH recent AS (
               SELECT pool_id, MAX(date) AS last_day, COUNT(*) AS observed
               FROM pool_daily_metrics
               WHERE is_observed AND date >= $1 AND date <= $2 GROUP BY pool_id
           )
           SELECT m.pool_id, m.date AS last_day, m.actual_tvl, m.actual_apy, r.observed,
                  p.symbol, p.project, p.chain
           FROM recent AS r
           JOIN pool_daily_metrics AS m ON m.pool_id = r.pool_id AND m.date = r.last_day
           JOIN pools AS p ON p.pool_id = m.pool_id
           WHERE p.is_active AND r.observed >= $3
           ORDER BY m.actual_tvl DESC NULLS LAST, m.pool_id
           LIMIT $4""",
        [start, as_of, PANEL_MIN_DAYS, top],
    )
    [skipped] = rows(
        store,
        """SELECT COUNT(*) AS n FROM pools WHERE is_active AND pool_id NOT IN (
               SELECT pool_id FROM pool_daily_metrics
               WHERE is_observed AND date >= $1 AND date <= $2
               GROUP BY pool_id HAVING COUNT(*) >= $3)""",
        [start, as_of, PANEL_MIN_DAYS],
    )
    has_forecasts = has_table(store, "forecasts")
    out = []
    for p in pools:
        history = rows(
            store,
            """SELECT date, actual_apy, forecasted_apy, is_observed FROM pool_daily_metrics
               WHERE pool_id = $1 AND date >= $2 AND date <= $3 ORDER BY date""",
            [p["pool_id"], start, as_of + dt.timedelta(days=1)],
        )
        ahead = []
        if has_forecasts:
            ahead = rows(
                store,
                """SELECT horizon, target_date, value, lower, upper FROM forecasts
                   WHERE pool_id = $1 AND metric = 'apy' AND horizon <> 'mean7' AND made_on = (
                       SELECT MAX(made_on) FROM forecasts
                       WHERE pool_id = $1 AND metric = 'apy' AND made_on <= $2)
                   ORDER BY target_date""",
                [p["pool_id"], as_of],
            )
        last: dt.date = p["last_day"]
        out.append({
            "pool_id": p["pool_id"], "label": label(p), "tvl": num(p["actual_tvl"]),
            "apy": num(p["actual_apy"]), "last_day": last.isoformat(),
            "observed_days": p["observed"],
            "actual": [[h["date"].isoformat(), num(h["actual_apy"])] for h in history
                       if h["actual_apy"] is not None and h["date"] <= last],
            "forecast": [[h["date"].isoformat(), num(h["forecasted_apy"])] for h in history
                         if h["forecasted_apy"] is not None],
            "ahead": [{"horizon": a["horizon"], "date": a["target_date"].isoformat(),
                       "value": num(a["value"]), "lower": num(a["lower"]),
                       "upper": num(a["upper"])} for a in ahead],
        })
    return {
        "start": start.isoformat(),
        "end": (as_of + dt.timedelta(days=30)).isoformat(),  # the 30-day forecast's day
        "min_days": PANEL_MIN_DAYS,
        "without_data": skipped["n"],
        "pools": out,
    }


# -- yesterday's errors ------------------------------------------------------------------------
def errors(store: Store, day: dt.date) -> dict[str, Any]:
    """The as-of day's next-day forecast errors (forecast minus actual), and the naive
    forecast's ("APY stays as the day before") on the same pools, for scale."""
    found = rows(
        store,
        """SELECT m.pool_id, m.actual_apy, m.forecasted_apy, m.apy_delta_today_yesterday,
                  p.symbol, p.project, p.chain
           FROM pool_daily_metrics AS m JOIN pools AS p ON p.pool_id = m.pool_id
           WHERE m.date = $1 AND m.is_observed AND m.actual_apy IS NOT NULL
             AND m.forecasted_apy IS NOT NULL
           ORDER BY m.pool_id""",
        [day],
    )
    errs = [num(r["forecasted_apy"] - r["actual_apy"]) for r in found]
    values = [e for e in errs if e is not None]
    naive = [abs(r["apy_delta_today_yesterday"]) for r in found
             if r["apy_delta_today_yesterday"] is not None]
    worst = sorted(found, key=lambda r: -abs(r["forecasted_apy"] - r["actual_apy"]))[:5]
    return {
        "day": day.isoformat(),
        "values": values,
        "mae": sum(abs(e) for e in values) / len(values) if values else None,
        "naive_mae": sum(naive) / len(naive) if naive else None,
        "worst": [
            {"pool_id": r["pool_id"], "label": label(r), "actual": num(r["actual_apy"]),
             "forecast": num(r["forecasted_apy"])}
            for r in worst
        ],
    }


# -- input quarantine and validate -------------------------------------------------------------
def quarantine(store: Store) -> dict[str, Any]:
    """Records `poolcast ingest --skip-bad` set aside, by file and reason (first 20 shown)."""
    [count] = rows(store, "SELECT COUNT(*) AS n FROM ingest_quarantine")
    shown = rows(
        store,
        """SELECT file, pool_id, record_index, field, reason FROM ingest_quarantine
           ORDER BY file, pool_id, record_index, field LIMIT 20""",
    )
    return {"count": count["n"], "rows": shown}


def validate(store: Store, settings: Settings, as_of: dt.date) -> dict[str, Any]:
    """The latest `poolcast validate` of the as-of day as stored (``source: stored``, with when it
    ran and whether a stage run finished after it), else `poolcast validate --as-of <as-of> --seed
    1` run while the report is written (``source: run``, not stored)."""
    from poolcast.ops.validate import run_checks
    from poolcast.ops.validate_results import stored_checks, summary

    try:
        stored = stored_checks(store, as_of)
    except Exception:  # noqa: BLE001 - a store before schema 5: the checks are run instead
        store._rollback_quietly()
        stored = None
    if stored is not None:
        later = rows(
            store,
            """SELECT stage, finished_at FROM pipeline_runs
               WHERE status = 'succeeded' AND finished_at > $1
               ORDER BY finished_at DESC LIMIT 1""",
            [stored["checked_at"]],
        )
        return {
            "source": "stored", "ok": stored["ok"], "as_of": stored["as_of"].isoformat(),
            "seed": stored["seed"], "sample": stored["sample"], "counts": stored["counts"],
            "checks": [{k: c[k] for k in ("name", "status", "message")}
                       for c in stored["checks"]],
            "checked_at": _utc(stored["checked_at"]),
            "unchanged_since": _utc(stored["unchanged_since"]),
            "changed_after": {"stage": later[0]["stage"],
                              "finished_at": _utc(later[0]["finished_at"])} if later else None,
        }
    try:
        result = run_checks(
            store, settings.model_copy(update={"as_of": as_of}), sample=5, seed=1
        )
    except Exception as exc:  # noqa: BLE001 - the report is written without this part
        store._rollback_quietly()
        return {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}
    kept = summary(result)
    return {
        "source": "run", "ok": result.ok, "as_of": result.as_of.isoformat(),
        "seed": result.seed, "sample": 5, "counts": kept["counts"],
        "checks": [{k: c[k] for k in ("name", "status", "message")} for c in kept["checks"]],
    }


def _utc(moment: dt.datetime) -> str:
    """A stored UTC time for people: ``2026-12-03 15:01 UTC``."""
    return moment.strftime("%Y-%m-%d %H:%M UTC")
