"""What every stage shares: its result, its run id, its as-of date and its engine adapter."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from poolcast.store import Store, StoreError
from poolcast.store.queries import latest_data_day

if TYPE_CHECKING:
    from poolcast.engines.local import LocalEngine
    from poolcast.engines.spark import SparkEngine
    from poolcast.settings import Settings


@dataclass
class StageResult:
    stage: str
    engine: str
    run_id: str
    seconds: float = 0.0
    rows_read: int = 0
    rows_written: int = 0
    details: dict[str, Any] = field(default_factory=dict)


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def resolve_as_of(store: Store, settings: Settings) -> dt.date:
    if settings.as_of:
        return settings.as_of
    day = latest_data_day(store)
    if day is None:
        raise StoreError(
            f"no pool snapshots in {store.safe_url()}: run `poolcast ingest PATH` first"
        )
    return day


def open_engine(store: Store, settings: Settings, stage: str) -> LocalEngine | SparkEngine:
    """The adapter of ``settings.engine`` for ``stage`` (Spark is imported only when chosen)."""
    if settings.engine == "spark":
        from poolcast.engines.spark import SparkEngine

        return SparkEngine(store, settings, stage)
    from poolcast.engines.local import LocalEngine

    return LocalEngine(store, settings, stage)
