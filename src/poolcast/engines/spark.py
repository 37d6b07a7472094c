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
import hashlib
import json
import os
import random
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poolcast.engines._spark_session import SparkSetupError, detect_environment, get_spark_session
from poolcast.settings import Settings
from poolcast.spec import FEATURES, FILL_LIMIT_DAYS, MARKET, METRICS, Column
from poolcast.store import Store, StoreError
from poolcast.store.queries import MARKET_SQL, SNAPSHOTS_SQL, window_bounds

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column as SparkColumn
    from pyspark.sql import DataFrame, SparkSession

    from poolcast.pipeline import StageResult

SYNAPSEML_VERSION = "1.1.3"
LIGHTGBMLIB_VERSION = "3.3.510"  # what synapseml-lightgbm_2.12:1.1.3 brings


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

    Frames are the local engine's exactly: ``ffill`` looks ``window`` rows back (plus today),
    ``mean``/``std`` cover ``window`` rows including today, ``delta``/``lag``/``lead`` step along
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
        # stddev_samp: NULL for one value (spark.sql.legacy.statisticalAggregate is false).
        return F.stddev_samp(src).over(w.rowsBetween(-(c.window - 1), 0))
    if c.kind == "delta":
        return src - F.lag(src, 1).over(w)
    if c.kind == "lag":
        return F.lag(src, c.window).over(w)
    if c.kind == "lead":
        return F.lead(src, c.window).over(w)
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
            *[F.first(F.when(F.col("name") == m.name, F.col("value")), ignorenulls=True).alias(m.name)
              for m in MARKET]
        )
        out = metrics.join(F.broadcast(wide), "date", "left")
    else:
        out = metrics
    columns = ["pool_id", "date", *(c.name for c in METRICS), *(m.name for m in MARKET), "is_observed"]
    return out.select(*columns)


def compute_features(metrics: DataFrame, *, horizons: Sequence[int] = (1,)) -> DataFrame:
    """The forecast panel: metrics, the spec's features and ``target_h{h}`` (APY h days later,
    NULL unless a snapshot was observed that day): the local engine's ``compute_features``."""
    from pyspark.sql import functions as F

    w = _by_pool()
    panel = with_columns(metrics, FEATURES)
    targets = {
        f"target_h{h}": F.when(
            F.lead("is_observed", h).over(w), F.lead("actual_apy", h).over(w)
        )
        for h in horizons
    }
    return panel.withColumns(targets)


# -- reading the store -----
def _exchange(spark: SparkSession, store: Store, settings: Settings) -> Any:
    from poolcast.store.spark_io import SparkExchange

    return SparkExchange(
        spark,
        store,
        jdbc_partitions=settings.spark.jdbc_partitions,
        batch_size=settings.spark.jdbc_batch_size,
    )


def read_inputs(exchange: Any, as_of: dt.date, lookback_days: int) -> tuple[DataFrame, DataFrame]:
    """The same statements the local engine reads, partitioned by pool over JDBC."""
    start, end = window_bounds(as_of, lookback_days)
    snapshots = exchange.read_query(
        SNAPSHOTS_SQL, [start, end], name="snapshots", partition_by_pool=True
    )
    market_end = as_of + dt.timedelta(days=1)
    market = exchange.read_query(
        MARKET_SQL, [dt.datetime.combine(market_end, dt.time()), market_end], name="market"
    )
    return snapshots, market


@contextlib.contextmanager
def _step(stage: str, step: str) -> Iterator[None]:
    """Name the stage and step in any failure, with the cause's first meaningful line."""
    try:
        yield
    except (SparkStageError, SparkSetupError):
        raise
    except Exception as exc:  # noqa: BLE001 - Py4J and JVM errors arrive as many types
        from poolcast.store.spark_io import _first_line

        raise SparkStageError(
            f"spark {stage} failed at {step}: {_first_line(exc)} (no target table was changed)"
        ) from exc


def _as_of(store: Store, settings: Settings) -> dt.date:
    from poolcast.pipeline import resolve_as_of

    return resolve_as_of(store, settings)


def metrics_dataframe(
    spark: SparkSession, exchange: Any, store: Store, settings: Settings
) -> tuple[DataFrame, dt.date]:
    as_of = _as_of(store, settings)
    snapshots, market = read_inputs(exchange, as_of, settings.lookback_days)
    return compute_metrics(spark, snapshots, market, as_of), as_of


