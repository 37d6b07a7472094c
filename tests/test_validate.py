"""`poolcast validate` on the real sample data, on both stores: it passes after a run and fails,
naming the problem, when a duplicate row, a late snapshot, a gap, a bad value or a missing forecast
is planted."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poolcast.cli import app
from poolcast.ops.reference import reference_metrics
from poolcast.ops.validate import format_checks, run_checks
from poolcast.runs import observed_stage
from poolcast.settings import Settings
from poolcast.stages import metrics_stage
from poolcast.store import Store, StoreError

LATEST = dt.date(2025, 11, 13)  # the sample's latest data day
LIVE_POOL = "aa70268e-4b52-42bf-a116-608b370f9501"  # the one pool reporting up to LATEST


@pytest.fixture
def demo(demo_store: tuple[Store, Settings], settings: Settings) -> Store:
    """A copy of the store `make demo` leaves: the sample ingested, metrics and forecast run."""
    return demo_store[0]


def _status(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {c.name: c.status for c in result.checks}


def _check(result, name: str):  # type: ignore[no-untyped-def]
    [check] = [c for c in result.checks if c.name == name]
    return check


def test_demo_passes(demo: Store, settings: Settings) -> None:
    result = run_checks(demo, settings, sample=5, seed=7)
    assert result.ok, format_checks(result)
    assert result.as_of == LATEST and result.forecast_day == LATEST + dt.timedelta(days=1)
    status = _status(result)
    assert status == {
        "recent_coverage": "pass",
        "forecasts_for_today": "info",
        "largest_errors_yesterday": "info",
        "unique_pool_date": "pass",
        "grid_gaps": "pass",
        "value_ranges": "pass",
        "raw_consistency": "pass",
        "reference_sample": "pass",
        "forecast_coverage": "pass",
        "stale_pools": "warn",  # 98 sample pools stop reporting in June 2025
    }
    assert "all 99 active pools" in _check(result, "forecast_coverage").message
    coverage = _check(result, "recent_coverage").rows[0]
    assert coverage["total_records"] == 7 and coverage["records_with_7d_rolling"] == 7
    assert "5 pools (seed 7" in _check(result, "reference_sample").message


def test_missing_forecast_fails(demo: Store, settings: Settings) -> None:
    demo.execute(
        "UPDATE pool_daily_metrics SET forecasted_apy = NULL WHERE pool_id = $1 AND date = $2",
        [LIVE_POOL, LATEST + dt.timedelta(days=1)],
    )
    result = run_checks(demo, settings, sample=0)
    assert not result.ok
    check = _check(result, "forecast_coverage")
    assert check.status == "fail"
    assert check.message.startswith("1 of 99 active pools have no forecast")
    assert f"{LIVE_POOL} (for 2025-11-14)" in check.message
    assert [r["pool_id"] for r in check.rows] == [LIVE_POOL]


def test_duplicate_row_in_a_table_without_its_key_fails(demo: Store, settings: Settings) -> None:
    """What the plan's JDBC overwrite does: the table is recreated without its primary key."""
    with demo.transaction():
        demo.execute("CREATE TABLE pdm_copy AS SELECT * FROM pool_daily_metrics")
        demo.execute("DROP TABLE pool_daily_metrics")
        demo.execute("ALTER TABLE pdm_copy RENAME TO pool_daily_metrics")
        demo.execute(
            "INSERT INTO pool_daily_metrics SELECT * FROM pool_daily_metrics "
            "WHERE pool_id = $1 AND date = $2",
            [LIVE_POOL, LATEST],
        )
    result = run_checks(demo, settings, sample=0)
    check = _check(result, "unique_pool_date")
    assert check.status == "fail" and not result.ok
    assert f"{LIVE_POOL} on {LATEST} x2" in check.message and "primary key" in check.message


def test_a_late_second_snapshot_on_one_day_fails_until_metrics_rerun(
    demo: Store, settings: Settings
) -> None:
    [snap] = demo.fetch_arrow(
        "SELECT timestamp, CAST(raw_json_data AS TEXT) AS raw FROM raw_defillama_pool_history "
        "WHERE pool_id = $1 ORDER BY timestamp DESC LIMIT 1",
        [LIVE_POOL],
    ).to_pylist()
    raw = json.loads(snap["raw"])
    raw["apy"] = float(raw["apy"]) + 1.5
    json_type = "JSONB" if demo.dialect == "postgres" else "JSON"
    demo.execute(
        f"INSERT INTO raw_defillama_pool_history VALUES ($1, $2, CAST($3 AS {json_type}))",
        [LIVE_POOL, snap["timestamp"] + dt.timedelta(minutes=30), json.dumps(raw)],
    )
    result = run_checks(demo, settings, sample=0)
    check = _check(result, "raw_consistency")
    assert check.status == "fail" and not result.ok
    assert f"{LIVE_POOL} on {LATEST}" in check.message
    assert "2 snapshots on that day" in check.message
    assert "rerun `poolcast metrics`" in check.message

    observed_stage(demo, "metrics", settings, metrics_stage, run_id="again")
    assert run_checks(demo, settings, sample=0).ok


