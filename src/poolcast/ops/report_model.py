"""The model's part of `poolcast report`: feature importance of every horizon's booster, and the
backtest shown, each with where it comes from.

Two backtests can be shown, and the page names which: the current model's own holdout (each fit
holds out every pool's last calibration days of training origins: one cutoff, the model's
metadata), or a rolling-origin backtest from `poolcast backtest --json` (``--backtest FILE``: its
cutoffs, the days they score and the interval coverage).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from poolcast.ops.report_data import num

HORIZON_NAMES = {"1": "1 day", "7": "7 days", "30": "30 days", "mean7": "mean of next 7 days"}


def horizon_order(h: str) -> float:
    return float(h) if str(h).isdigit() else 7.5  # mean7 between 7 and 30


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def resolve_model(location: str, run: dict[str, Any], store_url: str | None) -> str:
    """Where a run's model is now. A relative path recorded by a run is relative to the folder
    that run ran in; when it is not found from here, it is looked for in the same place relative
    to the embedded store (the default model folder is next to the store)."""
    if not location or location.startswith("gs://") or os.path.isabs(location):
        return location
    if os.path.exists(location) or not store_url or store_url.startswith("postgres"):
        return location
    recorded = str((run.get("parameters") or {}).get("store") or "")
    if not recorded or recorded.startswith("postgres"):
        return location
    # A run given an absolute store path ran somewhere unknown: most often the store's folder.
    relative = (
        location if os.path.isabs(recorded)
        else os.path.relpath(location, os.path.dirname(recorded) or ".")
    )
    candidate = os.path.join(os.path.dirname(os.path.abspath(store_url)), relative)
    return candidate if os.path.exists(candidate) else location


def model_part(run: dict[str, Any] | None, store_url: str | None = None) -> dict[str, Any]:
    """The current model (the latest successful forecast run's): feature importance of each
    horizon's main booster, and the holdout backtest its metadata carries. The artifact is read
    where the run saved it: a local folder or ``gs://`` (``ForecastModel.load``)."""
    from poolcast.model import ForecastModel

    if run is None:
        return {"note": "no successful forecast run recorded: run `poolcast run`"}
    location = resolve_model(str(run["details"].get("model") or ""), run, store_url)
    out: dict[str, Any] = {
        "path": location, "version": run["details"].get("model_version"),
        "run_id": run.get("run_id"),
    }
    if not location:
        out["note"] = "model files not found (the forecast run recorded no path)"
        return out
    try:
        model = ForecastModel.load(location)
    except Exception as exc:  # noqa: BLE001 - a report is written without the model's part
        out["note"] = f"model files not readable at {location}: {first_line(exc)}"
        return out
    out["importance"] = []
    meta: dict[str, dict[str, Any]] = {}
    for h in sorted(model.horizons_, key=lambda h: horizon_order(str(h))):
        forecaster = model.horizons_[h]
        key = str(h)
        try:
            meta[key] = forecaster.metadata()
        except Exception:  # noqa: BLE001 - dates are a caption; the chart does without them
            meta[key] = {}
        booster = getattr(forecaster, "booster_", None)
        if booster is None:
            continue
        gains = booster.feature_importance(importance_type="gain")
        total = float(sum(gains)) or 1.0
        members = len(meta[key].get("members") or [None])
        out["importance"].append({
            "horizon": key,
            "name": HORIZON_NAMES.get(key, key),
            "file": f"h{key}.txt",
            "members": members,
            "features": sorted(
                ([name, float(g) / total]
                 for name, g in zip(booster.feature_name(), gains, strict=True)),
                key=lambda item: -item[1],
            ),
        })
    backtest = model.backtest_
    if isinstance(backtest, dict):
        out["backtest"] = holdout_backtest(backtest, meta, location)
    return out


def holdout_backtest(
    backtest: dict[str, Any], meta: dict[str, dict[str, Any]], location: str
) -> dict[str, Any]:
    """The model's own holdout, per horizon, with the days it covers."""
    rows = []
    for h, b in sorted(backtest.items(), key=lambda kv: horizon_order(kv[0])):
        if not isinstance(b, dict) or b.get("mae") is None:
            continue
        m = meta.get(str(h), {})
        window = m.get("train_window") or [None, None]
        days = (m.get("model") or {}).get("calibration_days")
        first = None
        if window[1] and days:
            first = (dt.date.fromisoformat(window[1]) - dt.timedelta(days=days - 1)).isoformat()
        rows.append({
            "horizon": str(h), "mae": num(b.get("mae")), "naive_mae": num(b.get("naive_mae")),
            "n": b.get("n"), "coverage": None, "from": first, "to": window[1],
            "holdout_days": days,
        })
    return {
        "source": "holdout",
        "title": "the current model's own holdout (from its metadata)",
        "detail": (
            f"Each fit of {location} held out every pool's last calibration days of training "
            "origins (one cutoff per pool; the dates below are the latest pool's) for early "
            "stopping, blend weights and the 80% interval. The interval is fitted on this "
            "holdout, so its coverage here is 80% by construction and not shown. For a "
            "rolling-origin backtest: `poolcast backtest --json > bt.json` and "
            "`poolcast report --backtest bt.json`."
        ),
        "rows": rows,
    }


def backtest_from_file(path: Path) -> dict[str, Any]:
    """Per-horizon MAE and interval coverage of the production model and naive's MAE, with the
    cutoffs and days scored, from `poolcast backtest --json` output."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"--backtest {path} is not `poolcast backtest --json` output: {exc.msg} at line "
            f"{exc.lineno} column {exc.colno} (write it with `poolcast backtest --json > "
            f"{path.name}`)"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("summary"), list):
        raise ValueError(
            f"--backtest {path} is not `poolcast backtest --json` output: no \"summary\" list"
        )
    by_horizon: dict[str, dict[str, Any]] = {}
    for row in data["summary"]:
        if row.get("split", "all") != "all" or row.get("subset", "all") != "all":
            continue
        if row.get("metric", "apy") != "apy":
            continue
        entry = by_horizon.setdefault(str(row["horizon"]), {"horizon": str(row["horizon"])})
        if row.get("model") == "naive":
            entry["naive_mae"] = num(row.get("mae"))
        elif row.get("model") == "production":
            entry["mae"], entry["n"] = num(row.get("mae")), row.get("n")
            entry["coverage"], entry["pools"] = num(row.get("coverage")), row.get("pools")
    cutoffs = [str(c) for c in data.get("cutoffs") or []]
    config = data.get("config") or {}
    window = config.get("window_days")
    scored_to = None
    if cutoffs and isinstance(window, int):
        scored_to = (dt.date.fromisoformat(max(cutoffs)) + dt.timedelta(days=window - 1))
    detail = f"Rolling-origin backtest from {path.name}"
    if cutoffs:
        detail += (
            f": {len(cutoffs)} cutoffs {min(cutoffs)} to {max(cutoffs)}"
            + (f" every {config['spacing_days']} days" if config.get("spacing_days") else "")
            + (f"; forecasts made on {min(cutoffs)} to {scored_to.isoformat()}" if scored_to
               else "")
            + (f"; {config['train_days']} training days" if config.get("train_days") else "")
        )
    detail += ". Each fit sees only data known at its cutoff. Coverage: share of actual APYs " \
        "inside the 80% interval (0.80 is right)."
    return {
        "source": "file",
        "title": f"rolling-origin backtest from {path.name}",
        "detail": detail,
        "cutoffs": cutoffs,
        "rows": [v for _, v in sorted(by_horizon.items(), key=lambda kv: horizon_order(kv[0]))
                 if "mae" in v],
    }
