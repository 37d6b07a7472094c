"""Stores of record: the embedded DuckDB default and PostgreSQL."""

from __future__ import annotations

from poolcast.store._base import Store, StoreError, StoreUnavailable, ident, redact_url
from poolcast.store._schema import METRIC_COLUMNS


def open_store(url: str, *, wait: bool = False) -> Store:
    """``postgresql://...`` opens PostgreSQL; anything else is a path to the embedded file.

    ``wait``: when another process holds the embedded file, wait for it instead of failing.
    """
    if url.startswith(("postgresql://", "postgres://")):
        from poolcast.store.postgres import PostgresStore

        return PostgresStore(url)
    if "://" in url:
        raise StoreError(
            f"unsupported store URL {redact_url(url)!r}: use postgresql://... or a path to a "
            ".duckdb file"
        )
    from poolcast.store.embedded import DuckDBStore

    return DuckDBStore(url, wait=wait)


__all__ = [
    "METRIC_COLUMNS",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "ident",
    "open_store",
    "redact_url",
]
