"""The `poolcast` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer

from poolcast.cli._common import (
    AsOfOpt,
    StoreOpt,
    app,
    fail,
    format_table,
    open_store,
    settings_from,
)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One read-only SELECT")],
    store: StoreOpt = None,
    output: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
    max_rows: Annotated[int, typer.Option("--max-rows")] = 50,
) -> None:
    """Run a read-only query against the store and print the result."""
    from poolcast.store import StoreError

    settings = settings_from(store=store)
    try:
        with open_store(settings) as s:
            table = s.readonly_query(query)
    except StoreError as exc:
        fail(str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - the database's own message is what the user needs
        fail(str(exc).strip().splitlines()[0])
        return
    if output == "json":
        typer.echo(json.dumps(table.to_pylist(), default=str))
    elif output == "csv":
        import pyarrow.csv as pacsv

        buf = pa.BufferOutputStream()
        pacsv.write_csv(table, buf)
        sys.stdout.write(buf.getvalue().to_pybytes().decode())
    else:
        typer.echo(format_table(table, max_rows))


@app.command()
def runs(
    store: StoreOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many, newest first")] = 20,
    stage: Annotated[str | None, typer.Option("--stage", help="Only this stage")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="running, succeeded or failed")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for machines")] = False,
) -> None:
    """Recent stage runs from the pipeline_runs table."""
    from poolcast.runs import recent_runs, runs_table
    from poolcast.store import StoreError

    settings = settings_from(store=store)
    try:
        with open_store(settings) as s:
            s.require_schema()
            rows = recent_runs(s, limit, stage=stage, status=status)
    except StoreError as exc:
        fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps(rows, default=str))
    else:
        typer.echo(format_table(runs_table(rows), max_rows=limit))


@app.command()
def validate(
    store: StoreOpt = None,
    as_of: AsOfOpt = None,
    sample: Annotated[
        int, typer.Option("--sample", min=0, help="Pools recomputed from raw snapshots")
    ] = 5,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the pool sample")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for machines")] = False,
) -> None:
    """Check the store before trusting a run; exit code 1 when a check fails."""
    from poolcast.ops.validate import format_checks, run_checks
    from poolcast.store import StoreError

    settings = settings_from(store=store, as_of=as_of)
    try:
        with open_store(settings) as s:
            result = run_checks(s, settings, sample=sample, seed=seed)
    except StoreError as exc:
        fail(str(exc))
        return
    typer.echo(json.dumps(result.to_dict(), default=str) if as_json else format_checks(result))
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def report(
    store: StoreOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write")] = Path(
        "poolcast-report.html"
    ),
    top: Annotated[int, typer.Option("--top", min=1, help="Pools shown, largest TVL first")] = 6,
    days: Annotated[int, typer.Option("--days", min=7, help="Days of APY history shown")] = 90,
    as_of: AsOfOpt = None,
    backtest: Annotated[
        Path | None,
        typer.Option("--backtest", help="`poolcast backtest --json` output to chart by horizon"),
    ] = None,
) -> None:
    """Write one self-contained HTML report (no internet needed to view it)."""
    from poolcast.ops.report import write_report
    from poolcast.store import StoreError

    settings = settings_from(store=store, as_of=as_of)
    try:
        with open_store(settings) as s:
            path = write_report(s, settings, output, top=top, days=days, backtest=backtest)
    except (StoreError, OSError, ValueError) as exc:  # ValueError: --backtest is not JSON
        fail(str(exc))
        return
    typer.echo(f"wrote {path}")


