"""Loading API responses: counts, idempotence, and bad records that write nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from poolcast.stages.ingest import IngestError, ingest
from poolcast.store import Store

RAW_TABLES = ("pools", "raw_defillama_pool_history", "raw_coinmarketcap_ohlcv", "gas_fees_daily")


def _counts(store: Store) -> dict[str, int]:
    return {
        t: store.fetch_arrow(f"SELECT count(*) AS n FROM {t}").column("n")[0].as_py()  # noqa: S608
        for t in RAW_TABLES
    }


def test_sample_loads_every_record_once(store: Store, sample_dir: Path) -> None:
    report = ingest(store, [sample_dir])
    assert _counts(store) == {
        "pools": 99,
        "raw_defillama_pool_history": 20302,
        "raw_coinmarketcap_ohlcv": 2192,
        "gas_fees_daily": 1045,
    }
    assert report.files == 103
    again = ingest(store, [sample_dir])
    assert sum(again.written.values()) == 0
    assert _counts(store)["raw_defillama_pool_history"] == 20302


def _bad_copy(sample_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    shutil.copy(sample_dir / "defillama" / "pools.json", tmp_path / "pools.json")
    chart = sorted((sample_dir / "defillama" / "chart").glob("*.json"))[0]
    doc = json.loads(chart.read_text())
    doc["data"][3]["apy"] = "n/a"
    doc["data"][5]["tvlUsd"] = -5
    (tmp_path / chart.name).write_text(json.dumps(doc))
    return tmp_path, chart.stem


def test_bad_record_names_file_pool_field_and_writes_nothing(
    store: Store, sample_dir: Path, tmp_path: Path
) -> None:
    folder, pool = _bad_copy(sample_dir, tmp_path)
    with pytest.raises(IngestError) as err:
        ingest(store, [folder])
    message = str(err.value)
    assert f"{pool}.json, pool {pool}, record 3, field 'apy': not a number: 'n/a'" in message
    assert "record 5, field 'tvlUsd'" in message
    assert "nothing was written" in message
    assert set(_counts(store).values()) == {0}


def test_skip_bad_loads_the_rest_and_quarantines(
    store: Store, sample_dir: Path, tmp_path: Path
) -> None:
    folder, pool = _bad_copy(sample_dir, tmp_path)
    total = len(json.loads((folder / f"{pool}.json").read_text())["data"])
    report = ingest(store, [folder], skip_bad=True)
    assert report.quarantined == 2
    assert _counts(store)["raw_defillama_pool_history"] == total - 2
    quarantine = store.fetch_arrow(
        "SELECT pool_id, record_index, field FROM ingest_quarantine ORDER BY record_index"
    ).to_pylist()
    assert quarantine == [
        {"pool_id": pool, "record_index": 3, "field": "apy"},
        {"pool_id": pool, "record_index": 5, "field": "tvlUsd"},
    ]
    again = ingest(store, [folder], skip_bad=True)
    assert sum(again.written.values()) == 0


def test_chart_of_unknown_pool_is_rejected(store: Store, sample_dir: Path, tmp_path: Path) -> None:
    chart = sorted((sample_dir / "defillama" / "chart").glob("*.json"))[0]
    shutil.copy(chart, tmp_path / chart.name)
    with pytest.raises(IngestError, match="unknown pool: ingest pools.json first"):
        ingest(store, [tmp_path])
