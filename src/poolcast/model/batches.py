"""The local compute for a panel of more pools than one batch (``settings.batch_pools``).

A frame is a list of pool batches, each built on its own (read with its features by the local
engine, then peer medians from every pool's few columns, then targets); a kept frame is spilled
batch by batch to Arrow files on local disk and read back memory-mapped, so a pass over the panel
holds one batch and reads only the columns it uses. Every function the model passes is per pool
(:class:`~poolcast.model.compute.Compute`), so a batch is as good as the whole table; reductions
that must see every row at once (a sort for ranks, a hash, training) gather just the columns or
the capped rows they need.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from poolcast.model.compute import Fit, LocalCompute, TableFn
from poolcast.model.features import add_peer_medians
from poolcast.model.trainer import Trained

_SPILL_BYTES = 64 << 20  # a kept batch larger than this goes to disk; smaller ones stay here


@dataclasses.dataclass(frozen=True, eq=False)
class Batches:
    """Pool batches in pool order: ``parts`` each give one batch's source table, ``fns`` are
    applied to it in order; ``empty``: the source's columns, no rows; ``held``: every part is in
    memory (a reduction may then see the whole table at once, as the local compute does)."""

    parts: tuple[Callable[[], pa.Table], ...]
    empty: pa.Table
    fns: tuple[TableFn, ...] = ()
    held: bool = False

    def tables(self) -> Iterator[pa.Table]:
        for part in self.parts:
            yield self._apply(part())

    def _apply(self, table: pa.Table) -> pa.Table:
        for fn in self.fns:
            table = fn(table)
        return table

    def schema(self) -> pa.Schema:
        return self._apply(self.empty).schema


def _mapped(path: Path) -> Callable[[], pa.Table]:
    return lambda: pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def _held(table: pa.Table) -> Callable[[], pa.Table]:
    return lambda: table


class BatchedCompute:
    """:class:`~poolcast.model.compute.Compute` over :class:`Batches`; LightGBM in this process."""

    name = "local"

    def __init__(self) -> None:
        self._local = LocalCompute()
        self._dir: Path | None = None
        self._names = itertools.count()
        self._kept: dict[int, tuple[Batches, int, list[Path]]] = {}  # id -> frame, uses, files

    # -- frames -----
    def frame(
        self, parts: Sequence[Callable[[], pa.Table]], empty: pa.Table, peers: pa.Table
    ) -> Batches:
        """The engine's panel batches (``parts``, columns as ``empty``) with the peer medians of
        ``peers``: the columns they need of every pool."""
        return Batches(tuple(parts), empty, (functools.partial(add_peer_medians, peers=peers),))

    def per_pools(self, frame: Batches, fn: TableFn, schema: pa.Schema | None = None) -> Batches:
        return dataclasses.replace(frame, fns=(*frame.fns, fn))

    def per_days(self, frame: Batches, fn: TableFn, schema: pa.Schema | None = None) -> Batches:
        # A day needs every pool: one table (the engine's panel comes with its peer medians, so
        # the model never asks this of it).
        whole = self.collect(frame)
        return Batches((_held(fn(whole)),), fn(whole.slice(0, 0)), held=True)

    def keep(self, frame: Batches) -> Batches:
        """Each batch computed once: held in memory if small, else written to disk."""
        if id(frame) in self._kept:
            kept, uses, spilled = self._kept[id(frame)]
            self._kept[id(frame)] = (kept, uses + 1, spilled)
            return kept
        parts: list[Callable[[], pa.Table]] = []
        files: list[Path] = []
        for table in frame.tables():
            if table.nbytes <= _SPILL_BYTES:
                parts.append(_held(table))
                continue
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="poolcast-batches-"))
            path = self._dir / f"{next(self._names)}.arrow"
            with pa.ipc.new_file(str(path), table.schema) as writer:
                writer.write_table(table)
            files.append(path)
            parts.append(_mapped(path))
            del table
        kept = Batches(tuple(parts), frame.schema().empty_table(), held=not files)
        self._kept[id(kept)] = (kept, 1, files)
        return kept

    def release(self, frame: Batches) -> None:
        if id(frame) not in self._kept:
            return
        kept, uses, files = self._kept[id(frame)]
        if uses > 1:
            self._kept[id(frame)] = (kept, uses - 1, files)
            return
        del self._kept[id(frame)]
        for path in files:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Every kept frame's files removed."""
        self._kept.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def collect(self, frame: Batches | pa.Table) -> pa.Table:
        """The whole frame as one table (for small frames: forecasts, capped training rows)."""
        if isinstance(frame, pa.Table):
            return frame
        tables = list(frame.tables())
        return pa.concat_tables(tables) if tables else frame.schema().empty_table()

    # -- reductions -----
    def columns(self, frame: Batches) -> list[str]:
        return list(frame.schema().names)

    def count(self, frame: Batches) -> int:
        return sum(t.num_rows for t in frame.tables())

    def date_range(self, frame: Batches) -> tuple[dt.date, dt.date] | None:
        ranges = [r for t in frame.tables() if (r := self._local.date_range(t)) is not None]
        if not ranges:
            return None
        return min(r[0] for r in ranges), max(r[1] for r in ranges)

    def total(self, frame: Batches, fn: Callable[[pa.Table], np.ndarray]) -> np.ndarray:
        if frame.held:  # one sum over every row, the local compute's bits
            return self._local.total(self.collect(frame), fn)
        parts = [np.asarray(fn(t), dtype=np.float64) for t in frame.tables()]
        if not parts:
            return np.asarray(fn(frame.schema().empty_table()), np.float64)
        return np.sum(parts, axis=0)

    def maximum(self, frame: Batches, fn: Callable[[pa.Table], np.ndarray]) -> float:
        return max(float(np.max(fn(t))) for t in frame.tables() if t.num_rows)

    def ranked(
        self,
        frame: Batches,
        fn: Callable[[pa.Table], np.ndarray],
        ranks: Callable[[int], Sequence[int]],
    ) -> tuple[int, list[float]]:
        values = np.concatenate(
            [np.asarray(fn(t), dtype=np.float64) for t in frame.tables()] or [np.empty(0)]
        )
        values = np.sort(values[np.isfinite(values)])
        return values.size, [float(values[k]) for k in ranks(values.size)]

    def summary(
        self, frame: Batches, columns: Sequence[str]
    ) -> tuple[int, dt.date | None, dt.date | None, str]:
        keys = list(dict.fromkeys([*columns, "date"]))
        narrow = dataclasses.replace(frame, fns=(*frame.fns, lambda t: t.select(keys)))
        return self._local.summary(self.collect(narrow), columns)

    def train(self, fit: Fit) -> list[Trained]:
        valid = self.collect(fit.valid) if fit.valid is not None else None
        return self._local.train(dataclasses.replace(fit, rows=self.collect(fit.rows), valid=valid))

    def describe(self, records: Sequence[Any] | None = None) -> dict[str, Any]:
        return {}
