"""The rolling-origin backtest on panels where the right answer is known, and on the sample data."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from panels import START, mean_reverting, metrics_of, random_walk
from typer.testing import CliRunner

from poolcast.cli import app
from poolcast.evaluation.backtest import BacktestConfig, cutoff_days, history_note, run_backtest
from poolcast.evaluation.scoring import _ratio_interval
from poolcast.model import add_targets
from poolcast.settings import Settings
from poolcast.stages import metrics_stage
from poolcast.store import Store

CONFIG = BacktestConfig(
    cutoffs=5,
    spacing_days=7,
    models=("naive", "mean7d", "production"),
    horizons=(1, 7, "mean7"),
    num_threads=1,
)


def _summary(bt) -> dict[tuple[str, object], dict]:  # type: ignore[no-untyped-def]
    return {
        (r["model"], r["horizon"]): r
        for r in bt.summary()
        if r["split"] == "all" and r["subset"] == "all" and r["metric"] == "apy"
    }


@pytest.mark.parametrize("seed", [1, 2])
def test_nothing_beats_naive_on_arandom_walk(seed: int) -> None:
    scores = _summary(run_backtest(metrics_of(random_walk(50, seed)), CONFIG))
    for h in (1, 7, "mean7"):
        # the calibrated blend falls back to today's APY: no edge, no bet
        assert scores[("production", h)]["ratio"] > 0.98, scores[("production", h)]
        assert scores[("mean7d", h)]["ratio"] > 1.0
        assert scores[("naive", h)]["ratio"] == 1.0


@pytest.mark.parametrize("seed", [1, 2])
def test_the_model_beats_naive_on_mean_reverting_pools(seed: int) -> None:
    scores = _summary(run_backtest(metrics_of(mean_reverting(50, seed)), CONFIG))
    # the best possible forecast has MAE ratios of about 0.87 at 1 day and 0.71 at 7 days
    assert scores[("production", 1)]["ratio"] < 0.92
    assert scores[("production", 7)]["ratio"] < 0.85
    assert scores[("production", "mean7")]["ratio"] < 0.75
    for h in (1, 7, "mean7"):
        assert scores[("production", h)]["ratio"] < scores[("mean7d", h)]["ratio"]
        assert scores[("production", h)]["beat_share"] >= 0.6
        assert 0.7 <= scores[("production", h)]["coverage"] <= 0.95


def test_only_observed_targets_are_scored() -> None:
    rng = np.random.default_rng(3)
    apy = mean_reverting(30, 3)
    observed = rng.random(apy.shape) > 0.2
    observed[:, :40] = True
    bt = run_backtest(metrics_of(apy, observed), CONFIG)
    scores = _summary(bt)
    pi, di = np.nonzero(observed)
    obs = {
        (f"pool-{p:03d}", START + dt.timedelta(days=int(d))) for p, d in zip(pi, di, strict=True)
    }
    pools = {p for p, _ in obs}
    # every day of each cutoff's window is an origin (the window defaults to the spacing)
    origins = [c + dt.timedelta(days=k) for c in bt.cutoffs_ for k in range(CONFIG.spacing_days)]
    for h in (1, 7):
        expected = sum(
            (p, o) in obs and (p, o + dt.timedelta(days=h)) in obs for p in pools for o in origins
        )
        assert scores[("production", h)]["n"] == scores[("naive", h)]["n"] == expected
    mean7 = sum(
        (p, o) in obs and sum((p, o + dt.timedelta(days=k)) in obs for k in range(1, 8)) >= 4
        for p in pools
        for o in origins
    )
    assert scores[("production", "mean7")]["n"] == mean7
    # every scored target is the APY actually reported that day, from an origin in the window
    # of the cutoff whose model made it
    p = bt.predictions_
    rows = zip(
        p["pool_id"], p["cutoff"], p["origin"], p["metric"], p["horizon"], p["y"], strict=True
    )
    for pool, cutoff, origin, metric, horizon, y in rows:
        assert 0 <= (origin - cutoff).days < CONFIG.spacing_days
        if metric == "apy" and horizon == "1":
            day = (origin - START).days + 1
            assert y == pytest.approx(apy[int(pool[5:]), day])


def test_one_origin_per_cutoff_when_the_window_is_one_day() -> None:
    config = BacktestConfig(
        cutoffs=3, spacing_days=7, window_days=1, models=("naive",), horizons=(1,), num_threads=1
    )
    bt = run_backtest(metrics_of(mean_reverting(10, 6)), config)
    assert set(bt.predictions_["origin"]) == set(bt.cutoffs_)
    with pytest.raises(ValueError, match="window_days must be between 1 and spacing_days"):
        BacktestConfig(spacing_days=7, window_days=8)


def test_the_ratio_interval_brackets_the_ratio_and_narrows_with_more_pools() -> None:
    rows = _summary(run_backtest(metrics_of(mean_reverting(40, 7)), CONFIG))
    prod = rows[("production", 1)]
    assert prod["ratio_lo"] < prod["ratio"] < prod["ratio_hi"]
    assert rows[("naive", 1)]["ratio_lo"] == rows[("naive", 1)]["ratio_hi"] == 1.0
    rng = np.random.default_rng(1)
    few = rng.uniform(1, 2, size=(10, 2))
    many = rng.uniform(1, 2, size=(1000, 2))
    lo_few, hi_few = _ratio_interval(few)
    lo_many, hi_many = _ratio_interval(many)
    assert hi_many - lo_many < (hi_few - lo_few) / 3


def test_pools_never_seen_are_scored_by_models_trained_without_them() -> None:
    config = BacktestConfig(
        cutoffs=2,
        spacing_days=7,
        models=("naive", "production"),
        horizons=(1,),
        unseen_folds=3,
        num_threads=1,
    )
    bt = run_backtest(metrics_of(mean_reverting(30, 4)), config)
    rows = [r for r in bt.summary() if r["metric"] == "apy" and r["subset"] == "all"]
    assert {r["split"] for r in rows} == {"all", "unseen"}
    unseen = next(r for r in rows if r["split"] == "unseen" and r["model"] == "production")
    seen = next(r for r in rows if r["split"] == "all" and r["model"] == "production")
    assert unseen["n"] == seen["n"] and unseen["pools"] == 30
    assert unseen["ratio"] < 0.95


def _naive_until(
    last_day: int, cutoffs: int = 1, horizons: tuple[int, ...] = (1,)
) -> BacktestConfig:
    """Naive only (no fit to wait for), cutoffs 14 days apart, the last ``last_day`` after START."""
    return BacktestConfig(
        cutoffs=cutoffs,
        spacing_days=14,
        models=("naive",),
        horizons=horizons,
        last_cutoff=START + dt.timedelta(days=last_day),
        num_threads=1,
    )


def test_a_cutoff_before_the_stored_metrics_is_an_error_not_a_silent_skip() -> None:
    metrics = metrics_of(mean_reverting(10, 6))  # 170 days from START
    too_early = START + dt.timedelta(days=5)  # its 7-day training origins all lie before START
    with pytest.raises(ValueError) as err:
        run_backtest(metrics, _naive_until(5 + 28, cutoffs=3, horizons=(1, 7)))
    message = str(err.value)
    assert f"cutoff {too_early}" in message and "7 days" in message
    assert f"begin on {START}" in message and "--lookback-days" in message


def test_fits_that_reach_before_the_stored_metrics_are_reported() -> None:
    metrics = metrics_of(mean_reverting(10, 6))
    # a 1-day fit at START + 100 reads from START + 100 - 1 - 59 - 30 = START + 10: whole
    bt = run_backtest(metrics, _naive_until(100))
    assert bt.history_["short"] == [] and history_note(bt.history_) == ""
    # 10 days earlier it reads from START - 10 at 7 days, START at 1 day (whole)
    bt = run_backtest(metrics, _naive_until(104, cutoffs=2, horizons=(1, 7)))
    assert bt.history_["short"] == [
        {
            "cutoff": str(START + dt.timedelta(days=90)),
            "horizon": 7,
            "needs_from": str(START - dt.timedelta(days=6)),
            "days_short": 6,
            "train_days_short": 0,
        },
    ]
    assert bt.history_["metrics_from"] == str(START)
    last = START + dt.timedelta(days=169)
    assert bt.history_["lookback_days"] == (last - START).days + 1 + 6
    note = history_note(bt.history_)
    assert "1 of the 4 fits" in note and "(up to 6: cutoff" in note
    assert f"--lookback-days {bt.history_['lookback_days']}" in note
    assert "fewer days" not in note  # its training days are all there, only feature context is cut
    # at START + 40 the 1-day fit's oldest training origins (from START - 20) are missing too
    early = run_backtest(metrics, _naive_until(40)).history_
    assert [(s["days_short"], s["train_days_short"]) for s in early["short"]] == [(50, 20)]
    assert "and 1 of them train on fewer days" in history_note(early)


def test_default_cutoffs_end_a_longest_horizon_before_most_pools_stop() -> None:
    apy = random_walk(5, 5)
    observed = np.ones_like(apy, dtype=bool)
    observed[0, 100:] = False  # one pool stops early, one reports months longer than the rest
    observed[1:4, 150:] = False
    panel = add_targets(metrics_of(apy, observed), (1, 30))
    days = cutoff_days(panel, BacktestConfig(horizons=(1, 30)))
    median_last = START + dt.timedelta(days=149)
    # the last window's last origin (13 days after the cutoff) is 30 days before that day
    assert days[-1] == median_last - dt.timedelta(days=30 + 13)
    assert days == [days[-1] - dt.timedelta(days=14 * k) for k in range(5, -1, -1)]
    one = cutoff_days(panel, BacktestConfig(horizons=(1, 30), window_days=1))
    assert one[-1] == median_last - dt.timedelta(days=30)


def test_backtest_command_on_the_sample(sample_store: Store, settings: Settings) -> None:
    metrics_stage(sample_store, settings)
    runner = CliRunner()
    args = [
        "backtest",
        "--store",
        sample_store.url,
        "--cutoffs",
        "2",
        "--models",
        "naive,mean7d,production",
    ]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    # the sample: most pools last report on 2025-06-04/05, one runs to 2025-11-13
    assert out["cutoffs"] == ["2025-04-08", "2025-04-22"]
    # both cutoffs' fits and their feature windows lie inside the stored metrics
    assert out["history"]["short"] == [] and out["history"]["lookback_days"] is None
    assert out["history"]["fits"] == 2 * 4
    assert out["config"]["window_days"] == 14
    assert {r["horizon"] for r in out["pools"]} == {1, 7, 30, "mean7"}
    assert {r["model"] for r in out["pools"]} == {"naive", "mean7d", "production"}
    row = out["pools"][0]
    assert {"pool_id", "horizon", "model", "n", "mae", "coverage"} <= set(row)
    summary = {
        (r["model"], r["horizon"]): r
        for r in out["summary"]
        if r["metric"] == "apy" and r["subset"] == "all"
    }
    assert summary[("naive", 1)]["ratio"] == 1.0
    assert summary[("production", 1)]["n"] == sum(
        r["n"] for r in out["pools"] if r["model"] == "production" and r["horizon"] == 1
    )
    human = runner.invoke(app, args)
    assert human.exit_code == 0 and "pools seen in training" in human.output
    assert "production" in human.output and "coverage" in human.output
