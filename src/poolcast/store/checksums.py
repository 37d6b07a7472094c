"""Checksums of ordered table dumps: how "unchanged" and "byte-identical" are proven.

A kill, a failed run or a rerun must leave tables exactly as they were; comparing a hash of each
table's rows in key order says so without keeping copies of the tables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from poolcast.store import Store, ident

#: Tables whose content a pipeline stage or an ingest may change.
DATA_TABLES: tuple[str, ...] = (
    "pools",
    "raw_defillama_pool_history",
    "raw_coinmarketcap_ohlcv",
    "gas_fees_daily",
    "ingest_quarantine",
    "raw_snapshot_revisions",
    "pool_daily_metrics",
    "pool_forecasts_staging",
)


def _columns(store: Store, table: str) -> list[str]:
    return store.fetch_arrow(f"SELECT * FROM {ident(table)} WHERE 1 = 0").column_names  # noqa: S608


def table_checksum(store: Store, table: str) -> str:
    """SHA-256 of the table's rows ordered by every column, independent of chunking and metadata.

    JSON columns are compared as text, as each store stores them (JSONB normalizes on PostgreSQL).
    """
    cols = [ident(c) for c in _columns(store, ident(table))]
    select = ", ".join(f"CAST({c} AS TEXT) AS {c}" for c in cols)
    order = ", ".join(f"{i + 1}" for i in range(len(cols)))
    data = store.fetch_arrow(f"SELECT {select} FROM {table} ORDER BY {order}")  # noqa: S608
    digest = hashlib.sha256()
    digest.update(",".join(cols).encode())
    for batch in data.combine_chunks().to_batches():
        for column in batch.columns:
            for value in column.to_pylist():
                digest.update(b"\x00" if value is None else b"\x01" + value.encode() + b"\x02")
        digest.update(b"\x03")
    return digest.hexdigest()


def store_checksums(store: Store, tables: Iterable[str] = DATA_TABLES) -> dict[str, str]:
    """``{table: checksum}`` for each table that exists in the store."""
    return {t: table_checksum(store, t) for t in tables}


def row_count(store: Store, table: str) -> int:
    sql = f"SELECT count(*) AS n FROM {ident(table)}"  # noqa: S608
    return int(store.fetch_arrow(sql).column("n")[0].as_py())
