"""The Spark engine's compute for the model (``poolcast.model.compute.Compute``): the model's rows
are DataFrames on the executors.

The model's own functions of an Arrow table run in ``mapInArrow`` on each partition (whole pools
after one repartition by pool, whole days for the peer medians); the driver gets back only sums,
maxima, counts, a few ranked values and the boosters. Training DataFrames are built on the
executors and trained by SynapseML across every executor (``engines._synapse``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from poolcast.engines._synapse import SynapseTrainer, best_l1_iteration, prefix_l1

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

TableFn = Callable[[pa.Table], pa.Table]
ArrayFn = Callable[[pa.Table], np.ndarray]
_Batches = Callable[[Iterable[pa.RecordBatch]], Iterable[pa.RecordBatch]]
_BY_POOL = "_poolcast_by_pool"  # set on a DataFrame whose partitions hold whole pools


def _whole(fn: TableFn, schema: pa.Schema) -> _Batches:
    """``fn`` on a partition's rows as one table, its result in ``schema``."""

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parts = list(batches)
        if not parts or not any(b.num_rows for b in parts):
            return
        out = fn(pa.Table.from_batches(parts))
        yield from out.select(schema.names).cast(schema).to_batches(max_chunksize=10_000)

    return run


def _packed(fn: ArrayFn) -> _Batches:
    """``fn`` on a partition's rows, as one row: the partition, the array's shape and bytes."""

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        parts = list(batches)
        if not parts or not any(b.num_rows for b in parts):
            return
        value = np.array(fn(pa.Table.from_batches(parts)), dtype=np.float64, order="C")
        context = TaskContext.get()
        yield pa.record_batch(
            {
                "p": pa.array([context.partitionId() if context else 0], pa.int32()),
                "shape": pa.array([",".join(map(str, value.shape))], pa.string()),
                "v": pa.array([value.tobytes()], pa.binary()),
            }
        )

    return run


def _values(fn: ArrayFn) -> _Batches:
    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows:
                v = np.asarray(fn(pa.Table.from_batches([batch])), dtype=np.float64)
                yield pa.record_batch({"v": pa.array(v[np.isfinite(v)], pa.float64())})

    return run


def _training_table(
    columns: Callable[[pa.Table, float | None], Any],
    weight_max: float | None,
    is_valid: bool,
    names: Sequence[str],
    members: int,
    table: pa.Table,
) -> pa.Table:
    """One part's training rows as the trainer's columns, keyed by pool and date."""
    data = columns(table, weight_max)
    n = table.num_rows
    weight = np.ones(n) if data.weight is None else data.weight
    return pa.table(
        {
            "pool_id": table.column("pool_id"),
            "date": table.column("date"),
            **{
                name: pa.array(data.matrix[:, i].astype(np.float64), pa.float64())
                for i, name in enumerate(names)
            },
            **{f"label_{i}": pa.array(data.labels[i], pa.float64()) for i in range(members)},
            "weight": pa.array(weight, pa.float64()),
            "is_valid": pa.array(np.full(n, is_valid), pa.bool_()),
        }
    )


