"""`poolcast report`: one self-contained HTML file a person opens to see how the pipeline is doing.

Everything is inside the file: the data as JSON, the CSS, and a small script that draws the charts
as inline SVG (no chart library, no fonts, no network), so it opens offline and from an email
attachment. Text from the data is set with ``textContent``, never parsed as HTML. The page, its
CSS and its script are package data in ``templates/``, read when a page is rendered.

"Yesterday" is the as-of day of the latest successful metrics run (or ``--as-of``): the report
describes the last run, whose forecasts are for the day after.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from poolcast import __version__
from poolcast.settings import Settings
from poolcast.store import Store, StoreError
from poolcast.store.queries import latest_data_day


def collect(store: Store, settings: Settings, *, top: int = 6, days: int = 90) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-ready data."""
    from poolcast.runs import recent_runs

    store.require_schema()
    runs = recent_runs(store, 40)
    as_of = settings.as_of or _run_as_of(runs) or latest_data_day(store)
    if as_of is None:
        raise StoreError(f"no data in {store.safe_url()}: run `poolcast ingest` and `poolcast run`")
    forecast_run = next(
        (r for r in runs if r["stage"] == "forecast" and r["status"] == "succeeded"), None
    )
    model = _model(forecast_run)
    return {
        "title": "poolcast report",
        "store": store.safe_url(),
        "as_of": as_of.isoformat(),
        "forecast_day": (as_of + dt.timedelta(days=1)).isoformat(),
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "summary": _summary(store, as_of),
        "pools": _top_pools(store, as_of, top, days),
        "errors": _errors(store, as_of),
        "backtest": model.pop("backtest", None),
        "model": model,
        "runs": [
            {
                "run_id": r["run_id"], "stage": r["stage"], "status": r["status"],
                "engine": r["engine"], "started_at": r["started_at"].isoformat(timespec="seconds"),
                "seconds": r["seconds"], "rows_written": r["rows_written"],
                "error": (r["error"] or "")[:200],
            }
            for r in reversed(runs)
        ],
    }


def _run_as_of(runs: list[dict[str, Any]]) -> dt.date | None:
    for r in runs:
        if r["stage"] == "metrics" and r["status"] == "succeeded" and r["details"].get("as_of"):
            return dt.date.fromisoformat(r["details"]["as_of"])
    return None


