"""The same input twice gives byte-identical tables: rerunning ingest, metrics and forecast changes
nothing, and a fresh store fed the same files ends exactly the same (checksums of ordered dumps)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from poolcast.settings import Settings
from poolcast.stages import forecast_stage, metrics_stage
from poolcast.stages.ingest import ingest
from poolcast.store import Store, open_store
from poolcast.store.checksums import store_checksums

# Run bookkeeping differs by design between two runs (ids, times); everything else must not.
BOOKKEEPING = {"pipeline_runs", "schema_migrations"}


def _tables(store: Store) -> list[str]:
    names = (
        store.fetch_arrow(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
        .column("table_name")
        .to_pylist()
    )
    return sorted(str(n) for n in names if n not in BOOKKEEPING)


def _models(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def some_pools(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve pools of the sample with the market files: the real shapes, a quick forecast."""
    out = tmp_path_factory.mktemp("subset")
    (out / "chart").mkdir()
    shutil.copy(sample_dir / "defillama" / "pools.json", out / "pools.json")
    for chart in sorted((sample_dir / "defillama" / "chart").glob("*.json"))[:12]:
        shutil.copy(chart, out / "chart" / chart.name)
    shutil.copytree(sample_dir / "market", out / "market")
    return out


def _pipeline(store: Store, data: Path, settings: Settings) -> tuple[int, int, int]:
    report = ingest(store, [data])
    metrics = metrics_stage(store, settings)
    forecast = forecast_stage(store, settings)
    return sum(report.written.values()), metrics.rows_written, forecast.rows_written


def test_same_input_twice_gives_byte_identical_tables(
    store: Store, store_url: str, some_pools: Path, tmp_path: Path
) -> None:
    first = Settings(model_dir=str(tmp_path / "models-1"))
    written = _pipeline(store, some_pools, first)
    assert all(n > 0 for n in written)
    tables = _tables(store)
    assert {"pool_daily_metrics", "raw_defillama_pool_history", "pools"} <= set(tables)
    once = store_checksums(store, tables)

    # The same input again on the same store: nothing is written, nothing changes.
    again = _pipeline(store, some_pools, first)
    assert again == (0, 0, 0)
    assert store_checksums(store, tables) == once

    # A fresh store of the same kind, fed the same files: the same bytes, the same models.
    other_url = (
        str(tmp_path / "other.duckdb") if store.dialect == "duckdb" else _fresh_pg(store_url)
    )
    second = Settings(model_dir=str(tmp_path / "models-2"))
    with open_store(other_url) as other:
        other.init_schema()
        _pipeline(other, some_pools, second)
        assert store_checksums(other, tables) == once
    assert _models(tmp_path / "models-1") == _models(tmp_path / "models-2")


def _fresh_pg(url: str) -> str:
    from conftest import fresh_pg_schema_url

    base = url.split("?", 1)[0]
    return fresh_pg_schema_url(base)
