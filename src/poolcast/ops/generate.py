"""Synthetic raw data at any scale, shaped and distributed like the real sample.

Writes the same raw tables, with the same JSON shapes, that ``poolcast ingest`` writes from the
DefiLlama, CoinMarketCap and Etherscan files, so every later stage runs on it unchanged. It exists
to measure the pipeline at 2,000-100,000 pools: the real sample has 99.

Statistics taken from ``data/sample`` (99 pools, 20,302 snapshots):

* APY: per-pool median around 5 % (log-normal across pools), about 7 % of pools pay ~0; daily
  log-changes heavy-tailed (|d log apy| > 0.5 on about 10 % of days) with one-day spikes past 100 %.
* TVL: per-pool median 10^6.3 USD (10^4 .. 10^8.6), a log random walk with occasional jumps.
* Pools start on different days (most from the first day), a few stop early; about 1 % of days
  are missing inside a series, some pools miss far more.
* One snapshot per day at 23:00Z, an extra earlier one on some days (the latest of the day wins),
  some pools at the API's own 23:01:xx.xxxZ.

Seeded: the same arguments give the same rows. Streamed: pools are generated and written in chunks,
so memory stays flat whatever ``pools`` is.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poolcast.store import Store

DEFAULT_END = dt.date(2025, 6, 5)  # the sample's last common day
BLOCK = 500  # pools per seeded block

_CHAINS = ("Ethereum", "Arbitrum", "Base", "Optimism", "Polygon", "Avalanche", "BSC", "Solana")
_PROJECTS = (
    "aave-v3",
    "aave-v2",
    "compound-v3",
    "morpho-blue",
    "euler-v2",
    "spark",
    "fluid-lending",
)
_SYMBOLS = ("USDC", "USDT", "DAI", "USDS", "SUSDS", "USDE", "FRAX", "PYUSD", "GHO", "USDC.E")

# Snapshot JSON keys in the order ingest stores them (sorted, compact).
_HISTORY_SCHEMA = pa.schema(
    [("pool_id", pa.string()), ("timestamp", pa.timestamp("us")), ("raw_json_data", pa.string())]
)


@dataclass
class GenerateReport:
    pools: int = 0
    days: int = 0
    snapshots: int = 0
    written: dict[str, int] = field(default_factory=dict)


def _pool_ids(rng: np.random.Generator, n: int) -> list[str]:
    raw = rng.bytes(16 * n)
    return [str(uuid.UUID(bytes=raw[i * 16 : (i + 1) * 16], version=4)) for i in range(n)]


def pools_table(pool_ids: list[str], rng: np.random.Generator) -> pa.Table:
    """The ``pools`` rows with DefiLlama's /pools record as raw JSON."""
    chains = rng.choice(len(_CHAINS), len(pool_ids))
    projects = rng.choice(len(_PROJECTS), len(pool_ids))
    symbols = rng.choice(len(_SYMBOLS), len(pool_ids))
    rows = []
    for pid, c, p, s in zip(pool_ids, chains, projects, symbols, strict=True):
        rec = {
            "chain": _CHAINS[c],
            "exposure": "single",
            "ilRisk": "no",
            "pool": pid,
            "project": _PROJECTS[p],
            "stablecoin": True,
            "symbol": _SYMBOLS[s],
        }
        rows.append((pid, rec))
    return pa.table(
        {
            "pool_id": [r[0] for r in rows],
            "chain": [r[1]["chain"] for r in rows],
            "project": [r[1]["project"] for r in rows],
            "symbol": [r[1]["symbol"] for r in rows],
            "stablecoin": pa.array([True] * len(rows), pa.bool_()),
            "il_risk": ["no"] * len(rows),
            "exposure": ["single"] * len(rows),
            "is_active": pa.array([True] * len(rows), pa.bool_()),
            "raw_json_data": [
                json.dumps(r[1], separators=(",", ":"), sort_keys=True) for r in rows
            ],
        }
    )


