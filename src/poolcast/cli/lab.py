"""The `poolcast` command line."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer

from poolcast.cli._common import (
    SparkMasterOpt,
    StoreOpt,
    TrainDaysOpt,
    app,
    fail,
    open_store,
    settings_from,
)
from poolcast.evaluation.parity import DEFAULT_FORECAST_TOL, DEFAULT_REL_TOL


@app.command()
def parity(
    store: StoreOpt = None,
    spark_master: SparkMasterOpt = None,
    stage: Annotated[
        list[str] | None,
        typer.Option("--stage", help="metrics and/or forecast [default: both]"),
    ] = None,
    rel_tol: Annotated[
        float, typer.Option("--rel-tol", help="metric columns: max relative difference")
    ] = DEFAULT_REL_TOL,
    forecast_tol: Annotated[
        float,
        typer.Option("--forecast-tol", help="forecasts and holdout MAE: max relative difference"),
    ] = DEFAULT_FORECAST_TOL,
    holdout_days: Annotated[
        int, typer.Option("--holdout-days", help="days of the time-based holdout; 0: none")
    ] = 14,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Run the local and the Spark engine on the same store (writing nothing) and compare them.

    Exit code 0 when they agree within tolerance, 1 when they differ, 2 when they could not run.
    """
    from dataclasses import asdict

    from poolcast.engines._spark_session import stopping_spark
    from poolcast.evaluation.parity import run_parity
    from poolcast.store import StoreError

    stages = tuple(stage or ("metrics", "forecast"))
    unknown = set(stages) - {"metrics", "forecast"}
    if unknown:
        fail(f"unknown stage(s) {sorted(unknown)}", code=2)
    settings = settings_from(store=store, spark_master=spark_master)
    try:
        with stopping_spark(), open_store(settings) as s:
            s.require_schema()
            result = run_parity(
                s, settings, stages=stages, rel_tol=rel_tol, forecast_tol=forecast_tol,
                holdout_days=holdout_days,
            )
    except (StoreError, ValueError) as exc:
        fail(f"parity could not run: {exc}", code=2)
        return
    if as_json:
        holdout = result.holdout
        typer.echo(
            json.dumps(
                {
                    "ok": result.ok,
                    "tables": [t.to_dict() for t in result.tables],
                    "holdout": None
                    if holdout is None
                    else {**asdict(holdout), "rel_diff": holdout.rel_diff, "ok": holdout.ok},
                    "seconds": result.seconds,
                    "spark": result.cluster,
                },
                indent=2,
                default=str,
            )
        )
    else:
        typer.echo(result.format())
    raise typer.Exit(0 if result.ok else 1)


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
    from poolcast.evaluation.backtest import BacktestConfig, backtest_store, history_note
    from poolcast.evaluation.research import ALL_MODELS as MODELS
    from poolcast.evaluation.scoring import format_summary
    from poolcast.model import parse_horizon
    from poolcast.store import StoreError

    settings = settings_from(store=store, train_days=train_days)
    names = tuple(m.strip() for m in models.split(",") if m.strip())
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        fail(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    try:
        config = BacktestConfig(
            cutoffs=cutoffs, spacing_days=spacing, window_days=window,
            train_days=settings.train_days,
            horizons=tuple(parse_horizon(h.strip()) for h in horizons.split(",") if h.strip()),
            models=names, last_cutoff=last.date() if last else None,
            unseen_folds=unseen_folds, seed=settings.seed, headroom=headroom,
        )
        with open_store(settings, read_only=True) as s:
            result = backtest_store(s, config)
    except (StoreError, ValueError) as exc:
        fail(str(exc))
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