def test_gap_and_out_of_range_values_fail(demo: Store, settings: Settings) -> None:
    gap_day = LATEST - dt.timedelta(days=3)
    demo.execute(
        "DELETE FROM pool_daily_metrics WHERE pool_id = $1 AND date = $2", [LIVE_POOL, gap_day]
    )
    demo.execute(
        "UPDATE pool_daily_metrics SET actual_tvl = -5 WHERE pool_id = $1 AND date = $2",
        [LIVE_POOL, LATEST],
    )
    result = run_checks(demo, settings, sample=0)
    status = _status(result)
    assert status["grid_gaps"] == "fail" and status["value_ranges"] == "fail"
    assert LIVE_POOL in _check(result, "grid_gaps").message
    assert [r["date"] for r in _check(result, "value_ranges").rows] == [LATEST]
    # the raw snapshots disagree with both changes
    assert status["raw_consistency"] == "fail"


def test_reference_recomputation_catches_a_wrong_metric(demo: Store, settings: Settings) -> None:
    demo.execute(
        "UPDATE pool_daily_metrics SET stddev_apy_30d = stddev_apy_30d * 1.001 "
        "WHERE pool_id = $1 AND date = $2",
        [LIVE_POOL, LATEST - dt.timedelta(days=10)],
    )
    pools = demo.fetch_arrow("SELECT COUNT(*) AS n FROM pools").column("n")[0].as_py()
    result = run_checks(demo, settings, sample=pools, seed=1)  # every pool
    check = _check(result, "reference_sample")
    assert check.status == "fail"
    assert [(r["pool_id"], r["column"]) for r in check.rows] == [(LIVE_POOL, "stddev_apy_30d")]
    assert _check(result, "raw_consistency").status == "pass"  # the raw columns are untouched


def test_yesterdays_errors_once_a_forecast_was_scored(
    daily_store: tuple[Store, Settings], settings: Settings
) -> None:
    """Forecast on the day before, then the next day's run: the plan's error query has rows."""
    store, _ = daily_store
    day = dt.date(2025, 6, 5)
    result = run_checks(store, settings.model_copy(update={"as_of": day}), sample=2, seed=3)
    assert result.ok, format_checks(result)
    rows = _check(result, "largest_errors_yesterday").rows
    assert len(rows) == 20 and {r["date"] for r in rows} == {day}
    errors = [r["error"] for r in rows]
    assert errors == sorted(errors, reverse=True) and errors[0] > errors[-1]
    for r in rows:
        assert r["error"] == pytest.approx(abs(r["actual_apy"] - r["forecasted_apy"]))


def test_as_of_moves_today(demo: Store, settings: Settings) -> None:
    earlier = settings.model_copy(update={"as_of": dt.date(2025, 6, 5)})
    result = run_checks(demo, earlier, sample=3, seed=5)
    assert result.as_of == dt.date(2025, 6, 5)
    assert _check(result, "recent_coverage").status == "pass"
    assert _check(result, "forecasts_for_today").rows == [{"pools_with_forecasts": 41}]
    assert _check(result, "reference_sample").status == "pass"


def test_reference_semantics_on_a_small_series() -> None:
    t = dt.datetime(2024, 1, 1, 23)
    snaps = [
        ("p", t, 1.0, 10.0),
        ("p", t.replace(hour=1), 9.0, 90.0),  # earlier that day: ignored
        ("p", t + dt.timedelta(days=2), 3.0, 30.0),
    ]
    market = [("ETH", dt.date(2023, 12, 31), 2000.0, t)]
    rows = {r["date"]: r for r in reference_metrics(snaps, market, dt.date(2024, 1, 3))}
    assert list(rows) == [dt.date(2024, 1, d) for d in (1, 2, 3)]
    day2, day3 = rows[dt.date(2024, 1, 2)], rows[dt.date(2024, 1, 3)]
    assert day2["actual_apy"] == 1.0 and day2["is_observed"] is False  # forward-filled
    assert day3["rolling_apy_7d"] == pytest.approx(5 / 3)
    assert day3["stddev_apy_7d"] == pytest.approx(1.1547005383792515)
    assert rows[dt.date(2024, 1, 1)]["stddev_apy_7d"] is None  # one value: no sample stddev
    assert day3["apy_delta_today_yesterday"] == 2.0
    assert day2["eth_open"] == 2000.0 and day2["btc_open"] is None


