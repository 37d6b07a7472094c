"""The `poolcast` command line."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import pyarrow as pa
import typer

from poolcast.deploy.cli import deploy_app, submit_app
from poolcast.parity import parity_command
from poolcast.settings import Engine, Settings, load_settings

if TYPE_CHECKING:
    from poolcast.store import Store

app = typer.Typer(
    help="Daily DeFi stablecoin pool metrics and APY forecasts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Create and manage the store's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(deploy_app, name="deploy")
app.add_typer(submit_app, name="submit")
app.command("parity")(parity_command)  # issue 3: local vs Spark engine

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="postgresql://... or a path to the embedded file "
        "[env: POOLCAST_STORE, or DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD; "
        "default: ./poolcast.duckdb]",
        show_default=False,
    ),
]
EngineOpt = Annotated[
    Engine | None, typer.Option("--engine", help="local (default) or spark [env: POOLCAST_ENGINE]")
]
AsOfOpt = Annotated[
    dt.datetime | None,
    typer.Option(
        "--as-of", formats=["%Y-%m-%d"], help="Last day of the grid [default: latest data day]"
    ),
]
LookbackOpt = Annotated[
    int | None, typer.Option("--lookback-days", help="Days of history per run [default: 365]")
]
TrainDaysOpt = Annotated[
    int | None,
    typer.Option("--train-days", help="Training window in days [env: TRAIN_DAYS; default: 60]"),
]

IncrementalOpt = Annotated[
    bool | None,
    typer.Option(
        "--incremental",
        help="Daily mode: recompute only the days since the last metrics run (plus the history "
        "their windows need) and merge the rows that changed [env: POOLCAST_INCREMENTAL]",
        show_default=False,
    ),
]


def _settings(**overrides: Any) -> Settings:
    as_of = overrides.pop("as_of", None)
    if isinstance(as_of, dt.datetime):
        overrides["as_of"] = as_of.date()
    return load_settings(**overrides)


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _open(settings: Settings) -> Store:
    from poolcast.retry import open_with_retry

    return open_with_retry(settings)


def format_table(table: pa.Table, max_rows: int = 50) -> str:
    """A plain-text table for terminals and logs."""
    names = table.column_names
    rows = table.slice(0, max_rows).to_pylist()

    def cell(value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, float):
            return f"{value:.6g}"
        return str(value)

    cells = [[cell(r[n]) for n in names] for r in rows]
    widths = [max([len(n), *(len(c[i]) for c in cells)]) for i, n in enumerate(names)]
    lines = [
        "  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    footer = f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}"
    footer += f", first {max_rows} shown)" if table.num_rows > max_rows else ")"
    return "\n".join([*lines, footer])


@db_app.command("init")
def db_init(store: StoreOpt = None) -> None:
    """Create or upgrade the schema (idempotent, versioned migrations)."""
    from poolcast.store import StoreError

    settings = _settings(store=store)
    try:
        with _open(settings) as s:
            applied = s.init_schema()
            version = s.schema_version()
    except StoreError as exc:
        _fail(str(exc))
        return
    if applied:
        typer.echo(f"{s.safe_url()}: applied migrations {applied}; schema version {version}")
    else:
        typer.echo(f"{s.safe_url()}: schema up to date (version {version})")


@db_app.command("grant")
def db_grant(
    role: Annotated[str, typer.Argument(help="The job's role: lower-case letters, digits, _")],
    store: StoreOpt = None,
    create: Annotated[
        bool, typer.Option("--create", help="Create the role (LOGIN, no password) if missing")
    ] = False,
    with_ingest: Annotated[
        bool, typer.Option("--ingest", help="Also let it write the raw tables (an ingest role)")
    ] = False,
    spark: Annotated[
        bool,
        typer.Option("--spark", help="Also CREATE on the schema (Spark engine's staging tables)"),
    ] = False,
) -> None:
    """Least-privilege PostgreSQL role: read the raw tables, write only the job's own tables."""
    from poolcast.grants import grant_job_role
    from poolcast.store import StoreError

    settings = _settings(store=store)
    try:
        with _open(settings) as s:
            statements = grant_job_role(s, role, create=create, ingest=with_ingest, spark=spark)
    except StoreError as exc:
        _fail(str(exc))
        return
    for statement in statements:
        typer.echo(f"{statement};")


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="API response files or folders")],
    store: StoreOpt = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Load good records; quarantine bad ones")
    ] = False,
) -> None:
    """Load DefiLlama, CoinMarketCap and Etherscan files into the raw tables."""
    from poolcast.ingest import IngestError
    from poolcast.ingest import ingest as run_ingest
    from poolcast.observe import observed_stage, setup_logging
    from poolcast.pipeline import StageResult, new_run_id

    setup_logging()
    settings = _settings(store=store)
    run_id = new_run_id()
    done = []

    def stage(s: Any, settings: Settings) -> StageResult:
        done.append(run_ingest(s, paths, skip_bad=skip_bad, apy_ceiling=settings.apy_ceiling))
        r = done[0]
        return StageResult(
            "ingest", "local", run_id, rows_read=sum(r.read.values()),
            rows_written=sum(r.written.values()),
            details={"files": r.files, "quarantined": r.quarantined},
        )

    with _open(settings) as s:
        s.init_schema()
        try:
            observed_stage(s, "ingest", settings, stage, run_id=run_id)
        except (IngestError, FileNotFoundError) as exc:
            _fail(str(exc))
            return
    report = done[0]
    typer.echo(f"ingested {report.files} file(s) into {s.safe_url()}")
    for table, n in report.read.items():
        typer.echo(f"  {table:<28} read {n:>8}  written {report.written.get(table, 0):>8}")
    if report.quarantined:
        typer.echo(f"  {report.quarantined} bad record(s) quarantined in ingest_quarantine")


