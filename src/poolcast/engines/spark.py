"""The Spark engine: the same spec compiled to Spark window functions, SynapseML LightGBM.

Plan steps 7 and 11 as Spark jobs that run in ``local[2]`` or on Dataproc Serverless. Nothing here
declares a metric: each column comes from :mod:`poolcast.spec` and is compiled by
:func:`compile_column` (the local engine compiles the same declarations to DuckDB SQL). The
statements that read the store are :mod:`poolcast.store.queries`, shared with the local engine;
:mod:`poolcast.store.spark_io` moves them (JDBC for PostgreSQL, Parquet for the embedded store).

No SparkSession is started at import time, and ``pyspark`` is imported lazily, so the package
imports on a machine without Java.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from poolcast.engines import ForecastsWritten, MetricInputs
from poolcast.engines._spark_session import (
    SparkSetupError,
    detect_environment,
    executor_count,
    get_spark_session,
)
from poolcast.log import first_line
from poolcast.settings import Settings
from poolcast.spec import APY_TARGET, FEATURES, FILL_LIMIT_DAYS, MARKET, METRICS, Column
from poolcast.store import Store, StoreError
from poolcast.store.queries import (
    FORECAST_COLUMNS,
    FORECASTS_KEY,
    MARKET_SQL,
    METRIC_KEY,
    METRIC_UPDATE,
    PANEL_SQL,
    SNAPSHOTS_SQL,
    WINDOW_SNAPSHOTS_SQL,
    PoolBatch,
    RecomputeWindow,
    panel_params,
    statement,
    window_bounds,
    window_params,
    write_forecasts,
)

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column as SparkColumn
    from pyspark.sql import DataFrame, SparkSession


class SparkStageError(StoreError):
    """A Spark stage failed; the message names the stage, the step and the cause.

    Raised before the final merge, so the target tables are as they were.
    """


# -- compiling the spec -----
def _by_pool() -> Any:
    from pyspark.sql import Window

    return Window.partitionBy("pool_id").orderBy("date")


def compile_column(c: Column) -> SparkColumn:
    """One spec column as a Spark column expression (the local engine's ``compile_column`` twin).

    Frames are the local engine's exactly (and so are the bits: ``avg`` sums the frame in order
    like ``list_avg``, ``std`` is ``list_stddev_samp``'s own update): ``ffill`` looks ``window``
    rows back (plus today),
    ``mean``/``std`` cover ``window`` rows including today, ``delta``/``lag`` step along
    the pool's daily grid.
    """
    from pyspark.sql import functions as F

    src = F.col(c.source)
    w = _by_pool()
    if c.kind == "ffill":
        return F.last(src, ignorenulls=True).over(w.rowsBetween(-c.window, 0))
    if c.kind == "mean":
        return F.avg(src).over(w.rowsBetween(-(c.window - 1), 0))
    if c.kind == "std":
        # Sample standard deviation of the frame's non-null values, NULL below two values, by
        # Welford's update in the exact operation order of the local engine's list_stddev_samp:
        # the two engines then agree to the last bit (Spark's own stddev_samp orders the same
        # update differently and differs by ~1e-16, which makes a merge rewrite every row).
        values = F.collect_list(src).over(w.rowsBetween(-(c.window - 1), 0))
        start = F.struct(F.lit(0.0).alias("n"), F.lit(0.0).alias("mean"), F.lit(0.0).alias("d2"))

        def step(acc: SparkColumn, x: SparkColumn) -> SparkColumn:
            n = acc["n"] + 1
            mean = acc["mean"] + (x - acc["mean"]) / n
            d2 = acc["d2"] + (x - mean) * (x - acc["mean"])
            return F.struct(n.alias("n"), mean.alias("mean"), d2.alias("d2"))

        def finish(acc: SparkColumn) -> SparkColumn:
            return F.when(acc["n"] > 1, F.sqrt(acc["d2"] / (acc["n"] - 1)))

        return F.aggregate(values, start, step, finish)
    if c.kind == "median":
        # collect_list skips NULLs, as list_median does; the middle of the sorted frame, or the
        # mean of the middle two as (a + b) / 2: list_median's bits (a + (b - a) / 2 differs).
        ordered = F.array_sort(F.collect_list(src).over(w.rowsBetween(-(c.window - 1), 0)))
        n = F.size(ordered)
        lower = F.element_at(ordered, ((n + 1) / 2).cast("int"))
        upper = F.element_at(ordered, (n / 2).cast("int") + 1)
        return F.when(n > 0, (lower + upper) / 2)
    if c.kind == "delta":
        return src - F.lag(src, 1).over(w)
    if c.kind == "unchanged":
        return (F.abs(src) < 1e-9).cast("double")
    if c.kind == "lag":
        return F.lag(src, c.window).over(w)
    if c.kind == "dow":  # ISO: Monday = 1 .. Sunday = 7
        return (F.expr(f"weekday({c.source})") + 1).cast("int")
    if c.kind == "month":
        return F.month(src).cast("int")
    if c.kind == "weekend":
        return (F.expr(f"weekday({c.source})") >= 5).cast("int")
    raise ValueError(f"unknown column kind {c.kind!r} for {c.name}")


def with_columns(df: DataFrame, columns: Sequence[Column]) -> DataFrame:
    """Add spec columns layer by layer: a column that uses another is computed after it."""
    level: dict[str, int] = dict.fromkeys(df.columns, 0)
    for c in columns:
        level[c.name] = level.get(c.source, 0) + 1
    for depth in range(1, max((level[c.name] for c in columns), default=0) + 1):
        layer = {c.name: compile_column(c) for c in columns if level[c.name] == depth}
        df = df.withColumns(layer)
    return df


def compute_metrics(
    spark: SparkSession, snapshots: DataFrame, market: DataFrame, as_of: dt.date
) -> DataFrame:
    """Step 7 for every pool at once: the grid, the spec's metrics and the market columns.

    ``snapshots``: pool_id, timestamp, apy, tvl_usd (already limited to the lookback window);
    ``market``: source, date, value. Same rows and columns as the local engine's
    ``compute_metrics``: pool_id, date, metrics, market columns, is_observed.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    as_of_lit = F.lit(as_of).cast("date")
    daily = (
        snapshots.withColumn("date", F.to_date("timestamp"))
        .withColumn(
            "_rn",
            F.row_number().over(
                Window.partitionBy("pool_id", "date").orderBy(F.col("timestamp").desc())
            ),
        )
        .where("_rn = 1")
        .select("pool_id", "date", "apy", "tvl_usd")
    )
    bounds = daily.groupBy("pool_id").agg(
        F.min("date").alias("first_day"),
        F.least(as_of_lit, F.date_add(F.max("date"), FILL_LIMIT_DAYS)).alias("last_day"),
    )
    grid = bounds.select(
        "pool_id", F.explode(F.sequence("first_day", "last_day")).alias("date")
    )
    base = grid.join(daily, ["pool_id", "date"], "left").withColumn(
        "is_observed", F.col("apy").isNotNull()
    )
    metrics = with_columns(base, METRICS)

    start = market.agg(F.least(F.min("date"), as_of_lit).alias("start"))
    calendar = start.select(F.explode(F.sequence("start", as_of_lit)).alias("date"))
    sources = market.select("source").distinct()
    market_ff = (
        calendar.crossJoin(sources)
        .join(market, ["source", "date"], "left")
        .withColumn(
            "value",
            F.last("value", ignorenulls=True).over(
                Window.partitionBy("source")
                .orderBy("date")
                .rowsBetween(Window.unboundedPreceding, 0)
            ),
        )
    )
    # Each market column is its source's forward-filled value ``shift`` days earlier: shift the
    # calendar instead of the grid, pivot to one row per day, and join it to the grid once.
    shifted = [
        market_ff.where(F.col("source") == m.source).select(
            F.date_add("date", m.shift).alias("date"), F.lit(m.name).alias("name"), "value"
        )
        for m in MARKET
    ]
    if shifted:
        long = shifted[0]
        for part in shifted[1:]:
            long = long.unionByName(part)
        wide = long.groupBy("date").agg(
            *[
                F.first(F.when(F.col("name") == m.name, F.col("value")), ignorenulls=True)
                .alias(m.name)
                for m in MARKET
            ]
        )
        out = metrics.join(F.broadcast(wide), "date", "left")
    else:
        out = metrics
    columns = [
        "pool_id", "date", *(c.name for c in METRICS), *(m.name for m in MARKET), "is_observed"
    ]
    return out.select(*columns)


def compute_features(metrics: DataFrame, *, horizons: Sequence[int] = (1,)) -> DataFrame:
    """The forecast panel: metrics, the spec's features and, for each horizon h, the spec's
    ``APY_TARGET`` (``target_h{h}``): the local engine's ``compute_features``."""
    from pyspark.sql import functions as F

    w = _by_pool()
    panel = with_columns(metrics, FEATURES)
    targets = {
        APY_TARGET.column(h): F.when(
            F.lead("is_observed", h).over(w), F.lead(APY_TARGET.source, h).over(w)
        )
        for h in horizons
    }
    return panel.withColumns(targets)


# -- reading the store -----
def _exchange(spark: SparkSession, store: Store, settings: Settings) -> Any:
    from poolcast.store.spark_io import SparkExchange

    staging = settings.spark.staging_dir
    if staging is None and settings.gcp.project_id and detect_environment(settings) == "dataproc":
        staging = f"gs://{settings.gcp.project_id}-spark-staging/exchange"
    return SparkExchange(
        spark,
        store,
        jdbc_partitions=settings.spark.jdbc_partitions,
        batch_size=settings.spark.jdbc_batch_size,
        workdir=staging,
        via_files={"auto": None, "files": True, "driver": False}[settings.spark.exchange],
    )


def read_inputs(
    exchange: Any, as_of: dt.date, lookback_days: int, window: RecomputeWindow | None = None
) -> tuple[DataFrame, DataFrame]:
    """The same statements the local engine reads, partitioned by pool over JDBC.

    With a ``window`` (the daily mode), the snapshots are ``incremental.WINDOW_SNAPSHOTS_SQL``'s:
    the context, the grid anchors and the catch-up pools' whole history, with its ``catch_up``
    column.
    """
    if window is None:
        start, end = window_bounds(as_of, lookback_days)
        snapshots = exchange.read_query(
            *statement(SNAPSHOTS_SQL, [start, end]), name="snapshots", partition_by_pool=True
        )
    else:
        snapshots = exchange.read_query(
            *statement(WINDOW_SNAPSHOTS_SQL, window_params(window, as_of, lookback_days)),
            name="snapshots",
            partition_by_pool=True,
        )
    market_end = as_of + dt.timedelta(days=1)
    market = exchange.read_query(
        MARKET_SQL, [dt.datetime.combine(market_end, dt.time()), market_end], name="market"
    )
    return snapshots, market


def keep_rows(metrics: DataFrame, snapshots: DataFrame, window: RecomputeWindow) -> DataFrame:
    """``incremental.keep_rows`` on Spark: the rows from ``since`` on, and every row of the
    catch-up pools (flagged in the window's ``snapshots``)."""
    from pyspark.sql import functions as F

    catch_up = (
        snapshots.where(F.col("catch_up"))
        .select("pool_id")
        .distinct()
        .withColumn("_catch_up", F.lit(True))
    )
    kept = metrics.join(F.broadcast(catch_up), "pool_id", "left").where(
        (F.col("date") >= F.lit(window.since)) | F.col("_catch_up").isNotNull()
    )
    return kept.select(*metrics.columns)


@contextlib.contextmanager
def _step(stage: str, step: str) -> Iterator[None]:
    """Name the stage and step in any failure, with the cause's first meaningful line."""
    try:
        yield
    except (SparkStageError, SparkSetupError):
        raise
    except Exception as exc:  # noqa: BLE001 - Py4J and JVM errors arrive as many types
        raise SparkStageError(
            f"spark {stage} failed at {step}: {first_line(exc)} (no target table was changed)"
        ) from exc


def forecast_panel(exchange: Any, train_days: int, horizon: int = 30) -> DataFrame:
    """The forecast panel computed by Spark from the spec, on the executors (the model's
    compute selects, trains and predicts there)."""
    metrics = exchange.read_query(
        *statement(PANEL_SQL, panel_params(train_days, horizon)),
        name="panel",
        partition_by_pool=True,
    )
    return compute_features(metrics)


PANEL_ROWS_PER_PARTITION = 250_000  # ~110 MB of panel per task in the model's functions


def spark_compute(exchange: Any, panel_rows: int = 0) -> Any:
    """The model's compute on ``exchange``'s session (``engines._spark_compute``): pools in
    partitions of at most ``PANEL_ROWS_PER_PARTITION`` panel rows, however many cores there
    are (the model's sums then do not depend on the cluster, and a Python task costs ~0.2 s
    however small: 8 partitions of the sample panel took 4x as long as 2), and one LightGBM
    worker per executor registered now (``local[N]``: one, the driver's JVM, like the local
    engine's serial training; a cluster: every executor)."""
    from poolcast.engines._spark_compute import SparkCompute
    from poolcast.engines._synapse import SynapseTrainer

    spark = exchange.spark
    partitions = max(1, -(-panel_rows // PANEL_ROWS_PER_PARTITION))
    return SparkCompute(spark, partitions, SynapseTrainer(executor_count(spark)))


def spark_model_dir(settings: Settings) -> str:
    """Where the Spark engine saves its models: ``<model_dir>/spark``, a local folder or a
    ``gs://`` prefix (joined as text: ``Path`` would fold ``gs://`` into ``gs:/``)."""
    return f"{str(settings.model_dir).rstrip('/')}/spark"


class SparkEngine:
    """The Spark engine's operations for the stages (:mod:`poolcast.stages`): a session, the
    store's exchange (JDBC or Parquet), compute from the spec, merge through a staging table.

    Use as a context manager; each step runs under :meth:`step`, which names the stage and step
    in any failure.
    """

    name = "spark"

    def __init__(self, store: Store, settings: Settings, stage: str) -> None:
        self.store = store
        self.settings = settings
        self.stage = stage
        self._cached: list[DataFrame] = []
        self._compute: Any = None
        self._details: dict[str, Any] = {}
        self._compute_s = 0.0  # reading and computing the metrics, summed over the steps

    def __enter__(self) -> SparkEngine:
        started = time.perf_counter()
        with self.step("session start"):
            self.spark = get_spark_session(
                self.settings, f"poolcast-{self.stage}", training=self.stage == "forecast"
            )
        self._details["session_s"] = round(time.perf_counter() - started, 2)
        self.exchange = _exchange(self.spark, self.store, self.settings)
        return self

    def __exit__(self, *exc: object) -> None:
        for df in self._cached:
            df.unpersist()
        if self._compute is not None:
            self._compute.close()
        self.exchange.close()

    def step(self, name: str) -> contextlib.AbstractContextManager[None]:
        return _step(self.stage, name)

    # -- metrics -----
    def pool_batches(self) -> list[PoolBatch]:
        return [None]  # the executors split the pools

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # one batch: the exchange's merge is one transaction

    def read_metric_inputs(
        self, as_of: dt.date, window: RecomputeWindow | None, batch: PoolBatch = None
    ) -> MetricInputs:
        if batch is not None:
            raise ValueError("the Spark engine reads every pool at once (pool_batches)")
        started = time.perf_counter()
        snapshots, market = read_inputs(self.exchange, as_of, self.settings.lookback_days, window)
        snapshots, market = snapshots.cache(), market.cache()
        self._cached += [snapshots, market]
        n_snapshots = snapshots.count()
        self._compute_s += time.perf_counter() - started
        return MetricInputs(snapshots, market, n_snapshots, n_snapshots + market.count())

    def compute_metrics(
        self, inputs: MetricInputs, as_of: dt.date, window: RecomputeWindow | None
    ) -> DataFrame:
        started = time.perf_counter()
        if window is None:
            metrics = compute_metrics(self.spark, inputs.snapshots, inputs.market, as_of)
        else:
            snapshots = inputs.snapshots
            metrics = compute_metrics(self.spark, snapshots.drop("catch_up"), inputs.market, as_of)
            metrics = keep_rows(metrics, snapshots, window)
        metrics = metrics.cache()
        self._cached.append(metrics)
        self._compute_s += time.perf_counter() - started
        return metrics

    def summarize(self, metrics: DataFrame) -> dict[str, int]:
        from pyspark.sql import functions as F

        started = time.perf_counter()
        rows, pools, days = metrics.agg(
            F.count("*"), F.countDistinct("pool_id"), F.countDistinct("date")
        ).collect()[0]
        self._compute_s += time.perf_counter() - started
        self._details["read_compute_s"] = round(self._compute_s, 2)
        return {"pools": pools, "days": days, "rows": rows}

    def merge_metrics(self, metrics: DataFrame) -> int:
        return int(
            self.exchange.merge("pool_daily_metrics", metrics, METRIC_KEY, update=METRIC_UPDATE)
        )

    # -- forecast -----
    def forecast_panel(self, horizon: int = 30) -> DataFrame:
        panel = forecast_panel(self.exchange, self.settings.train_days, horizon)
        if self._compute is None:  # partitions for this panel's size
            self._compute = spark_compute(self.exchange, panel.count())
        return self._compute.keep(self._compute.by_pools(panel))

    def compute(self) -> Any:
        if self._compute is None:
            self._compute = spark_compute(self.exchange)
        return self._compute

    def write_forecasts(
        self, forecasts: DataFrame, horizons: DataFrame, run_id: str
    ) -> ForecastsWritten:
        """Both tables staged by the executors, then merged in one transaction."""
        compute = self.compute()
        # Counted, then written: predicted once.
        forecasts = compute.keep(forecasts.select(*FORECAST_COLUMNS))
        horizons = compute.keep(horizons)
        n_forecasts, n_horizons = forecasts.count(), horizons.count()
        store = self.store
        with (
            self.exchange.staged("pool_daily_metrics", forecasts) as next_day,
            self.exchange.staged("forecasts", horizons) as every,
            store.transaction(),
        ):
            if isinstance(next_day, str):
                rows = store.merge_from(
                    "pool_daily_metrics", next_day, FORECAST_COLUMNS, METRIC_KEY,
                    update=("forecasted_apy", "forecasted_tvl"),
                )
                rows += store.merge_from("forecasts", every, horizons.columns, FORECASTS_KEY)
            else:
                rows = write_forecasts(store, next_day, run_id)
                rows += store.merge("forecasts", every, FORECASTS_KEY)
        return ForecastsWritten(rows, n_forecasts, n_horizons)

    def model_dir(self) -> str:
        return spark_model_dir(self.settings)

    def details(self) -> dict[str, Any]:
        out = dict(self._details)
        if self.stage == "metrics":
            timings = self.exchange.timings
            out.update(
                {k.replace(":", "_") + "_s": round(v, 2) for k, v in timings.items()
                 if "read" not in k}
            )
        if self.stage == "forecast":
            trainer = getattr(self._compute, "trainer", None)
            out["synapseml_fits"] = len(getattr(trainer, "fits_", None) or [])
        return out
