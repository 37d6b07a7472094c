"""The local engine's compute of pool batches: the same answers as one table, spilled batches
removed when released, and the forecast stage's model and forecasts whatever the batch size."""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st
from panels import mean_reverting, metrics_of

from poolcast.engines.local import compute_features
from poolcast.model import batches as _batches
from poolcast.model.batches import BatchedCompute, Batches
from poolcast.model.compute import LocalCompute
from poolcast.model.features import add_peer_medians, training_rows
from poolcast.settings import Settings
from poolcast.stages import forecast_stage, metrics_stage
from poolcast.store import Store


@functools.cache
def _panel() -> pa.Table:
    return add_peer_medians(compute_features(metrics_of(mean_reverting(12, seed=3))))


def _split(panel: pa.Table, cuts: list[int]) -> Batches:
    """The panel as pool batches, cut before the given pool numbers."""
    pools = sorted(set(panel.column("pool_id").to_pylist()))
    edges = [0, *sorted(set(cuts)), len(pools)]
    parts = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        if lo < hi:
            part = panel.filter(pc.is_in(panel.column("pool_id"), pa.array(pools[lo:hi])))
            parts.append(functools.partial(lambda t: t, part))
    return Batches(tuple(parts), panel.slice(0, 0))


@examples(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 11), max_size=6))
def test_pool_batches_reduce_to_what_one_table_gives(cuts: list[int]) -> None:
    panel, local, batched = _panel(), LocalCompute(), BatchedCompute()
    window = functools.partial(training_rows, train_days=60, horizon=7)
    whole = local.per_pools(panel, window)
    frame = batched.per_pools(_split(panel, cuts), window)
    apy = lambda t: pc.fill_null(t.column("actual_apy"), np.nan).to_numpy()  # noqa: E731
    assert batched.count(frame) == local.count(whole)
    assert batched.date_range(frame) == local.date_range(whole)
    assert batched.maximum(frame, apy) == local.maximum(whole, apy)
    assert batched.ranked(frame, apy, lambda n: [0, n // 2, n - 1]) == local.ranked(
        whole, apy, lambda n: [0, n // 2, n - 1]
    )
    columns = ["pool_id", "date", "actual_apy", "target_h7"]
    assert batched.summary(frame, columns) == local.summary(whole, columns)
    assert batched.collect(frame).equals(whole)
    count = lambda t: np.array([t.num_rows, 1.0])  # noqa: E731
    assert batched.total(frame, count)[0] == whole.num_rows


def test_kept_batches_spill_to_disk_until_released(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_batches, "_SPILL_BYTES", 1)  # every batch goes to disk
    compute = BatchedCompute()
    kept = compute.keep(_split(_panel(), [4, 8]))
    files = list(compute._dir.iterdir()) if compute._dir else []
    assert len(files) == 3 and not kept.held
    assert compute.keep(kept) is kept  # kept twice: released twice
    compute.release(kept)
    assert all(f.exists() for f in files)
    assert compute.collect(kept).equals(_panel())
    compute.release(kept)
    assert not any(f.exists() for f in files)
    compute.close()
    assert compute._dir is None


_FORECASTS = "SELECT * FROM forecasts ORDER BY pool_id, made_on, metric, horizon"


def test_the_forecast_in_pool_batches_is_the_forecast_of_one_batch(
    sample_store: Store, settings: Settings
) -> None:
    metrics_stage(sample_store, settings)
    settings.batch_pools = 1_000
    forecast_stage(sample_store, settings)  # its next-day rows are read by every later run
    whole = forecast_stage(sample_store, settings)
    forecasts = sample_store.fetch_arrow(_FORECASTS)
    settings.batch_pools = 7  # 15 batches
    batched = forecast_stage(sample_store, settings)
    assert batched.details["model_version"] == whole.details["model_version"]
    assert batched.rows_read == whole.rows_read
    assert batched.rows_written == 0  # the same forecasts, already there
    assert sample_store.fetch_arrow(_FORECASTS).equals(forecasts)