@app.command()
def generate(
    pools: Annotated[int, typer.Option("--pools", min=1, help="Number of synthetic pools")],
    days: Annotated[int, typer.Option("--days", min=1, help="Days of history per pool")] = 365,
    store: StoreOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same rows")] = 0,
    end: Annotated[
        dt.datetime | None,
        typer.Option("--end", formats=["%Y-%m-%d"], help="Last day [default: 2025-06-05]"),
    ] = None,
) -> None:
    """Write synthetic raw data shaped like the real sample (for benchmarks at scale)."""
    import time

    from poolcast.generate import DEFAULT_END
    from poolcast.generate import generate as run_generate

    settings = _settings(store=store)
    started = time.perf_counter()
    with _open(settings) as s:
        s.init_schema()
        report = run_generate(
            s, pools, days, seed=seed, end=end.date() if end else DEFAULT_END
        )
    typer.echo(
        f"generated {report.pools} pools x {report.days} days: {report.snapshots} snapshots "
        f"into {s.safe_url()} in {time.perf_counter() - started:.1f} s"
    )
    for table, n in report.written.items():
        typer.echo(f"  {table:<28} written {n:>9}")


def _print_results(results: list[Any]) -> None:
    for r in results:
        extra = "  ".join(f"{k}={v}" for k, v in r.details.items())
        typer.echo(
            f"{r.stage:<9} engine={r.engine:<6} {r.seconds:7.2f} s  read={r.rows_read:<8} "
            f"written={r.rows_written:<8} {extra}"
        )


def _run_stages(stages: list[str], settings: Settings) -> None:
    from poolcast.observe import observed_stage, setup_logging
    from poolcast.pipeline import forecast_stage, metrics_stage, new_run_id
    from poolcast.store import StoreError

    setup_logging()
    run_id = new_run_id()  # one id for the stages of one invocation: pipeline_runs (run_id, stage)
    results = []
    try:
        with _open(settings) as s:
            for stage in stages:
                fn = metrics_stage if stage == "metrics" else forecast_stage
                results.append(observed_stage(s, stage, settings, fn, run_id=run_id))
    except (StoreError, ValueError, FileNotFoundError) as exc:
        _print_results(results)
        _fail(str(exc))
    _print_results(results)


@app.command()
def metrics(
    store: StoreOpt = None,
    engine: EngineOpt = None,
    as_of: AsOfOpt = None,
    lookback_days: LookbackOpt = None,
    incremental: IncrementalOpt = None,
) -> None:
    """Step 7: daily grid and rolling metrics for every active pool."""
    _run_stages(
        ["metrics"],
        _settings(
            store=store, engine=engine, as_of=as_of, lookback_days=lookback_days,
            incremental=incremental,
        ),
    )


@app.command()
def forecast(
    store: StoreOpt = None,
    engine: EngineOpt = None,
    train_days: TrainDaysOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Forecast with this saved model (folder or gs:// path) instead of training one "
            "[env: POOLCAST_MODEL]",
        ),
    ] = None,
) -> None:
    """Step 11: train the global LightGBM models and forecast every active pool 1, 7 and 30 days
    ahead (and the next 7 days' mean) with 80% intervals."""
    _run_stages(
        ["forecast"], _settings(store=store, engine=engine, train_days=train_days, model_path=model)
    )


