"""`poolcast report`: one self-contained HTML file a person opens to see how the pipeline is doing.

Everything is inside the file: the data as JSON, the CSS, and a small script that draws the charts
as inline SVG (no chart library, no fonts, no network), so it opens offline and from an email
attachment. Text from the data is set with ``textContent``, never parsed as HTML.

"Yesterday" is the as-of day of the latest successful metrics run (or ``--as-of``): the report
describes the last run, whose forecasts are for the day after.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from pathlib import Path
from typing import Any

from poolcast import __version__
from poolcast.settings import Settings
from poolcast.store import Store, StoreError
from poolcast.store.queries import latest_data_day


def collect(store: Store, settings: Settings, *, top: int = 6, days: int = 90) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-ready data."""
    from poolcast.observe import recent_runs

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
    from poolcast.forecast import ForecastModel

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
        _PAGE.replace("{{TITLE}}", html.escape(data["title"]))
        .replace("{{CSS}}", _CSS)
        .replace("{{JS}}", _JS)
        .replace("{{DATA}}", blob)
    )


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


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}}</title>
<style>{{CSS}}</style>
</head>
<body data-rendered="no">
<header>
  <h1>poolcast report</h1>
  <p id="meta"></p>
  <div id="cards" class="cards"></div>
</header>
<p id="errors" class="errors"></p>
<section>
  <h2>APY history and forecasts: largest pools by TVL</h2>
  <p class="note">Solid line: actual APY (last days of each pool's data). Dots: the next-day
  forecast stored for that day. Whiskers: the latest forecasts 1, 7 and 30 days ahead with their
  80% interval.</p>
  <div id="pools" class="grid"></div>
</section>
<section>
  <h2>Yesterday's forecast errors</h2>
  <div class="row"><div id="errors-chart" class="chart"></div><div id="worst"></div></div>
</section>
<section>
  <h2>Backtest error by horizon</h2>
  <div id="backtest-chart" class="chart"></div>
</section>
<section>
  <h2>Feature importance of the current model</h2>
  <div id="importance-chart" class="chart"></div>
</section>
<section>
  <h2>Recent runs</h2>
  <div id="runs-chart" class="chart"></div>
  <div id="runs-table"></div>
</section>
<footer id="footer"></footer>
<script type="application/json" id="report-data">{{DATA}}</script>
<script>{{JS}}</script>
</body>
</html>
"""

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;
  color:#1f2937;background:#f8fafc}
h1{margin:0 0 4px;font-size:24px}h2{font-size:17px;margin:0 0 8px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:16px;margin:16px 0}
.note{color:#6b7280;font-size:12px;margin:0 0 8px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-top:12px}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:20px}.card span{color:#6b7280;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:12px}
.row{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
.chart svg,.grid svg{display:block;max-width:100%}
.pool h3{font-size:13px;margin:0;font-weight:600}.pool p{margin:0;color:#6b7280;font-size:12px}
table{border-collapse:collapse;font-size:12px}td,th{padding:3px 8px;border-bottom:1px solid #eee;
  text-align:left}th{color:#6b7280;font-weight:600}
.failed{color:#b91c1c}.succeeded{color:#15803d}.empty{color:#6b7280;font-style:italic}
.errors{color:#b91c1c}
svg text{font-size:11px;fill:#4b5563}
"""

# The chart code: a few helpers that turn numbers into SVG elements. `data-marks` on each chart
# counts the data marks it drew (the browser test reads it).
_JS = r"""
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = {ingest: "#0891b2", metrics: "#2563eb", forecast: "#7c3aed", failed: "#dc2626",
                model: "#7c3aed", naive: "#9ca3af", actual: "#2563eb"};
  var errorsBox = document.getElementById("errors");
  window.addEventListener("error", function (e) { errorsBox.textContent += e.message + " "; });

  function el(tag, attrs, parent) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function html(tag, text, parent, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = text; }
    if (cls) { e.className = cls; }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function label(parent, x, y, s, attrs) {
    var t = el("text", Object.assign({x: x, y: y}, attrs || {}), parent);
    t.textContent = s;
    return t;
  }
  function title(node, s) { var t = el("title", {}, node); t.textContent = s; }
  function day(s) { return Date.parse(s + "T00:00:00Z") / 86400000; }
  function dayLabel(d) { return new Date(d * 86400000).toISOString().slice(5, 10); }
  function fmt(v, digits) {
    if (v === null || v === undefined) { return "-"; }
    var a = Math.abs(v);
    if (a >= 1e9) { return (v / 1e9).toFixed(1) + "B"; }
    if (a >= 1e6) { return (v / 1e6).toFixed(1) + "M"; }
    if (a >= 1e3) { return (v / 1e3).toFixed(1) + "k"; }
    return v.toFixed(digits === undefined ? 2 : digits);
  }
  function scale(d0, d1, r0, r1) {
    var k = d1 === d0 ? 0 : (r1 - r0) / (d1 - d0);
    return function (v) { return r0 + (v - d0) * k; };
  }
  function ticks(lo, hi, n) {
    if (hi === lo) { return [lo]; }
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    var err = (hi - lo) / n / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) { out.push(v); }
    return out;
  }
  function frame(box, w, h, m) {
    var svg = el("svg", {width: w, height: h, viewBox: "0 0 " + w + " " + h, role: "img"}, box);
    svg.dataset.marks = "0";
    return {svg: svg, x0: m[3], x1: w - m[1], y0: h - m[2], y1: m[0]};
  }
  function mark(f, n) { f.svg.dataset.marks = String(Number(f.svg.dataset.marks) + (n || 1)); }
  function digits(t) {
    var step = t.length > 1 ? t[1] - t[0] : 1;
    return step >= 1 ? 0 : Math.min(4, Math.ceil(-Math.log10(step)));
  }
  function yAxis(f, lo, hi, unit) {
    var y = scale(lo, hi, f.y0, f.y1), t = ticks(lo, hi, 4), dg = digits(t);
    t.forEach(function (v) {
      el("line", {x1: f.x0, x2: f.x1, y1: y(v), y2: y(v), stroke: "#eee"}, f.svg);
      label(f.svg, f.x0 - 4, y(v) + 4, fmt(v, dg) + (unit || ""), {"text-anchor": "end"});
    });
    return y;
  }
  function empty(box, text) { html("p", text, box, "empty"); }

  function poolChart(box, p) {
    var f = frame(box, 420, 190, [10, 10, 22, 44]);
    var pts = p.actual.map(function (a) { return [day(a[0]), a[1]]; });
    var fc = p.forecast.map(function (a) { return [day(a[0]), a[1]]; });
    var ahead = p.ahead.filter(function (a) { return a.value !== null; });
    var xs = pts.concat(fc).map(function (q) { return q[0]; })
      .concat(ahead.map(function (a) { return day(a.date); }));
    var ys = pts.concat(fc).map(function (q) { return q[1]; })
      .concat(ahead.map(function (a) { return a.value; }))
      .concat(ahead.map(function (a) { return a.lower; }))
      .concat(ahead.map(function (a) { return a.upper; }))
      .filter(function (v) { return v !== null && v !== undefined; });
    if (!xs.length) { empty(box, "no data"); return; }
    var lo = Math.min.apply(null, ys), hi = Math.max.apply(null, ys);
    var pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.1 || 1;
    var x = scale(Math.min.apply(null, xs), Math.max.apply(null, xs), f.x0, f.x1);
    var y = yAxis(f, lo - pad, hi + pad, "%");
    ticks(Math.min.apply(null, xs), Math.max.apply(null, xs), 4).forEach(function (d) {
      label(f.svg, x(d), f.y0 + 15, dayLabel(Math.round(d)), {"text-anchor": "middle"});
    });
    var d = "", pen = false;
    pts.forEach(function (q) {
      if (q[1] === null) { pen = false; return; }
      d += (pen ? "L" : "M") + x(q[0]).toFixed(1) + "," + y(q[1]).toFixed(1);
      pen = true;
    });
    if (d) {
      el("path", {d: d, fill: "none", stroke: COLORS.actual, "stroke-width": 1.6,
                  "class": "series-actual"}, f.svg);
      mark(f, pts.length);
    }
    fc.forEach(function (q) {
      if (q[1] === null) { return; }
      var c = el("circle", {cx: x(q[0]), cy: y(q[1]), r: 3, fill: COLORS.forecast,
                            "class": "series-forecast"}, f.svg);
      title(c, dayLabel(q[0]) + " forecast " + fmt(q[1]) + "%");
      mark(f);
    });
    ahead.forEach(function (a) {
      var cx = x(day(a.date));
      if (a.lower !== null && a.upper !== null) {
        el("line", {x1: cx, x2: cx, y1: y(a.lower), y2: y(a.upper), stroke: COLORS.forecast,
                    "stroke-width": 2, opacity: 0.5, "class": "series-interval"}, f.svg);
      }
      var r = el("rect", {x: cx - 3, y: y(a.value) - 3, width: 6, height: 6,
                          fill: COLORS.forecast, "class": "series-ahead"}, f.svg);
      title(r, a.horizon + "d ahead (" + a.date + "): " + fmt(a.value) + "% [" +
            fmt(a.lower) + ", " + fmt(a.upper) + "]");
      mark(f);
    });
  }

  function histogram(box, values) {
    var f = frame(box, 520, 220, [10, 10, 34, 44]);
    var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    var bins = Math.max(5, Math.min(30, Math.ceil(Math.sqrt(values.length)) * 2));
    var width = (hi - lo) / bins, counts = new Array(bins).fill(0);
    values.forEach(function (v) { counts[Math.min(bins - 1, Math.floor((v - lo) / width))] += 1; });
    var x = scale(lo, hi, f.x0, f.x1);
    var y = yAxis(f, 0, Math.max.apply(null, counts), "");
    counts.forEach(function (c, i) {
      if (!c) { return; }
      var r = el("rect", {x: x(lo + i * width) + 1, y: y(c), height: f.y0 - y(c),
                          width: Math.max(1, x(lo + width) - x(lo) - 2), fill: COLORS.model,
                          "class": "bar"}, f.svg);
      title(r, c + " pools with error in [" + fmt(lo + i * width) + ", " +
            fmt(lo + (i + 1) * width) + ") points");
      mark(f);
    });
    var xt = ticks(lo, hi, 5), dg = digits(xt);
    xt.forEach(function (v) {
      label(f.svg, x(v), f.y0 + 15, fmt(v, dg), {"text-anchor": "middle"});
    });
    if (lo < 0 && hi > 0) {
      el("line", {x1: x(0), x2: x(0), y1: f.y1, y2: f.y0, stroke: "#111", "stroke-dasharray": "3"},
         f.svg);
    }
    label(f.svg, (f.x0 + f.x1) / 2, f.y0 + 30, "forecast - actual (APY points)",
          {"text-anchor": "middle"});
  }

  function bars(box, items, opts) {
    // items: [{label, values: [{v, color, name}]}], horizontal bars grouped per item
    var per = items[0].values.length, rowH = 14 * per + 8, left = opts.left || 190;
    var f = frame(box, opts.width || 620, items.length * rowH + 30, [6, 60, 24, left]);
    var max = Math.max.apply(null, items.map(function (it) {
      return Math.max.apply(null, it.values.map(function (v) { return v.v || 0; }));
    })) || 1;
    var x = scale(0, max, f.x0, f.x1);
    items.forEach(function (it, i) {
      var top = f.y1 + i * rowH;
      label(f.svg, f.x0 - 6, top + rowH / 2 + 3, it.label, {"text-anchor": "end"});
      it.values.forEach(function (v, j) {
        if (v.v === null || v.v === undefined) { return; }
        var r = el("rect", {x: f.x0, y: top + j * 14, height: 12, width: Math.max(1, x(v.v) - f.x0),
                            fill: v.color, "class": "bar"}, f.svg);
        title(r, it.label + " " + (v.name || "") + ": " + (opts.format || fmt)(v.v));
        label(f.svg, x(v.v) + 4, top + j * 14 + 10, (opts.format || fmt)(v.v));
        mark(f);
      });
    });
    if (opts.legend) {
      opts.legend.forEach(function (l, i) {
        el("rect", {x: f.x0 + i * 110, y: f.y0 + 8, width: 10, height: 10, fill: l[1]}, f.svg);
        label(f.svg, f.x0 + i * 110 + 14, f.y0 + 17, l[0]);
      });
    }
  }

  function runsChart(box, runs) {
    var done = runs.filter(function (r) { return r.seconds !== null; });
    if (!done.length) { empty(box, "no finished runs recorded"); return; }
    var f = frame(box, 900, 220, [10, 10, 40, 48]);
    var max = Math.max.apply(null, done.map(function (r) { return r.seconds; }));
    var y = yAxis(f, 0, max * 1.1, "s");
    var w = Math.min(40, (f.x1 - f.x0) / done.length);
    done.forEach(function (r, i) {
      var color = r.status === "failed" ? COLORS.failed : (COLORS[r.stage] || "#64748b");
      var b = el("rect", {x: f.x0 + i * w + 1, y: y(r.seconds), width: Math.max(1, w - 2),
                          height: f.y0 - y(r.seconds), fill: color, "class": "bar"}, f.svg);
      title(b, r.started_at + " " + r.stage + " " + r.status + ": " + fmt(r.seconds) + " s");
      mark(f);
    });
    [["ingest", COLORS.ingest], ["metrics", COLORS.metrics], ["forecast", COLORS.forecast],
     ["failed", COLORS.failed]]
      .forEach(function (l, i) {
        el("rect", {x: f.x0 + i * 100, y: f.y0 + 22, width: 10, height: 10, fill: l[1]}, f.svg);
        label(f.svg, f.x0 + i * 100 + 14, f.y0 + 31, l[0]);
      });
    label(f.svg, f.x0, f.y0 + 14, done[0].started_at.slice(0, 16).replace("T", " "));
    if (done.length > 1) {
      var last = done[done.length - 1].started_at.slice(0, 16).replace("T", " ");
      label(f.svg, f.x0 + done.length * w, f.y0 + 14, last, {"text-anchor": "end"});
    }
  }

  function table(box, rows, columns) {
    var t = html("table", null, box), head = html("tr", null, t);
    columns.forEach(function (c) { html("th", c[0], head); });
    rows.forEach(function (r) {
      var tr = html("tr", null, t);
      columns.forEach(function (c) {
        var v = c[1](r), td = html("td", v === null || v === undefined ? "" : String(v), tr);
        if (c[0] === "status") { td.className = r.status; }
      });
    });
  }

  var data = JSON.parse(document.getElementById("report-data").textContent);
  document.getElementById("meta").textContent = data.store + " | as of " + data.as_of +
    " (forecast day " + data.forecast_day + ") | generated " + data.generated +
    " | poolcast " + data.version;
  var cards = document.getElementById("cards"), s = data.summary;
  [["pools", s.pools + " / " + s.active_pools + " active"], ["rows", fmt(s.rows, 0)],
   ["days", s.first_day + " .. " + s.last_day],
   ["reporting on " + data.as_of, s.reporting_yesterday],
   ["yesterday MAE", fmt(data.errors.mae) + " (naive " + fmt(data.errors.naive_mae) + ")"]]
    .forEach(function (c) {
      var d = html("div", null, cards, "card");
      html("b", String(c[1]), d);
      html("span", c[0], d);
    });

  var poolsBox = document.getElementById("pools");
  if (!data.pools.length) { empty(poolsBox, "no pools with metrics"); }
  data.pools.forEach(function (p) {
    var d = html("div", null, poolsBox, "pool chart");
    d.dataset.chart = "pool";
    html("h3", p.label || p.pool_id, d);
    html("p", "TVL $" + fmt(p.tvl) + " | APY " + fmt(p.apy) + "% on " + p.last_day +
         " | " + p.pool_id, d);
    poolChart(d, p);
  });

  var errBox = document.getElementById("errors-chart");
  var e = data.errors;
  html("p", e.values.length + " pools scored on " + e.day + "; MAE " + fmt(e.mae) +
       " APY points, naive (APY as the day before) " + fmt(e.naive_mae), errBox, "note");
  if (e.values.length) { histogram(errBox, e.values); } else {
    empty(errBox, "no forecast for " + e.day + " has been scored yet: a day's forecast is made " +
          "by the run of the day before");
  }
  if (e.worst.length) {
    table(document.getElementById("worst"), e.worst, [
      ["largest errors", function (r) { return r.pool_id.slice(0, 18); }],
      ["actual", function (r) { return fmt(r.actual); }],
      ["forecast", function (r) { return fmt(r.forecast); }]]);
  }

  var btBox = document.getElementById("backtest-chart");
  if (data.backtest && data.backtest.length) {
    html("p", "Mean absolute APY error (points) of the current model and of the naive forecast",
         btBox, "note");
    bars(btBox, data.backtest.map(function (b) {
      return {label: (b.horizon === "mean7" ? "mean next 7 days" : b.horizon + " day" +
                      (b.horizon === "1" ? "" : "s")) + " (n=" + b.n + ")",
              values: [{v: b.mae, color: COLORS.model, name: "model"},
                       {v: b.naive_mae, color: COLORS.naive, name: "naive"}]};
    }), {legend: [["model", COLORS.model], ["naive", COLORS.naive]]});
  } else { empty(btBox, "not available: the current model carries no backtest; run " +
                 "`poolcast backtest --json > bt.json` and `poolcast report --backtest bt.json`"); }

  var impBox = document.getElementById("importance-chart");
  var m = data.model || {};
  if (m.importance && m.importance.length) {
    html("p", "Share of total gain, " + (m.importance_of || "") + " of " + (m.path || ""), impBox,
         "note");
    bars(impBox, m.importance.map(function (f) {
      return {label: f[0], values: [{v: f[1] * 100, color: COLORS.model}]};
    }), {format: function (v) { return v.toFixed(1) + "%"; }});
  } else { empty(impBox, m.note || "no model"); }

  runsChart(document.getElementById("runs-chart"), data.runs);
  table(document.getElementById("runs-table"), data.runs.slice().reverse().slice(0, 12), [
    ["started (UTC)", function (r) { return r.started_at.replace("T", " "); }],
    ["run", function (r) { return r.run_id; }], ["stage", function (r) { return r.stage; }],
    ["status", function (r) { return r.status; }],
    ["seconds", function (r) { return r.seconds === null ? "" : r.seconds.toFixed(2); }],
    ["rows written", function (r) { return r.rows_written; }],
    ["error", function (r) { return r.error; }]]);

  document.getElementById("footer").textContent = "Self-contained: data, styles and charts are " +
    "in this file; nothing is loaded from the network.";
  document.body.dataset.rendered = errorsBox.textContent ? "error" : "ok";
})();
"""
