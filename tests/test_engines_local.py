"""The local engine against the plain reference, on generated panels with gaps and on real data."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolcast.engines.local import compute_features, compute_metrics
from poolcast.ops.reference import close, reference_features, reference_metrics
from poolcast.spec import FILL_LIMIT_DAYS

START = dt.date(2024, 1, 1)


def _tables(snaps: list[tuple], market: list[tuple]) -> tuple[pa.Table, pa.Table]:
    s = pa.table(
        {
            "pool_id": pa.array([r[0] for r in snaps], pa.string()),
            "timestamp": pa.array([r[1] for r in snaps], pa.timestamp("us")),
            "apy": pa.array([r[2] for r in snaps], pa.float64()),
            "tvl_usd": pa.array([r[3] for r in snaps], pa.float64()),
        }
    )
    m = pa.table(
        {
            "source": pa.array([r[0] for r in market], pa.string()),
            "date": pa.array([r[1] for r in market], pa.date32()),
            "value": pa.array([r[2] for r in market], pa.float64()),
        }
    )
    return s, m


def assert_matches_reference(snaps: list[tuple], market: list[tuple], as_of: dt.date) -> None:
    s, m = _tables(snaps, market)
    got = compute_metrics(s, m, as_of).to_pylist()
    want = reference_metrics(snaps, market, as_of)
    assert [(r["pool_id"], r["date"]) for r in got] == [(r["pool_id"], r["date"]) for r in want]
    for g, w in zip(got, want, strict=True):
        for name, value in w.items():
            assert close(g[name], value), (g["pool_id"], g["date"], name, g[name], value)


apy_values = st.one_of(
    st.floats(min_value=0.0, max_value=50.0, allow_nan=False),
    st.sampled_from([4.4, 4.4, 0.0, 400.0]),  # repeats make flat windows (stddev exactly 0)
)


@st.composite
def panels(draw: st.DrawFn) -> tuple[list[tuple], list[tuple], dt.date]:
    n_pools = draw(st.integers(1, 4))
    horizon = draw(st.integers(5, 120))
    snaps: list[tuple] = []
    for p in range(n_pools):
        days = draw(st.sets(st.integers(0, horizon), min_size=1, max_size=60))
        for d in days:
            # one to three snapshots a day at different hours; the latest must win
            hours = draw(st.sets(st.integers(0, 23), min_size=1, max_size=3))
            for h in hours:
                ts = dt.datetime.combine(START + dt.timedelta(days=d), dt.time(h))
                tvl = draw(st.one_of(st.none(), st.floats(0, 1e9, allow_nan=False)))
                snaps.append((f"pool-{p}", ts, draw(apy_values), tvl))
    market: list[tuple] = []
    for source in ("ETH", "BTC", "gas"):
        for d in draw(st.sets(st.integers(-3, horizon), max_size=40)):
            market.append((source, START + dt.timedelta(days=d), draw(st.floats(1, 1e5))))
    as_of = START + dt.timedelta(days=draw(st.integers(0, horizon + 40)))
    snaps = [s for s in snaps if s[1].date() <= as_of]
    return snaps, market, as_of


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(panels())
def test_metrics_match_reference_on_generated_panels(panel: tuple) -> None:
    snaps, market, as_of = panel
    assert_matches_reference(snaps, market, as_of)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(panels())
def test_features_match_reference_on_generated_panels(panel: tuple) -> None:
    """Every spec feature (windows over gaps, partial windows, medians of even counts)."""
    snaps, market, as_of = panel
    s, m = _tables(snaps, market)
    got = compute_features(compute_metrics(s, m, as_of)).to_pylist()
    want = reference_features(reference_metrics(snaps, market, as_of))
    assert [(r["pool_id"], r["date"]) for r in got] == [(r["pool_id"], r["date"]) for r in want]
    for g, w in zip(got, want, strict=True):
        for name, value in w.items():
            assert close(g[name], value), (g["pool_id"], g["date"], name, g[name], value)


def test_median_ignores_a_spike_of_a_few_days_and_follows_a_new_level() -> None:
    apy = [5.0] * 8 + [80.0] * 3 + [6.0] * 9
    snaps = [("a", dt.datetime(2024, 1, d + 1, 23), v, 1.0) for d, v in enumerate(apy)]
    s, m = _tables(snaps, [])
    rows = compute_features(compute_metrics(s, m, dt.date(2024, 1, 20))).to_pylist()
    median = [r["median_apy_14d"] for r in rows]
    assert median[:13] == [5.0] * 13  # through the spike and the first new days
    assert rows[10]["rolling_apy_7d"] == pytest.approx((4 * 5.0 + 3 * 80.0) / 7)  # the mean jumps
    assert median[-1] == 6.0  # 9 of the last 14 days at the new level


def test_long_gap_is_not_filled_past_the_limit() -> None:
    gap = FILL_LIMIT_DAYS + 5
    snaps = [
        ("a", dt.datetime(2024, 1, 1, 23), 5.0, 100.0),
        ("a", dt.datetime.combine(START + dt.timedelta(days=gap), dt.time(23)), 7.0, 200.0),
    ]
    s, m = _tables(snaps, [])
    rows = compute_metrics(s, m, START + dt.timedelta(days=gap)).to_pylist()
    assert len(rows) == gap + 1
    assert rows[FILL_LIMIT_DAYS]["actual_apy"] == 5.0
    assert rows[FILL_LIMIT_DAYS + 1]["actual_apy"] is None
    assert rows[FILL_LIMIT_DAYS + 1]["rolling_apy_7d"] == 5.0  # window still holds day 30's value
    assert rows[-1]["actual_apy"] == 7.0
    assert rows[0]["stddev_apy_7d"] is None  # one value: no sample stddev


def test_stopped_pool_grid_ends_after_fill_limit() -> None:
    snaps = [("a", dt.datetime(2024, 1, 1, 23), 5.0, 1.0)]
    s, m = _tables(snaps, [])
    rows = compute_metrics(s, m, dt.date(2024, 12, 31)).to_pylist()
    assert rows[-1]["date"] == dt.date(2024, 1, 1) + dt.timedelta(days=FILL_LIMIT_DAYS)


def _sample_tables(sample_dir: Path) -> tuple[list[tuple], list[tuple]]:
    snaps = []
    for f in sorted((sample_dir / "defillama" / "chart").glob("*.json")):
        for r in json.loads(f.read_text())["data"]:
            ts = dt.datetime.fromisoformat(r["timestamp"]).replace(tzinfo=None)
            snaps.append((f.stem, ts, float(r["apy"]), float(r["tvlUsd"])))
    market = []
    for sym in ("ETH", "BTC"):
        doc = json.loads((sample_dir / "market" / f"cmc_ohlcv_{sym}.json").read_text())
        for q in doc["data"]["quotes"]:
            day = dt.date.fromisoformat(q["time_open"][:10])
            market.append((sym, day, float(q["quote"]["USD"]["close"])))
    return snaps, market


def test_metrics_match_reference_on_real_sample(sample_dir: Path) -> None:
    snaps, market = _sample_tables(sample_dir)
    as_of = dt.date(2025, 6, 5)
    snaps = [s for s in snaps if dt.date(2024, 6, 6) <= s[1].date() <= as_of]
    assert_matches_reference(snaps, market, as_of)


def test_target_is_a_later_observed_day() -> None:
    snaps = [
        ("a", dt.datetime(2024, 1, 1, 23), 1.0, 1.0),
        ("a", dt.datetime(2024, 1, 2, 23), 2.0, 1.0),
        ("a", dt.datetime(2024, 1, 4, 23), 4.0, 1.0),  # 3 Jan missing: forward-filled, not observed
    ]
    s, m = _tables(snaps, [])
    panel = compute_features(compute_metrics(s, m, dt.date(2024, 1, 4)), horizons=(1, 2))
    rows = {r["date"].day: r for r in panel.to_pylist()}
    assert rows[1]["target_h1"] == 2.0
    assert rows[2]["target_h1"] is None  # next day was not observed
    assert rows[2]["target_h2"] == 4.0
    assert rows[4]["target_h1"] is None
    assert rows[4]["apy_lag_1"] == 2.0 and rows[4]["actual_apy"] == 4.0
    assert rows[1]["day_of_week"] == 1 and rows[1]["is_weekend"] == 0  # 2024-01-01 was a Monday


def test_noise_regime_features_follow_the_daily_moves() -> None:
    apy = [5.0, 5.0, 6.0, 6.0, 6.0, 4.0]  # moves: -, 0, +1, 0, 0, -2
    snaps = [("a", dt.datetime(2024, 1, d + 1, 23), v, 1.0) for d, v in enumerate(apy)]
    s, m = _tables(snaps, [])
    panel = compute_features(compute_metrics(s, m, dt.date(2024, 1, 6)))
    rows = {r["date"].day: r for r in panel.to_pylist()}
    assert rows[1]["apy_unchanged"] is None  # no move on a pool's first day
    assert [rows[d]["apy_unchanged"] for d in range(2, 7)] == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert rows[6]["unchanged_share_30d"] == pytest.approx(3 / 5)
    assert rows[2]["stddev_apy_delta_30d"] is None  # one move: no spread yet
    assert rows[6]["stddev_apy_delta_30d"] == pytest.approx(np.std([0, 1, 0, 0, -2], ddof=1))
    assert rows[6]["stddev_apy_delta_7d"] == rows[6]["stddev_apy_delta_30d"]
