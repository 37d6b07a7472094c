"""Bad input has a defined outcome: a clear error naming pool and field (nothing written), or
with --skip-bad the rest loads and the bad record is quarantined with its reason. Then metrics and
forecast on the edge cases: empty store, single-point pools, pools that stop reporting, several
snapshots a day. And a fuzz test of random raw JSON through ingest and metrics.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from fault_inputs import DAY0, POOLS
from fault_inputs import iso as _iso
from fault_inputs import pools_file as _pools_file
from fault_inputs import snap as _snap
from fault_inputs import write as _write
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from poolcast.settings import Settings
from poolcast.spec import FILL_LIMIT_DAYS
from poolcast.stages import forecast_stage, metrics_stage
from poolcast.stages.ingest import IngestError, ingest
from poolcast.store import Store, StoreError
from poolcast.store.checksums import row_count, store_checksums


@pytest.fixture
def seeded(store: Store, tmp_path: Path) -> Store:
    """Two known pools with a week of good history: 'nothing written' must mean 'unchanged'."""
    base = tmp_path / "base"
    base.mkdir()
    _pools_file(base)
    for pool in POOLS:
        _write(base, f"{pool}.json", [_snap(d) for d in range(7)])
    ingest(store, [base])
    return store


BAD_RECORDS: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "missing apy",
        {"timestamp": _iso(DAY0 + dt.timedelta(days=9)), "tvlUsd": 1.0},
        "apy",
        "missing",
    ),
    ("non-numeric apy", _snap(9, apy="5%"), "apy", "not a number"),  # type: ignore[arg-type]
    ("NaN apy", _snap(9, apy=math.nan), "apy", "not finite"),
    ("infinite tvl", _snap(9, tvl=math.inf), "tvlUsd", "not finite"),
    ("huge integer apy", _snap(9, apy=10**400), "apy", "not finite"),  # type: ignore[arg-type]
    ("negative tvl", _snap(9, tvl=-5.0), "tvlUsd", "below 0"),
    ("apy above ceiling", _snap(9, apy=20_000.0), "apy", "above the ceiling"),
    (
        "naive timestamp",
        {**_snap(9), "timestamp": "2024-06-10T23:00:00"},
        "timestamp",
        "no time zone",
    ),
    ("future timestamp", {**_snap(9), "timestamp": "2999-01-01T00:00:00Z"}, "timestamp", "future"),
    ("timestamp before 1970", {**_snap(9), "timestamp": -86400}, "timestamp", "before 2019"),
    ("absurd epoch", {**_snap(9), "timestamp": 1e20}, "timestamp", "not a timestamp"),
    ("NaN in another field", _snap(9, apyBase=math.nan), "apyBase", "not finite"),
    ("NUL character", _snap(9, note="a\x00b"), "note", "NUL"),
    ("lone surrogate", _snap(9, note="\ud800"), "note", "surrogate"),
    ("conflicting duplicate", _snap(3, apy=6.0), "timestamp", "two different snapshots"),
]


def _bad_chart(tmp_path: Path, record: dict[str, Any]) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    _write(folder, "pool-a.json", [_snap(d) for d in range(7)] + [record, _snap(8, apy=7.0)])
    return folder


@pytest.mark.parametrize(
    ("case", "record", "field", "reason"), BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS]
)
def test_bad_snapshot_is_rejected_and_nothing_written(
    seeded: Store, tmp_path: Path, case: str, record: dict[str, Any], field: str, reason: str
) -> None:
    before = store_checksums(seeded)
    with pytest.raises(IngestError) as err:
        ingest(seeded, [_bad_chart(tmp_path, record)])
    message = str(err.value)
    assert "pool pool-a" in message and f"field '{field}'" in message and reason in message
    assert "nothing was written" in message
    assert store_checksums(seeded) == before


@pytest.mark.parametrize(
    ("case", "record", "field", "reason"), BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS]
)
def test_bad_snapshot_is_quarantined_with_skip_bad(
    seeded: Store, tmp_path: Path, case: str, record: dict[str, Any], field: str, reason: str
) -> None:
    history = row_count(seeded, "raw_defillama_pool_history")
    report = ingest(seeded, [_bad_chart(tmp_path, record)], skip_bad=True)
    # Of two different snapshots at one instant neither is trusted: both are quarantined.
    expected = 2 if case == "conflicting duplicate" else 1
    assert report.quarantined == expected
    rows = seeded.fetch_arrow("SELECT pool_id, field, reason FROM ingest_quarantine").to_pylist()
    assert len(rows) == expected
    assert all(r["pool_id"] == "pool-a" and r["field"] == field for r in rows)
    assert all(reason in r["reason"] for r in rows)
    # The good record after the bad one loaded; the conflicting pair keeps the stored one.
    assert row_count(seeded, "raw_defillama_pool_history") == history + 1
    stored = (
        seeded.fetch_arrow(
            "SELECT CAST(raw_json_data->>'apy' AS DOUBLE PRECISION) AS apy "
            "FROM raw_defillama_pool_history WHERE pool_id = 'pool-a' ORDER BY timestamp"
        )
        .column("apy")
        .to_pylist()
    )
    assert stored == [5.0] * 7 + [7.0]


def test_unknown_pool_is_rejected_even_with_an_empty_chart(seeded: Store, tmp_path: Path) -> None:
    folder = tmp_path / "unknown"
    folder.mkdir()
    _write(folder, "pool-z.json", [])
    with pytest.raises(IngestError, match=r"pool pool-z, field 'pool': unknown pool"):
        ingest(seeded, [folder])


@pytest.mark.parametrize(
    ("extra", "field"), [({"chain": 5}, "chain"), ({"stablecoin": "yes"}, "stablecoin")]
)
def test_badly_typed_pool_metadata_is_rejected(
    seeded: Store, tmp_path: Path, extra: dict[str, Any], field: str
) -> None:
    folder = tmp_path / "pools"
    folder.mkdir()
    _pools_file(folder, ("pool-c",), **extra)
    before = store_checksums(seeded)
    with pytest.raises(IngestError, match=rf"pool pool-c, record 0, field '{field}'"):
        ingest(seeded, [folder])
    assert store_checksums(seeded) == before


def test_conflicting_snapshots_across_two_files_are_both_rejected(
    seeded: Store, tmp_path: Path
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _write(one, "pool-b.json", [_snap(20, apy=1.0)])
    _write(two, "pool-b.json", [_snap(20, apy=2.0)])
    report = ingest(seeded, [one, two], skip_bad=True)
    assert report.quarantined == 2
    assert row_count(seeded, "raw_defillama_pool_history") == 14  # neither was kept
    files = seeded.fetch_arrow(
        "SELECT file, record_index FROM ingest_quarantine ORDER BY file, record_index"
    ).to_pylist()
    assert [(f["file"], f["record_index"]) for f in files] == [
        (str(one / "pool-b.json"), 0),
        (str(two / "pool-b.json"), 0),
    ]


def test_exact_duplicates_collapse_and_offsets_convert_to_utc(
    seeded: Store, tmp_path: Path
) -> None:
    folder = tmp_path / "dup"
    folder.mkdir()
    shifted = {**_snap(10), "timestamp": "2024-06-12T01:00:00+02:00"}  # = 2024-06-11T23:00Z
    _write(folder, "pool-a.json", [_snap(9), _snap(9), shifted])
    ingest(seeded, [folder])
    stamps = (
        seeded.fetch_arrow(
            "SELECT timestamp FROM raw_defillama_pool_history WHERE pool_id = 'pool-a' "
            "AND timestamp > $1 ORDER BY timestamp",
            [dt.datetime(2024, 6, 8)],
        )
        .column("timestamp")
        .to_pylist()
    )
    assert stamps == [dt.datetime(2024, 6, 10, 23), dt.datetime(2024, 6, 11, 23)]


def test_bad_ohlcv_and_gas_name_their_field(seeded: Store, tmp_path: Path) -> None:
    folder = tmp_path / "market"
    folder.mkdir()
    quotes = [
        {"time_open": "2024-06-01T00:00:00Z", "quote": {"USD": {"close": 10.0}}},
        {"time_open": "2024-06-02T00:00:00Z", "quote": ["not", "a", "dict"]},
    ]
    (folder / "cmc.json").write_text(json.dumps({"data": {"symbol": "ETH", "quotes": quotes}}))
    (folder / "gas.csv").write_bytes(b'"Date(UTC)","Value (Wei)"\n"13/45/2024","1"\n')
    (folder / "latin1.csv").write_bytes(b'"Date(UTC)","Value (Wei)"\n"\xff","1"\n')
    with pytest.raises(IngestError) as err:
        ingest(seeded, [folder])
    message = str(err.value)
    assert "cmc.json, pool ETH, record 1, field 'quote.USD.close'" in message
    assert "gas.csv, record 0, field 'Date(UTC)'" in message
    assert "latin1.csv, field 'file': not a readable CSV" in message


# -- metrics and forecast on the edge cases -------------------------------------------------------


def test_empty_store_gives_clear_errors(store: Store, settings: Settings) -> None:
    with pytest.raises(StoreError, match="run `poolcast ingest"):
        metrics_stage(store, settings)
    with pytest.raises(StoreError, match="run `poolcast metrics` first"):
        forecast_stage(store, settings)
    empty = metrics_stage(store, settings.model_copy(update={"as_of": dt.date(2024, 6, 1)}))
    assert empty.rows_written == 0 and row_count(store, "pool_daily_metrics") == 0


def test_single_point_and_stopped_pools(store: Store, tmp_path: Path, settings: Settings) -> None:
    folder = tmp_path / "edge"
    folder.mkdir()
    _pools_file(folder, ("single", "stops", "steady"))
    _write(folder, "single.json", [_snap(50, apy=3.0)])
    _write(folder, "stops.json", [_snap(d, apy=4.0 + d) for d in range(5)])
    # Several snapshots a day: the latest of the day is the day's value.
    early = {**_snap(99, apy=1.0), "timestamp": _iso(DAY0 + dt.timedelta(days=99, hours=-20))}
    _write(
        folder, "steady.json", [_snap(d, apy=8.0) for d in range(99)] + [early, _snap(99, apy=9.0)]
    )
    ingest(store, [folder])
    metrics_stage(store, settings)
    rows = store.fetch_arrow(
        "SELECT pool_id, count(*) AS n, min(date) AS first, max(date) AS last, "
        "count(actual_apy) AS apy, count(stddev_apy_7d) AS std, "
        "sum(CAST(is_observed AS INTEGER)) AS obs "
        "FROM pool_daily_metrics GROUP BY pool_id ORDER BY pool_id"
    ).to_pylist()
    by_pool = {r["pool_id"]: r for r in rows}
    last_day = (DAY0 + dt.timedelta(days=99)).date()
    # A single point: one observed day plus the bounded fill; no standard deviation of one value
    # (the first day), then the deviation of the filled values.
    single = by_pool["single"]
    assert single["n"] == FILL_LIMIT_DAYS + 1 and single["obs"] == 1
    assert single["std"] == FILL_LIMIT_DAYS
    # A pool that stops: its grid ends FILL_LIMIT_DAYS after its last snapshot, not at as-of.
    stops = by_pool["stops"]
    assert stops["last"] == (DAY0 + dt.timedelta(days=4 + FILL_LIMIT_DAYS)).date()
    assert stops["n"] == 5 + FILL_LIMIT_DAYS and stops["apy"] == stops["n"]
    assert by_pool["steady"]["last"] == last_day
    latest = (
        store.fetch_arrow(
            "SELECT actual_apy FROM pool_daily_metrics WHERE pool_id = 'steady' AND date = $1",
            [last_day],
        )
        .column("actual_apy")
        .to_pylist()
    )
    assert latest == [9.0]
    result = forecast_stage(store, settings)
    forecasts = store.fetch_arrow(
        "SELECT pool_id, date FROM pool_daily_metrics "
        "WHERE forecasted_apy IS NOT NULL ORDER BY pool_id"
    ).to_pylist()
    # One forecast per active pool, for the day after its own latest observed day.
    assert result.details["forecasts"] == 3
    assert [(f["pool_id"], f["date"]) for f in forecasts] == [
        ("single", (DAY0 + dt.timedelta(days=51)).date()),
        ("steady", last_day + dt.timedelta(days=1)),
        ("stops", (DAY0 + dt.timedelta(days=5)).date()),
    ]


# -- fuzz: random raw JSON through ingest and metrics ---------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_stamps = (
    st.datetimes(
        min_value=dt.datetime(2023, 1, 1),
        max_value=dt.datetime(2026, 1, 1),
        timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5)), None]),
    ).map(lambda d: d.isoformat())
    | st.integers(min_value=1_672_531_200, max_value=1_767_225_600)
    | _scalars
)
_numbers = st.floats(min_value=-200, max_value=20_000) | st.integers(-10, 10**6) | _scalars
_snapshot = st.fixed_dictionaries(
    {}, optional={"timestamp": _stamps, "apy": _numbers, "tvlUsd": _numbers, "apyBase": _json}
)
_pool_ids = st.sampled_from(["pool-a", "pool-b", "pool-new"]) | st.text(min_size=1, max_size=10)
_pool_rec = st.fixed_dictionaries(
    {"pool": _pool_ids},
    optional={"chain": _json, "symbol": st.text(max_size=6), "stablecoin": _json},
)
_file_names = st.sampled_from(["pool-a", "pool-b", "pool-new", "x'; DROP TABLE pools; --"])
_document = st.one_of(
    st.tuples(_file_names, st.lists(_snapshot | _json, max_size=8)),
    st.tuples(st.just("pools"), st.lists(_pool_rec, min_size=1, max_size=3)),
    st.tuples(_file_names, _json),
)
_documents = st.lists(_document, min_size=1, max_size=3)


def _fuzz_once(
    store: Store, docs: list[tuple[str, Any]], skip_bad: bool, settings: Settings
) -> None:
    before = store_checksums(store)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, (name, data) in enumerate(docs):
            path = Path(tmp) / str(i) / f"{name}.json"
            path.parent.mkdir()
            body = {"data": data} if i % 2 == 0 else data
            path.write_text(json.dumps(body, allow_nan=True))
            paths.append(path)
        try:
            report = ingest(store, paths, skip_bad=skip_bad)
        except IngestError as exc:
            assert not skip_bad and exc.bad
            assert store_checksums(store) == before, "a rejected ingest wrote something"
            return
        quarantined = row_count(store, "ingest_quarantine")
        assert report.quarantined <= quarantined
    before = store_checksums(store)
    try:
        metrics_stage(store, settings)
    except StoreError:
        assert store_checksums(store) == before, "a failed metrics run wrote something"
        return
    bad = (
        store.fetch_arrow(
            "SELECT count(*) AS n FROM pool_daily_metrics WHERE actual_apy > $1 OR actual_tvl < 0 "
            "OR actual_apy = 'NaN'::DOUBLE PRECISION",
            [settings.apy_ceiling],
        )
        .column("n")[0]
        .as_py()
    )
    assert bad == 0, "garbage reached pool_daily_metrics"


@hsettings(
    max_examples=int(os.environ.get("POOLCAST_TEST_FUZZ_EXAMPLES", "40")),  # more for a campaign
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(docs=_documents, skip_bad=st.booleans())
def test_fuzz_raw_json_through_ingest_and_metrics(
    seeded: Store, settings: Settings, docs: list[tuple[str, Any]], skip_bad: bool
) -> None:
    _fuzz_once(seeded, docs, skip_bad, settings)
