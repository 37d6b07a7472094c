"""Step 7: the daily grid and its rolling metrics for every active pool, merged in one go."""

from __future__ import annotations

import time

from poolcast.log import progress
from poolcast.settings import Settings
from poolcast.stages._common import StageResult, new_run_id, open_engine, resolve_as_of
from poolcast.stages.incremental import recompute_window
from poolcast.stages.locks import locked
from poolcast.stages.retry import retried
from poolcast.store import Store


@retried
@locked("metrics")
def metrics_stage(store: Store, settings: Settings) -> StageResult:
    """Read the snapshots and market series, compute the spec's metrics on the configured engine,
    merge them into ``pool_daily_metrics`` (the daily mode recomputes only the recent window)."""
    store.require_schema()
    started = time.perf_counter()
    with open_engine(store, settings, "metrics") as engine:
        result = StageResult("metrics", engine.name, new_run_id())
        with progress("metrics", total=3, doing="reading snapshots") as bar:  # a terminal only
            with engine.step("compute"):
                as_of = resolve_as_of(store, settings)
                window = None
                if settings.incremental:
                    window = recompute_window(store, as_of, settings.lookback_days)
                inputs = engine.read_metric_inputs(as_of, window)
                bar.advance(doing=f"computing {inputs.snapshot_rows:,} snapshots")
                metrics = engine.compute_metrics(inputs, as_of, window)
                summary = engine.summarize(metrics)
            bar.advance(doing=f"merging {summary['rows']:,} rows")
            with engine.step("writing pool_daily_metrics"):
                result.rows_written = engine.merge_metrics(metrics)
            bar.advance(doing="done")
        result.rows_read = inputs.rows_read
        result.details = {
            "as_of": as_of.isoformat(),
            **summary,
            **({"since": window.since.isoformat()} if window is not None else {}),
            **engine.details(),
        }
    result.seconds = time.perf_counter() - started
    return result
