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
import os
import random
import socket
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from poolcast.engines._spark_session import SparkSetupError, detect_environment, get_spark_session
from poolcast.observe import progress
from poolcast.settings import Settings
from poolcast.spec import FEATURES, FILL_LIMIT_DAYS, MARKET, METRICS, Column
from poolcast.store import Store, StoreError
from poolcast.store.queries import MARKET_SQL, SNAPSHOTS_SQL, window_bounds

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column as SparkColumn
    from pyspark.sql import DataFrame, SparkSession

    from poolcast.incremental import RecomputeWindow
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

    Frames are the local engine's exactly (and so are the bits: ``avg`` sums the frame in order
    like ``list_avg``, ``std`` is ``list_stddev_samp``'s own update): ``ffill`` looks ``window``
    rows back (plus today),
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
            SNAPSHOTS_SQL, [start, end], name="snapshots", partition_by_pool=True
        )
    else:
        from poolcast.incremental import WINDOW_SNAPSHOTS_SQL, window_params

        snapshots = exchange.read_query(
            WINDOW_SNAPSHOTS_SQL,
            window_params(window, as_of, lookback_days),
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
        from poolcast.store.spark_io import _first_line

        raise SparkStageError(
            f"spark {stage} failed at {step}: {_first_line(exc)} (no target table was changed)"
        ) from exc


def _as_of(store: Store, settings: Settings) -> dt.date:
    from poolcast.pipeline import resolve_as_of

    return resolve_as_of(store, settings)


def metrics_stage(store: Store, settings: Settings) -> StageResult:
    """Step 7 on Spark: read in bulk, compute, merge through a staging table in one transaction."""
    from poolcast.pipeline import METRIC_KEY, METRIC_UPDATE, StageResult, new_run_id

    started = time.perf_counter()
    result = StageResult("metrics", "spark", new_run_id())
    with _step("metrics", "session start"):
        spark = get_spark_session(settings, "poolcast-metrics")
    session_s = time.perf_counter() - started
    with _exchange(spark, store, settings) as exchange:
        compute_started = time.perf_counter()
        with _step("metrics", "compute"):
            from pyspark.sql import functions as F

            as_of = _as_of(store, settings)
            window = None
            if settings.incremental:
                from poolcast.incremental import recompute_window

                window = recompute_window(store, as_of, settings.lookback_days)
            snapshots, market = read_inputs(exchange, as_of, settings.lookback_days, window)
            snapshots, market = snapshots.cache(), market.cache()
            rows_read = snapshots.count() + market.count()
            if window is None:
                metrics = compute_metrics(spark, snapshots, market, as_of)
            else:
                metrics = compute_metrics(spark, snapshots.drop("catch_up"), market, as_of)
                metrics = keep_rows(metrics, snapshots, window)
            metrics = metrics.cache()
            summary = metrics.agg(
                F.count("*"), F.countDistinct("pool_id"), F.countDistinct("date")
            ).collect()[0]
        compute_s = time.perf_counter() - compute_started
        with _step("metrics", "writing pool_daily_metrics"):
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
        **({"since": window.since.isoformat()} if window is not None else {}),
        "session_s": round(session_s, 2),
        "read_compute_s": round(compute_s, 2),
        **{k.replace(":", "_") + "_s": round(v, 2) for k, v in timings.items() if "read" not in k},
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


# LightGBM parameters that SynapseML takes through its own setters (dataset construction reads
# these, not passThroughArgs); every other parameter of the local model passes through verbatim.
_SETTERS = {
    "objective": ("objective", str),
    "num_leaves": ("numLeaves", int),
    "learning_rate": ("learningRate", float),
    "feature_fraction": ("featureFraction", float),
    "bagging_fraction": ("baggingFraction", float),
    "bagging_freq": ("baggingFreq", int),
    "min_data_in_leaf": ("minDataInLeaf", int),
    "max_bin": ("maxBin", int),
    "seed": ("seed", int),
    "deterministic": ("deterministic", bool),
}
_NOT_PASSED = {"num_iterations", "num_threads", "verbosity"}


def synapseml_params(
    lgb_params: dict[str, Any], *, rounds: int, threads: int, port: int
) -> dict[str, Any]:
    """The local model's LightGBM parameters as SynapseML ``LightGBMRegressor`` arguments.

    One source (``forecast.MODELS``): known parameters go to their setters, the rest (e.g.
    ``force_col_wise``) through ``passThroughArgs``, which also repeats the setters' values so
    LightGBM sees exactly the local model's parameter set.
    """
    params: dict[str, Any] = {
        "numIterations": int(rounds),
        "numThreads": int(threads),
        "verbosity": -1,
        "defaultListenPort": port,
        "useBarrierExecutionMode": False,
        "useSingleDatasetMode": True,
    }
    passed: list[str] = []
    for key, value in lgb_params.items():
        if key in _NOT_PASSED or value is None:
            continue
        if key in _SETTERS:
            name, kind = _SETTERS[key]
            params[name] = kind(value)
        text = str(value).lower() if isinstance(value, bool) else str(value)
        passed.append(f"{key}={text}")
    params["passThroughArgs"] = " ".join(passed)
    return params


def _forecaster_class() -> Any:
    """:class:`SparkForecaster`, built on first use (``poolcast.forecast`` loads lightgbm)."""
    global _SPARK_FORECASTER
    if _SPARK_FORECASTER is not None:
        return _SPARK_FORECASTER
    import numpy as np

    from poolcast.forecast import Forecaster, _column, _matrix, target_column

    class SparkForecaster(Forecaster):
        """The local :class:`~poolcast.forecast.Forecaster` with its boosters trained by SynapseML.

        Row selection, targets, calibration (early stopping, blend, dead zone, conformal
        intervals), prediction and artifacts are the local model's own code, so both engines
        forecast by the same rules; only ``lightgbm.train`` is replaced by a SynapseML
        ``LightGBMRegressor`` fit on Spark, whose native model string becomes the booster.
        """

        exchange_: Any = None  # set by spark_forecast_model() for its fit
        partitions_: int = 1

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if self.exchange_ is None:
                raise SparkStageError("SparkForecaster needs spark_forecast_model()'s exchange")
            self.exchange = self.exchange_
            self.partitions = max(1, self.partitions_)
            self.synapse_fits_: list[dict[str, Any]] = []

        def _train(self, rows: pa.Table, rounds: int, valid: pa.Table | None = None) -> Any:
            import lightgbm as lgb
            from pyspark.ml.feature import VectorAssembler
            from pyspark.sql import functions as F
            from synapse.ml.lightgbm import LightGBMRegressor

            spec = self._spec()
            dtype = np.float32 if spec.float32 else np.float64
            features = list(spec.features)
            target = target_column(self.horizon)
            use_valid = valid is not None and valid.num_rows > 0 and bool(spec.early_stopping)
            parts = [(rows, False)] + ([(valid, True)] if use_valid else [])
            columns: dict[str, list[np.ndarray]] = {f"f{i}": [] for i in range(len(features))}
            labels, flags, weights = [], [], []
            for part, is_valid in parts:
                # The local model's own matrix (derived features, float32 rounding), target and
                # row weights (each part weighed on its own, as the local engine's datasets).
                matrix = _matrix(part, features, dtype).astype(np.float64)
                for i in range(len(features)):
                    columns[f"f{i}"].append(matrix[:, i])
                labels.append(self._to_target(part, _column(part, target)))
                flags.append(np.full(part.num_rows, is_valid))
                weight = self._weights(part)
                weighted = weight is not None  # the spec's choice: the same for every part
                weights.append(np.ones(part.num_rows) if weight is None else weight)
            table = pa.table(
                {
                    **{k: pa.array(np.concatenate(v), pa.float64()) for k, v in columns.items()},
                    "label": pa.array(np.concatenate(labels), pa.float64()),
                    "weight": pa.array(np.concatenate(weights), pa.float64()),
                    "is_valid": pa.array(np.concatenate(flags), pa.bool_()),
                    "row": pa.array(np.arange(sum(p.num_rows for p, _ in parts)), pa.int64()),
                }
            )
            frame = self.exchange.arrow_to_spark(table, "training")
            # NaN features stay missing values (LightGBM's use_missing), as in the local engine.
            frame = VectorAssembler(
                inputCols=[f"f{i}" for i in range(len(features))],
                outputCol="features",
                handleInvalid="keep",
            ).transform(frame)
            # Fixed order and partitioning: determinism, and no empty partitions (SynapseML #1556).
            frame = frame.select("row", "features", "label", "weight", "is_valid")
            if self.partitions == 1:
                # One Parquet file is one ordered partition: no shuffle, no sampling job.
                frame = frame.coalesce(1).sortWithinPartitions("row")
            else:
                frame = frame.repartitionByRange(self.partitions, "row").sortWithinPartitions(
                    "row"
                )
            params = synapseml_params(
                self.lgb_params(), rounds=rounds, threads=self.fit_threads_,
                port=choose_listen_port(),
            )
            if use_valid:
                params["earlyStoppingRound"] = int(spec.early_stopping)
                params["validationIndicatorCol"] = "is_valid"
            else:
                frame = frame.where(~F.col("is_valid"))
            if weighted:
                params["weightCol"] = "weight"
            estimator = LightGBMRegressor(
                labelCol="label", featuresCol="features", predictionCol="prediction", **params
            )
            fitted = estimator.fit(frame)
            booster = lgb.Booster(model_str=fitted.getNativeModel())
            best = int(fitted.getBoosterBestIteration()) if use_valid else 0
            if use_valid and best <= 0 and valid is not None:
                # SynapseML names a best iteration only when early stopping stopped the fit;
                # LightGBM's own callback also names the best of a fit that ran all its rounds.
                best = _best_l1_iteration(
                    booster,
                    _matrix(valid, features, dtype),
                    self._to_target(valid, _column(valid, target)),
                    self._weights(valid),
                )
            booster.best_iteration = best if best > 0 else 0
            self.synapse_fits_.append(
                {
                    "rows": int(rows.num_rows),
                    "valid_rows": int(valid.num_rows) if use_valid and valid is not None else 0,
                    "rounds": int(rounds),
                    "best_iteration": booster.best_iteration,
                    "params": {k: v for k, v in params.items() if k != "defaultListenPort"},
                }
            )
            return booster

        def metadata(self) -> dict[str, Any]:
            meta = super().metadata()
            meta["engine"] = "spark"
            meta["trainer"] = (
                f"synapseml-lightgbm_2.12 {SYNAPSEML_VERSION} (lightgbmlib {LIGHTGBMLIB_VERSION})"
            )
            meta["synapseml_fits"] = self.synapse_fits_
            return meta

    _SPARK_FORECASTER = SparkForecaster
    return SparkForecaster


_SPARK_FORECASTER: Any = None


def _best_l1_iteration(booster: Any, matrix: Any, label: Any, weight: Any | None) -> int:
    """The first iteration with the lowest (weighted) L1 on the validation rows, as LightGBM's
    early-stopping callback picks it: the score of each prefix of trees, one tree at a time."""
    import numpy as np

    trees = booster.num_trees()
    if trees == 0:
        return 0
    weight = np.ones(len(label)) if weight is None else np.asarray(weight, dtype=np.float64)
    score = np.zeros(len(label))
    best, best_loss = 0, np.inf
    for i in range(trees):
        score += booster.predict(matrix, start_iteration=i, num_iteration=1, raw_score=True)
        loss = float(np.sum(weight * np.abs(label - score)) / np.sum(weight))
        if loss < best_loss:
            best, best_loss = i + 1, loss
    return best


def spark_forecast_model(
    exchange: Any, settings: Settings, model: str = "production", **kwargs: Any
) -> Any:
    """A ``forecast.ForecastModel`` (every horizon, calibration, TVL baselines) whose boosters
    SynapseML trains: one partition locally (one LightGBM worker, like the local engine's serial
    training), ``executor_instances`` partitions on Dataproc."""
    from poolcast.forecast import ForecastModel

    partitions = 1 if detect_environment(settings) == "local" else settings.spark.executor_instances
    cls = _forecaster_class()

    # This model's boosters train with this exchange: a subclass per model, no shared state.
    bound = type(
        "SparkForecaster", (cls,), {"exchange_": exchange, "partitions_": partitions}
    )

    class SparkForecastModel(ForecastModel):
        forecaster_cls = bound

        def metadata(self, backtest: dict[str, Any] | None = None) -> dict[str, Any]:
            meta = super().metadata(backtest)
            meta["engine"] = "spark"
            meta["trainer"] = (
                f"synapseml-lightgbm_2.12 {SYNAPSEML_VERSION} (lightgbmlib {LIGHTGBMLIB_VERSION})"
            )
            return meta

    return SparkForecastModel(model, train_days=settings.train_days, seed=settings.seed, **kwargs)


def read_panel(exchange: Any, settings: Settings, horizon: int = 1) -> DataFrame:
    """``pipeline.read_panel``'s statement, read by pool partitions over JDBC."""
    from poolcast.pipeline import PANEL_SQL
    from poolcast.spec import FEATURE_CONTEXT_DAYS

    return exchange.read_query(
        PANEL_SQL,
        [settings.train_days + horizon + FEATURE_CONTEXT_DAYS],
        name="panel",
        partition_by_pool=True,
    )


def forecast_panel(exchange: Any, settings: Settings, horizon: int = 30) -> tuple[pa.Table, int]:
    """The forecast panel computed by Spark from the spec, brought to the driver as Arrow.

    The panel is ``train_days`` + ``horizon`` + a few days of each active pool: small enough for
    the driver, where the training rows are selected and calibrated by the local model's code.
    """
    metrics = read_panel(exchange, settings, horizon=horizon)
    panel = exchange.spark_to_arrow(compute_features(metrics), "panel")
    if panel.num_rows == 0:
        raise StoreError("pool_daily_metrics is empty: run `poolcast metrics` first")
    panel = panel.sort_by([("pool_id", "ascending"), ("date", "ascending")])
    return panel, panel.num_rows


def spark_model_dir(settings: Settings) -> str:
    """Where the Spark engine saves its models: ``<model_dir>/spark``, a local folder or a
    ``gs://`` prefix (joined as text: ``Path`` would fold ``gs://`` into ``gs:/``)."""
    return f"{str(settings.model_dir).rstrip('/')}/spark"


def forecast_stage(store: Store, settings: Settings, model: str = "production") -> StageResult:
    """Step 11 on Spark: features from the spec, SynapseML LightGBM, staging + one merge.

    The same model, horizons and writes as the local stage (``pipeline.forecast_stage``): the
    next day into ``pool_daily_metrics`` through the plan's staging table, every horizon into
    ``forecasts``, in one transaction.
    """
    from poolcast.forecast import FORECASTS_KEY, ForecastModel, forecast_table
    from poolcast.pipeline import StageResult, _recent_model, new_run_id, write_forecasts

    started = time.perf_counter()
    result = StageResult("forecast", "spark", new_run_id())
    with _step("forecast", "session start"):
        spark = get_spark_session(settings, "poolcast-forecast", training=True)
    session_s = time.perf_counter() - started
    with _exchange(spark, store, settings) as exchange:
        with _step("forecast", "reading the panel"):
            panel, n_read = forecast_panel(exchange, settings)
        # The daily mode reuses a recent Spark-trained model (pipeline._recent_model's rule,
        # in this engine's own folder); otherwise train and save.
        model_dir = spark_model_dir(settings)
        model_path = settings.model_path
        if not model_path:
            with _step("forecast", "looking for a recent model"):
                model_path = _recent_model(settings, model, panel, model_dir)
        trained = not model_path
        if model_path:
            with _step("forecast", "loading the model"):
                fitted = ForecastModel.load(model_path)
        else:
            with _step("forecast", "training"):
                untrained = spark_forecast_model(exchange, settings, model)
                with progress("training", total=len(untrained.horizons)) as bar:
                    fitted = untrained.fit(panel, on_horizon=bar.advance)
            with _step("forecast", "saving the model"):
                model_path = fitted.save(model_dir)
        with _step("forecast", "predicting"):
            forecasts = forecast_table(fitted, panel)
            horizons = fitted.forecasts(panel)
    # One row per pool and horizon, already on the driver: the store's own bulk path (ADBC COPY
    # for PostgreSQL) into the plan's staging table, then one transaction for both tables.
    with store.transaction():
        result.rows_written = write_forecasts(store, forecasts, result.run_id)
        result.rows_written += store.merge("forecasts", horizons, FORECASTS_KEY)
    result.rows_read = n_read
    one = fitted.horizons_[1]
    result.details = {
        "forecasts": forecasts.num_rows,
        "horizon_rows": horizons.num_rows,
        "train_rows": one.n_train_,
        "model": str(model_path),
        "model_version": fitted.version_,
        "trained": trained,
        "session_s": round(session_s, 2),
        "synapseml_fits": sum(
            len(getattr(f, "synapse_fits_", [])) for f in fitted.horizons_.values()
        ),
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
