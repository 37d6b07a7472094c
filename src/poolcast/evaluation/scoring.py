"""Scores of a backtest: error against naive per model, horizon and subset, with a bootstrap
interval of the ratio, interval coverage, the summary table, and the fold a pool falls in."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from poolcast.model.features import Horizon, _column, horizon_key, target_column

LOW_APY = 50.0  # the "APY under 50%" subset: pools below this at every origin


def fold_of(pool_id: str, folds: int) -> int:
    """The unseen-pools fold of a pool: a hash of its id, the same in every run."""
    return int(hashlib.sha256(pool_id.encode()).hexdigest()[:8], 16) % folds


def scored(rows: pa.Table, **columns: Any) -> dict[str, Any]:
    n = rows.num_rows
    out = {
        "pool_id": rows.column("pool_id").to_pylist(),
        "origin": rows.column("date").to_pylist(),
        "apy": _column(rows, "actual_apy"),
    }
    for k, v in columns.items():
        out[k] = v if isinstance(v, np.ndarray) else np.full(n, v, dtype=object)
    return out


def apy_scored(rows: pa.Table, h: Horizon, **columns: Any) -> dict[str, Any]:
    """An APY forecast's rows against their ``h`` target and naive."""
    return scored(
        rows,
        metric="apy",
        horizon=horizon_key(h),
        y=_column(rows, target_column(h)),
        naive=_column(rows, "actual_apy"),
        **columns,
    )


def horizon_out(key: str) -> int | str:
    return key if key == "mean7" else int(key)


def concat(parts: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    if not parts:
        raise ValueError("the backtest scored nothing: no pool reported on any cutoff day")
    keys = parts[0].keys()
    return {
        k: np.concatenate([np.asarray(d[k], dtype=object if k in _TEXT else float) for d in parts])
        for k in keys
    }


_TEXT = {"pool_id", "origin", "split", "metric", "cutoff", "horizon", "model"}


def take(p: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in p.items()}


def groups(
    p: dict[str, np.ndarray], keys: Sequence[str]
) -> list[tuple[tuple[Any, ...], np.ndarray]]:
    index: dict[tuple[Any, ...], list[int]] = {}
    for i, key in enumerate(zip(*(p[k] for k in keys), strict=True)):
        index.setdefault(key, []).append(i)
    return [(k, np.array(v)) for k, v in index.items()]


def low_pools(p: dict[str, np.ndarray]) -> set[str]:
    high = {pool for pool, apy in zip(p["pool_id"], p["apy"], strict=True) if not apy < LOW_APY}
    return set(p["pool_id"]) - high


def coverage(t: dict[str, np.ndarray]) -> float | None:
    ok = np.isfinite(t["lower"]) & np.isfinite(t["upper"])
    if not ok.any():
        return None
    y = t["y"][ok]
    return float(np.mean((t["lower"][ok] <= y) & (y <= t["upper"][ok])))


def scores(t: dict[str, np.ndarray]) -> dict[str, Any]:
    err = t["value"] - t["y"]
    nerr = t["naive"] - t["y"]
    mae, naive_mae = float(np.mean(np.abs(err))), float(np.mean(np.abs(nerr)))
    medae, naive_medae = float(np.median(np.abs(err))), float(np.median(np.abs(nerr)))
    wins = losses = 0
    per_pool = []
    for _, idx in groups(t, ("pool_id",)):
        m, n = np.abs(err[idx]).mean(), np.abs(nerr[idx]).mean()
        wins += bool(m < n - 1e-12)
        losses += bool(m > n + 1e-12)
        per_pool.append((np.abs(err[idx]).sum(), np.abs(nerr[idx]).sum()))
    pools = len(set(t["pool_id"]))
    ratio_lo, ratio_hi = _ratio_interval(np.array(per_pool).reshape(-1, 2))
    ok = np.isfinite(t["lower"]) & np.isfinite(t["upper"])
    return {
        "n": int(err.size),
        "pools": pools,
        "mae": mae,
        "rmse": float(np.sqrt(np.mean(err**2))),
        "medae": medae,
        "ratio": mae / naive_mae if naive_mae else None,
        "ratio_lo": ratio_lo,
        "ratio_hi": ratio_hi,
        "medae_ratio": medae / naive_medae if naive_medae else None,
        # Share of all pools where the model's MAE is lower than naive's; a tie (a flat pool, or a
        # pool the model leaves at today's APY) is not a win. Among pools where they differ:
        "beat_share": wins / pools if pools else None,
        "beat_share_decided": wins / (wins + losses) if wins + losses else None,
        "ties": pools - wins - losses,
        "coverage": coverage(t),
        "width": float(np.mean(t["upper"][ok] - t["lower"][ok])) if ok.any() else None,
    }


BOOTSTRAP_RESAMPLES = 400


def _ratio_interval(sums: np.ndarray) -> tuple[float | None, float | None]:
    """A 90% interval of the MAE ratio from resampling pools (``sums``: per pool, the model's and
    naive's summed absolute errors): how much of a difference between two models is which pools
    happened to be in the sample. Seeded: the same backtest prints the same interval."""
    if sums.shape[0] < 2:
        return None, None
    rng = np.random.default_rng(0)
    counts = rng.multinomial(
        sums.shape[0], np.full(sums.shape[0], 1 / sums.shape[0]), size=BOOTSTRAP_RESAMPLES
    )
    model, naive = counts @ sums[:, 0], counts @ sums[:, 1]
    ok = naive > 0
    if not ok.any():
        return None, None
    lo, hi = np.quantile(model[ok] / naive[ok], [0.05, 0.95])
    return float(lo), float(hi)


COLUMNS = (
    "horizon",
    "model",
    "n",
    "pools",
    "mae",
    "rmse",
    "medae",
    "ratio",
    "ratio_90",
    "medae_ratio",
    "beat_share",
    "beat_share_decided",
    "ties",
    "coverage",
    "width",
    "fit_s",
)


def format_summary(summary: list[dict[str, Any]]) -> str:
    """The human table: one block per split, subset and metric."""
    lines: list[str] = []
    blocks: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in summary:
        blocks.setdefault((r["split"], r["subset"], r["metric"]), []).append(r)
    for (split, subset, metric), rows in blocks.items():
        title = {"all": "pools seen in training", "unseen": "pools never seen (held out)"}[split]
        lines.append(f"{metric.upper()}  {title}, subset: {subset}")
        cells = [[_cell(r.get(c)) if c != "ratio_90" else _span(r) for c in COLUMNS] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
        lines.append("  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths, strict=True)))
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        lines.append("")
    return "\n".join(lines)


def _span(row: dict[str, Any]) -> str:
    lo, hi = row.get("ratio_lo"), row.get("ratio_hi")
    return "-" if lo is None or hi is None else f"{lo:.2f}-{hi:.2f}"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.4g}"
    return str(v)