def metrics_stage(store: Store, settings: Settings) -> StageResult:
    """Step 7 on Spark: read in bulk, compute, merge through a staging table in one transaction."""
    from poolcast.pipeline import METRIC_KEY, METRIC_UPDATE, StageResult, new_run_id

    started = time.perf_counter()
    result = StageResult("metrics", "spark", new_run_id())
    with _step("metrics", "session start"):
        spark = get_spark_session(settings, "poolcast-metrics")
    session_s = time.perf_counter() - started
    with _exchange(spark, store, settings) as exchange:
        with _step("metrics", "compute"):
            from pyspark.sql import functions as F

            as_of = _as_of(store, settings)
            snapshots, market = read_inputs(exchange, as_of, settings.lookback_days)
            snapshots, market = snapshots.cache(), market.cache()
            rows_read = snapshots.count() + market.count()
            metrics = compute_metrics(spark, snapshots, market, as_of).cache()
            summary = metrics.agg(
                F.count("*"), F.countDistinct("pool_id"), F.countDistinct("date")
            ).collect()[0]
        result.rows_written = exchange.merge(
            "pool_daily_metrics", metrics, METRIC_KEY, update=METRIC_UPDATE
        )
        for df in (metrics, snapshots, market):
            df.unpersist()
        timings = dict(exchange.timings)
    result.rows_read = rows_read
    result.details = {
        "as_of": as_of.isoformat(),
        "pools": summary[1],
        "days": summary[2],
        "rows": summary[0],
        "session_s": round(session_s, 2),
        **{k.replace(":", "_") + "_s": round(v, 2) for k, v in timings.items()},
    }
    result.seconds = time.perf_counter() - started
    return result


# -- forecasting with SynapseML -------------------------------------------------------------------
def choose_listen_port(span: int = 64, attempts: int = 50) -> int:
    """A base port for LightGBM's workers that concurrent runs will not share.

    SynapseML binds ``defaultListenPort + worker index`` and steps up on a clash, but two runs that
    start at the same default (12400) race for the same ports (SynapseML #1311/#2230). Each run
    takes a random base in 20000-59999 whose next ``span`` ports are free right now.
    """
    rng = random.SystemRandom()
    for _ in range(attempts):
        base = rng.randrange(20_000, 60_000 - span)
        if all(_port_free(p) for p in (base, base + 1, base + span // 2, base + span - 1)):
            return base
    raise SparkStageError("forecast: no free port range for LightGBM's workers")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))  # noqa: S104 - a probe, closed at once
        except OSError:
            return False
    return True