@app.command()
def run(
    store: StoreOpt = None,
    engine: EngineOpt = None,
    as_of: AsOfOpt = None,
    lookback_days: LookbackOpt = None,
    train_days: TrainDaysOpt = None,
    incremental: IncrementalOpt = None,
) -> None:
    """Metrics, then forecast."""
    settings = _settings(
        store=store, engine=engine, as_of=as_of, lookback_days=lookback_days, train_days=train_days,
        incremental=incremental,
    )
    _run_stages(["metrics", "forecast"], settings)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One read-only SELECT")],
    store: StoreOpt = None,
    output: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
    max_rows: Annotated[int, typer.Option("--max-rows")] = 50,
) -> None:
    """Run a read-only query against the store and print the result."""
    from poolcast.store import StoreError

    settings = _settings(store=store)
    try:
        with _open(settings) as s:
            table = s.readonly_query(query)
    except StoreError as exc:
        _fail(str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - the database's own message is what the user needs
        _fail(str(exc).strip().splitlines()[0])
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
def backtest(
    store: StoreOpt = None,
    cutoffs: Annotated[int, typer.Option("--cutoffs", min=1, help="Refits scored")] = 6,
    spacing: Annotated[int, typer.Option("--spacing", min=1, help="Days between cutoffs")] = 14,
    window: Annotated[
        int | None,
        typer.Option(
            "--window", min=1,
            help="Origin days scored after each cutoff by the model fitted there "
            "[default: --spacing, every day]",
        ),
    ] = None,
    last: Annotated[
        dt.datetime | None,
        typer.Option(
            "--last-cutoff", formats=["%Y-%m-%d"],
            help="Last cutoff [default: its window's longest horizon ends on the median of the "
            "pools' last observed days]",
        ),
    ] = None,
    train_days: TrainDaysOpt = None,
    horizons: Annotated[
        str, typer.Option("--horizons", help="Comma-separated days ahead, or mean7")
    ] = "1,7,30,mean7",
    models: Annotated[
        str,
        typer.Option(
            "--models",
            help="Comma-separated: naive, mean7d, production, plan, l1change, plantrees",
        ),
    ] = "naive,mean7d,production,plan",
    unseen_folds: Annotated[
        int,
        typer.Option(
            "--unseen-folds", min=0, help="Also score pools held out of training, in N folds"
        ),
    ] = 0,
    headroom: Annotated[
        bool,
        typer.Option(
            "--headroom",
            help="Also score three bounds that cheat on purpose (oracle_linear, hindsight, "
            "in_sample): how much these data hold at best",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help='{"summary": [...], "pools": [...]} for machines')
    ] = False,
) -> None:
    """Rolling-origin backtest of the forecast models against naive and 7-day-mean baselines."""
    from poolcast.backtest import BacktestConfig, backtest_store, format_summary, history_note
    from poolcast.forecast import MODELS, parse_horizon
    from poolcast.store import StoreError

    settings = _settings(store=store, train_days=train_days)
    names = tuple(m.strip() for m in models.split(",") if m.strip())
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        _fail(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    try:
        config = BacktestConfig(
            cutoffs=cutoffs, spacing_days=spacing, window_days=window,
            train_days=settings.train_days,
            horizons=tuple(parse_horizon(h.strip()) for h in horizons.split(",") if h.strip()),
            models=names, last_cutoff=last.date() if last else None,
            unseen_folds=unseen_folds, seed=settings.seed, headroom=headroom,
        )
        with _open(settings) as s:
            result = backtest_store(s, config)
    except (StoreError, ValueError) as exc:
        _fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps(result.to_dict(), default=str))
        return
    days = ", ".join(d.isoformat() for d in result.cutoffs_)
    typer.echo(
        f"cutoffs: {days}; each scored on {config.window} origin day(s); train window "
        f"{config.train_days} days; {result.seconds_:.1f} s"
    )
    typer.echo(format_summary(result.summary()))
    note = history_note(result.history_)
    if note:
        typer.echo(note)


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
    from poolcast.observe import recent_runs, runs_table
    from poolcast.store import StoreError

    settings = _settings(store=store)
    try:
        with _open(settings) as s:
            s.require_schema()
            rows = recent_runs(s, limit, stage=stage, status=status)
    except StoreError as exc:
        _fail(str(exc))
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
    from poolcast.store import StoreError
    from poolcast.validate import format_checks, run_checks

    settings = _settings(store=store, as_of=as_of)
    try:
        with _open(settings) as s:
            result = run_checks(s, settings, sample=sample, seed=seed)
    except StoreError as exc:
        _fail(str(exc))
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
    from poolcast.report import write_report
    from poolcast.store import StoreError

    settings = _settings(store=store, as_of=as_of)
    try:
        with _open(settings) as s:
            path = write_report(s, settings, output, top=top, days=days, backtest=backtest)
    except (StoreError, OSError, ValueError) as exc:  # ValueError: --backtest is not JSON
        _fail(str(exc))
        return
    typer.echo(f"wrote {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
