"""Calibration on a fit's held-out last days: the blend of model, naive and mean-reversion anchors,
the dead zone, conformal 80% intervals and the stacked horizons' weight."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from poolcast.model.compute import Compute, Frame, quantiles
from poolcast.model.features import _column, target_column


def _conformal_ranks(n: int, levels: tuple[float, float]) -> tuple[int, int]:
    """The 0-based ranks, among ``n`` sorted finite residuals, of the split-conformal quantiles
    at ``levels`` (finite-sample ranks)."""
    lo = int(np.floor(levels[0] * (n + 1))) - 1
    hi = int(np.ceil(levels[1] * (n + 1))) - 1
    return min(max(lo, 0), n - 1), min(max(hi, 0), n - 1)


def _conformal(residuals: np.ndarray, levels: tuple[float, float]) -> tuple[float, float]:
    """Split-conformal quantiles of scaled residuals at ``levels``."""
    r = np.sort(residuals[np.isfinite(residuals)])
    if r.size == 0:
        return (0.0, 0.0)
    lo, hi = _conformal_ranks(r.size, levels)
    return (float(r[lo]), float(r[hi]))


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


def blend_combos(anchors: int) -> list[tuple[float, ...]]:
    """The candidate weights of the model and ``anchors`` baselines: a 0.1 grid, summing to at
    most 1, in the order the search tries them."""
    return [
        tuple(float(w) for w in combo)
        for combo in itertools.product(BLEND_GRID, repeat=1 + anchors)
        if sum(combo) <= 1.0 + 1e-9
    ]


def _blend_losses(
    y: np.ndarray,
    model: np.ndarray,
    naive: np.ndarray,
    anchors: np.ndarray,
    scl: np.ndarray,
    candidates: Sequence[tuple[Sequence[float], float]],
) -> np.ndarray:
    """The summed absolute error of each candidate (weights, dead zone) blend."""
    return np.array(
        [np.sum(np.abs(_blend(model, naive, anchors, scl, w, z) - y)) for w, z in candidates],
        dtype=np.float64,
    )


def _pick_weights(
    combos: Sequence[tuple[float, ...]], maes: np.ndarray
) -> tuple[tuple[float, ...], float]:
    """The first combo with the lowest MAE (a later one must beat it by more than 1e-12)."""
    best: tuple[float, tuple[float, ...]] | None = None
    for weights, mae in zip(combos, maes, strict=True):
        if best is None or float(mae) < best[0] - 1e-12:
            best = (float(mae), weights)
    assert best is not None
    return best[1], best[0]


def _pick_zone(maes: np.ndarray, mae0: float, dead_zones: Sequence[float]) -> float:
    """The widest dead zone that costs nothing over the blend without one."""
    zone = 0.0
    for dz, mae in zip(dead_zones, maes, strict=True):
        if float(mae) <= mae0 * DEAD_ZONE_TOLERANCE:
            zone = dz
    return zone


def _fit_blend(
    y: np.ndarray,
    model: np.ndarray,
    naive: np.ndarray,
    anchors: np.ndarray,
    scl: np.ndarray,
    dead_zones: Sequence[float] = (0.0,),
) -> tuple[tuple[float, ...], float]:
    """Weights of the model and the anchors over naive (:func:`blend_combos`), then the widest
    dead zone that costs nothing: where the model has no edge the forecast falls back to today's
    APY. (The model fits each blend group's the same way from sums over its rows.)"""
    combos = blend_combos(anchors.shape[1])
    n = len(y)
    maes = _blend_losses(y, model, naive, anchors, scl, [(w, 0.0) for w in combos]) / n
    weights, mae0 = _pick_weights(combos, maes)
    zones = _blend_losses(y, model, naive, anchors, scl, [(weights, z) for z in dead_zones]) / n
    return weights, _pick_zone(zones, mae0, dead_zones)


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


def blend_edges(compute: Compute, calib: Frame, groups: int) -> tuple[float, ...]:
    """:func:`_blend_edges` on a compute's held-out rows, from ranked values and sums."""
    if groups <= 1:
        return ()
    levels = list(np.arange(1, groups) / groups)
    n, values = quantiles(compute, calib, lambda t: _column(t, "actual_apy"), levels)
    if n < groups * MIN_BLEND_GROUP_ROWS:
        return ()
    edges = tuple(values)

    def counts(t: pa.Table) -> np.ndarray:
        apy = _column(t, "actual_apy")
        apy = apy[np.isfinite(apy)]
        return np.bincount(np.searchsorted(edges, apy, side="right"), minlength=groups)

    return edges if compute.total(calib, counts).min() >= MIN_BLEND_GROUP_ROWS else ()


def fit_blends(
    forecaster: Any, calib: Frame, dead_zones: Sequence[float]
) -> list[tuple[tuple[float, ...], float]]:
    """:func:`_fit_blend` for each of a calibrating forecaster's blend groups, from two sums over
    its compute's held-out rows: every candidate blend's error, then every dead zone's for the
    chosen blend."""
    f = forecaster
    combos = blend_combos(len(f.anchors_))
    groups = len(f.blend_edges_) + 1
    target = target_column(f.horizon)

    def losses(t: pa.Table, candidates: Callable[[int], list[tuple[Any, float]]]) -> np.ndarray:
        y, naive = _column(t, target), _column(t, "actual_apy")
        model = f._memoized(t, "raw", lambda r: f._raw_predict(r, f.best_iterations_))
        anchors, scl = f._anchors(t), f._scale(t)
        group = _blend_group(naive, f.blend_edges_)
        out = []
        for k in range(groups):
            m = group == k
            sums = _blend_losses(y[m], model[m], naive[m], anchors[m], scl[m], candidates(k))
            out.append(np.append(sums, m.sum()))
        return np.array(out)

    first = f.compute.total(calib, lambda t: losses(t, lambda k: [(w, 0.0) for w in combos]))
    counts = first[:, -1]
    chosen = [_pick_weights(combos, first[k, :-1] / counts[k]) for k in range(groups)]
    second = f.compute.total(
        calib, lambda t: losses(t, lambda k: [(chosen[k][0], z) for z in dead_zones])
    )
    return [
        (weights, _pick_zone(second[k, :-1] / counts[k], mae0, dead_zones))
        for k, (weights, mae0) in enumerate(chosen)
    ]