def _rows(store: Store, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    return store.fetch_arrow(sql, params).to_pylist()


def _summary(store: Store, as_of: dt.date) -> dict[str, Any]:
    [row] = _rows(
        store,
        """SELECT COUNT(DISTINCT pool_id) AS pools, MIN(date) AS first_day, MAX(date) AS last_day,
                  COUNT(*) AS rows,
                  COUNT(DISTINCT CASE WHEN date = $1 AND is_observed THEN pool_id END)
                      AS reporting_yesterday
           FROM pool_daily_metrics""",
        [as_of],
    )
    [active] = _rows(store, "SELECT COUNT(*) AS n FROM pools WHERE is_active")
    return {
        "pools": row["pools"], "active_pools": active["n"], "rows": row["rows"],
        "first_day": _iso(row["first_day"]), "last_day": _iso(row["last_day"]),
        "reporting_yesterday": row["reporting_yesterday"],
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _num(value: Any) -> float | None:
    """JSON has no NaN or infinity: they become null (gaps in a line)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _top_pools(store: Store, as_of: dt.date, top: int, days: int) -> list[dict[str, Any]]:
    """The ``top`` active pools by TVL on their latest day, each with its last ``days`` days of
    APY, the next-day forecasts made for those days, and the latest multi-horizon forecasts."""
    pools = _rows(
        store,
        """WITH last AS (
               SELECT pool_id, MAX(date) AS last_day FROM pool_daily_metrics
               WHERE is_observed AND date <= $1 GROUP BY pool_id
           )
           SELECT m.pool_id, m.date AS last_day, m.actual_tvl, m.actual_apy,
                  p.symbol, p.project, p.chain
           FROM last AS l
           JOIN pool_daily_metrics AS m ON m.pool_id = l.pool_id AND m.date = l.last_day
           JOIN pools AS p ON p.pool_id = m.pool_id
           WHERE p.is_active
           ORDER BY m.actual_tvl DESC NULLS LAST, m.pool_id
           LIMIT $2""",
        [as_of, top],
    )
    has_forecasts = _has_table(store, "forecasts")
    out = []
    for p in pools:
        last: dt.date = p["last_day"]
        history = _rows(
            store,
            """SELECT date, actual_apy, forecasted_apy, is_observed FROM pool_daily_metrics
               WHERE pool_id = $1 AND date > $2 AND date <= $3 ORDER BY date""",
            [p["pool_id"], last - dt.timedelta(days=days), last + dt.timedelta(days=1)],
        )
        ahead = []
        if has_forecasts:
            ahead = _rows(
                store,
                """SELECT horizon, target_date, value, lower, upper FROM forecasts
                   WHERE pool_id = $1 AND metric = 'apy' AND horizon <> 'mean7' AND made_on = (
                       SELECT MAX(made_on) FROM forecasts WHERE pool_id = $1 AND metric = 'apy')
                   ORDER BY target_date""",
                [p["pool_id"]],
            )
        out.append(
            {
                "pool_id": p["pool_id"],
                "label": " / ".join(str(x) for x in (p["symbol"], p["project"], p["chain"]) if x),
                "tvl": _num(p["actual_tvl"]),
                "apy": _num(p["actual_apy"]),
                "last_day": last.isoformat(),
                "actual": [
                    [h["date"].isoformat(), _num(h["actual_apy"])]
                    for h in history
                    if h["actual_apy"] is not None and h["date"] <= last
                ],
                "observed": [h["date"].isoformat() for h in history if h["is_observed"]],
                "forecast": [
                    [h["date"].isoformat(), _num(h["forecasted_apy"])]
                    for h in history
                    if h["forecasted_apy"] is not None
                ],
                "ahead": [
                    {
                        "horizon": a["horizon"], "date": a["target_date"].isoformat(),
                        "value": _num(a["value"]), "lower": _num(a["lower"]),
                        "upper": _num(a["upper"]),
                    }
                    for a in ahead
                ],
            }
        )
    return out


def _has_table(store: Store, name: str) -> bool:
    try:
        store.fetch_arrow(f"SELECT 1 FROM {name} WHERE 1 = 0")  # noqa: S608 - constant names
    except Exception:  # noqa: BLE001 - a store from before the migration that adds it
        store._rollback_quietly()
        return False
    return True


def _errors(store: Store, day: dt.date) -> dict[str, Any]:
    """Yesterday's next-day forecast errors (forecast minus actual), and the naive forecast's
    ("APY stays as the day before") on the same pools, for scale."""
    rows = _rows(
        store,
        """SELECT pool_id, actual_apy, forecasted_apy, apy_delta_today_yesterday
           FROM pool_daily_metrics
           WHERE date = $1 AND is_observed AND actual_apy IS NOT NULL
             AND forecasted_apy IS NOT NULL
           ORDER BY pool_id""",
        [day],
    )
    errors = [_num(r["forecasted_apy"] - r["actual_apy"]) for r in rows]
    naive = [abs(r["apy_delta_today_yesterday"]) for r in rows
             if r["apy_delta_today_yesterday"] is not None]
    worst = sorted(rows, key=lambda r: -abs(r["forecasted_apy"] - r["actual_apy"]))[:5]
    return {
        "day": day.isoformat(),
        "values": [e for e in errors if e is not None],
        "mae": sum(abs(e) for e in errors if e is not None) / len(errors) if errors else None,
        "naive_mae": sum(naive) / len(naive) if naive else None,
        "worst": [
            {"pool_id": r["pool_id"], "actual": _num(r["actual_apy"]),
             "forecast": _num(r["forecasted_apy"])}
            for r in worst
        ],
    }


def _model(run: dict[str, Any] | None) -> dict[str, Any]:
    """The current model (the latest successful forecast run's): feature importance of its
    next-day booster, and the backtest its metadata carries. The artifact is read where the run
    saved it: a local folder or ``gs://`` (``ForecastModel.load``)."""
    from poolcast.model import ForecastModel

    if run is None:
        return {"note": "no successful forecast run recorded"}
    location = str(run["details"].get("model") or "")
    out: dict[str, Any] = {"path": location, "version": run["details"].get("model_version")}
    if not location:
        out["note"] = "model files not found (no path recorded)"
        return out
    try:
        model = ForecastModel.load(location)
    except Exception as exc:  # noqa: BLE001 - a report is written without the model's part
        out["note"] = f"model files not readable at {location}: {_first_line(exc)}"
        return out
    horizon = min(model.horizons_, key=lambda h: _horizon_order(str(h)), default=None)
    booster = model.horizons_[horizon].booster_ if horizon is not None else None
    if booster is not None:
        gains = booster.feature_importance(importance_type="gain")
        total = float(sum(gains)) or 1.0
        names = booster.feature_name()
        out["importance"] = sorted(
            ([name, float(g) / total] for name, g in zip(names, gains, strict=True)),
            key=lambda item: -item[1],
        )
        out["importance_of"] = f"h{horizon}.txt"
    backtest = model.backtest_
    if isinstance(backtest, dict):
        out["backtest"] = [
            {"horizon": str(h), "mae": _num(b.get("mae")),
             "naive_mae": _num(b.get("naive_mae")), "n": b.get("n")}
            for h, b in sorted(backtest.items(), key=lambda kv: _horizon_order(kv[0]))
            if isinstance(b, dict) and b.get("mae") is not None
        ]
    return out


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _horizon_order(h: str) -> float:
    return float(h) if str(h).isdigit() else 7.5  # mean7 between 7 and 30


def backtest_from_file(path: Path) -> list[dict[str, Any]]:
    """Per-horizon MAE of the production model and of naive from `poolcast backtest --json`."""
    summary = json.loads(path.read_text()).get("summary", [])
    by_horizon: dict[str, dict[str, Any]] = {}
    for row in summary:
        if row.get("split", "all") != "all" or row.get("subset", "all") != "all":
            continue
        if row.get("metric", "apy") != "apy":
            continue
        entry = by_horizon.setdefault(str(row["horizon"]), {"horizon": str(row["horizon"])})
        if row.get("model") == "naive":
            entry["naive_mae"] = _num(row.get("mae"))
        elif row.get("model") == "production":
            entry["mae"], entry["n"] = _num(row.get("mae")), row.get("n")
    return [v for _, v in sorted(by_horizon.items(), key=lambda kv: _horizon_order(kv[0]))
            if "mae" in v]


def render(data: dict[str, Any]) -> str:
    """The HTML page: data as JSON in a script element, drawn by the inline script."""
    # "<", ">" and "&" only occur inside JSON strings: as \u escapes no text can close the
    # script element or open an HTML comment in it.
    blob = (
        json.dumps(data, default=str, allow_nan=False)
        .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )
    return (
        _template("report.html")
        .replace("{{TITLE}}", html.escape(data["title"]))
        .replace("{{CSS}}", _template("report.css"))
        .replace("{{JS}}", _template("report.js"))
        .replace("{{DATA}}", blob)
    )


def _template(name: str) -> str:
    """A part of the page, from the package's ``templates`` folder: ``report.html`` with its
    ``{{...}}`` slots, ``report.css``, and ``report.js``, the chart code (a few helpers that turn
    numbers into SVG elements; ``data-marks`` on each chart counts the data marks it drew, which
    the browser test reads)."""
    return (resources.files("poolcast.ops") / "templates" / name).read_text(encoding="utf-8")


def write_report(
    store: Store, settings: Settings, output: str | Path, *, top: int = 6, days: int = 90,
    backtest: Path | None = None,
) -> Path:
    data = collect(store, settings, top=top, days=days)
    if backtest is not None:
        data["backtest"] = backtest_from_file(backtest)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(data), encoding="utf-8")
    return path
