"""API responses -> raw tables: DefiLlama /pools and /chart/<pool>, CoinMarketCap OHLCV, Etherscan gas.

Everything is validated before anything is written. A bad record names its file, pool, record and
field; without ``skip_bad`` nothing is written at all, with it the good records load and the bad
ones go to ``ingest_quarantine`` with their reason. Re-ingesting the same files changes nothing.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from poolcast.store import Store

# A snapshot more than this far ahead of the clock is not real (clock skew allowance).
_FUTURE_SLACK = dt.timedelta(hours=1)


@dataclass(frozen=True)
class BadRecord:
    file: str
    pool_id: str | None
    index: int | None
    field: str
    reason: str
    raw: str = ""

    def __str__(self) -> str:
        where = f"{self.file}"
        if self.pool_id:
            where += f", pool {self.pool_id}"
        if self.index is not None:
            where += f", record {self.index}"
        return f"{where}, field '{self.field}': {self.reason}"


class IngestError(ValueError):
    """Bad input; nothing was written."""

    def __init__(self, bad: list[BadRecord]) -> None:
        self.bad = bad
        shown = "\n  ".join(str(b) for b in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        super().__init__(
            f"{len(bad)} bad record(s); nothing was written "
            f"(use --skip-bad to load the rest and quarantine these):\n  {shown}{more}"
        )


@dataclass
class IngestReport:
    files: int = 0
    read: dict[str, int] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0

    def add(self, table: str, read: int) -> None:
        self.read[table] = self.read.get(table, 0) + read


@dataclass
class _Batch:
    pools: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    ohlcv: list[dict[str, Any]] = field(default_factory=list)
    gas: list[dict[str, Any]] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)


def _files(paths: Iterable[str | Path]) -> Iterator[Path]:
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.suffix in (".json", ".csv"))
        elif p.exists():
            yield p
        else:
            raise FileNotFoundError(f"no such file or directory: {p}")


def _number(
    value: Any, *, minimum: float | None = None, maximum: float | None = None
) -> tuple[float | None, str | None]:
    if value is None:
        return None, "missing"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"not a number: {value!r}"
    number = float(value)
    if not math.isfinite(number):
        return None, f"not finite: {value!r}"
    if minimum is not None and number < minimum:
        return None, f"{number} is below {minimum}"
    if maximum is not None and number > maximum:
        return None, f"{number} is above the ceiling {maximum}"
    return number, None


def _timestamp(value: Any) -> tuple[dt.datetime | None, str | None]:
    """An ISO-8601 string with a zone (converted to UTC) or epoch seconds; naive UTC out."""
    if isinstance(value, bool):
        return None, f"not a timestamp: {value!r}"
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return None, f"not a timestamp: {value!r}"
        return dt.datetime.fromtimestamp(value, dt.UTC).replace(tzinfo=None), None
    if not isinstance(value, str):
        return None, "missing" if value is None else f"not a timestamp: {value!r}"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None, f"not an ISO-8601 timestamp: {value!r}"
    if parsed.tzinfo is None:
        return None, f"timestamp {value!r} has no time zone; DefiLlama sends UTC with 'Z'"
    return parsed.astimezone(dt.UTC).replace(tzinfo=None), None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=True)


def _parse_chart(
    path: Path, pool_id: str, rows: list[Any], batch: _Batch, apy_ceiling: float, now: dt.datetime
) -> int:
    seen: dict[dt.datetime, str] = {}
    for i, rec in enumerate(rows):
        if not isinstance(rec, dict):
            batch.bad.append(BadRecord(path.name, pool_id, i, "record", "not a JSON object"))
            continue
        raw = _dumps(rec)
        problems: list[tuple[str, str]] = []
        ts, err = _timestamp(rec.get("timestamp"))
        if err:
            problems.append(("timestamp", err))
        elif ts is not None and ts > now + _FUTURE_SLACK:
            problems.append(("timestamp", f"{ts.isoformat()}Z is in the future"))
        _, err = _number(rec.get("apy"), minimum=-100.0, maximum=apy_ceiling)
        if err:
            problems.append(("apy", err))
        _, err = _number(rec.get("tvlUsd"), minimum=0.0)
        if err:
            problems.append(("tvlUsd", err))
        if not problems and ts is not None:
            if ts in seen:
                if seen[ts] != raw:
                    problems.append(("timestamp", f"two different snapshots at {ts.isoformat()}Z"))
                continue  # an exact repeat is the same snapshot
            seen[ts] = raw
        if problems:
            batch.bad.extend(BadRecord(path.name, pool_id, i, f, r, raw) for f, r in problems)
            continue
        batch.history.append({"pool_id": pool_id, "timestamp": ts, "raw_json_data": raw})
    return len(rows)


def _parse_pools(path: Path, rows: list[Any], batch: _Batch) -> int:
    for i, rec in enumerate(rows):
        pool = rec.get("pool") if isinstance(rec, dict) else None
        if not isinstance(pool, str) or not pool.strip():
            batch.bad.append(BadRecord(path.name, None, i, "pool", "missing pool id"))
            continue
        stable = rec.get("stablecoin")
        batch.pools.append(
            {
                "pool_id": pool.strip(),
                "chain": rec.get("chain"),
                "project": rec.get("project"),
                "symbol": rec.get("symbol"),
                "stablecoin": bool(stable) if stable is not None else None,
                "il_risk": rec.get("ilRisk"),
                "exposure": rec.get("exposure"),
                "is_active": True,
                "raw_json_data": _dumps(rec),
            }
        )
    return len(rows)


def _parse_ohlcv(path: Path, data: dict[str, Any], batch: _Batch) -> int:
    symbol = data.get("symbol")
    quotes = data.get("quotes")
    if not isinstance(symbol, str) or not isinstance(quotes, list):
        batch.bad.append(BadRecord(path.name, None, None, "data", "expected data.symbol, quotes"))
        return 0
    for i, q in enumerate(quotes):
        ts, err = _timestamp(q.get("time_open") if isinstance(q, dict) else None)
        usd = q.get("quote", {}).get("USD") if isinstance(q, dict) else None
        close, cerr = _number(usd.get("close") if isinstance(usd, dict) else None, minimum=0.0)
        if err or cerr:
            fld, why = ("time_open", err) if err else ("quote.USD.close", cerr)
            batch.bad.append(BadRecord(path.name, symbol, i, fld, str(why), _dumps(q)))
            continue
        batch.ohlcv.append(
            {"symbol": symbol, "data_timestamp": ts, "raw_json_data": _dumps(q["quote"])}
        )
    return len(quotes)


def _parse_gas(path: Path, batch: _Batch) -> int:
    n = 0
    with path.open(newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            n += 1
            day_text = row.get("Date(UTC)", "")
            try:
                month, day, year = (int(x) for x in day_text.split("/"))
                day_value = dt.date(year, month, day)
            except ValueError:
                batch.bad.append(BadRecord(path.name, None, i, "Date(UTC)", f"bad date {day_text!r}"))
                continue
            try:
                wei = float(row.get("Value (Wei)") or "nan")
            except ValueError:
                wei = math.nan
            gwei, err = _number(wei / 1e9, minimum=0.0)
            if err:
                batch.bad.append(BadRecord(path.name, None, i, "Value (Wei)", err))
                continue
            batch.gas.append({"date": day_value, "actual_avg_gas_gwei": gwei})
    return n


def _parse_file(path: Path, batch: _Batch, report: IngestReport, apy_ceiling: float) -> None:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    if path.suffix == ".csv":
        report.add("gas_fees_daily", _parse_gas(path, batch))
        return
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        batch.bad.append(BadRecord(path.name, None, None, "file", f"not valid JSON: {exc}"))
        return
    data = doc.get("data") if isinstance(doc, dict) else None
    if isinstance(data, dict) and "quotes" in data:
        report.add("raw_coinmarketcap_ohlcv", _parse_ohlcv(path, data, batch))
    elif isinstance(data, list) and data and isinstance(data[0], dict) and "pool" in data[0]:
        report.add("pools", _parse_pools(path, data, batch))
    elif isinstance(data, list):
        # /chart/<pool> responses carry no pool id: the file is named after the pool.
        report.add(
            "raw_defillama_pool_history",
            _parse_chart(path, path.stem, data, batch, apy_ceiling, now),
        )
    else:
        batch.bad.append(
            BadRecord(path.name, None, None, "file", "not a DefiLlama, CoinMarketCap or gas file")
        )


_SCHEMAS = {
    "pools": pa.schema(
        [
            ("pool_id", pa.string()),
            ("chain", pa.string()),
            ("project", pa.string()),
            ("symbol", pa.string()),
            ("stablecoin", pa.bool_()),
            ("il_risk", pa.string()),
            ("exposure", pa.string()),
            ("is_active", pa.bool_()),
            ("raw_json_data", pa.string()),
        ]
    ),
    "raw_defillama_pool_history": pa.schema(
        [("pool_id", pa.string()), ("timestamp", pa.timestamp("us")), ("raw_json_data", pa.string())]
    ),
    "raw_coinmarketcap_ohlcv": pa.schema(
        [
            ("symbol", pa.string()),
            ("data_timestamp", pa.timestamp("us")),
            ("raw_json_data", pa.string()),
        ]
    ),
    "gas_fees_daily": pa.schema([("date", pa.date32()), ("actual_avg_gas_gwei", pa.float64())]),
    "ingest_quarantine": pa.schema(
        [
            ("file", pa.string()),
            ("pool_id", pa.string()),
            ("record_index", pa.int64()),
            ("field", pa.string()),
            ("reason", pa.string()),
            ("raw", pa.string()),
        ]
    ),
}
_KEYS = {
    "pools": ["pool_id"],
    "raw_defillama_pool_history": ["pool_id", "timestamp"],
    "raw_coinmarketcap_ohlcv": ["symbol", "data_timestamp"],
    "gas_fees_daily": ["date"],
    "ingest_quarantine": ["file", "pool_id", "record_index", "field"],
}


def _known_pools(store: Store) -> set[str]:
    return {r["pool_id"] for r in store.fetch_arrow("SELECT pool_id FROM pools").to_pylist()}


def ingest(
    store: Store, paths: Iterable[str | Path], *, skip_bad: bool = False, apy_ceiling: float = 1e4
) -> IngestReport:
    """Validate every file, then write all of it in one transaction (or nothing)."""
    store.require_schema()
    report = IngestReport()
    batch = _Batch()
    for path in _files(paths):
        report.files += 1
        _parse_file(path, batch, report, apy_ceiling)

    known = _known_pools(store) | {p["pool_id"] for p in batch.pools}
    unknown = sorted({h["pool_id"] for h in batch.history} - known)
    for pool in unknown:
        batch.bad.append(
            BadRecord(f"{pool}.json", pool, None, "pool", "unknown pool: ingest pools.json first")
        )
    if unknown:
        batch.history = [h for h in batch.history if h["pool_id"] not in set(unknown)]

    if batch.bad and not skip_bad:
        raise IngestError(batch.bad)

    json_type = "JSONB" if store.dialect == "postgres" else "JSON"
    tables = {
        "pools": batch.pools,
        "raw_defillama_pool_history": batch.history,
        "raw_coinmarketcap_ohlcv": batch.ohlcv,
        "gas_fees_daily": batch.gas,
        "ingest_quarantine": [
            {
                "file": b.file,
                "pool_id": b.pool_id or "",
                "record_index": -1 if b.index is None else b.index,
                "field": b.field,
                "reason": b.reason,
                "raw": b.raw,
            }
            for b in batch.bad
        ],
    }
    with store.transaction():
        for name, rows in tables.items():
            if not rows:
                continue
            data = pa.Table.from_pylist(_dedupe(rows, _KEYS[name]), schema=_SCHEMAS[name])
            casts = {"raw_json_data": json_type} if "raw_json_data" in data.column_names else {}
            report.written[name] = store.merge(name, data, _KEYS[name], casts=casts)
    report.quarantined = len(batch.bad)
    return report


def _dedupe(rows: list[dict[str, Any]], key: list[str]) -> list[dict[str, Any]]:
    """Last one wins for a key seen twice in one batch (e.g. the same file given twice)."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        out[tuple(row[k] for k in key)] = row
    return list(out.values())