@dataclass
class SparkForecastModel:
    """A trained SynapseML model, its native LightGBM text and what it was trained on."""

    model_name: str
    features: tuple[str, ...]
    target: str  # "level" or "change"
    horizon: int
    params: dict[str, Any]
    native_model: str
    n_train: int
    train_window: tuple[dt.date, dt.date]
    spark_model: Any = None

    def booster(self) -> Any:
        import lightgbm as lgb

        return lgb.Booster(model_str=self.native_model)

    def save(self, directory: str | Path) -> Path:
        """``model.txt`` (native LightGBM, loads with ``lightgbm.Booster(model_file=...)``) and
        ``metadata.json``, in a folder named by the model's content hash (like the local engine)."""
        version = hashlib.sha256(self.native_model.encode()).hexdigest()[:16]
        out = Path(directory) / f"spark-{self.model_name}-h{self.horizon}-{version}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.txt").write_text(self.native_model)
        meta = {
            "version": version,
            "engine": "spark",
            "trainer": f"synapseml-lightgbm {SYNAPSEML_VERSION} (lightgbmlib {LIGHTGBMLIB_VERSION})",
            "model": {"name": self.model_name, "target": self.target, "features": list(self.features)},
            "synapseml_params": self.params,
            "horizon": self.horizon,
            "features": list(self.features),
            "n_train": self.n_train,
            "train_window": [d.isoformat() for d in self.train_window],
        }
        (out / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        return out


def synapseml_params(spec: Any, settings: Settings, *, local: bool, port: int) -> dict[str, Any]:
    """The local model's LightGBM parameters as SynapseML setters (one source: forecast.MODELS)."""
    p = dict(spec.params)
    params: dict[str, Any] = {
        "objective": p.get("objective", "regression"),
        "numLeaves": int(p["num_leaves"]),
        "numIterations": int(p["num_iterations"]),
        "learningRate": float(p["learning_rate"]),
        "featureFraction": float(p["feature_fraction"]),
        "baggingFraction": float(p["bagging_fraction"]),
        "baggingFreq": int(p["bagging_freq"]),
        "seed": settings.seed,
        "deterministic": True,
        "passThroughArgs": "force_col_wise=true",
        "verbosity": -1,
        "defaultListenPort": port,
        "useBarrierExecutionMode": False,
        "useSingleDatasetMode": True,
    }
    if local:
        # One worker, one thread: the same serial training as the local engine on small sets.
        params["numThreads"] = 1
    return params


def training_rows(panel: DataFrame, train_days: int, horizon: int = 1) -> DataFrame:
    """The local ``forecast.training_rows`` in Spark: observed targets in each pool's last
    ``train_days`` days (anchored on its latest observed day)."""
    from pyspark.sql import functions as F

    target = f"target_h{horizon}"
    last = panel.where("is_observed").groupBy("pool_id").agg(F.max("date").alias("date_max"))
    return (
        panel.join(last, "pool_id")
        .where(F.col("date") > F.date_sub("date_max", train_days + horizon - 1))
        .where(F.col(target).isNotNull() & F.col("actual_apy").isNotNull())
        .drop("date_max")
    )


def latest_rows(panel: DataFrame) -> DataFrame:
    """Each pool's row on its latest observed day (``forecast.latest_rows``)."""
    from pyspark.sql import functions as F

    observed = panel.where("is_observed")
    last = observed.groupBy("pool_id").agg(F.max("date").alias("date_max"))
    return observed.join(last, "pool_id").where(F.col("date") == F.col("date_max")).drop("date_max")


def _assemble(df: DataFrame, features: Sequence[str]) -> DataFrame:
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as F

    cast = df.withColumns({f: F.col(f).cast("double") for f in features})
    # NULL features stay missing values (LightGBM's use_missing), as in the local engine.
    return VectorAssembler(
        inputCols=list(features), outputCol="features", handleInvalid="keep"
    ).transform(cast)


def train(
    panel: DataFrame,
    settings: Settings,
    *,
    model: str = "production",
    horizon: int = 1,
) -> SparkForecastModel:
    """Fit SynapseML ``LightGBMRegressor`` on the leak-free next-day target."""
    from pyspark.sql import functions as F
    from synapse.ml.lightgbm import LightGBMRegressor

    from poolcast.forecast import MODELS

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
    spec = MODELS[model]
    local = detect_environment(settings) == "local"
    rows = training_rows(panel, settings.train_days, horizon)
    label = F.col(f"target_h{horizon}")
    if spec.target == "change":
        label = label - F.col("actual_apy")
    rows = rows.withColumn("label", label.cast("double"))
    # Fixed input order and partitioning (determinism; no empty partitions, SynapseML #1556).
    partitions = 1 if local else max(1, settings.spark.executor_instances)
    data = (
        _assemble(rows, spec.features)
        .select("pool_id", "date", "features", "label")
        .repartition(partitions, "pool_id")
        .sortWithinPartitions("pool_id", "date")
        .cache()
    )
    stats = data.agg(F.count("*"), F.min("date"), F.max("date")).collect()[0]
    n_train = int(stats[0])
    if n_train < 10:
        data.unpersist()
        raise ValueError(
            f"only {n_train} training rows with an observed next-day APY in the last "
            f"{settings.train_days} days; ingest more history or raise TRAIN_DAYS"
        )
    params = synapseml_params(spec, settings, local=local, port=choose_listen_port())
    estimator = LightGBMRegressor(
        labelCol="label", featuresCol="features", predictionCol="prediction", **params
    )
    try:
        fitted = estimator.fit(data)
    finally:
        data.unpersist()
    return SparkForecastModel(
        model_name=model,
        features=tuple(spec.features),
        target=spec.target,
        horizon=horizon,
        params=params,
        native_model=fitted.getNativeModel(),
        n_train=n_train,
        train_window=(stats[1], stats[2]),
        spark_model=fitted,
    )


def predict(model: SparkForecastModel, panel: DataFrame) -> DataFrame:
    """One forecast per pool (``forecast.forecast_table``): pool_id, date (latest observed day +
    horizon), forecasted_apy, forecasted_tvl (TVL carried from that day)."""
    from pyspark.sql import functions as F

    rows = _assemble(latest_rows(panel), model.features)
    scored = model.spark_model.transform(rows)
    value = F.col("prediction")
    if model.target == "change":
        value = value + F.col("actual_apy")
    return scored.select(
        "pool_id",
        F.date_add("date", model.horizon).alias("date"),
        value.cast("double").alias("forecasted_apy"),
        F.col("actual_tvl").cast("double").alias("forecasted_tvl"),
    )


def read_panel(exchange: Any, settings: Settings, horizon: int = 1) -> DataFrame:
    from poolcast.pipeline import LAG_CONTEXT, PANEL_SQL

    return exchange.read_query(
        PANEL_SQL,
        [settings.train_days + horizon + LAG_CONTEXT],
        name="panel",
        partition_by_pool=True,
    )


def forecast_dataframe(
    spark: SparkSession, exchange: Any, settings: Settings, *, model: str = "production"
) -> tuple[DataFrame, SparkForecastModel, int]:
    metrics = read_panel(exchange, settings).cache()
    n_read = metrics.count()
    if n_read == 0:
        raise StoreError("pool_daily_metrics is empty: run `poolcast metrics` first")
    panel = compute_features(metrics).cache()
    fitted = train(panel, settings, model=model)
    forecasts = predict(fitted, panel)
    return forecasts, fitted, n_read


def write_forecasts(exchange: Any, forecasts: DataFrame, run_id: str) -> int:
    """The plan's staging table, then one transactional merge (the local engine's path).

    PostgreSQL: Spark appends to ``pool_forecasts_staging`` over JDBC in batches, tagged with this
    run's id; one transaction merges those rows into ``pool_daily_metrics`` and deletes them. A
    failed write leaves only this run's staging rows, which are deleted.
    DuckDB: the rows come back through Parquet and take the local engine's own path.
    """
    from pyspark.sql import functions as F

    from poolcast.pipeline import FORECAST_COLUMNS, METRIC_KEY
    from poolcast.pipeline import write_forecasts as write_local
    from poolcast.store.spark_io import SparkIOError, _first_line, is_postgres

    store = exchange.store
    if not is_postgres(store):
        table = exchange.spark_to_arrow(forecasts.select(*FORECAST_COLUMNS), "forecasts")
        return write_local(store, table, run_id)
    staged = forecasts.select(*FORECAST_COLUMNS).withColumn("run_id", F.lit(run_id))
    try:
        try:
            exchange.append_jdbc("pool_forecasts_staging", staged)
        except Exception as exc:
            raise SparkIOError(
                f"writing forecasts over JDBC failed: {_first_line(exc)}; "
                "pool_daily_metrics is unchanged"
            ) from exc
        with store.transaction():
            written = store.merge_from(
                "pool_daily_metrics",
                "pool_forecasts_staging",
                FORECAST_COLUMNS,
                METRIC_KEY,
                update=("forecasted_apy", "forecasted_tvl"),
                where="s.run_id = $1",
                params=[run_id],
            )
            store.execute("DELETE FROM pool_forecasts_staging WHERE run_id = $1", [run_id])
        return written
    finally:
        with contextlib.suppress(Exception):
            store.execute("DELETE FROM pool_forecasts_staging WHERE run_id = $1", [run_id])


def forecast_stage(
    store: Store, settings: Settings, model: str = "production"
) -> StageResult:
    """Step 11 on Spark: features from the spec, SynapseML LightGBM, staging + merge."""
    from poolcast.pipeline import StageResult, new_run_id

    started = time.perf_counter()
    result = StageResult("forecast", "spark", new_run_id())
    with _step("forecast", "session start"):
        spark = get_spark_session(settings, "poolcast-forecast", training=True)
    session_s = time.perf_counter() - started
    with _exchange(spark, store, settings) as exchange:
        with _step("forecast", "training"):
            forecasts, fitted, n_read = forecast_dataframe(spark, exchange, settings, model=model)
            forecasts = forecasts.cache()
            n_forecasts = forecasts.count()
        with _step("forecast", "saving the model"):
            model_path = fitted.save(settings.model_dir)
        result.rows_written = write_forecasts(exchange, forecasts, result.run_id)
        forecasts.unpersist()
    result.rows_read = n_read
    result.details = {
        "forecasts": n_forecasts,
        "train_rows": fitted.n_train,
        "model": str(model_path),
        "session_s": round(session_s, 2),
    }
    result.seconds = time.perf_counter() - started
    return result


def environment_summary() -> dict[str, str]:
    """What the engine runs with, for reports and docs."""
    import pyspark

    return {
        "pyspark": pyspark.__version__,
        "synapseml": SYNAPSEML_VERSION,
        "java_home": os.environ.get("JAVA_HOME", ""),
    }
