"""Step 7 on dense per-pool daily matrices: the spec's METRICS compiled to numpy array operations.

Why not SQL windows: at 20,000 pools the DuckDB plan sorts the grid by a text key three times and
materializes a list per row for every rolling window. Here the grid is a (pools x days) matrix, a
window is a handful of whole-matrix shifts, and pools are processed in independent chunks on
threads (numpy releases the GIL), so memory stays flat and both cores work.

Determinism: a rolling mean or stddev is computed from calendar-aligned blocks (see ``_rolling``),
so a day's bits depend only on its window's values and its date, not on where the computed range
starts. That is what makes an incremental run bit-identical to a full rebuild.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poolcast.spec import FILL_LIMIT_DAYS, MARKET, METRICS, Column

_US_PER_DAY = 86_400_000_000
_EPOCH = dt.date(1970, 1, 1)
CHUNK_POOLS = 500  # ~30 matrices of 500 x days in flight per thread: flat memory


_NUMPY = {
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint64(): np.uint64,
    pa.float64(): np.float64,
}


def _numpy(column: pa.ChunkedArray | pa.Array, type_: pa.DataType) -> np.ndarray:
    """A primitive Arrow column as a new numpy array (NULL -> NaN for floats), copied once from
    its buffers: ``to_numpy()`` would import pandas (a second of start-up in every process that
    never needs it), and every extra copy of a 45 MB column is ~11,000 page faults."""
    column = pc.cast(column, type_)
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    dtype = _NUMPY[type_]
    parts = [
        np.frombuffer(c.buffers()[1], dtype, count=len(c) + c.offset)[c.offset :]
        for c in chunks
        if len(c)
    ]
    values = np.concatenate(parts) if parts else np.empty(0, dtype)
    at = 0
    for c in chunks:
        if c.null_count:
            bits = np.unpackbits(np.frombuffer(c.buffers()[0], np.uint8), bitorder="little")
            values[at : at + len(c)][~bits[c.offset : c.offset + len(c)].astype(bool)] = np.nan
        at += len(c)
    return values


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A double column as float64 with NaN for NULL."""
    return _numpy(column, pa.float64())


def _ffill(x: np.ndarray, window: int) -> np.ndarray:
    """The last non-NaN value of the column itself or the ``window`` columns before it."""
    cols = np.arange(x.shape[1])
    idx = np.where(np.isnan(x), -1, cols)
    np.maximum.accumulate(idx, axis=1, out=idx)
    ok = (idx >= 0) & (cols - idx <= window)
    out = np.take_along_axis(x, np.maximum(idx, 0), axis=1)
    out[~ok] = np.nan
    return out


def _running(blocks: np.ndarray, reverse: bool) -> tuple[np.ndarray, ...]:
    """Welford count/mean/M2 of each block's prefixes (or suffixes), position by position."""
    n_pos = blocks.shape[2]
    count = np.zeros(blocks.shape, np.float64)
    mean = np.zeros(blocks.shape, np.float64)
    m2 = np.zeros(blocks.shape, np.float64)
    n = np.zeros(blocks.shape[:2])
    mu = np.zeros(blocks.shape[:2])
    s2 = np.zeros(blocks.shape[:2])
    for j in range(n_pos - 1, -1, -1) if reverse else range(n_pos):
        x = blocks[:, :, j]
        valid = ~np.isnan(x)
        n = n + valid
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = np.where(valid, x - mu, 0.0)
            mu = mu + np.where(valid, delta / np.maximum(n, 1), 0.0)
            s2 = s2 + np.where(valid, delta * (x - mu), 0.0)
        count[:, :, j], mean[:, :, j], m2[:, :, j] = n, mu, s2
    return count, mean, m2