class SparkCompute:
    """DataFrames on the executors for the model; boosters by SynapseML on every executor.
    ``partitions``: how many partitions hold the pools (a repartition by pool, once per table)."""

    name = "spark"

    def __init__(self, spark: SparkSession, partitions: int, trainer: SynapseTrainer) -> None:
        self.spark = spark
        self.partitions = max(1, partitions)
        self.trainer = trainer
        self._kept: list[DataFrame] = []

    # -- tables -----
    def by_pools(self, frame: DataFrame, partitions: int | None = None) -> DataFrame:
        """``frame`` with whole pools in each partition (as is, if it has them already), in
        pool and date order: a partition's rows arrive from a shuffle in any order, and the
        model's sums over them must not depend on it."""
        if getattr(frame, _BY_POOL, False):
            return frame
        keys = ["pool_id", *(["date"] if "date" in frame.columns else [])]
        out = frame.repartition(partitions or self.partitions, "pool_id").sortWithinPartitions(
            *keys
        )
        setattr(out, _BY_POOL, True)
        return out

    def _apply(
        self, frame: DataFrame, fn: TableFn, schema: pa.Schema | None
    ) -> DataFrame:
        from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

        if schema is None:
            schema = fn(to_arrow_schema(frame.schema).empty_table()).schema
        return frame.mapInArrow(_whole(fn, schema), from_arrow_schema(schema))

    def per_pools(
        self, frame: DataFrame, fn: TableFn, schema: pa.Schema | None = None
    ) -> DataFrame:
        out = self._apply(self.by_pools(frame), fn, schema)
        setattr(out, _BY_POOL, True)  # mapInArrow keeps each partition's rows together
        return out

    def per_days(
        self, frame: DataFrame, fn: TableFn, schema: pa.Schema | None = None
    ) -> DataFrame:
        return self._apply(frame.repartition(self.partitions, "date"), fn, schema)

    def keep(self, frame: DataFrame) -> DataFrame:
        """``frame`` cached on the executors until :meth:`close` (read more than once)."""
        kept = frame.cache()
        if getattr(frame, _BY_POOL, False):
            setattr(kept, _BY_POOL, True)
        self._kept.append(kept)
        return kept

    def release(self, frame: DataFrame) -> None:
        if frame in self._kept:
            self._kept.remove(frame)
            frame.unpersist()

    def close(self) -> None:
        for frame in self._kept:
            frame.unpersist()
        self._kept = []

    # -- reductions -----
    def columns(self, frame: DataFrame) -> list[str]:
        return list(frame.columns)

    def count(self, frame: DataFrame) -> int:
        return int(frame.count())

    def date_range(self, frame: DataFrame) -> Any:
        from pyspark.sql import functions as F

        first, last = frame.agg(F.min("date"), F.max("date")).collect()[0]
        return None if first is None else (first, last)

    def _per_partition(self, frame: DataFrame, fn: ArrayFn) -> list[np.ndarray]:
        """``fn`` of each non-empty partition, in partition order (sums stay deterministic)."""
        rows = self.by_pools(frame).mapInArrow(
            _packed(fn), "p int, shape string, v binary"
        ).collect()
        out = []
        for row in sorted(rows, key=lambda r: r["p"]):
            shape = tuple(int(x) for x in row["shape"].split(",") if x)
            out.append(np.frombuffer(row["v"], dtype=np.float64).reshape(shape))
        return out

    def total(self, frame: DataFrame, fn: ArrayFn) -> np.ndarray:
        from pyspark.sql.pandas.types import to_arrow_schema

        parts = self._per_partition(frame, fn)
        if not parts:  # no rows: what the function gives on none
            return np.asarray(fn(to_arrow_schema(frame.schema).empty_table()), np.float64)
        return np.sum(parts, axis=0)

    def maximum(self, frame: DataFrame, fn: ArrayFn) -> float:
        parts = self._per_partition(frame, lambda t: np.max(fn(t)))
        return float(max(float(p) for p in parts)) if parts else float("-inf")

    def ranked(
        self,
        frame: DataFrame,
        fn: ArrayFn,
        ranks: Callable[[int], Sequence[int]],
    ) -> tuple[int, list[float]]:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        values = self.by_pools(frame).mapInArrow(_values(fn), "v double").cache()
        try:
            n = int(values.count())
            wanted = list(ranks(n))
            if not wanted:
                return n, []
            # One sorted partition on an executor: the held-out rows' values, never the driver.
            rank = F.row_number().over(Window.orderBy("v")) - 1
            picked: dict[int, float] = dict(
                values.select(rank.alias("k"), "v")
                .where(F.col("k").isin(sorted(set(wanted))))
                .collect()
            )
            return n, [float(picked[k]) for k in wanted]
        finally:
            values.unpersist()

    def summary(self, frame: DataFrame, columns: Sequence[str]) -> Any:
        """Rows, first and last ``date`` and a hash of these columns of these rows, in one
        pass; the hash holds in any order or partitioning (it is not the local compute's,
        which hashes the ordered Arrow stream)."""
        from pyspark.sql import functions as F

        row_hash = F.xxhash64(*[F.col(c) for c in columns]).cast("decimal(38,0)")
        total, n, first, last = frame.agg(
            F.sum(row_hash), F.count(F.lit(1)), F.min("date"), F.max("date")
        ).collect()[0]
        text = f"{total}:{n}:{','.join(columns)}"
        return int(n), first, last, hashlib.sha256(text.encode()).hexdigest()[:16]

    # -- training -----
    def train(self, fit: Any) -> list[tuple[Any, int, dict[str, Any]]]:
        """``fit``: the model's ``Fit``. The training and validation rows become one DataFrame
        on the executors (features, one label per member, weights), indexed in the local
        engine's order (training rows by pool and date, then validation rows), and every
        member is a SynapseML fit on it."""

        names = [f"f{i}" for i in range(len(fit.feature_names))]
        members = len(fit.rounds)
        parts = [(fit.rows, False)]
        if fit.valid is not None:
            parts.append((fit.valid, True))
        tables = []
        weight_max: dict[bool, float | None] = {}
        for frame, is_valid in parts:
            weight_max[is_valid] = (
                self.maximum(frame, fit.raw_weight) if fit.raw_weight is not None else None
            )
            build = functools.partial(
                _training_table, fit.columns, weight_max[is_valid], is_valid, names, members
            )
            tables.append(self.per_pools(frame, build, _training_schema(names, members)))
        data = tables[0] if len(tables) == 1 else tables[0].unionByName(tables[1])
        data = data.cache()  # built once: the sort samples it, then reads it
        indexed, marked, counts = _with_row_index(data.orderBy("is_valid", "pool_id", "date"))
        data.unpersist()
        prepared = self.trainer.prepare(indexed, names)
        try:
            out = []
            for i, rounds in enumerate(fit.rounds):
                booster, best = self.trainer.fit(
                    prepared,
                    label=f"label_{i}",
                    params=fit.params,
                    rounds=rounds,
                    early_stopping=fit.early_stopping,
                    weighted=fit.raw_weight is not None,
                )
                if fit.early_stopping and best <= 0 and fit.valid is not None:
                    # SynapseML names a best iteration only when early stopping stopped the
                    # fit; LightGBM's callback also names the best of a fit that ran out.
                    best = best_l1_iteration(
                        self.total(
                            fit.valid,
                            functools.partial(
                                _valid_losses, fit.columns, weight_max[True], i,
                                booster.model_to_string(),
                            ),
                        )
                    )
                record = {
                    "rows": int(counts.get(False, 0)),
                    "valid_rows": int(counts.get(True, 0)) if fit.early_stopping else 0,
                    "rounds": int(rounds),
                    "best_iteration": int(best),
                    "params": self.trainer.fits_[-1]["params"],
                }
                out.append((booster, best, record))
            return out
        finally:
            marked.unpersist()

    def describe(self, records: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
        return self.trainer.describe(records)


def _training_schema(names: Sequence[str], members: int) -> pa.Schema:
    return pa.schema(
        [
            ("pool_id", pa.string()),
            ("date", pa.date32()),
            *((n, pa.float64()) for n in names),
            *((f"label_{i}", pa.float64()) for i in range(members)),
            ("weight", pa.float64()),
            ("is_valid", pa.bool_()),
        ]
    )


def _valid_losses(
    columns: Callable[[pa.Table, float | None], Any],
    weight_max: float | None,
    member: int,
    booster_text: str,
    table: pa.Table,
) -> np.ndarray:
    data = columns(table, weight_max)
    return prefix_l1(booster_text, data.matrix, data.labels[member], data.weight)


def _with_row_index(ordered: DataFrame) -> tuple[DataFrame, DataFrame, dict[bool, int]]:
    """``ordered`` (a total order) with ``row``, its dense 0-based position, computed on the
    executors: each partition's offset from the partitions' row counts (a few numbers). Also
    the cached frame it reads (unpersist it when done) and the rows by ``is_valid``."""
    from pyspark.sql import functions as F

    marked = ordered.withColumn("_mid", F.monotonically_increasing_id()).cache()
    part = F.shiftright("_mid", 33)
    counts: dict[int, int] = {}
    by_valid: dict[bool, int] = {}
    for p, valid, n in marked.groupBy(part.alias("p"), "is_valid").count().collect():
        counts[p] = counts.get(p, 0) + n
        by_valid[valid] = by_valid.get(valid, 0) + n
    offsets, total = {}, 0
    for p in sorted(counts):
        offsets[p] = total
        total += counts[p]
    offset = F.lit(0).cast("bigint")
    for p, start in offsets.items():
        offset = F.when(part == p, F.lit(start)).otherwise(offset)
    local = F.col("_mid").bitwiseAND(F.lit((1 << 33) - 1))
    indexed = marked.withColumn("row", (offset + local).cast("bigint")).drop("_mid")
    return indexed, marked, by_valid
