"""Calibration on a fit's held-out last days: the blend of model, naive and mean-reversion anchors,
the dead zone, conformal 80% intervals and the stacked horizons' weight."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def _conformal(residuals: np.ndarray, levels: tuple[float, float]) -> tuple[float, float]:
    """Split-conformal quantiles of scaled residuals at ``levels`` (finite-sample ranks)."""
    r = np.sort(residuals[np.isfinite(residuals)])
    if r.size == 0:
        return (0.0, 0.0)
    n = r.size
    lo = int(np.floor(levels[0] * (n + 1))) - 1
    hi = int(np.ceil(levels[1] * (n + 1))) - 1
    return (float(r[min(max(lo, 0), n - 1)]), float(r[min(max(hi, 0), n - 1)]))


BLEND_GRID = np.round(np.arange(0.0, 1.0001, 0.1), 2)
# Fewer calibration rows per blend group than this and the calibration fits one blend for all.
MIN_BLEND_GROUP_ROWS = 50
# Widen the dead zone only while it costs no calibration MAE: a wider zone that costs 0.5% turned
# 60 of 88 pools into ties with naive at 1 day (a win for no pool).
DEAD_ZONE_TOLERANCE = 1.0


def _blend(
    model: np.ndarray,
    naive: np.ndarray,
    anchors: np.ndarray,
    scl: np.ndarray,
    weights: Sequence[float],
    dead_zone: float,
) -> np.ndarray:
    """``naive + w0 (model - naive) + sum_k w_k (anchor_k - naive)``, today's APY inside the dead
    zone. ``anchors``: one column per baseline (7-day mean, 30-day mean)."""
    value = naive + weights[0] * (model - naive)
    for k in range(anchors.shape[1]):
        value = value + weights[k + 1] * (anchors[:, k] - naive)
    return np.where(np.abs(value - naive) < dead_zone * scl, naive, value)


def _fit_blend(
    y: np.ndarray,
    model: np.ndarray,
    naive: np.ndarray,
    anchors: np.ndarray,
    scl: np.ndarray,
    dead_zones: Sequence[float] = (0.0,),
) -> tuple[tuple[float, ...], float]:
    """Weights of the model and the anchors over naive (a 0.1 grid, summing to at most 1), then
    the widest dead zone that costs nothing: where the model has no edge the forecast falls back
    to today's APY."""
    best: tuple[float, tuple[float, ...]] | None = None
    for combo in itertools.product(BLEND_GRID, repeat=1 + anchors.shape[1]):
        if sum(combo) > 1.0 + 1e-9:
            continue
        weights = tuple(float(w) for w in combo)
        mae = float(np.mean(np.abs(_blend(model, naive, anchors, scl, weights, 0.0) - y)))
        if best is None or mae < best[0] - 1e-12:
            best = (mae, weights)
    assert best is not None
    mae0, weights = best
    zone = 0.0
    for dz in dead_zones:
        mae = float(np.mean(np.abs(_blend(model, naive, anchors, scl, weights, dz) - y)))
        if mae <= mae0 * DEAD_ZONE_TOLERANCE:
            zone = dz
    return weights, zone


def _stack_weight(ratio: float | None, edge: tuple[float, float] | None) -> float:
    """The own model's weight in a stacked mean (each stacked horizon weighs 1); see
    ``ModelSpec.stack_edge``."""
    if edge is None or ratio is None:
        return 1.0
    full, none = edge
    return float(np.clip((none - ratio) / (none - full), 0.0, 1.0))


def _blend_edges(apy: np.ndarray, groups: int) -> tuple[float, ...]:
    """Today's-APY edges between ``groups`` equal-sized blend groups of calibration rows.

    One blend fitted in APY points is the high-APY pools' blend: their moves carry the MAE. On
    a low-APY pool the model's edge is smaller, and its own blend leans on naive more (often all
    the way). Quantile edges need no threshold of their own, and every group gets enough rows.
    """
    apy = apy[np.isfinite(apy)]
    if groups <= 1 or apy.size < groups * MIN_BLEND_GROUP_ROWS:
        return ()
    edges = tuple(float(e) for e in np.quantile(apy, np.arange(1, groups) / groups))
    counts = np.bincount(np.searchsorted(edges, apy, side="right"), minlength=groups)
    return edges if counts.min() >= MIN_BLEND_GROUP_ROWS else ()


def _blend_group(apy: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges, dtype=np.float64), apy, side="right")
