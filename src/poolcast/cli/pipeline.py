"""The `poolcast` command line."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer

from poolcast.cli._common import (
    AsOfOpt,
    EngineOpt,
    IncrementalOpt,
    LookbackOpt,
    SparkMasterOpt,
    StoreOpt,
    TrainDaysOpt,
    app,
    db_app,
    fail,
    open_store,
    run_stages,
    settings_from,
)
from poolcast.settings import Settings


@db_app.command("init")
def db_init(store: StoreOpt = None) -> None:
    """Create or upgrade the schema (idempotent, versioned migrations)."""
    settings = settings_from(store=store)
    with open_store(settings, create=True) as s:
        applied = s.init_schema()
        version = s.schema_version()
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
    from poolcast.store import StoreError
    from poolcast.store.grants import NO_ROLES, grant_job_role

    settings = settings_from(store=store)
    if not settings.store_url().startswith(("postgresql://", "postgres://")):
        raise StoreError(NO_ROLES)
    with open_store(settings) as s:
        statements = grant_job_role(s, role, create=create, ingest=with_ingest, spark=spark)
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
    from poolcast.log import setup_logging
    from poolcast.runs import observed_stage
    from poolcast.stages import StageResult, new_run_id
    from poolcast.stages.ingest import IngestError
    from poolcast.stages.ingest import ingest as run_ingest

    setup_logging()
    settings = settings_from(store=store)
    run_id = new_run_id()
    done = []

    def stage(s: Any, settings: Settings) -> StageResult:
        done.append(run_ingest(s, paths, skip_bad=skip_bad, apy_ceiling=settings.apy_ceiling))
        r = done[0]
        return StageResult(
            "ingest", "local", run_id, rows_read=sum(r.read.values()),
            rows_written=sum(r.written.values()),
            details={"files": r.files, "quarantined": r.quarantined, "revised": r.revised},
        )

    with open_store(settings, create=True) as s:
        s.init_schema()
        try:
            observed_stage(s, "ingest", settings, stage, run_id=run_id)
        except IngestError as exc:  # its list of bad records follows the error line
            fail(str(exc))
            return
    report = done[0]
    typer.echo(f"ingested {report.files} file(s) into {s.safe_url()}")
    for table, n in report.read.items():
        line = f"  {table:<28} read {n:>8}  written {report.written.get(table, 0):>8}"
        if table in report.revisions:
            line += f"  revised {report.revisions[table]:>8}"
        typer.echo(line)
    if report.revised:
        typer.echo(
            f"  {report.revised} stored snapshot(s) revised with new values; the old ones are "
            "kept in raw_snapshot_revisions"
        )
        for where in report.revised_examples:
            typer.echo(f"    {where}")
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

    from poolcast.ops.generate import DEFAULT_END
    from poolcast.ops.generate import generate as run_generate

    settings = settings_from(store=store)
    started = time.perf_counter()
    with open_store(settings, create=True) as s:
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


@app.command()
def metrics(
    store: StoreOpt = None,
    engine: EngineOpt = None,
    spark_master: SparkMasterOpt = None,
    as_of: AsOfOpt = None,
    lookback_days: LookbackOpt = None,
    incremental: IncrementalOpt = None,
) -> None:
    """Step 7: daily grid and rolling metrics for every active pool."""
    run_stages(
        ["metrics"],
        settings_from(
            store=store, engine=engine, as_of=as_of, lookback_days=lookback_days,
            incremental=incremental, spark_master=spark_master,
        ),
    )


@app.command()
def forecast(
    store: StoreOpt = None,
    engine: EngineOpt = None,
    spark_master: SparkMasterOpt = None,
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
    run_stages(
        ["forecast"],
        settings_from(
            store=store, engine=engine, train_days=train_days, model_path=model,
            spark_master=spark_master,
        ),
    )


@app.command()
def run(
    store: StoreOpt = None,
    engine: EngineOpt = None,
    spark_master: SparkMasterOpt = None,
    as_of: AsOfOpt = None,
    lookback_days: LookbackOpt = None,
    train_days: TrainDaysOpt = None,
    incremental: IncrementalOpt = None,
) -> None:
    """Metrics, then forecast."""
    settings = settings_from(
        store=store, engine=engine, as_of=as_of, lookback_days=lookback_days, train_days=train_days,
        incremental=incremental, spark_master=spark_master,
    )
    run_stages(["metrics", "forecast"], settings)