def _series(
    rng: np.random.Generator, n: int, days: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """APY and TVL paths (n x days) and the mask of days with a snapshot."""
    # Life span: most pools exist from the first day, the rest start later; a few stop early.
    late = rng.random(n) < 0.4
    start = np.where(late, rng.integers(0, max(1, days - 5), n), 0)
    stops = rng.random(n) < 0.05
    end = np.where(stops, start + 5 + (rng.random(n) * np.maximum(days - start - 6, 0)), days - 1)
    end = np.minimum(end.astype(np.int64), days - 1)
    # Gaps inside a series: none for many pools, ~1 % for most, up to 75 % for a few.
    kind = rng.random(n)
    p_gap = np.where(
        kind < 0.4,
        0.0,
        np.where(kind < 0.95, rng.uniform(0.002, 0.03, n), rng.uniform(0.2, 0.75, n)),
    )
    day = np.arange(days)
    alive = (day >= start[:, None]) & (day <= end[:, None])
    present = alive & (rng.random((n, days)) >= p_gap[:, None])
    present[np.arange(n), start] = True
    present[np.arange(n), end] = True

    # APY: a mean-reverting log process around a pool level, heavy-tailed shocks, one-day spikes.
    level = np.exp(rng.normal(np.log(5.0), 0.6, n))
    zero_pool = rng.random(n) < 0.07
    sigma = rng.uniform(0.03, 0.3, n)
    p_spike = np.minimum(np.exp(rng.normal(np.log(0.012), 1.0, n)), 0.4)
    shocks = rng.standard_t(4, (n, days)) * sigma[:, None]
    # The AR(1) recursion day by day on a (days x pools) copy: each step reads and writes
    # contiguous rows (the same operations, so the same bits, as on the pools x days layout).
    shocks_t = np.ascontiguousarray(shocks.T)
    z_t = np.empty((days, n))
    z_t[0] = shocks_t[0]
    for t in range(1, days):
        np.add(0.92 * z_t[t - 1], shocks_t[t], out=z_t[t])
    z = z_t.T
    spikes = np.where(
        rng.random((n, days)) < p_spike[:, None], np.exp(rng.uniform(0.7, 3.5, (n, days))), 1.0
    )
    apy = np.minimum(level[:, None] * np.exp(z) * spikes, 2_000.0)
    apy[zero_pool] = 0.0
    apy = np.round(apy, 5)

    # TVL: log10 level per pool, a slow random walk with rare jumps.
    tvl_level = rng.normal(6.3, 1.0, n)
    steps = rng.normal(0.0, 0.012, (n, days)) + np.where(
        rng.random((n, days)) < 0.03, rng.normal(0.0, 0.15, (n, days)), 0.0
    )
    tvl = np.round(np.maximum(10.0 ** (tvl_level[:, None] + np.cumsum(steps, axis=1)), 1_000.0))
    return apy, tvl, present


def _clock(us: int) -> str:
    """Microseconds after midnight as DefiLlama prints the time of day: ``23:01:13.171Z``."""
    ms = us // 1000
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}Z"


def _json(
    apy: pa.Array, tvl: pa.Array, reward: pa.Array, day: pa.Array, clock: pa.Array
) -> pa.Array:
    """DefiLlama /chart records as compact, key-sorted JSON, built column-wise in one join (no
    Python loop); the timestamp is the day's text (``2025-06-05T``) then the clock's."""
    apy_s = pc.cast(apy, pa.string())
    parts = [
        '{"apy":',
        apy_s,
        ',"apyBase":',
        apy_s,
        ',"apyBase7d":null,"apyReward":',
        reward,
        ',"il7d":null,"timestamp":"',
        day,
        clock,
        '","tvlUsd":',
        pc.cast(tvl, pa.string()),
        "}",
    ]
    return pc.binary_join_element_wise(*parts, "")


def _pool_time_order(extra: np.ndarray) -> np.ndarray:
    """The (pool, time) order of the daily rows (already in (pool, day) order) followed by the
    extra 11:00Z rows of the days marked in ``extra``: each extra row goes right before its day's
    own row. Linear time; the same permutation a lexsort by (pool, timestamp) gives."""
    n = extra.size
    own = np.arange(n) + np.cumsum(extra)
    order = np.empty(n + int(np.count_nonzero(extra)), np.int64)
    order[own] = np.arange(n)
    order[own[extra] - 1] = np.arange(n, order.size)
    return order