def _rolling(x: np.ndarray, window: int, origin: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and M2 of the non-NaN values in the trailing ``window`` columns.

    Blocks of ``window`` days aligned to the calendar (day number mod window): a window is a
    suffix of one block plus a prefix of the next, each a Welford run, joined with Chan's formula.
    O(1) work per cell whatever the window, and a cell's bits depend only on its window's values
    and its calendar day, never on where the matrix starts.
    """
    pools, width = x.shape
    lead = origin % window
    blocks_n = -(-(lead + width) // window)
    padded = np.full((pools, blocks_n * window), np.nan)
    padded[:, lead : lead + width] = x
    blocks = padded.reshape(pools, blocks_n, window)
    pc_, pm, p2 = _running(blocks, reverse=False)
    sc, sm, s2 = _running(blocks, reverse=True)
    # Suffix of the previous block that starts right after position j (empty for j = window-1).
    sc_next = np.zeros_like(sc)
    sm_next = np.zeros_like(sm)
    s2_next = np.zeros_like(s2)
    sc_next[:, 1:, :-1] = sc[:, :-1, 1:]
    sm_next[:, 1:, :-1] = sm[:, :-1, 1:]
    s2_next[:, 1:, :-1] = s2[:, :-1, 1:]
    n = sc_next + pc_
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = pm - sm_next
        share = np.where(n > 0, pc_ / n, 0.0)
        mean = sm_next + delta * share
        m2 = s2_next + p2 + delta * delta * sc_next * share
    cut = (slice(None), slice(lead, lead + width))
    return (
        n.reshape(pools, -1)[cut],
        mean.reshape(pools, -1)[cut],
        m2.reshape(pools, -1)[cut],
    )


Stats = tuple[np.ndarray, np.ndarray, np.ndarray]


def _mean(stats: Stats) -> np.ndarray:
    n, mean, _ = stats
    return np.where(n > 0, mean, np.nan)


def _std(stats: Stats) -> np.ndarray:
    """Sample standard deviation; NaN below 2 values."""
    n, _, m2 = stats
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 1, np.sqrt(np.maximum(m2, 0.0) / (n - 1)), np.nan)


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    if k < x.shape[1]:
        out[:, k:] = x[:, : x.shape[1] - k]
    return out


def compile_column(c: Column) -> Callable[[dict[str, np.ndarray], int, dict], np.ndarray]:
    """One spec column as a function of the chunk's matrices, its first calendar day and a memo
    (the mean and the stddev of one window share one pass)."""
    if c.kind in ("mean", "std"):
        finish = _mean if c.kind == "mean" else _std

        def rolling(m: dict[str, np.ndarray], origin: int, memo: dict) -> np.ndarray:
            key = (c.source, c.window)
            if key not in memo:
                memo[key] = _rolling(m[c.source], c.window, origin)
            return finish(memo[key])

        return rolling
    if c.kind == "ffill":
        return lambda m, _o, _memo: _ffill(m[c.source], c.window)
    if c.kind == "delta":
        return lambda m, _o, _memo: m[c.source] - _shift(m[c.source], 1)
    if c.kind == "lag":
        return lambda m, _o, _memo: _shift(m[c.source], c.window)
    raise ValueError(f"column kind {c.kind!r} ({c.name}) is not a per-pool metric kind")


def _market_by_day(market: pa.Table, as_of_day: int) -> tuple[int, dict[str, np.ndarray]]:
    """Each source forward-filled (unbounded) on a daily calendar ending on ``as_of``."""
    days = _numpy(market.column("date"), pa.int32())
    start = min(int(days.min()), as_of_day) if len(days) else as_of_day
    length = as_of_day - start + 1
    values = _floats(market.column("value"))
    sources = market.column("source").to_pylist()
    series: dict[str, np.ndarray] = {}
    for source in set(sources):
        pick = np.array([s == source for s in sources]) & (days <= as_of_day)
        row = np.full((1, length), np.nan)
        order = np.argsort(days[pick], kind="stable")
        row[0, days[pick][order] - start] = values[pick][order]
        series[source] = _ffill(row, length)[0]
    return start, series


def _chunk(
    lo: int,
    hi: int,
    code: np.ndarray,
    stamp: np.ndarray,
    apy: np.ndarray,
    tvl: np.ndarray,
    as_of_day: int,
    market: tuple[int, dict[str, np.ndarray]],
) -> dict[str, np.ndarray] | None:
    """Metrics of pools ``lo..hi-1`` from their snapshots in input order (``code``: pool codes).

    No sort: each snapshot goes to its (pool, day) cell; the few cells with several snapshots keep
    the latest one (of equal timestamps the later input row, as a stable sort by time would).
    """
    pools = hi - lo
    rows = code.astype(np.int64) - lo
    day = stamp // _US_PER_DAY
    late = day > as_of_day  # outside every grid, but the pool's grid then reaches as_of
    late_pool = np.zeros(pools, bool)
    if late.any():
        late_pool[rows[late]] = True
        keep = ~late
        rows, stamp, day, apy, tvl = rows[keep], stamp[keep], day[keep], apy[keep], tvl[keep]
    if not len(rows):
        return None
    origin = int(day.min())
    cols = day - origin
    data_width = int(cols.max()) + 1
    cell = rows * data_width + cols
    counts = np.bincount(cell, minlength=pools * data_width)
    seen = counts.reshape(pools, data_width) > 0
    present = np.asarray(seen.any(axis=1))
    first = seen.argmax(axis=1)
    last = data_width - 1 - seen[:, ::-1].argmax(axis=1)
    horizon = as_of_day - origin
    end = np.where(late_pool, horizon, np.minimum(horizon, last + FILL_LIMIT_DAYS))
    width = int(end[present].max()) + 1
    del seen
    pick = _latest_per_cell(counts[cell] > 1, cell, stamp)
    del counts, cell
    if pick is not None:
        rows, cols, apy, tvl = rows[pick], cols[pick], apy[pick], tvl[pick]
    at = rows * width + cols
    matrices = {
        "apy": np.full((pools, width), np.nan),
        "tvl_usd": np.full((pools, width), np.nan),
    }
    matrices["apy"].ravel()[at] = apy
    matrices["tvl_usd"].ravel()[at] = tvl
    observed = ~np.isnan(matrices["apy"])
    memo: dict = {}
    for c in METRICS:
        matrices[c.name] = compile_column(c)(matrices, origin, memo)
    t = np.arange(width)
    in_grid = (t >= first[:, None]) & (t <= end[:, None]) & present[:, None]
    flat = np.flatnonzero(in_grid)  # one scan of the mask, then plain takes per column
    pool_idx, day_idx = np.divmod(flat, width)
    out = {"code": pool_idx + lo, "day": day_idx + origin}
    for c in METRICS:
        out[c.name] = matrices[c.name].ravel().take(flat)
    m_start, series = market
    for m in MARKET:
        source = series.get(m.source)
        at = out["day"] - m.shift - m_start
        if source is None:
            out[m.name] = np.full(at.shape, np.nan)
        else:
            ok = (at >= 0) & (at < len(source))
            out[m.name] = np.where(ok, source[np.clip(at, 0, len(source) - 1)], np.nan)
    out["is_observed"] = observed.ravel().take(flat)
    return out


def _latest_per_cell(shared: np.ndarray, cell: np.ndarray, stamp: np.ndarray) -> np.ndarray | None:
    """Rows to keep when some cells hold several snapshots (``shared``): every other row, and of
    each shared cell its latest snapshot, the later row on equal timestamps. None: keep all."""
    dup = np.flatnonzero(shared)
    if not len(dup):
        return None
    dup = dup[np.lexsort((stamp[dup], cell[dup]))]  # stable: equal stamps stay in input order
    cells = cell[dup]
    last = np.ones(len(dup), bool)
    last[:-1] = cells[1:] != cells[:-1]
    return np.concatenate([np.flatnonzero(~shared), dup[last]])


def compute_metrics(
    snapshots: pa.Table, market: pa.Table, as_of: dt.date, *, threads: int | None = None
) -> pa.Table:
    """Step 7 for every pool: the same rows, columns and order as the SQL definition in local.py.

    Serial work is one dictionary encoding of pool_id and one linear-time partition of the rows
    by chunk of pool codes; everything else (gathering a chunk's rows, the daily de-duplication,
    the windows, Arrow output) runs per chunk on the threads.
    """
    as_of_day = (as_of - _EPOCH).days
    columns = [c.name for c in METRICS] + [m.name for m in MARKET]
    if not snapshots.num_rows:
        return _empty(columns)
    workers = threads or os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        # pool_id's encoding (Arrow, releases the GIL) while the numeric columns are copied.
        encoding = pool.submit(_pool_codes, snapshots.column("pool_id"))
        stamp = _numpy(pc.cast(snapshots.column("timestamp"), pa.timestamp("us")), pa.int64())
        apy, tvl = _floats(snapshots.column("apy")), _floats(snapshots.column("tvl_usd"))
        market_series = _market_by_day(market, as_of_day)
        names, rank, code = encoding.result()
        bounds = [
            (lo, min(lo + CHUNK_POOLS, len(names))) for lo in range(0, len(names), CHUNK_POOLS)
        ]
        perm, cuts = _partition(code, len(bounds))
        inverse = _inverse(rank.astype(np.int64))

        def run(i: int) -> pa.Table | None:
            """One chunk straight to Arrow, so that only one copy of the output is ever held."""
            lo, hi = bounds[i]
            rows = slice(cuts[i], cuts[i + 1]) if perm is None else perm[cuts[i] : cuts[i + 1]]
            out = _chunk(
                lo, hi, code[rows], stamp[rows], apy[rows], tvl[rows], as_of_day, market_series
            )
            if out is None:
                return None
            data: dict[str, pa.Array] = {
                "pool_id": names.take(_arrow(inverse[out.pop("code")])),
                "date": _arrow(out.pop("day").astype(np.int32), pa.date32()),
            }
            for name in columns:
                data[name] = _arrow(out.pop(name))
            data["is_observed"] = _arrow(out.pop("is_observed"))
            return pa.table(data)

        parts = [t for t in pool.map(run, range(len(bounds))) if t is not None]
    return pa.concat_tables(parts) if parts else _empty(columns)


def _pool_codes(pool_id: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Distinct pool ids, each one's rank in sorted order, and each row's pool code (the rank)."""
    encoded = pc.dictionary_encode(pool_id).combine_chunks()
    names = encoded.dictionary
    rank = np.empty(len(names), np.int32)
    rank[_numpy(pc.sort_indices(names), pa.uint64()).astype(np.int64)] = np.arange(
        len(names), dtype=np.int32
    )
    return names, rank, rank[_numpy(encoded.indices, pa.int32())]


def _partition(code: np.ndarray, chunks: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Rows grouped by chunk of ``CHUNK_POOLS`` pool codes, each group in input order: a stable
    radix sort of the chunk numbers (linear time), or None when the rows are grouped already.
    Returns the permutation and the group boundaries."""
    chunk = code // CHUNK_POOLS
    cuts = np.zeros(chunks + 1, np.int64)
    np.cumsum(np.bincount(chunk, minlength=chunks), out=cuts[1:])
    if np.all(chunk[1:] >= chunk[:-1]):
        return None, cuts
    small = chunk.astype(np.int16) if chunks <= np.iinfo(np.int16).max else chunk
    return np.argsort(small, kind="stable"), cuts


def _arrow(values: np.ndarray, type_: pa.DataType | None = None) -> pa.Array:
    """A numpy column as Arrow from its buffers (NaN -> NULL for floats). ``pa.array(ndarray)``
    would import pandas, a second of start-up in every process that never needs it."""
    n = len(values)
    if values.dtype == np.bool_:
        bits = pa.py_buffer(np.packbits(values, bitorder="little"))
        return pa.Array.from_buffers(pa.bool_(), n, [None, bits])
    values = np.ascontiguousarray(values)
    if values.dtype == np.float64:
        valid = ~np.isnan(values)
        nulls = n - int(valid.sum())
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
        return pa.Array.from_buffers(pa.float64(), n, [bitmap, pa.py_buffer(values)], nulls)
    arrow_type = type_ or pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(arrow_type, n, [None, pa.py_buffer(values)])


def _inverse(rank: np.ndarray) -> np.ndarray:
    inv = np.empty_like(rank)
    inv[rank] = np.arange(len(rank))
    return inv


def _empty(columns: list[str]) -> pa.Table:
    fields = [pa.field("pool_id", pa.string()), pa.field("date", pa.date32())]
    fields += [pa.field(n, pa.float64()) for n in columns] + [pa.field("is_observed", pa.bool_())]
    return pa.schema(fields).empty_table()
