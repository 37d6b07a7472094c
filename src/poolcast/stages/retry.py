"""Bounded retry of a stage whose database connection failed (server restarted or unreachable).

A stage writes in one transaction, so a connection lost mid-run leaves nothing behind and the
stage can simply run again on a fresh connection. Only connection failures are retried: a bad
query or bad data fails at once. After ``Settings.db_retry_attempts`` attempts the run fails with
:class:`StoreUnavailable`, which the run record (``poolcast.runs``) stores as ``failed``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from poolcast.log import event, first_line
from poolcast.store import Store, StoreUnavailable

if TYPE_CHECKING:
    from poolcast.settings import Settings

T = TypeVar("T")

# SQLSTATE classes of a lost or refused connection: 08 connection exception, 57P01-57P03
# admin/crash shutdown and "cannot connect now" (a server starting up or shutting down).
_TRANSIENT_STATES = ("08", "57P01", "57P02", "57P03")
_TRANSIENT_TEXT = (
    "server closed the connection",
    "terminating connection",
    "connection refused",
    "could not connect",
    "no connection to the server",
    "connection to server",
    "the database system is",
    "ssl syscall",
    "broken pipe",
    "connection reset",
)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it came from) is a lost or refused connection."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StoreUnavailable):
            return True
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str) and state.startswith(_TRANSIENT_STATES):
            return True
        if type(current).__name__ == "OperationalError":
            text = str(current).lower()
            if any(t in text for t in _TRANSIENT_TEXT):
                return True
        current = current.__cause__ or current.__context__
    return False


def call_with_retry(
    fn: Callable[..., T], store: Store, settings: Settings, *args: Any, **kwargs: Any
) -> T:
    """``fn(store, settings, ...)``, rerun on a fresh connection after a connection failure."""

    attempts = settings.db_retry_attempts
    pause = settings.db_retry_backoff_s
    last: BaseException | None = None
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            event(
                "db.retry", logging.WARNING, attempt=attempt, of=attempts,
                wait_s=round(pause, 3), store=store.safe_url(),
                error=first_line(last or Exception()),
            )
            time.sleep(pause)
            pause *= 2
            try:
                store.reconnect()
            except Exception as exc:  # noqa: BLE001 - judged below
                if not is_transient(exc):
                    raise
                last = exc
                continue
        try:
            return fn(store, settings, *args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            store._rollback_quietly()
            last = exc
    assert last is not None
    raise StoreUnavailable(
        f"the database at {store.safe_url()} was unreachable on {attempts} attempt(s): "
        f"{first_line(last)}. Nothing of this run was committed; rerun it when the database is "
        "back."
    ) from last


def retried(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate ``fn(store, settings, ...)`` with :func:`call_with_retry`."""

    @functools.wraps(fn)
    def run(store: Store, settings: Settings, *args: Any, **kwargs: Any) -> T:
        return call_with_retry(fn, store, settings, *args, **kwargs)

    return run
