"""What every command shares: the app, its options, opening the store, printing."""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Annotated, Any

import pyarrow as pa
import typer

from poolcast.cli._errors import PoolcastGroup
from poolcast.deploy.cli import deploy_app, submit_app
from poolcast.settings import Engine, Settings, load_settings

if TYPE_CHECKING:
    from poolcast.store import Store

app = typer.Typer(
    cls=PoolcastGroup,
    help="Daily DeFi stablecoin pool metrics and APY forecasts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


# A tab or newline in a value must not break a table row.
_ESCAPES = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})


@app.callback()
def _top(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="On an error, show the traceback instead of one line "
            "[env: POOLCAST_DEBUG]",
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", help="Show what Spark, Ivy and LightGBM print while they work (off: "
            "only their errors) [env: POOLCAST_VERBOSE]",
        ),
    ] = False,
) -> None:
    """Daily DeFi stablecoin pool metrics and APY forecasts."""


db_app = typer.Typer(help="Create and manage the store's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(deploy_app, name="deploy")
app.add_typer(submit_app, name="submit")

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
SparkMasterOpt = Annotated[
    str | None,
    typer.Option(
        "--spark-master",
        help="Spark master for --engine spark: local[N], local-cluster[N,cores,MB], "
        "spark://host:7077 [env: POOLCAST_SPARK_MASTER; default: local[2]; under spark-submit "
        "the launcher's master]",
        show_default=False,
    ),
]
AsOfOpt = Annotated[
    dt.datetime | None,
    typer.Option(
        "--as-of", formats=["%Y-%m-%d"], help="Last day of the grid [default: latest data day]"
    ),
]
LookbackOpt = Annotated[
    int | None,
    typer.Option("--lookback-days", min=1, help="Days of history per run [default: 365]"),
]
TrainDaysOpt = Annotated[
    int | None,
    typer.Option(
        "--train-days", min=7, max=3650,
        help="Training window in days [env: TRAIN_DAYS; default: 60]",
    ),
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


def settings_from(**overrides: Any) -> Settings:
    """The settings of this command: the environment, the command's options, and the options
    given before the command (``poolcast --verbose parity``)."""
    as_of = overrides.pop("as_of", None)
    if isinstance(as_of, dt.datetime):
        overrides["as_of"] = as_of.date()
    if _top_flag("verbose"):
        overrides["verbose"] = True
    return load_settings(**overrides)


def _top_flag(name: str) -> bool:
    """A flag of the `poolcast` group itself, from the command being run (False outside one)."""
    import importlib

    try:  # typer 0.2x carries its own copy of click
        globals_ = importlib.import_module("typer._click.globals")
    except ImportError:  # pragma: no cover - typer on the click package
        globals_ = importlib.import_module("click.globals")
    ctx = globals_.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get(name))


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def open_store(
    settings: Settings, *, read_only: bool = False, create: bool = False, sandbox: bool = False
) -> Store:
    """The configured store. Only `db init`, `ingest` and `generate` ``create`` one; the commands
    that only read open it ``read_only`` (no writers' lock, read-only transactions)."""
    from poolcast.store import open_configured

    return open_configured(settings, read_only=read_only, create=create, sandbox=sandbox)


def format_table(table: pa.Table, max_rows: int = 50) -> str:
    """A plain-text table for terminals and logs."""
    names = table.column_names
    rows = table.slice(0, max_rows).to_pylist()

    def cell(value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, float):
            # For people: 654,779,012.00 rather than 6.54779e+08; APYs keep six digits.
            if math.isfinite(value) and abs(value) >= 1e4:
                return f"{value:,.2f}"
            return f"{value:.6g}"
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1e4:
            return f"{value:,}"
        # A tab or newline in a value must not break the table's rows and columns.
        return str(value).translate(_ESCAPES)

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


def print_results(results: list[Any]) -> None:
    for r in results:
        extra = "  ".join(f"{k}={v}" for k, v in r.details.items())
        typer.echo(
            f"{r.stage:<9} engine={r.engine:<6} {r.seconds:7.2f} s  read={r.rows_read:<8} "
            f"written={r.rows_written:<8} {extra}"
        )


def run_stages(stages: list[str], settings: Settings) -> None:
    from poolcast.engines._spark_session import stopping_spark
    from poolcast.log import setup_logging
    from poolcast.runs import observed_stage
    from poolcast.stages import forecast_stage, metrics_stage, new_run_id
    from poolcast.store import StoreError

    setup_logging()
    run_id = new_run_id()  # one id for the stages of one invocation: pipeline_runs (run_id, stage)
    results = []
    try:
        # The command ends with its stages: a Spark session they started is stopped.
        with stopping_spark(), open_store(settings) as s:
            if "metrics" in stages:
                check_as_of(s, settings)
            for stage in stages:
                fn = metrics_stage if stage == "metrics" else forecast_stage
                results.append(observed_stage(s, stage, settings, fn, run_id=run_id))
    except (StoreError, ValueError, FileNotFoundError) as exc:
        from poolcast.cli._errors import explain

        print_results(results)
        fail(explain(exc))
    print_results(results)


def check_as_of(store: Store, settings: Settings) -> None:
    """An ``--as-of`` that no pool's grid reaches selects nothing: an error, not 0 rows."""
    from poolcast.spec import FILL_LIMIT_DAYS
    from poolcast.store import StoreError

    if settings.as_of is None:
        return
    store.require_schema()
    span = store.fetch_arrow(
        "SELECT CAST(min(timestamp) AS DATE) AS first, CAST(max(timestamp) AS DATE) AS last "
        "FROM raw_defillama_pool_history"
    ).to_pylist()[0]
    first, last = span["first"], span["last"]
    if first is None:
        return  # an empty store: metrics writes its empty grid, as documented
    reach = last + dt.timedelta(days=FILL_LIMIT_DAYS)
    if settings.as_of < first or settings.as_of > reach:
        raise StoreError(
            f"--as-of {settings.as_of} selects no day: the snapshots in {store.safe_url()} "
            f"cover {first} to {last}, and a pool's grid ends {FILL_LIMIT_DAYS} days after its "
            f"last snapshot ({reach}); choose a day in between or ingest newer data"
        )


