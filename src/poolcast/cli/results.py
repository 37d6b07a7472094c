"""The `poolcast` command line."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pyarrow as pa
import typer

from poolcast.cli._common import (
    AsOfOpt,
    StoreOpt,
    app,
    format_table,
    open_store,
    settings_from,
)
from poolcast.runs import STAGES, STATUSES

if TYPE_CHECKING:
    from poolcast.ops.validate import Checks
    from poolcast.settings import Settings


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


Status = StrEnum("Status", {s: s for s in STATUSES})  # type: ignore[misc]
Stage = StrEnum("Stage", {s: s for s in STAGES})  # type: ignore[misc]


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One read-only SELECT")],
    store: StoreOpt = None,
    output: Annotated[Format, typer.Option("--format", help="Output format")] = Format.table,
    max_rows: Annotated[
        int, typer.Option("--max-rows", min=1, help="Rows shown in the table format")
    ] = 50,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0.1, max=3600, help="Seconds the query may run before it is stopped"
        ),
    ] = 30.0,
) -> None:
    """Run a read-only query against the store and print the result.

    The query sees the store's tables and nothing else: no files, network or extensions on the
    embedded store, a read-only transaction without superuser rights on PostgreSQL."""
    settings = settings_from(store=store)
    with open_store(settings, sandbox=True) as s:
        table = s.readonly_query(query, timeout_s=timeout)
    if output == Format.json:
        typer.echo(json.dumps(table.to_pylist(), default=str))
    elif output == Format.csv:
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
    stage: Annotated[Stage | None, typer.Option("--stage", help="Only this stage")] = None,
    status: Annotated[
        Status | None,
        typer.Option("--status", help="Only this status (died: running, but its process is gone)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for machines")] = False,
) -> None:
    """Recent stage runs from the pipeline_runs table."""
    from poolcast.runs import recent_runs, runs_table

    settings = settings_from(store=store)
    with open_store(settings, read_only=True) as s:
        s.require_schema()
        rows = recent_runs(
            s, limit, stage=stage.value if stage else None,
            status=status.value if status else None,
        )
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
    """Check the store before trusting a run; exit code 1 when a check fails.

    The summary is kept in the store (validate_results, one row per as-of day), where `report`
    and `sql` find it."""
    from poolcast.ops.validate import format_checks, run_checks

    settings = settings_from(store=store, as_of=as_of)
    with open_store(settings, read_only=True) as s:
        result = run_checks(s, settings, sample=sample, seed=seed)
    _record_checks(settings, result, sample)
    typer.echo(json.dumps(result.to_dict(), default=str) if as_json else format_checks(result))
    if not result.ok:
        raise typer.Exit(1)


def _record_checks(settings: Settings, result: Checks, sample: int) -> None:
    """The checks ran on a read-only store; their summary is written on a connection of its own.
    A store that cannot be written now (another process writes the embedded file, a read-only
    role) costs the record, said in a warning, never the checks' verdict."""
    import logging

    from poolcast.log import event, first_line
    from poolcast.ops.validate_results import record_checks

    try:
        with open_store(settings) as s:
            row = record_checks(s, result, sample)
    except Exception as exc:  # noqa: BLE001 - recording must not change validate's outcome
        event("validate.not_recorded", logging.WARNING, as_of=result.as_of.isoformat(),
              error=first_line(exc, typed=True))
        return
    event("validate.recorded", as_of=result.as_of.isoformat(), ok=result.ok,
          changed=row["changed"], unchanged_since=row["unchanged_since"].isoformat())


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

    settings = settings_from(store=store, as_of=as_of)
    with open_store(settings, read_only=True) as s:
        path = write_report(s, settings, output, top=top, days=days, backtest=backtest)
    typer.echo(f"wrote {path}")


