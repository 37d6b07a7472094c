"""Stores of record: the embedded DuckDB default and PostgreSQL."""

from __future__ import annotations

from poolcast.store._base import Store, StoreError, ident
from poolcast.store._schema import METRIC_COLUMNS


def open_store(url: str) -> Store:
    """``postgresql://...`` opens PostgreSQL; anything else is a path to the embedded file."""
    if url.startswith(("postgresql://", "postgres://")):
        from poolcast.store.postgres import PostgresStore

        return PostgresStore(url)
    if "://" in url:
        raise StoreError(
            f"unsupported store URL {url!r}: use postgresql://... or a path to a .duckdb file"
        )
    from poolcast.store.embedded import DuckDBStore

    return DuckDBStore(url)


__all__ = ["METRIC_COLUMNS", "Store", "StoreError", "ident", "open_store"]
