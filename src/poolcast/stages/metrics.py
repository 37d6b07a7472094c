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
    merge them into ``pool_daily_metrics`` (the daily mode recomputes only the recent window).

    Pools are independent, so the local engine does this ``settings.batch_pools`` pools at a time,
    every batch in one transaction: memory follows the batch, and a failed run writes nothing."""
    store.require_schema()
    started = time.perf_counter()
    with open_engine(store, settings, "metrics") as engine:
        result = StageResult("metrics", engine.name, new_run_id())
        as_of = resolve_as_of(store, settings)
        window = None
        if settings.incremental:
            window = recompute_window(store, as_of, settings.lookback_days)
        batches = engine.pool_batches()
        summary = {"pools": 0, "days": 0, "rows": 0}
        with (
            progress("metrics", total=2 * len(batches) + 1, doing="reading snapshots") as bar,
            engine.transaction(),
        ):
            for i, batch in enumerate(batches):
                of = f" (batch {i + 1} of {len(batches)})" if len(batches) > 1 else ""
                with engine.step("compute"):
                    inputs = engine.read_metric_inputs(as_of, window, batch)
                    bar.advance(doing=f"computing {inputs.snapshot_rows:,} snapshots{of}")
                    metrics = engine.compute_metrics(inputs, as_of, window)
                    part = engine.summarize(metrics)
                bar.advance(doing=f"merging {part['rows']:,} rows{of}")
                with engine.step("writing pool_daily_metrics"):
                    result.rows_written += engine.merge_metrics(metrics)
                del metrics
                # The market series are read with every batch but counted once.
                result.rows_read += inputs.rows_read if i == 0 else inputs.snapshot_rows
                summary = {
                    "pools": summary["pools"] + part["pools"],
                    "days": part["days"],  # the engine's count over every batch so far
                    "rows": summary["rows"] + part["rows"],
                }
            bar.advance(doing="done")
        result.details = {
            "as_of": as_of.isoformat(),
            **summary,
            **({"since": window.since.isoformat()} if window is not None else {}),
            **({"batches": len(batches)} if len(batches) > 1 else {}),
            **engine.details(),
        }
    result.seconds = time.perf_counter() - started
    return result
