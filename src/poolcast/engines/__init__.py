"""The engines: each compiles :mod:`poolcast.spec` and offers the stages the same few operations.

An engine adapter (``engines.local.LocalEngine``, ``engines.spark.SparkEngine``) is a context
manager with ``step``, ``pool_batches`` (the local engine's batches of pools; Spark's executors
split the pools themselves), ``transaction``, ``read_metric_inputs``, ``compute_metrics``,
``summarize``, ``merge_metrics``, ``forecast_panel``, ``compute`` (the model's rows, a
``poolcast.model.compute.Compute``), ``write_forecasts``, ``model_dir`` and ``details``; the
stages (:mod:`poolcast.stages`) hold the flow and never look inside an engine's tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class MetricInputs:
    """What a metrics run reads: snapshots and market series in the engine's own table type
    (Arrow or a Spark DataFrame), the catch-up pools of an incremental run, and row counts."""

    snapshots: Any
    market: Any
    snapshot_rows: int
    rows_read: int
    catch_up: Any = None


@dataclass
class ForecastsWritten:
    """What a forecast merge wrote: rows changed in both tables, next-day forecasts (one per
    pool) and horizon rows."""

    rows: int
    forecasts: int
    horizon_rows: int


@dataclass
class PanelBatches:
    """A forecast panel of more pools than one batch: ``parts`` each read one batch of pools with
    its features (``empty``: their columns), ``peers`` the columns the peer medians need of every
    pool. The model's batched compute (``poolcast.model.batches``) builds and keeps it."""

    parts: tuple[Callable[[], Any], ...]
    empty: Any
    peers: Any
