"""One run of a stage at a time per store: two runs must not interleave their writes.

PostgreSQL: a session-level advisory lock keyed by stage and schema (the server drops it when the
holder's connection ends, so a killed run never leaves a stale lock). DuckDB: the file lock DuckDB
takes for a writing process keeps other processes out (see ``DuckDBStore``); inside one process a
lock per (file, stage) does the same for threads. ``Settings.lock_wait`` chooses between waiting
for the other run and stopping at once with a clear message.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from poolcast.store import Store, StoreError

if TYPE_CHECKING:
    from poolcast.settings import Settings

T = TypeVar("T")

# First half of every poolcast advisory key ("pool" in ASCII): keeps clear of other applications.
_PG_NAMESPACE = 0x706F6F6C
_PG_KEY = f"{_PG_NAMESPACE}, hashtext(current_schema() || ':' || $1)"

_local_guard = threading.Lock()
_local_locks: dict[tuple[str, str], threading.Lock] = {}


class LockBusy(StoreError):
    """Another run of the same stage holds the lock and this run was told not to wait."""


def _busy(store: Store, stage: str) -> LockBusy:
    return LockBusy(
        f"another `{stage}` run is writing to {store.safe_url()}; this run did not start. "
        "Wait for it to finish, or set POOLCAST_LOCK_WAIT=true to queue behind it."
    )


def _local_lock(store: Store, stage: str) -> threading.Lock:
    path = store.url if store.url == ":memory:" else os.path.realpath(store.url)
    with _local_guard:
        return _local_locks.setdefault((path, stage), threading.Lock())


def _announce(store: Store, stage: str) -> None:
    from poolcast.log import event

    event("lock.waiting", logging.WARNING, stage=stage, store=store.safe_url())


@contextmanager
def stage_lock(store: Store, stage: str, *, wait: bool) -> Iterator[None]:
    """Hold the lock for ``stage`` on ``store``; raise :class:`LockBusy` or wait when it is held."""
    if store.dialect == "postgres":
        got = store.fetch_arrow(f"SELECT pg_try_advisory_lock({_PG_KEY}) AS ok", [stage])
        if not got.column("ok")[0].as_py():
            if not wait:
                raise _busy(store, stage)
            _announce(store, stage)
            store.fetch_arrow(f"SELECT pg_advisory_lock({_PG_KEY}) IS NULL AS ok", [stage])
        try:
            yield
        finally:
            try:
                store.fetch_arrow(f"SELECT pg_advisory_unlock({_PG_KEY}) AS ok", [stage])
            except Exception:  # noqa: BLE001 - a lost connection has released the lock already
                store._rollback_quietly()
        return
    lock = _local_lock(store, stage)
    if not lock.acquire(blocking=False):
        if not wait:
            raise _busy(store, stage)
        _announce(store, stage)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def locked(stage: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate ``fn(store, settings, ...)`` so it runs under :func:`stage_lock`."""

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def run(store: Store, settings: Settings, *args: Any, **kwargs: Any) -> T:
            with stage_lock(store, stage, wait=settings.lock_wait):
                return fn(store, settings, *args, **kwargs)

        return run

    return decorate