def history_block(
    pool_ids: list[str], days: int, end: dt.date, rng: np.random.Generator
) -> pa.Table:
    """``raw_defillama_pool_history`` rows for ``pool_ids``, sorted by pool and time."""
    n = len(pool_ids)
    apy, tvl, present = _series(rng, n, days)
    first = np.datetime64(end - dt.timedelta(days=days - 1), "D").astype("datetime64[us]")
    day_us = np.int64(86_400_000_000)
    # The daily snapshot: 23:00Z, or the API's own 23:01:xx.xxxZ for some pools.
    offset = np.where(rng.random(n) < 0.1, rng.integers(60_000, 120_000, n) * 1000, 0).astype(
        np.int64
    ) + np.int64(23 * 3_600_000_000)
    pool_idx, day_idx = np.nonzero(present)
    # Some days carry an earlier snapshot too (hourly collectors): same pool and day, 11:00Z.
    extra = rng.random(pool_idx.size) < 0.02
    e_pool, e_day = pool_idx[extra], day_idx[extra]
    stamps = np.concatenate(
        [day_idx * day_us + offset[pool_idx], e_day * day_us + np.int64(11 * 3_600_000_000)]
    )
    p_all = np.concatenate([pool_idx, e_pool])
    d_all = np.concatenate([day_idx, e_day])
    apy_v = apy[p_all, d_all]
    apy_v[pool_idx.size :] = np.round(
        apy_v[pool_idx.size :] * rng.uniform(0.8, 1.2, e_pool.size), 5
    )
    ts = pa.array(first.astype(np.int64) + stamps, pa.timestamp("us"))
    order = _pool_time_order(extra)  # by pool, then time: the order ingest would see
    # Text parts from small dictionaries (days, per-pool clock times), never per-row formatting.
    day_txt = pa.array([f"{end - dt.timedelta(days=days - 1 - i)}T" for i in range(days)])
    eleven = np.int64(11 * 3_600_000_000)
    clocks = np.unique(np.append(offset, eleven))  # the pools' clock times and 11:00Z
    clock_idx = np.concatenate(
        [np.searchsorted(clocks, offset)[pool_idx], np.searchsorted(clocks, [eleven] * e_pool.size)]
    )
    clock_txt = pa.array([_clock(int(us)) for us in clocks])
    reward = pa.array(["null", "0.0"]).take(
        pa.array((rng.random(p_all.size) < 0.7)[order].astype(np.int8))
    )
    ids = pa.DictionaryArray.from_arrays(pa.array(p_all[order], pa.int32()), pa.array(pool_ids))
    raw = _json(
        pa.array(apy_v[order]),
        pa.array(tvl[p_all, d_all][order]),
        reward,
        day_txt.take(pa.array(d_all[order])),
        clock_txt.take(pa.array(clock_idx[order])),
    )
    return pa.Table.from_arrays(
        [pc.cast(ids, pa.string()), ts.take(order), raw], schema=_HISTORY_SCHEMA
    )


def market_tables(
    first: dt.date, end: dt.date, rng: np.random.Generator
) -> tuple[pa.Table, pa.Table]:
    """ETH/BTC daily candles (CoinMarketCap's quote shape) and Etherscan daily gas, random walks."""
    n = (end - first).days + 1
    days = [first + dt.timedelta(days=i) for i in range(n)]
    rows = []
    for symbol, start in (("ETH", 3_000.0), ("BTC", 60_000.0)):
        close = start * np.exp(np.cumsum(rng.normal(0, 0.03, n)))
        open_ = np.concatenate([[start], close[:-1]])
        for d, o, c in zip(days, open_, close, strict=True):
            quote = {
                "USD": {
                    "close": round(float(c), 2),
                    "high": round(float(max(o, c)) * 1.01, 2),
                    "low": round(float(min(o, c)) * 0.99, 2),
                    "open": round(float(o), 2),
                    "timestamp": f"{d.isoformat()}T23:59:59.999Z",
                    "volume": round(float(rng.uniform(1e8, 1e9)), 2),
                }
            }
            rows.append(
                (
                    symbol,
                    dt.datetime.combine(d, dt.time()),
                    json.dumps(quote, sort_keys=True, separators=(",", ":")),
                )
            )
    ohlcv = pa.table(
        {
            "symbol": [r[0] for r in rows],
            "data_timestamp": pa.array([r[1] for r in rows], pa.timestamp("us")),
            "raw_json_data": [r[2] for r in rows],
        }
    )
    gas = pa.table(
        {
            "date": pa.array(days, pa.date32()),
            "actual_avg_gas_gwei": pa.array(np.round(np.exp(rng.normal(np.log(10), 0.5, n)), 3)),
        }
    )
    return ohlcv, gas


