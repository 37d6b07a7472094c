"""Where the model's rows live and how it reduces them: the protocol an engine implements
(:class:`Compute`) and the local one, Arrow tables in this process (:class:`LocalCompute`).

The model never holds a table itself. It hands its compute functions of an Arrow table of whole
pools (targets, training rows, features, predictions) and asks back only counts, sums, maxima, a
few ranked values and the trained boosters. The local compute calls each function once on the
whole table; the Spark engine's (``poolcast.engines._spark_compute``) calls it on every partition
of a DataFrame, on the executors, so the driver holds no table that grows with the pools.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poolcast.model.features import (
    Horizon,
    add_peer_medians,
    add_targets,
    sample_rows,
    target_columns,
)
from poolcast.model.trainer import LocalTrainer, Trained, TrainingSet
from poolcast.spec import PEER_MEDIANS

Frame = Any  # a pa.Table (local) or an engine's distributed table (a Spark DataFrame)
TableFn = Callable[[pa.Table], pa.Table]


class TrainingColumns(NamedTuple):
    """What one table of rows gives the trainer: the matrix, one label per ensemble member, and
    the row weights (None: every row counts alike)."""

    matrix: np.ndarray
    labels: list[np.ndarray]
    weight: np.ndarray | None


@dataclass(frozen=True, eq=False)
class Fit:
    """One ensemble's training: its rows, the validation rows early stopping watches (None: no
    early stopping), and what a table of them gives the trainer. ``raw_weight``: row weights
    before each part is divided by twice its own maximum (None: unweighted)."""

    rows: Frame
    valid: Frame | None
    columns: Callable[[pa.Table, float | None], TrainingColumns]
    raw_weight: Callable[[pa.Table], np.ndarray] | None
    feature_names: tuple[str, ...]
    params: Mapping[str, Any]
    rounds: Sequence[int]
    early_stopping: int


class Compute(Protocol):
    """An engine's rows for the model. ``fn`` arguments are functions of an Arrow table of whole
    pools (each pool's rows together) and must give the same answer on any split into pools."""

    def per_days(self, frame: Frame, fn: TableFn, schema: pa.Schema | None = None) -> Frame:
        """``fn`` applied to the rows day by day (each day's rows of every pool together)."""
        ...

    def per_pools(self, frame: Frame, fn: TableFn, schema: pa.Schema | None = None) -> Frame:
        """``fn`` applied to the rows pool by pool; ``schema``: its output's (default: what it
        gives on no rows)."""
        ...

    def keep(self, frame: Frame) -> Frame:
        """``frame``, kept where it lives because it is read more than once."""
        ...

    def release(self, frame: Frame) -> None:
        """A kept frame no longer needed."""
        ...

    def columns(self, frame: Frame) -> list[str]: ...

    def count(self, frame: Frame) -> int: ...

    def date_range(self, frame: Frame) -> tuple[dt.date, dt.date] | None:
        """The first and last ``date`` (None: no rows)."""
        ...

    def total(self, frame: Frame, fn: Callable[[pa.Table], np.ndarray]) -> np.ndarray:
        """The sum of ``fn`` (an array of fixed shape) over the rows."""
        ...

    def maximum(self, frame: Frame, fn: Callable[[pa.Table], np.ndarray]) -> float:
        """The largest value ``fn`` gives for any row."""
        ...

    def ranked(
        self,
        frame: Frame,
        fn: Callable[[pa.Table], np.ndarray],
        ranks: Callable[[int], Sequence[int]],
    ) -> tuple[int, list[float]]:
        """``n``, the number of finite values ``fn`` gives, and the values at ``ranks(n)``
        (0-based) of them sorted."""
        ...

    def summary(
        self, frame: Frame, columns: Sequence[str]
    ) -> tuple[int, dt.date | None, dt.date | None, str]:
        """Rows, the first and last ``date``, and a hash of exactly these columns of these
        rows."""
        ...

    def train(self, fit: Fit) -> list[Trained]:
        """One booster per ensemble member (``fit.columns``' labels), in order."""
        ...

    def describe(self, records: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """Metadata the artifact carries about this compute's trainer: for the whole model
        (``records`` None) or for one horizon with the records of its fits."""
        ...


class LocalCompute:
    """Arrow tables in this process; boosters by ``lightgbm.train`` (:class:`LocalTrainer`)."""

    name = "local"

    def __init__(self) -> None:
        self._trainer = LocalTrainer()

    def per_days(
        self, frame: pa.Table, fn: TableFn, schema: pa.Schema | None = None
    ) -> pa.Table:
        return fn(frame)

    def per_pools(
        self, frame: pa.Table, fn: TableFn, schema: pa.Schema | None = None
    ) -> pa.Table:
        return fn(frame)

    def keep(self, frame: pa.Table) -> pa.Table:
        return frame

    def release(self, frame: pa.Table) -> None:
        return None

    def columns(self, frame: pa.Table) -> list[str]:
        return list(frame.column_names)

    def count(self, frame: pa.Table) -> int:
        return int(frame.num_rows)

    def date_range(self, frame: pa.Table) -> tuple[dt.date, dt.date] | None:
        if frame.num_rows == 0:
            return None
        dates = frame.column("date")
        return pc.min(dates).as_py(), pc.max(dates).as_py()

    def total(self, frame: pa.Table, fn: Callable[[pa.Table], np.ndarray]) -> np.ndarray:
        return np.asarray(fn(frame), dtype=np.float64)

    def maximum(self, frame: pa.Table, fn: Callable[[pa.Table], np.ndarray]) -> float:
        return float(np.max(fn(frame)))

    def ranked(
        self,
        frame: pa.Table,
        fn: Callable[[pa.Table], np.ndarray],
        ranks: Callable[[int], Sequence[int]],
    ) -> tuple[int, list[float]]:
        values = np.asarray(fn(frame), dtype=np.float64)
        values = np.sort(values[np.isfinite(values)])
        return values.size, [float(values[k]) for k in ranks(values.size)]

    def summary(
        self, frame: pa.Table, columns: Sequence[str]
    ) -> tuple[int, dt.date | None, dt.date | None, str]:
        # One chunk: the same rows hash alike however they were read or split.
        table = pa.table({n: frame.column(n) for n in columns}).combine_chunks()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        first, last = self.date_range(frame) or (None, None)
        digest = hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]
        return frame.num_rows, first, last, digest

    def train(self, fit: Fit) -> list[Trained]:
        def part(table: pa.Table) -> TrainingColumns:
            wmax = float(np.max(fit.raw_weight(table))) if fit.raw_weight else None
            return fit.columns(table, wmax)

        rows = part(fit.rows)
        valid = part(fit.valid) if fit.valid is not None else None
        out = []
        for i, rounds in enumerate(fit.rounds):
            data = TrainingSet(
                rows.matrix,
                rows.labels[i],
                rows.weight,
                fit.feature_names,
                valid.matrix if valid else None,
                valid.labels[i] if valid else None,
                valid.weight if valid else None,
            )
            out.append(
                self._trainer.train(
                    data,
                    params=fit.params,
                    rounds=rounds,
                    early_stopping=fit.early_stopping if valid else 0,
                )
            )
        return out

    def describe(self, records: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
        return {}


def with_targets(compute: Compute, panel: Frame, horizons: Sequence[Horizon]) -> Frame:
    """``features.add_targets`` on a table of ``compute``: the peer medians day by day, then
    the targets pool by pool."""
    names = compute.columns(panel)
    if not set(PEER_MEDIANS) <= set(names):
        panel = compute.per_days(panel, add_peer_medians)
    return compute.per_pools(panel, functools.partial(add_targets, horizons=horizons))


def at_most(compute: Compute, rows: Frame, n_rows: int, cap: int, seed: int) -> Frame:
    """``rows`` (``n_rows`` of them), or where there are more than ``cap`` (0: no cap) a sample
    of about ``cap`` (:func:`~poolcast.model.features.sample_rows`); not kept."""
    if not cap or n_rows <= cap:
        return rows
    return compute.per_pools(
        rows, functools.partial(sample_rows, fraction=cap / n_rows, seed=seed)
    )


def ensure_targets(compute: Compute, panel: Frame, horizons: Sequence[Horizon]) -> Frame:
    """``panel`` itself where it has the targets of ``horizons`` and the peer medians (the forecast
    stage adds them once for every step), else :func:`with_targets`: each pass copies the panel."""
    if target_columns(horizons) | set(PEER_MEDIANS) <= set(compute.columns(panel)):
        return panel
    return with_targets(compute, panel, horizons)


def quantiles(compute: Compute, frame: Frame, fn: Callable[[pa.Table], np.ndarray],
              levels: Sequence[float]) -> tuple[int, list[float]]:
    """``numpy.quantile`` (linear) of the finite values of ``fn`` at ``levels``, from the two
    ranked values around each (the same bits as on the whole array), and their count."""
    def around(n: int) -> list[int]:
        out = []
        for q in levels:
            lo = int(np.floor(q * (n - 1)))
            out += [lo, min(lo + 1, n - 1)]
        return out if n else []

    n, values = compute.ranked(frame, fn, around)
    if n == 0:
        return 0, []
    result = []
    for i, q in enumerate(levels):
        gamma = q * (n - 1) - np.floor(q * (n - 1))
        pair = np.array([values[2 * i], values[2 * i + 1]])
        result.append(float(np.quantile(pair, gamma)))
    return n, result
