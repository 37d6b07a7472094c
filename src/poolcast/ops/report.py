"""`poolcast report`: one self-contained HTML file a person opens to see how the pipeline is doing.

Everything is inside the file: the data as JSON, the CSS, and a small script that draws the charts
and the sortable forecast table as inline SVG and HTML (no chart library, no fonts, no network),
so it opens offline and from an email attachment. Text from the data is set with ``textContent``,
never parsed as HTML. The page, its CSS and its script are package data in ``templates/``, read
when a page is rendered. What is read from the store: ``report_data``; the model's part:
``report_model``.

The as-of day is the latest successful metrics run's (or ``--as-of``, or without a run the
latest data day), and the page says which; the forecasts it shows are for the days after each
pool's latest data, and pools without data in the 7 days up to the as-of day are flagged stale.
An empty store (or one without the schema) still gives a page: it says what to run.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

from poolcast import __version__
from poolcast.ops import report_data as rd
from poolcast.ops.report_model import backtest_from_file, first_line, model_part
from poolcast.settings import Settings
from poolcast.store import Store, StoreError
from poolcast.store.queries import latest_data_day

__all__ = ["backtest_from_file", "collect", "render", "write_report"]

NEXT_STEPS = [
    ["poolcast db init", "create the tables"],
    ["poolcast ingest data/sample", "load DefiLlama, CoinMarketCap and Etherscan files"],
    ["poolcast run", "daily metrics, then forecasts"],
    ["poolcast report", "this page, with everything filled in"],
]


def collect(store: Store, settings: Settings, *, top: int = 6, days: int = 90) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-ready data."""
    from poolcast.runs import recent_runs

    base: dict[str, Any] = {
        "title": "poolcast report",
        "store": store.safe_url(),
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
    }
    try:
        store.require_schema()
    except StoreError as exc:
        store._rollback_quietly()
        version = store.schema_version()
        # No tables: every step; an older schema: upgrade it, then this report.
        return base | _empty(first_line(exc), NEXT_STEPS if not version else NEXT_STEPS[::3])
    runs = recent_runs(store, 40)
    latest = latest_data_day(store)
    run_as_of, metrics_run = _run_as_of(runs)
    if settings.as_of is not None:
        as_of, why = settings.as_of, "given with --as-of"
    elif run_as_of is not None and metrics_run is not None:
        as_of = run_as_of
        why = (
            f"the as-of day of the latest successful metrics run ({metrics_run['run_id']}, "
            f"{metrics_run['started_at']:%Y-%m-%d %H:%M} UTC)"
        )
    elif latest is not None:
        as_of, why = latest, "the latest data day (no metrics run recorded)"
    else:
        return base | _empty(
            f"no pool snapshots in {store.safe_url()} yet", NEXT_STEPS[1:]
        ) | {"runs": _runs(runs)}
    why += (
        f"; the latest snapshot of any active pool is from {latest}" if latest is not None else ""
    )
    forecast_run = next(
        (r for r in runs if r["stage"] == "forecast" and r["status"] == "succeeded"), None
    )
    model = model_part(forecast_run, store.url)
    return base | {
        "empty": None,
        "as_of": as_of.isoformat(),
        "as_of_why": why,
        "latest_data_day": rd.iso(latest),
        "forecast_day": (as_of + dt.timedelta(days=1)).isoformat(),
        "summary": rd.summary(store, as_of),
        "freshness": rd.freshness(store, as_of),
        "table": rd.forecast_table(store, as_of),
        "panels": rd.panels(store, as_of, top, days),
        "errors": rd.errors(store, as_of),
        "validate": rd.validate(store, settings, as_of),
        "quarantine": rd.quarantine(store),
        "backtest": model.pop("backtest", None),
        "model": model,
        "runs": _runs(runs),
    }


def _empty(reason: str, steps: list[list[str]]) -> dict[str, Any]:
    return {"empty": {"reason": reason, "steps": steps}, "runs": []}


def _runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "run_id": r["run_id"], "stage": r["stage"], "status": r["status"],
            "engine": r["engine"], "started_at": r["started_at"].isoformat(timespec="seconds"),
            "seconds": r["seconds"], "rows_written": r["rows_written"],
            "error": (r["error"] or "")[:200],
        }
        for r in reversed(runs)
    ]


def _run_as_of(runs: list[dict[str, Any]]) -> tuple[dt.date | None, dict[str, Any] | None]:
    for r in runs:
        if r["stage"] == "metrics" and r["status"] == "succeeded" and r["details"].get("as_of"):
            return dt.date.fromisoformat(r["details"]["as_of"]), r
    return None, None


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
        .replace("{{JS}}", _template("report.js") + _template("report_page.js"))
        .replace("{{DATA}}", blob)
    )


def _template(name: str) -> str:
    """A part of the page, from the package's ``templates`` folder: ``report.html`` with its
    ``{{...}}`` slots, ``report.css``, ``report.js``, the chart code (a few helpers that turn
    numbers into SVG elements; ``data-marks`` on each chart counts the data marks it drew, which
    the browser test reads), and ``report_page.js``, which fills every section from the data."""
    return (resources.files("poolcast.ops") / "templates" / name).read_text(encoding="utf-8")


def write_report(
    store: Store, settings: Settings, output: str | Path, *, top: int = 6, days: int = 90,
    backtest: Path | None = None,
) -> Path:
    from_file = backtest_from_file(backtest) if backtest is not None else None
    data = collect(store, settings, top=top, days=days)
    if from_file is not None and not data.get("empty"):
        data["backtest"] = from_file
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(data), encoding="utf-8")
    return path
