"""The headroom bounds: what they promise on panels where the right answer is known."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from panels import START, mean_reverting, metrics_of, random_walk
from typer.testing import CliRunner

from poolcast.cli import app
from poolcast.evaluation.backtest import BacktestConfig, run_backtest
from poolcast.evaluation.headroom import HEADROOM_MODELS, oracle_linear
from poolcast.settings import Settings
from poolcast.stages import metrics_stage
from poolcast.store import Store

CONFIG = BacktestConfig(
    cutoffs=3,
    spacing_days=7,
    models=("naive", "production"),
    horizons=(1, 7),
    num_threads=1,
    headroom=True,
)


def _scores(bt) -> dict[tuple[str, object], dict]:  # type: ignore[no-untyped-def]
    """Pools seen, plus hindsight's rows (never seen: it sits in that split alone here)."""
    return {
        (r["model"], r["horizon"]): r
        for r in bt.summary()
        if (r["split"] == "all" or r["model"] == "hindsight")
        and r["subset"] == "all"
        and r["metric"] == "apy"
    }


def _rows(pools: list[int], apy, mean7, mean30, delta, target) -> pa.Table:  # type: ignore[no-untyped-def]
    return pa.table(
        {
            "pool_id": [f"p{p}" for p in pools],
            "actual_apy": apy,
            "rolling_apy_7d": mean7,
            "rolling_apy_30d": mean30,
            "apy_delta_today_yesterday": delta,
            "target_h1": target,
        }
    )


finite = st.floats(-50, 50, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), finite, finite, finite, finite, finite), min_size=1))
def test_the_linear_oracle_never_loses_to_naive_on_any_pool(data: list[tuple]) -> None:  # type: ignore[type-arg]
    pools, apy, m7, m30, delta, y = (list(c) for c in zip(*data, strict=True))
    value = oracle_linear(_rows(pools, apy, m7, m30, delta, y), 1)
    pools_a, apy_a, y_a = np.array(pools), np.array(apy), np.array(y)
    for p in set(pools):
        own = pools_a == p
        # its grid holds "no move at all": naive is one of the forecasts it chooses from
        assert np.abs(value[own] - y_a[own]).sum() <= np.abs(apy_a[own] - y_a[own]).sum() + 1e-6


def test_the_linear_oracle_finds_a_reversion_that_is_on_its_grid() -> None:
    rng = np.random.default_rng(0)
    apy, m7, m30, delta = (rng.normal(10, 3, 40) for _ in range(4))
    pools = [0] * 20 + [1] * 20
    # pool 0 goes 0.3 of the way to its 7-day mean; pool 1 takes back half of yesterday's move
    target = np.where(np.arange(40) < 20, apy + 0.3 * (m7 - apy), apy - 0.5 * delta)
    value = oracle_linear(_rows(pools, apy, m7, m30, delta, target), 1)
    np.testing.assert_allclose(value, target, atol=1e-9)


@pytest.mark.parametrize("seed", [1, 2])
def test_even_hindsight_does_not_beat_naive_on_a_random_walk(seed: int) -> None:
    config = replace(CONFIG, models=("naive", "mean7d", "production"))
    bt = run_backtest(metrics_of(random_walk(40, seed)), config)
    scores = _scores(bt)
    for h in (1, 7):
        # knowing how the other pools moved says nothing about this one's next step
        assert scores[("hindsight", h)]["ratio"] > 0.97, scores[("hindsight", h)]
        # chosen on the targets it is scored on, per pool: never worse than naive or the 7-day
        # mean (both on its grid) on any pool, and on overlapping 7-day targets it fits noise
        assert scores[("oracle_linear", h)]["ratio"] <= 1.0
    p = bt.predictions_
    for pool in set(p["pool_id"]):
        for h in ("1", "7"):
            err = {}
            for name in ("naive", "mean7d", "oracle_linear"):
                mine = (p["pool_id"] == pool) & (p["horizon"] == h) & (p["model"] == name)
                mine &= p["metric"] == "apy"
                err[name] = np.abs(p["value"][mine] - p["y"][mine]).sum()
            assert err["oracle_linear"] <= min(err["naive"], err["mean7d"]) + 1e-9


def test_headroom_is_scored_on_the_targets_the_models_were() -> None:
    bt = run_backtest(metrics_of(mean_reverting(40, 3)), CONFIG)
    scores = _scores(bt)
    p = bt.predictions_
    for h in ("1", "7"):
        production = (p["model"] == "production") & (p["horizon"] == h) & (p["split"] == "all")
        keys = {
            (pool, origin)
            for pool, origin in zip(p["pool_id"][production], p["origin"][production], strict=True)
        }
        for name in HEADROOM_MODELS:
            mine = (p["model"] == name) & (p["horizon"] == h) & (p["metric"] == "apy")
            # fitted on the scored pools' own targets / never on the pools it scores
            split = "unseen" if name == "hindsight" else "all"
            assert set(p["split"][mine]) == {split}
            assert {
                (pool, origin)
                for pool, origin in zip(p["pool_id"][mine], p["origin"][mine], strict=True)
            } == keys
            assert scores[(name, int(h))]["coverage"] is None  # a bound has no interval
    # on AR(1) pools there is much to gain (the best forecast scores about 0.87 at 1 day and
    # 0.71 at 7 days), and every bound finds it
    for h, most in ((1, 0.92), (7, 0.85)):
        for name in HEADROOM_MODELS:
            assert scores[(name, h)]["ratio"] < most, scores[(name, h)]


def test_in_sample_and_hindsight_know_a_regime_that_begins_after_the_cutoff() -> None:
    """Random walks until the cutoff, then noise around the cutoff's level: production, fitted on
    the walk, keeps today's APY; the bounds are fitted on the window's targets and revert."""
    config = replace(CONFIG, cutoffs=1, spacing_days=28)
    walk = random_walk(40, 3)
    cutoff = run_backtest(metrics_of(walk), replace(config, headroom=False)).cutoffs_[0]
    switch = (cutoff - START).days
    noise = np.random.default_rng(9).normal(0, 1.0, walk.shape)
    apy = np.where(np.arange(walk.shape[1]) > switch, walk[:, [switch]] + noise, walk)
    scores = _scores(run_backtest(metrics_of(apy), config))
    assert scores[("production", 1)]["ratio"] > 0.95, scores[("production", 1)]
    for name in ("in_sample", "hindsight"):
        assert scores[(name, 1)]["ratio"] < 0.85, scores[(name, 1)]


def test_backtest_headroom_command(sample_store: Store, settings: Settings) -> None:
    metrics_stage(sample_store, settings)
    args = ["backtest", "--store", sample_store.url, "--cutoffs", "2", "--horizons", "1"]
    result = CliRunner().invoke(app, [*args, "--models", "naive,production", "--headroom"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in HEADROOM_MODELS:
        row = next(line.split() for line in lines if f" {name} " in line)
        assert row[0] == "1" and 0.5 < float(row[7]) < 1.1  # horizon, ratio
    plain = CliRunner().invoke(app, [*args, "--models", "naive,production"])
    assert plain.exit_code == 0 and "hindsight" not in plain.output
