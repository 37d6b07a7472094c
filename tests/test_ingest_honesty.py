"""Issue 23: ingest says what it did. A revision of a stored snapshot is counted, named and its
old values kept (or refused); validate's bounds, API error responses, CSV reasons and
implausible dates are refused with the record named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fault_inputs import pools_file, small_history, snap, write
from typer.testing import CliRunner

from poolcast.cli import app
from poolcast.stages.ingest import IngestError, ingest
from poolcast.store import Store
from poolcast.store.checksums import DATA_TABLES, row_count, store_checksums


def _revised_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "revised"
    folder.mkdir(exist_ok=True)
    write(folder, "pool-a.json", [snap(3, apy=9.5), snap(41, apy=4.0)])  # day 3 revised, 41 new
    return folder


def test_a_revision_is_counted_named_and_its_old_values_kept(store: Store, tmp_path: Path) -> None:
    ingest(store, [small_history(tmp_path / "in")])
    report = ingest(store, [_revised_folder(tmp_path)])
    assert report.revisions == {"raw_defillama_pool_history": 1}
    assert report.written["raw_defillama_pool_history"] == 1  # the new day only
    assert report.revised_examples == ["pool pool-a at 2024-06-04T23:00:00Z"]
    [row] = store.fetch_arrow(
        "SELECT pool_id, CAST(old_raw_json_data AS TEXT) AS old, "
        "CAST(new_raw_json_data AS TEXT) AS new FROM raw_snapshot_revisions"
    ).to_pylist()
    assert row["pool_id"] == "pool-a"
    assert json.loads(row["old"])["apy"] == 6.0 and json.loads(row["new"])["apy"] == 9.5
    stored = store.fetch_arrow(
        "SELECT CAST(raw_json_data AS TEXT) AS r FROM raw_defillama_pool_history "
        "WHERE pool_id = 'pool-a' AND timestamp = '2024-06-04 23:00:00'"
    ).to_pylist()
    assert json.loads(stored[0]["r"])["apy"] == 9.5
    again = ingest(store, [_revised_folder(tmp_path)])  # the same revision twice: nothing new
    assert again.revised == 0 and again.written.get("raw_defillama_pool_history", 0) == 0
    assert row_count(store, "raw_snapshot_revisions") == 1


def test_revisions_can_be_refused(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(store, [small_history(tmp_path / "in")])
    before = store_checksums(store, DATA_TABLES)
    monkeypatch.setenv("POOLCAST_INGEST_REVISIONS", "refuse")
    with pytest.raises(IngestError, match=r"pool-a.json, pool pool-a, record 0, field 'timestamp'"
                       r": revises the stored snapshot at 2024-06-04T23:00:00Z"):
        ingest(store, [_revised_folder(tmp_path)])
    assert store_checksums(store, DATA_TABLES) == before
    report = ingest(store, [_revised_folder(tmp_path)], skip_bad=True)
    assert report.revised == 0 and report.quarantined == 1
    assert report.written["raw_defillama_pool_history"] == 1  # the new day loads
    assert row_count(store, "raw_snapshot_revisions") == 0
    monkeypatch.setenv("POOLCAST_INGEST_REVISIONS", "maybe")
    with pytest.raises(ValueError, match="choose accept or refuse"):
        ingest(store, [_revised_folder(tmp_path)])


def test_the_cli_says_how_many_snapshots_were_revised(store: Store, tmp_path: Path) -> None:
    ingest(store, [small_history(tmp_path / "in")])
    url = store.url
    store.close()
    result = CliRunner().invoke(app, ["ingest", "--store", url, str(_revised_folder(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "written        1  revised        1" in result.output
    assert "1 stored snapshot(s) revised" in result.output
    assert "pool pool-a at 2024-06-04T23:00:00Z" in result.output


def _refused(store: Store, folder: Path) -> list[str]:
    before = store_checksums(store, DATA_TABLES)
    with pytest.raises(IngestError) as info:
        ingest(store, [folder])
    assert store_checksums(store, DATA_TABLES) == before
    return [str(b) for b in info.value.bad]


def _folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    pools_file(folder)
    return folder


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (snap(1, tvl=1e20), "field 'tvlUsd': 1e+20 is above the ceiling 1000000000000.0"),
        (snap(1, apy=-150.0), "field 'apy': -150.0 is below -100.0"),
        ({**snap(1), "timestamp": "1971-03-01T23:00:00Z"},
         "field 'timestamp': 1971-03-01T23:00:00Z is before 2019-01-01"),
        ({**snap(1), "timestamp": 0}, "field 'timestamp': 1970-01-01T00:00:00Z is before 2019"),
    ],
    ids=["tvl-1e20", "apy-below-floor", "year-1971", "epoch-zero"],
)
def test_snapshots_outside_validates_bounds_are_refused(
    store: Store, tmp_path: Path, record: dict[str, Any], reason: str
) -> None:
    folder = _folder(tmp_path, "bad")
    write(folder, "pool-a.json", [snap(0), record])
    [bad] = _refused(store, folder)
    assert reason in bad and "pool-a.json, pool pool-a, record 1, " in bad


def test_the_earliest_snapshot_day_is_a_setting(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _folder(tmp_path, "old")
    write(folder, "pool-a.json", [{**snap(0), "timestamp": "2018-06-01T23:00:00Z"}])
    assert "is before 2019-01-01" in _refused(store, folder)[0]
    monkeypatch.setenv("POOLCAST_INGEST_EARLIEST", "2018-01-01")
    assert ingest(store, [folder]).written["raw_defillama_pool_history"] == 1


@pytest.mark.parametrize(
    ("name", "doc", "reason"),
    [
        ("pool-a.json", {"status": "error"}, "field 'status': an API error response, status "
         "'error'"),
        ("pool-a.json", {"status": "error", "message": "rate limited", "data": []},
         "status 'error' ('rate limited')"),
        ("eth.json", {"status": {"error_code": 1008, "error_message": "limit reached"},
                      "data": {"symbol": "ETH", "quotes": []}},
         "an API error response, error_code 1008 ('limit reached')"),
        ("pools.json", {"status": "success", "data": []},
         "pools.json, field 'data': the /pools response lists no pools"),
    ],
    ids=["defillama-error", "defillama-error-with-data", "cmc-error-code", "empty-pools"],
)
def test_api_error_responses_are_refused(
    store: Store, tmp_path: Path, name: str, doc: dict[str, Any], reason: str
) -> None:
    folder = tmp_path / "api"
    folder.mkdir()
    (folder / name).write_text(json.dumps(doc))
    [bad] = _refused(store, folder)
    assert reason in bad, bad


def test_market_prices_must_be_prices(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "cmc"
    folder.mkdir()
    quotes = [
        {"time_open": "2024-06-01T00:00:00Z", "quote": {"USD": {"open": -5.0, "close": 10.0}}},
        {"time_open": "2008-06-01T00:00:00Z", "quote": {"USD": {"close": 10.0}}},
        {"time_open": "2024-06-02T00:00:00Z", "quote": {"USD": {"close": 10.0, "low": "x"}}},
    ]
    (folder / "eth.json").write_text(json.dumps({"data": {"symbol": "ETH", "quotes": quotes}}))
    bad = _refused(store, folder)
    assert bad[0].endswith("record 0, field 'quote.USD.open': -5.0 is below 0.0")
    assert bad[1].endswith("record 1, field 'time_open': 2008-06-01T00:00:00Z is before "
                           "2009-01-03, Bitcoin's first block")
    assert bad[2].endswith("record 2, field 'quote.USD.low': not a number: 'x'")


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        ('"6/1/2024","1","-5"', "field 'Value (Wei)': -5 Wei is below 0"),
        ('"6/1/2024","1","abc"', "field 'Value (Wei)': not a number: 'abc'"),
        ('"6/1/2024","1",""', "field 'Value (Wei)': missing"),
        ('"6/1/2024","1","inf"', "field 'Value (Wei)': not finite: 'inf'"),
        ('"13/45/2024","1","5"', "field 'Date(UTC)': not a date (M/D/YYYY): '13/45/2024'"),
        ('"6/1/2014","1","5"', "field 'Date(UTC)': 2014-06-01 is before 2015-07-30, "
         "Ethereum's first block"),
        ('"6/1/2999","1","5"', "field 'Date(UTC)': 2999-06-01 is in the future"),
    ],
    ids=["negative", "text", "empty", "infinite", "bad-date", "before-ethereum", "future"],
)
def test_gas_csv_reasons_name_the_column_and_the_value(
    store: Store, tmp_path: Path, rows: str, reason: str
) -> None:
    folder = tmp_path / "gas"
    folder.mkdir()
    (folder / "gas.csv").write_text(f'"Date(UTC)","UnixTimeStamp","Value (Wei)"\n{rows}\n')
    [bad] = _refused(store, folder)
    assert bad.endswith(f"record 0, {reason}"), bad


def test_a_gas_csv_without_its_columns_is_refused(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "gas"
    folder.mkdir()
    (folder / "gas.csv").write_text('"Day","Wei"\n"6/1/2024","5"\n')
    [bad] = _refused(store, folder)
    assert "field 'file': not an Etherscan gas CSV: no 'Date(UTC)', 'Value (Wei)' column" in bad


def test_a_folder_without_data_files_is_an_error(store: Store, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match="no .json or .csv files in"):
        ingest(store, [empty])
