"""The Spark engine's booster trainer: SynapseML ``LightGBMRegressor`` fits on Spark.

The Spark engine's compute (``engines._spark_compute``) builds the training DataFrame on the
executors with the model's own functions; this module only turns it into SynapseML fits, whose
native model strings become the boosters. pyspark, SynapseML and lightgbm are imported on first
use.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from poolcast.engines._spark_session import SparkSetupError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

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
    ``force_row_wise``) through ``passThroughArgs``, which also repeats the setters' values so
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


def prefix_l1(booster_text: str, matrix: Any, label: Any, weight: Any | None) -> Any:
    """For every prefix of the booster's trees, the (weighted) summed L1 error on these rows,
    and the weight total last: summed over the validation rows wherever they are, the losses
    LightGBM's early-stopping callback compares."""
    import lightgbm as lgb
    import numpy as np

    booster = lgb.Booster(model_str=booster_text)
    trees = booster.num_trees()
    weight = np.ones(len(label)) if weight is None else np.asarray(weight, dtype=np.float64)
    score = np.zeros(len(label))
    out = np.zeros(trees + 1)
    for i in range(trees):
        score += booster.predict(matrix, start_iteration=i, num_iteration=1, raw_score=True)
        out[i] = np.sum(weight * np.abs(label - score))
    out[trees] = np.sum(weight)
    return out


def best_l1_iteration(sums: Any) -> int:
    """The first iteration with the lowest loss, from :func:`prefix_l1`'s sums."""
    import numpy as np

    losses = sums[:-1] / sums[-1]
    best, best_loss = 0, np.inf
    for i, loss in enumerate(losses):
        if float(loss) < best_loss:
            best, best_loss = i + 1, float(loss)
    return best


class SynapseTrainer:
    """Trains boosters with SynapseML on Spark from a training DataFrame the executors built:
    ``row`` (a dense index), the feature columns, one label column per ensemble member,
    ``weight`` and ``is_valid``; in ``partitions`` partitions (one LightGBM worker each).
    ``fits_``: a record of every fit, also in the fitted horizon's metadata."""

    def __init__(self, partitions: int = 1) -> None:
        self.partitions = max(1, partitions)
        self.fits_: list[dict[str, Any]] = []

    def prepare(self, frame: DataFrame, features: Sequence[str]) -> DataFrame:
        """The features as one vector column, in this trainer's partitions, ordered by row."""
        from pyspark.ml.feature import VectorAssembler

        # NaN features stay missing values (LightGBM's use_missing), as in the local engine.
        frame = VectorAssembler(
            inputCols=list(features), outputCol="features", handleInvalid="keep"
        ).transform(frame)
        labels = [c for c in frame.columns if c.startswith("label_")]
        frame = frame.select("row", "features", *labels, "weight", "is_valid")
        if self.partitions == 1:
            # One ordered partition: no shuffle beyond the one that ordered the rows.
            return frame.coalesce(1).sortWithinPartitions("row")
        # Every p-th row to partition i = row mod p, exactly: each worker gets training and
        # validation rows (the validation rows come last; a range split left one worker none,
        # and LightGBM refuses an empty validation set). Same data and p: same partitions.
        # (SynapseML #1556: no empty partitions.)
        return _round_robin(frame, self.partitions).sortWithinPartitions("row")

    def fit(
        self,
        frame: DataFrame,
        *,
        label: str,
        params: Mapping[str, Any],
        rounds: int,
        early_stopping: int,
        weighted: bool,
    ) -> tuple[Any, int]:
        """A booster from ``prepare``'s frame with ``label`` as its target, and the iteration
        SynapseML's early stopping chose (0: none named)."""
        import lightgbm as lgb
        from pyspark.sql import functions as F
        from synapse.ml.lightgbm import LightGBMRegressor

        spark_params = synapseml_params(
            params, rounds=rounds, threads=params["num_threads"], port=choose_listen_port()
        )
        if early_stopping:
            spark_params["earlyStoppingRound"] = int(early_stopping)
            spark_params["validationIndicatorCol"] = "is_valid"
        else:
            frame = frame.where(~F.col("is_valid"))
        if weighted:  # the spec's choice: the same for every part
            spark_params["weightCol"] = "weight"
        fitted = LightGBMRegressor(
            labelCol=label, featuresCol="features", predictionCol="prediction", **spark_params
        ).fit(frame)
        booster = lgb.Booster(model_str=fitted.getNativeModel())
        best = int(fitted.getBoosterBestIteration()) if early_stopping else 0
        self.fits_.append(
            {"rounds": int(rounds),
             "params": {k: v for k, v in spark_params.items() if k != "defaultListenPort"}}
        )
        return booster, max(best, 0)

    def describe(self, records: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"engine": "spark", "trainer": TRAINER}
        if records is not None:
            out["synapseml_fits"] = list(records)
        return out


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
