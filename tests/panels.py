"""Synthetic pools where the right forecast is known: a random walk (nothing beats naive) and
mean-reverting AR(1) series (the model must), as pool_daily_metrics rows."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from poolcast.engines.local import compute_metrics

START = dt.date(2025, 1, 1)
DAYS = 170


def metrics_of(apy: np.ndarray, observed: np.ndarray | None = None) -> pa.Table:
    """pool_daily_metrics of synthetic pools: ``apy[pool, day]``; days not ``observed`` have no
    snapshot (the grid carries the last APY forward, as it does for real pools)."""
    pools, days = apy.shape
    observed = np.ones_like(apy, dtype=bool) if observed is None else observed
    pi, di = np.nonzero(observed)
    snapshots = pa.table(
        {
            "pool_id": [f"pool-{p:03d}" for p in pi],
            "timestamp": [
                dt.datetime.combine(START + dt.timedelta(days=int(d)), dt.time(23)) for d in di
            ],
            "apy": apy[pi, di],
            "tvl_usd": np.full(pi.size, 1e6),
        }
    )
    dates = [START + dt.timedelta(days=d) for d in range(days)]
    market = pa.table(
        {
            "source": ["ETH"] * days + ["BTC"] * days + ["gas"] * days,
            "date": dates * 3,
            "value": [3000.0] * days + [90000.0] * days + [5.0] * days,
        }
    )
    return compute_metrics(snapshots, market, dates[-1], threads=1)


def random_walk(pools: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    level = rng.uniform(3, 30, size=(pools, 1))
    return level + np.cumsum(rng.normal(0, 0.5, size=(pools, DAYS)), axis=1)


def mean_reverting(pools: int, seed: int, phi: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mean = rng.uniform(3, 30, size=pools)
    x = np.empty((pools, DAYS))
    x[:, 0] = mean
    for t in range(1, DAYS):
        x[:, t] = mean + phi * (x[:, t - 1] - mean) + rng.normal(0, 1.0, size=pools)
    return x