def generate(
    store: Store,
    pools: int,
    days: int,
    *,
    seed: int = 0,
    end: dt.date = DEFAULT_END,
    chunk_rows: int = 1_000_000,
) -> GenerateReport:
    """Write ``pools`` synthetic pools with ``days`` days of history ending on ``end``.

    Each chunk of pools is merged in its own transaction (flat memory); the same seed gives the
    same rows, so a rerun changes nothing.
    """
    if pools < 1 or days < 1:
        raise ValueError("pools and days must be at least 1")
    store.require_schema()
    json_type = "JSONB" if store.dialect == "postgres" else "JSON"
    casts = {"raw_json_data": json_type}
    rng = np.random.default_rng(seed)
    report = GenerateReport(pools=pools, days=days)
    ids = _pool_ids(rng, pools)
    report.written["pools"] = store.merge("pools", pools_table(ids, rng), ["pool_id"], casts=casts)
    # Market history reaches back one more day than the grid: eth_open is yesterday's close.
    ohlcv, gas = market_tables(end - dt.timedelta(days=days), end, rng)
    report.written["raw_coinmarketcap_ohlcv"] = store.merge(
        "raw_coinmarketcap_ohlcv", ohlcv, ["symbol", "data_timestamp"], casts=casts
    )
    report.written["gas_fees_daily"] = store.merge("gas_fees_daily", gas, ["date"])
    # Into an empty history table the rows are plain appends (the primary key still checks them;
    # the generated keys are unique): no conflict handling, about a quarter of DuckDB's insert
    # time. Otherwise they merge, so that a rerun writes nothing.
    key = [] if _empty(store, "raw_defillama_pool_history") else ["pool_id", "timestamp"]
    written = 0
    with _one_writer_thread(store):
        # In pool_id order: rows arrive in primary-key order, and DuckDB's index inserts stay
        # local (28 M rows: 53 -> 41 s).
        for table in _prefetched(_chunks(sorted(ids), days, end, seed, chunk_rows)):
            report.snapshots += table.num_rows
            written += store.merge("raw_defillama_pool_history", table, key, casts=casts)
    report.written["raw_defillama_pool_history"] = written
    return report


@contextmanager
def _one_writer_thread(store: Store) -> Iterator[None]:
    """DuckDB inserts these rows on one thread: with two on two cores it spent ~60 % more CPU
    for the same rows (and wrote a larger file), and the second core builds the next chunk."""
    if store.dialect != "duckdb":
        yield
        return
    threads = store.fetch_arrow("SELECT current_setting('threads') AS t").column("t")[0].as_py()
    store.execute("SET threads = 1")
    try:
        yield
    finally:
        store.execute(f"SET threads = {int(threads)}")


def _empty(store: Store, table: str) -> bool:
    sql = f"SELECT count(*) AS n FROM (SELECT 1 FROM {table} LIMIT 1) AS t"  # noqa: S608
    return int(store.fetch_arrow(sql).column("n")[0].as_py()) == 0


def _prefetched(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """Build the next chunk on a second thread while the store writes this one (numpy, Arrow
    and both databases release the GIL), at most one chunk ahead so memory stays flat."""
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(next, tables, None)
        while (table := ahead.result()) is not None:
            ahead = pool.submit(next, tables, None)
            yield table


def _chunks(
    ids: list[str], days: int, end: dt.date, seed: int, chunk_rows: int
) -> Iterator[pa.Table]:
    """Blocks of ``BLOCK`` pools, each from its own seeded generator (so the chunk size never
    changes the data), gathered into tables of about ``chunk_rows`` rows."""
    pending: list[pa.Table] = []
    rows = 0
    for b, lo in enumerate(range(0, len(ids), BLOCK)):
        block = history_block(ids[lo : lo + BLOCK], days, end, np.random.default_rng([seed, b]))
        pending.append(block)
        rows += block.num_rows
        if rows >= chunk_rows:
            yield pa.concat_tables(pending)
            pending, rows = [], 0
    if pending:
        yield pa.concat_tables(pending)
