"""The command line a user types, on the embedded store and on PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

from readers import reader_url
from typer.testing import CliRunner

from poolcast.cli import app

from conftest import fresh_pg_schema_url

runner = CliRunner()


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _demo(store: str, sample_dir: Path, models: Path) -> list[dict]:
    _ok("db", "init", "--store", store)
    _ok("ingest", "--store", store, str(sample_dir))
    out = _ok("run", "--store", store)
    assert "forecasts=99" in out
    rows = _ok(
        "sql",
        "--store",
        reader_url(store) if store.startswith("postgresql://") else store,
        "--format",
        "json",
        "SELECT pool_id, date, forecasted_apy FROM pool_daily_metrics "
        "WHERE forecasted_apy IS NOT NULL ORDER BY pool_id",
    )
    return json.loads(rows)


def test_same_forecasts_on_both_stores(
    tmp_path: Path, sample_dir: Path, pg_url: str, monkeypatch
) -> None:
    monkeypatch.setenv("POOLCAST_MODEL_DIR", str(tmp_path / "models"))
    embedded = _demo(str(tmp_path / "p.duckdb"), sample_dir, tmp_path)
    postgres = _demo(fresh_pg_schema_url(pg_url), sample_dir, tmp_path)
    assert len(embedded) == 99
    assert embedded == postgres  # same data, same seed: the same numbers to the last bit


def test_store_from_environment_and_clear_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("POOLCAST_STORE", str(tmp_path / "env.duckdb"))
    assert "applied migrations [" in _ok("db", "init")
    result = runner.invoke(app, ["metrics"])
    assert result.exit_code == 1
    assert "run `poolcast ingest PATH` first" in result.output
    result = runner.invoke(app, ["sql", "DELETE FROM pools"])
    assert result.exit_code == 1
    result = runner.invoke(app, ["metrics", "--store", "mysql://x"])
    assert result.exit_code != 0


def test_sql_tables_print_numbers_for_people_and_keep_their_shape() -> None:
    import pyarrow as pa

    from poolcast.cli._common import format_table

    text = format_table(
        pa.table({"tvl": [654_779_012.5, 1.5], "n": [16_855, 3], "s": ["a\tb\nc", "x"]})
    )
    lines = text.splitlines()
    assert lines[2].split() == ["654,779,012.50", "16,855", "a\\tb\\nc"]
    assert lines[3].split() == ["1.5", "3", "x"]
    assert len(lines) == 5  # header, rule, two rows, footer: the newline did not split a row


def test_verbose_reaches_every_commands_settings(tmp_path: Path, monkeypatch) -> None:
    """`poolcast --verbose <command>` (or POOLCAST_VERBOSE=1) sets `Settings.verbose`, which
    turns the libraries' chatter back on; without either it is off."""
    import poolcast.cli._common as common
    from poolcast.settings import load_settings

    seen: list[bool] = []

    def spy(**overrides: object):  # type: ignore[no-untyped-def]
        settings = load_settings(**overrides)
        seen.append(settings.verbose)
        return settings

    monkeypatch.setattr(common, "load_settings", spy)
    monkeypatch.delenv("POOLCAST_VERBOSE", raising=False)
    store = str(tmp_path / "v.duckdb")
    assert runner.invoke(app, ["db", "init", "--store", store]).exit_code == 0
    for args in (["runs"], ["--verbose", "runs"]):
        result = runner.invoke(app, [*args, "--store", store])
        assert result.exit_code == 0, result.output
    monkeypatch.setenv("POOLCAST_VERBOSE", "1")
    assert runner.invoke(app, ["runs", "--store", store]).exit_code == 0
    assert seen[-3:] == [False, True, True]
    assert "--verbose" in runner.invoke(app, ["--help"]).output