def test_cli_exit_codes_and_json(demo: Store, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = demo.url
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", "--store", url, "--seed", "3"])
    assert ok.exit_code == 0, ok.output
    assert "PASS  forecast_coverage" in ok.stdout
    assert ok.stdout.rstrip().splitlines()[-1].startswith("OK: 7 pass, 0 fail")
    demo.execute("UPDATE pool_daily_metrics SET forecasted_apy = NULL WHERE date = $1",
                 [LATEST + dt.timedelta(days=1)])
    demo.close()
    bad = runner.invoke(app, ["validate", "--store", url, "--json", "--sample", "1"])
    assert bad.exit_code == 1
    payload = json.loads(bad.stdout)
    assert payload["ok"] is False and payload["as_of"] == "2025-11-13"
    [failed] = [c for c in payload["checks"] if c["status"] == "fail"]
    assert failed["name"] == "forecast_coverage" and failed["rows"][0]["pool_id"] == LIVE_POOL
    human = runner.invoke(app, ["validate", "--store", url, "--as-of", "2025-11-13"])
    assert human.exit_code == 1 and "FAIL  forecast_coverage" in human.stdout


def test_empty_store_says_what_to_do(store: Store, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = store.url
    store.close()
    out = CliRunner().invoke(app, ["validate", "--store", url])
    assert out.exit_code == 1
    assert "no pool snapshots" in out.stderr and "run `poolcast ingest`" in out.stderr


def test_the_summary_is_stored_once_per_day_and_a_rerun_changes_only_when(
    demo: Store, tmp_path: Path, monkeypatch
) -> None:
    """`poolcast validate` keeps its summary in validate_results, one row per as-of day, read back
    by `sql`: a rerun with the same statuses moves only checked_at; a new verdict replaces the row
    and its unchanged_since."""
    monkeypatch.chdir(tmp_path)
    url = demo.url
    demo.close()
    runner = CliRunner()
    sql = (
        "SELECT as_of, ok, seed, sample, checked_at, unchanged_since, "
        "CAST(counts AS TEXT) AS counts FROM validate_results"
    )

    from readers import reader_url  # `sql` runs as a role without superuser rights

    read = reader_url(url) if url.startswith("postgresql://") else url

    def stored() -> list[dict]:  # type: ignore[type-arg]
        out = runner.invoke(app, ["sql", "--store", read, "--format", "json", sql])
        assert out.exit_code == 0, out.output
        return json.loads(out.stdout)

    first = runner.invoke(app, ["validate", "--store", url, "--seed", "3"])
    assert first.exit_code == 0, first.output
    assert '"event": "validate.recorded"' in first.stderr
    [one] = stored()
    assert (one["as_of"], one["ok"], one["seed"], one["sample"]) == ("2025-11-13", True, 3, 5)
    assert json.loads(one["counts"]) == {"pass": 7, "fail": 0, "warn": 1, "info": 2, "skip": 0}
    again = runner.invoke(app, ["validate", "--store", url, "--seed", "3"])
    assert again.exit_code == 0
    [two] = stored()
    assert two["unchanged_since"] == one["unchanged_since"] < two["checked_at"]
    assert {k: v for k, v in two.items() if k != "checked_at"} == {
        k: v for k, v in one.items() if k != "checked_at"
    }

    from poolcast.store import open_store

    with open_store(url) as s:
        s.execute("UPDATE pool_daily_metrics SET forecasted_apy = NULL WHERE date = $1",
                  [LATEST + dt.timedelta(days=1)])
    bad = runner.invoke(app, ["validate", "--store", url, "--seed", "3"])
    assert bad.exit_code == 1
    [three] = stored()
    assert three["ok"] is False and three["unchanged_since"] == three["checked_at"]
    assert json.loads(three["counts"])["fail"] == 1


def test_a_summary_that_cannot_be_stored_leaves_the_verdict_and_nothing_half_written(
    demo: Store, settings: Settings, tmp_path: Path, monkeypatch
) -> None:
    from poolcast.ops import validate_results
    from poolcast.ops.validate_results import record_checks, stored_checks

    result = run_checks(demo, settings, seed=3)

    def refuse() -> None:
        raise RuntimeError("commit refused")

    demo.before_commit.append(refuse)  # the write fails at its commit: nothing is kept
    with pytest.raises(RuntimeError):
        record_checks(demo, result, 5)
    demo.before_commit.remove(refuse)
    assert stored_checks(demo) is None

    # A store that cannot be written (another writer, a read-only role): a warning, and the
    # exit code is still the checks'.
    def locked(*args: object, **kwargs: object) -> None:
        raise StoreError("the store is locked by another process")

    monkeypatch.setattr(validate_results, "record_checks", locked)
    monkeypatch.chdir(tmp_path)
    url = demo.url
    demo.close()
    out = CliRunner().invoke(app, ["validate", "--store", url, "--seed", "3"])
    assert out.exit_code == 0, out.output
    assert '"event": "validate.not_recorded"' in out.stderr and "locked" in out.stderr
