"""`poolcast parity`: both engines on one store, compared per table and column."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest
from spark_support import spark_fixture  # noqa: F401 - the `spark` session fixture
from typer.testing import CliRunner

from poolcast.evaluation.parity import compare_tables, format_report

KEY = ("pool_id", "date")


def _table(values: list[float | None], pools: list[str] | None = None) -> pa.Table:
    n = len(values)
    return pa.table(
        {
            "pool_id": pa.array(pools or ["a"] * n, pa.string()),
            "date": pa.array([dt.date(2025, 1, 1) + dt.timedelta(days=i) for i in range(n)]),
            "x": pa.array(values, pa.float64()),
        }
    )


# -- the comparison itself (no Spark) ------------------------------------------------------------
def test_equal_tables_agree_and_checksums_match() -> None:
    a = _table([1.0, 2.0, None, 0.0])
    b = _table([1.0, 2.0 + 1e-13, None, 1e-17])  # float noise, a "zero" delta of 1e-17
    r = compare_tables("t", a, b, KEY, ["x"])
    assert r.ok
    c = r.columns[0]
    assert c.nulls_a == c.nulls_b == 1 and c.null_mismatches == 0
    assert c.checksum_a == c.checksum_b
    assert "parity: OK" in format_report([r])


def test_value_null_and_row_differences_fail() -> None:
    a = _table([1.0, 2.0, 3.0])
    assert not compare_tables("t", a, _table([1.0, 2.0, 3.001]), KEY, ["x"]).ok
    nulls = compare_tables("t", a, _table([1.0, None, 3.0]), KEY, ["x"])
    assert not nulls.ok and nulls.columns[0].null_mismatches == 1
    fewer = compare_tables("t", a, _table([1.0, 2.0]), KEY, ["x"])
    assert not fewer.ok and fewer.keys_only_in_a == 1
    dup = pa.concat_tables([a, a.slice(0, 1)])
    assert compare_tables("t", dup, dup, KEY, ["x"]).duplicate_keys == 2
    assert "DIFFERENT" in format_report([fewer]) and "parity: FAILED" in format_report([fewer])


def test_relative_difference_is_relative_above_one() -> None:
    big = _table([1e6, 2e6])
    r = compare_tables("t", big, _table([1e6 * (1 + 5e-10), 2e6]), KEY, ["x"])
    assert r.ok and 4e-10 < r.columns[0].max_rel_diff < 6e-10
    r = compare_tables("t", big, _table([1e6 * (1 + 5e-9), 2e6]), KEY, ["x"])
    assert not r.ok


def test_forecast_columns_compare_as_forecasts() -> None:
    a = _table([4.0, 5.0, 6.0])
    close = compare_tables("f", a, _table([4.1, 5.0, 5.9]), KEY, ["x"], forecast_columns=("x",))
    assert close.ok and close.columns[0].kind == "forecast"
    far = compare_tables("f", a, _table([5.0, 6.0, 7.0]), KEY, ["x"], forecast_columns=("x",))
    assert not far.ok


# -- both engines on the demo store --------------------------------------------------------------
@pytest.fixture(scope="module")
def parity_result(spark, demo_template):  # type: ignore[no-untyped-def]
    """`run_parity` (metrics, forecasts, holdout) on the demo store of each kind."""
    from poolcast.evaluation.parity import run_parity
    from poolcast.store import open_store

    url, settings = demo_template["demo"]
    with open_store(url) as s:
        if s.dialect == "postgres":
            # The forecast comparison and holdout run on the embedded store (time budget);
            # PostgreSQL gets the metric comparison through JDBC.
            return run_parity(s, settings, stages=("metrics",))
        return run_parity(s, settings)


def test_parity_metrics_agree(parity_result) -> None:  # type: ignore[no-untyped-def]
    metrics = parity_result.tables[0]
    assert metrics.table == "pool_daily_metrics" and metrics.ok
    assert metrics.rows_a > 10_000
    assert all(c.max_rel_diff < 1e-9 and c.null_mismatches == 0 for c in metrics.columns)


# The forecast comparison and holdout run on the embedded store only (time budget).
@pytest.mark.parametrize("demo_template", ["duckdb"], indirect=True)
def test_parity_forecasts_and_holdout(parity_result) -> None:  # type: ignore[no-untyped-def]
    names = [t.table for t in parity_result.tables]
    assert names == [
        "pool_daily_metrics", "forecast_panel", "forecasts (next day)",
        *(f"forecasts (apy, horizon {h})" for h in ("1", "7", "30", "mean7")),
    ]
    panel = parity_result.tables[1]
    assert panel.ok and all(c.max_rel_diff < 1e-9 for c in panel.columns)
    assert parity_result.tables[2].ok and parity_result.tables[2].rows_a == 99
    h = parity_result.holdout
    assert h is not None and h.rows > 500
    # SynapseML's next-day MAE within 5% of the local engine's on a time-based holdout.
    assert h.rel_diff <= 0.05, h
    assert parity_result.ok
    text = parity_result.format()
    assert "holdout" in text and text.endswith("parity: OK")


def test_parity_command_exit_codes(spark, demo_store) -> None:  # type: ignore[no-untyped-def]
    from poolcast.cli import app

    store, _ = demo_store
    runner = CliRunner()
    args = ["parity", "--store", store.url, "--stage", "metrics", "--holdout-days", "0"]
    store.close()
    ok = runner.invoke(app, args)
    assert ok.exit_code == 0, ok.output
    assert "pool_daily_metrics" in ok.output and "parity: OK" in ok.output
    # A tolerance no float can meet: the same comparison must fail with exit code 1.
    strict = runner.invoke(app, [*args, "--rel-tol", "-1", "--json"])
    assert strict.exit_code == 1, strict.output
    report = json.loads(strict.stdout)  # stderr has its progress (`parity.step` events)
    assert report["ok"] is False and report["tables"][0]["rows_a"] > 10_000
    bad = runner.invoke(app, ["parity", "--store", store.url, "--stage", "everything"])
    assert bad.exit_code == 2


@pytest.mark.spark
@pytest.mark.parametrize("demo_template", ["duckdb"], indirect=True)
def test_parity_says_each_step_and_keeps_the_chatter_off(demo_store) -> None:  # type: ignore[no-untyped-def]
    """A fresh `poolcast parity` process (its own JVM, so Ivy resolves the jars): one progress
    event per step, and none of Ivy's, Spark's or LightGBM's chatter; `--verbose` (here
    POOLCAST_VERBOSE=1, what the flag sets) brings it back."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    store, _ = demo_store
    store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POOLCAST_LOG", "PYSPARK"))}
    env.pop("POOLCAST_VERBOSE", None)
    done = subprocess.run(
        [sys.executable, "-m", "poolcast.cli", "parity", "--store", store.url,
         "--stage", "metrics", "--holdout-days", "0"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("parity: OK")
    lines = done.stderr.splitlines()
    steps = [json.loads(line) for line in lines if '"parity.step"' in line]
    assert [s["step"] for s in steps] == ["metrics local", "spark session", "metrics spark"]
    assert all(s["seconds"] >= 0 for s in steps)
    assert len(lines) == len(steps), "\n".join(lines[:40])  # nothing else on stderr

    code = (
        "from poolcast.engines._spark_session import get_spark_session\n"
        "from poolcast.settings import load_settings\n"
        "get_spark_session(load_settings()).stop()\n"
    )
    loud = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env={**env, "POOLCAST_VERBOSE": "1"},
        capture_output=True, text=True, timeout=600,
    )
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert ":: resolving dependencies ::" in loud.stderr
