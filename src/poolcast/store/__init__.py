"""Stores of record: the embedded DuckDB default and PostgreSQL."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from poolcast.log import event, first_line
from poolcast.store._base import (
    Store,
    StoreError,
    StoreUnavailable,
    ident,
    no_store_message,
    redact_url,
)
from poolcast.store._schema import METRIC_COLUMNS

if TYPE_CHECKING:
    from poolcast.settings import Settings


def open_store(
    url: str,
    *,
    wait: bool = False,
    read_only: bool = False,
    create: bool = True,
    sandbox: bool = False,
    memory_limit: str | None = None,
) -> Store:
    """``postgresql://...`` opens PostgreSQL; anything else is a path to the embedded file.

    ``wait``: when another process holds the embedded file, wait for it instead of failing.
    ``read_only``: the store is only read (no writers' lock on the embedded file, read-only
    transactions on PostgreSQL). ``create``: a missing embedded file is created; without it the
    error says there is no store there. ``sandbox``: confined for `poolcast sql`.
    ``memory_limit``: the embedded store's (DuckDB's ``memory_limit``; None: DuckDB's default).
    """
    if url.startswith(("postgresql://", "postgres://")):
        from poolcast.store.postgres import PostgresStore

        return PostgresStore(url, read_only=read_only or sandbox)
    if "://" in url:
        raise StoreError(
            f"unsupported store URL {redact_url(url)!r}: use postgresql://... or a path to a "
            ".duckdb file"
        )
    from poolcast.store.embedded import DuckDBStore

    return DuckDBStore(
        url, wait=wait, read_only=read_only, create=create, sandbox=sandbox,
        memory_limit=memory_limit,
    )


def open_configured(
    settings: Settings, *, read_only: bool = False, create: bool = False, sandbox: bool = False
) -> Store:
    """The configured store, as every entry point opens it: a database that is not reachable yet
    is retried (``db_retry_attempts``, doubling ``db_retry_backoff_s``) and a busy embedded file
    is waited for when ``lock_wait`` is set. Only the commands that make a store (``db init``,
    ``ingest``, ``generate``) pass ``create``; see :func:`open_store` for the others."""
    pause = settings.db_retry_backoff_s
    for attempt in range(1, settings.db_retry_attempts + 1):
        try:
            return open_store(
                settings.store_url(), wait=settings.lock_wait, read_only=read_only,
                create=create, sandbox=sandbox, memory_limit=settings.duckdb_memory,
            )
        except StoreUnavailable as exc:
            if attempt == settings.db_retry_attempts:
                raise
            event(
                "db.retry", logging.WARNING, attempt=attempt + 1, of=settings.db_retry_attempts,
                wait_s=round(pause, 3), error=first_line(exc),
            )
        time.sleep(pause)
        pause *= 2
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = [
    "METRIC_COLUMNS",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "ident",
    "no_store_message",
    "open_configured",
    "open_store",
    "redact_url",
]
