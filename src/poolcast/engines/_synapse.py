"""The Spark engine's booster trainer: SynapseML ``LightGBMRegressor`` fits on Spark.

A :class:`~poolcast.model.trainer.Trainer`: the model selects the rows, builds the matrix, target
and weights, and calibrates, as in the local engine; only ``lightgbm.train`` is replaced by a fit
on Spark, whose native model string becomes the booster. pyspark, SynapseML and lightgbm are
imported on first use.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from poolcast.engines._spark_session import SparkSetupError, executor_count

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    from pyspark.sql import DataFrame

    from poolcast.settings import Settings

SYNAPSEML_VERSION = "1.1.3"
LIGHTGBMLIB_VERSION = "3.3.510"  # what synapseml-lightgbm_2.12:1.1.3 brings
TRAINER = f"synapseml-lightgbm_2.12 {SYNAPSEML_VERSION} (lightgbmlib {LIGHTGBMLIB_VERSION})"


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
    raise SparkSetupError("forecast: no free port range for LightGBM's workers")


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
    lgb_params: Mapping[str, Any], *, rounds: int, threads: int, port: int
) -> dict[str, Any]:
    """The local model's LightGBM parameters as SynapseML ``LightGBMRegressor`` arguments.

    One source (``model.specs.MODELS``): known parameters go to their setters, the rest (e.g.
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


class SynapseTrainer:
    """Trains each booster with SynapseML on Spark: the training table goes to Spark through
    ``to_spark`` (the store's exchange), in ``partitions`` ordered partitions (one LightGBM worker
    each). ``fits_``: a record of every fit, also in the fitted horizon's metadata."""

    def __init__(self, to_spark: Callable[[pa.Table], DataFrame], partitions: int = 1) -> None:
        self.to_spark = to_spark
        self.partitions = max(1, partitions)
        self.fits_: list[dict[str, Any]] = []

    def train(
        self, data: Any, *, params: Mapping[str, Any], rounds: int, early_stopping: int
    ) -> tuple[Any, int, dict[str, Any]]:
        """``data``: the model's ``TrainingSet``."""
        import lightgbm as lgb
        import numpy as np
        import pyarrow as pa
        from pyspark.ml.feature import VectorAssembler
        from pyspark.sql import functions as F
        from synapse.ml.lightgbm import LightGBMRegressor

        matrix, label, weight = data.matrix, data.label, data.weight
        valid_matrix, valid_label = data.valid_matrix, data.valid_label
        valid_weight, feature_names = data.valid_weight, data.feature_names

        use_valid = valid_matrix is not None
        parts = [(matrix, label, weight, False)]
        if valid_matrix is not None and valid_label is not None:
            parts.append((valid_matrix, valid_label, valid_weight, True))
        n = len(feature_names)
        # The model's own matrix (derived features, float32 rounding) as float64 columns, its
        # target and row weights (each part weighed on its own, as the local engine's datasets).
        table = pa.table(
            {
                **{
                    f"f{i}": pa.array(
                        np.concatenate([m[:, i].astype(np.float64) for m, *_ in parts]),
                        pa.float64(),
                    )
                    for i in range(n)
                },
                "label": pa.array(np.concatenate([y for _, y, _, _ in parts]), pa.float64()),
                "weight": pa.array(
                    np.concatenate([np.ones(len(y)) if w is None else w for _, y, w, _ in parts]),
                    pa.float64(),
                ),
                "is_valid": pa.array(
                    np.concatenate([np.full(len(y), v) for _, y, _, v in parts]), pa.bool_()
                ),
                "row": pa.array(np.arange(sum(len(y) for _, y, _, _ in parts)), pa.int64()),
            }
        )
        frame = self.to_spark(table)
        # NaN features stay missing values (LightGBM's use_missing), as in the local engine.
        frame = VectorAssembler(
            inputCols=[f"f{i}" for i in range(n)], outputCol="features", handleInvalid="keep"
        ).transform(frame)
        # Fixed order and partitioning: determinism, and no empty partitions (SynapseML #1556).
        frame = frame.select("row", "features", "label", "weight", "is_valid")
        if self.partitions == 1:
            # One Parquet file is one ordered partition: no shuffle, no sampling job.
            frame = frame.coalesce(1).sortWithinPartitions("row")
        else:
            # Every p-th row to partition i = row mod p, exactly: each worker gets training and
            # validation rows (the validation rows come last; a range split left one worker none,
            # and LightGBM refuses an empty validation set). Same data and p: same partitions.
            frame = _round_robin(frame, self.partitions).sortWithinPartitions("row")
        spark_params = synapseml_params(
            params, rounds=rounds, threads=params["num_threads"], port=choose_listen_port()
        )
        if use_valid:
            spark_params["earlyStoppingRound"] = int(early_stopping)
            spark_params["validationIndicatorCol"] = "is_valid"
        else:
            frame = frame.where(~F.col("is_valid"))
        if weight is not None:  # the spec's choice: the same for every part
            spark_params["weightCol"] = "weight"
        fitted = LightGBMRegressor(
            labelCol="label", featuresCol="features", predictionCol="prediction", **spark_params
        ).fit(frame)
        booster = lgb.Booster(model_str=fitted.getNativeModel())
        best = int(fitted.getBoosterBestIteration()) if use_valid else 0
        if use_valid and best <= 0:
            # SynapseML names a best iteration only when early stopping stopped the fit;
            # LightGBM's own callback also names the best of a fit that ran all its rounds.
            best = _best_l1_iteration(booster, valid_matrix, valid_label, valid_weight)
        best = max(best, 0)
        record = {
            "rows": len(label),
            "valid_rows": len(valid_label) if use_valid and valid_label is not None else 0,
            "rounds": int(rounds),
            "best_iteration": best,
            "params": {k: v for k, v in spark_params.items() if k != "defaultListenPort"},
        }
        self.fits_.append(record)
        return booster, best, record  # the model's Trained, as a plain tuple

    def describe(self, records: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"engine": "spark", "trainer": TRAINER}
        if records is not None:
            out["synapseml_fits"] = list(records)
        return out


def synapse_trainer(exchange: Any, settings: Settings) -> SynapseTrainer:
    """The Spark engine's trainer on ``exchange`` (a ``store.spark_io.SparkExchange``): one
    LightGBM worker per executor registered now (``local[N]``: one, the driver's JVM, like the
    local engine's serial training; a cluster: every executor, however many the batch got)."""
    partitions = executor_count(exchange.spark)
    return SynapseTrainer(lambda table: exchange.arrow_to_spark(table, "training"), partitions)


def _round_robin(frame: DataFrame, partitions: int) -> DataFrame:
    """``frame`` in ``partitions`` partitions, row ``r`` in partition ``r mod partitions``.

    Hash partitioning puts key ``k`` in ``pmod(hash(k), n)``; one small job finds, for each
    partition, a key that lands there, and each row gets its partition's key.
    """
    from pyspark.sql import functions as F

    probe = frame.sparkSession.range(0, 64 * partitions).select(
        "id", F.expr(f"pmod(hash(id), {int(partitions)})").alias("target")
    )
    keys: dict[int, int] = dict(probe.groupBy("target").agg(F.min("id")).collect())
    if len(keys) < partitions:  # pragma: no cover - 64 candidates per partition always suffice
        raise SparkSetupError(f"no hash key found for each of {partitions} partitions")
    key = F.element_at(
        F.array(*[F.lit(keys[i]).cast("bigint") for i in range(partitions)]),
        (F.col("row") % partitions + 1).cast("int"),
    )
    return frame.withColumn("_key", key).repartition(partitions, "_key").drop("_key")
