"""API responses -> raw tables: DefiLlama /pools, /chart/<pool>, CoinMarketCap OHLCV, Etherscan gas.

Everything is validated before anything is written. A bad record names its file, pool, record and
field; without ``skip_bad`` nothing is written at all, with it the good records load and the bad
ones go to ``ingest_quarantine`` with their reason. Re-ingesting the same files changes nothing.
A snapshot re-delivered with new values is a revision: counted apart, its old values kept in
``raw_snapshot_revisions``, or refused (``POOLCAST_INGEST_REVISIONS=refuse``).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from poolcast.log import progress
from poolcast.spec import APY_FLOOR, TVL_CEILING
from poolcast.store import Store
from poolcast.store._schema import ARROW_SCHEMAS, KEYS
from poolcast.store.revisions import changed_rows, keep_revisions, without_keys

HISTORY = "raw_defillama_pool_history"

# A snapshot more than this far ahead of the clock is not real (clock skew allowance).
_FUTURE_SLACK = dt.timedelta(hours=1)
# Nothing on a blockchain predates the Unix epoch; earlier stamps are corrupt (and overflow dates).
_EARLIEST = dt.datetime(1970, 1, 1)
# Plausible first days: DeFi pool yields (POOLCAST_INGEST_EARLIEST), market prices (Bitcoin's
# first block), Ethereum gas (Ethereum's first block). Earlier records are corrupt.
DEFAULT_EARLIEST_SNAPSHOT = dt.date(2019, 1, 1)
_EARLIEST_PRICE = dt.datetime(2009, 1, 3)
_EARLIEST_GAS = dt.date(2015, 7, 30)
# The bounds `poolcast validate` checks (its value_ranges): what ingest refuses to store.
REVISION_POLICIES = ("accept", "refuse")


def earliest_snapshot() -> dt.date:
    """POOLCAST_INGEST_EARLIEST (YYYY-MM-DD): snapshots before it are refused."""
    text = os.environ.get("POOLCAST_INGEST_EARLIEST", "").strip()
    try:
        return dt.date.fromisoformat(text) if text else DEFAULT_EARLIEST_SNAPSHOT
    except ValueError:
        raise ValueError(f"POOLCAST_INGEST_EARLIEST={text!r} is not a date (YYYY-MM-DD)") from None


def revision_policy() -> str:
    """POOLCAST_INGEST_REVISIONS: ``accept`` (default; the old values are kept) or ``refuse``."""
    text = os.environ.get("POOLCAST_INGEST_REVISIONS", "").strip().lower() or "accept"
    if text not in REVISION_POLICIES:
        raise ValueError(f"POOLCAST_INGEST_REVISIONS={text!r}: choose accept or refuse")
    return text


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
    """``written``: new rows per table; ``revisions``: stored rows replaced by new values."""

    files: int = 0
    read: dict[str, int] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)
    revised_examples: list[str] = field(default_factory=list)
    quarantined: int = 0

    @property
    def revised(self) -> int:
        return sum(self.revisions.values())

    def add(self, table: str, read: int) -> None:
        self.read[table] = self.read.get(table, 0) + read


@dataclass
class _Batch:
    pools: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    ohlcv: list[dict[str, Any]] = field(default_factory=list)
    gas: list[dict[str, Any]] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    charts: set[str] = field(default_factory=set)  # pool ids that came with a /chart file
    seen: dict[tuple[str, dt.datetime], tuple[str, str, int]] = field(default_factory=dict)
    conflicts: set[tuple[str, dt.datetime]] = field(default_factory=set)


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
        return None, f"not a number: {_short(value)}"
    try:
        number = float(value)
    except OverflowError:
        return None, "not finite: an integer too large for a double"
    if not math.isfinite(number):
        return None, f"not finite: {value!r}"
    if minimum is not None and number < minimum:
        return None, f"{number} is below {minimum}"
    if maximum is not None and number > maximum:
        return None, f"{number} is above the ceiling {maximum}"
    return number, None


def _timestamp(
    value: Any, earliest: dt.datetime = _EARLIEST, what: str = "1970"
) -> tuple[dt.datetime | None, str | None]:
    """An ISO-8601 string with a zone (converted to UTC) or epoch seconds; naive UTC out.
    Stamps before ``earliest`` (``what`` says why it is the bound) are refused."""
    if isinstance(value, bool):
        return None, f"not a timestamp: {value!r}"
    if isinstance(value, int | float):
        try:
            stamp = dt.datetime.fromtimestamp(value, dt.UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            return None, f"not a timestamp: {_short(value)}"
    elif not isinstance(value, str):
        return None, "missing" if value is None else f"not a timestamp: {_short(value)}"
    else:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None, f"not an ISO-8601 timestamp: {_short(value)}"
        if parsed.tzinfo is None:
            return None, f"timestamp {_short(value)} has no time zone; DefiLlama sends UTC with 'Z'"
        try:
            stamp = parsed.astimezone(dt.UTC).replace(tzinfo=None)
        except OverflowError:
            return None, f"timestamp {_short(value)} is out of range"
    if stamp < max(earliest, _EARLIEST):
        return None, f"{stamp.isoformat()}Z is before {what}"
    return stamp, None


def _short(value: Any, limit: int = 80) -> str:
    """A value for an error message, cut short: a fuzzed megabyte string is no message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unstorable(value: Any, path: str = "") -> tuple[str, str] | None:
    """(field, reason) for the first part of a JSON value that neither store can hold.

    PostgreSQL's TEXT and JSONB refuse NUL characters, JSON has no NaN/Infinity, and a lone
    UTF-16 surrogate is not UTF-8: such a record is rejected rather than failing the write.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return path or "record", f"not finite: {value!r}"
    if isinstance(value, str):
        if "\x00" in value:
            return path or "record", "contains a NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "record", "not valid Unicode (lone surrogate)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            bad = _unstorable(key, path or "record") or _unstorable(
                item, f"{path}.{key}" if path else str(key)
            )
            if bad:
                return bad
    elif isinstance(value, list):
        for i, item in enumerate(value):
            bad = _unstorable(item, f"{path}[{i}]")
            if bad:
                return bad
    return None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=True)


def _parse_chart(
    path: Path, pool_id: str, rows: list[Any], batch: _Batch, apy_ceiling: float, now: dt.datetime
) -> int:
    first = earliest_snapshot()
    first_stamp = dt.datetime.combine(first, dt.time())
    why_first = f"{first}, earlier than any DeFi pool data (POOLCAST_INGEST_EARLIEST)"
    batch.charts.add(pool_id)
    for i, rec in enumerate(rows):
        if not isinstance(rec, dict):
            batch.bad.append(BadRecord(str(path), pool_id, i, "record", "not a JSON object"))
            continue
        unstorable = _unstorable(rec)
        if unstorable:
            batch.bad.append(BadRecord(str(path), pool_id, i, *unstorable, _safe_raw(rec)))
            continue
        raw = _dumps(rec)
        problems: list[tuple[str, str]] = []
        ts, err = _timestamp(rec.get("timestamp"), first_stamp, why_first)
        if err:
            problems.append(("timestamp", err))
        elif ts is not None and ts > now + _FUTURE_SLACK:
            problems.append(("timestamp", f"{ts.isoformat()}Z is in the future"))
        _, err = _number(rec.get("apy"), minimum=APY_FLOOR, maximum=apy_ceiling)
        if err:
            problems.append(("apy", err))
        _, err = _number(rec.get("tvlUsd"), minimum=0.0, maximum=TVL_CEILING)
        if err:
            problems.append(("tvlUsd", err))
        if not problems and ts is not None:
            # Across the whole batch: the same pool's chart may come in two files.
            earlier = batch.seen.get((pool_id, ts))
            if earlier is not None:
                if earlier[0] == raw:
                    continue  # an exact repeat is the same snapshot
                why = f"two different snapshots at {ts.isoformat()}Z"
                problems.append(("timestamp", why))
                if (pool_id, ts) not in batch.conflicts:  # the first one is not trusted either
                    first_raw, first_file, first_index = earlier
                    batch.bad.append(
                        BadRecord(first_file, pool_id, first_index, "timestamp", why, first_raw)
                    )
                    batch.conflicts.add((pool_id, ts))
            else:
                batch.seen[(pool_id, ts)] = (raw, str(path), i)
        if problems:
            batch.bad.extend(BadRecord(str(path), pool_id, i, f, r, raw) for f, r in problems)
            continue
        batch.history.append({"pool_id": pool_id, "timestamp": ts, "raw_json_data": raw})
    return len(rows)


def _parse_pools(path: Path, rows: list[Any], batch: _Batch) -> int:
    for i, rec in enumerate(rows):
        pool = rec.get("pool") if isinstance(rec, dict) else None
        if not isinstance(pool, str) or not pool.strip():
            batch.bad.append(BadRecord(str(path), None, i, "pool", "missing pool id"))
            continue
        assert isinstance(rec, dict)
        problem = _unstorable(rec) or _pool_field_problem(rec)
        if problem:
            ok_id = _unstorable(pool) is None
            batch.bad.append(
                BadRecord(str(path), pool if ok_id else None, i, *problem, _safe_raw(rec))
            )
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


_POOL_TEXT_FIELDS = ("chain", "project", "symbol", "ilRisk", "exposure")


def _pool_field_problem(rec: dict[str, Any]) -> tuple[str, str] | None:
    """Columns of `pools` are typed: a number where a name belongs is garbage, not a name."""
    for name in _POOL_TEXT_FIELDS:
        value = rec.get(name)
        if value is not None and not isinstance(value, str):
            return name, f"not a string: {_short(value)}"
    stable = rec.get("stablecoin")
    if stable is not None and not isinstance(stable, bool):
        return "stablecoin", f"not true/false: {_short(stable)}"
    return None


def _safe_raw(value: Any) -> str:
    """The raw record for the quarantine: ASCII JSON text, so NUL and surrogates stay escaped."""
    return _dumps(value)


def _parse_ohlcv(path: Path, data: dict[str, Any], batch: _Batch, now: dt.datetime) -> int:
    symbol = data.get("symbol")
    quotes = data.get("quotes")
    if (
        not isinstance(symbol, str)
        or not symbol.strip()
        or _unstorable(symbol)
        or not isinstance(quotes, list)
    ):
        batch.bad.append(BadRecord(str(path), None, None, "data", "expected data.symbol, quotes"))
        return 0
    for i, q in enumerate(quotes):
        ts, err = _timestamp(
            q.get("time_open") if isinstance(q, dict) else None, _EARLIEST_PRICE,
            f"{_EARLIEST_PRICE.date()}, Bitcoin's first block",
        )
        if ts is not None and ts > now + _FUTURE_SLACK:
            err = f"{ts.isoformat()}Z is in the future"
        quote = q.get("quote") if isinstance(q, dict) else None
        usd = quote.get("USD") if isinstance(quote, dict) else None
        close, cerr = _number(usd.get("close") if isinstance(usd, dict) else None, minimum=0.0)
        price = ("quote.USD.close", cerr) if cerr else _price_problem(usd)
        unstorable = _unstorable(q)
        problem = ("time_open", err) if err else price if price else unstorable
        if problem:
            fld, why = problem
            batch.bad.append(BadRecord(str(path), symbol, i, fld, str(why), _safe_raw(q)))
            continue
        batch.ohlcv.append(
            {"symbol": symbol, "data_timestamp": ts, "raw_json_data": _dumps(q["quote"])}
        )
    return len(quotes)


def _price_problem(usd: Any) -> tuple[str, str] | None:
    """open/high/low, where given, are prices like close: numbers, not below 0."""
    if not isinstance(usd, dict):
        return None
    for name in ("open", "high", "low"):
        if usd.get(name) is not None:
            _, err = _number(usd[name], minimum=0.0)
            if err:
                return f"quote.USD.{name}", err
    return None


def _parse_gas(path: Path, batch: _Batch) -> int:
    try:
        return _parse_gas_rows(path, batch)
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        batch.bad.append(BadRecord(str(path), None, None, "file", f"not a readable CSV: {exc}"))
        return 0


def _parse_gas_rows(path: Path, batch: _Batch) -> int:
    n = 0
    today = dt.datetime.now(dt.UTC).date()
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("Date(UTC)", "Value (Wei)") if c not in (reader.fieldnames or [])]
        if missing:
            columns = ", ".join(repr(c) for c in missing)
            batch.bad.append(
                BadRecord(str(path), None, None, "file", f"not an Etherscan gas CSV: no {columns} "
                          "column")
            )
            return 0
        for i, row in enumerate(reader):
            n += 1
            day_value, why = _gas_date(row.get("Date(UTC)"), today)
            if why:
                batch.bad.append(BadRecord(str(path), None, i, "Date(UTC)", why))
                continue
            gwei, err = _gas_value(row.get("Value (Wei)"))
            if err:
                batch.bad.append(BadRecord(str(path), None, i, "Value (Wei)", err))
                continue
            batch.gas.append({"date": day_value, "actual_avg_gas_gwei": gwei})
    return n


def _gas_date(text: Any, today: dt.date) -> tuple[dt.date | None, str | None]:
    """Etherscan's M/D/YYYY, between Ethereum's first block and tomorrow."""
    if not isinstance(text, str) or not text.strip():
        return None, "missing"
    try:
        month, day, year = (int(x) for x in text.split("/"))
        value = dt.date(year, month, day)
    except (ValueError, TypeError):
        return None, f"not a date (M/D/YYYY): {_short(text)}"
    if value < _EARLIEST_GAS:
        return None, f"{value} is before {_EARLIEST_GAS}, Ethereum's first block"
    if value > today + dt.timedelta(days=1):
        return None, f"{value} is in the future"
    return value, None


def _gas_value(text: Any) -> tuple[float | None, str | None]:
    """The day's average gas price in Wei (a count, not below 0), returned in Gwei."""
    if not isinstance(text, str) or not text.strip():
        return None, "missing"
    try:
        wei = float(text)
    except ValueError:
        return None, f"not a number: {_short(text)}"
    if not math.isfinite(wei):
        return None, f"not finite: {_short(text)}"
    if wei < 0:
        return None, f"{text.strip()} Wei is below 0"
    return wei / 1e9, None


def _parse_file(path: Path, batch: _Batch, report: IngestReport, apy_ceiling: float) -> None:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    if path.suffix == ".csv":
        report.add("gas_fees_daily", _parse_gas(path, batch))
        return
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        batch.bad.append(BadRecord(str(path), None, None, "file", f"not valid JSON: {exc}"))
        return
    except OSError as exc:
        batch.bad.append(BadRecord(str(path), None, None, "file", f"cannot read: {exc}"))
        return
    refused = _api_refusal(doc)
    if refused:
        batch.bad.append(BadRecord(str(path), None, None, "status", refused))
        return
    data = doc.get("data") if isinstance(doc, dict) else None
    if isinstance(data, list) and not data and path.stem.lower().startswith("pools"):
        batch.bad.append(
            BadRecord(str(path), None, None, "data", "the /pools response lists no pools")
        )
        return
    if isinstance(data, dict) and "quotes" in data:
        report.add("raw_coinmarketcap_ohlcv", _parse_ohlcv(path, data, batch, now))
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
            BadRecord(str(path), None, None, "file", "not a DefiLlama, CoinMarketCap or gas file")
        )


def _api_refusal(doc: Any) -> str | None:
    """Why an API response is not data: DefiLlama's ``status`` other than ``success``,
    CoinMarketCap's ``status.error_code`` other than 0."""
    status = doc.get("status") if isinstance(doc, dict) else None
    if status is None or (isinstance(status, str) and status.strip().lower() == "success"):
        return None
    if isinstance(status, dict):
        if status.get("error_code") in (0, "0", None):
            return None
        code, message = status.get("error_code"), status.get("error_message")
        what = f"error_code {_short(code)}"
    else:
        what, message = f"status {_short(status)}", doc.get("message") or doc.get("error")
    detail = f" ({_short(message)})" if message else ""
    return f"an API error response, {what}{detail}: not data; fetch it again"


def _known_pools(store: Store) -> set[str]:
    return {r["pool_id"] for r in store.fetch_arrow("SELECT pool_id FROM pools").to_pylist()}


def ingest(
    store: Store, paths: Iterable[str | Path], *, skip_bad: bool = False, apy_ceiling: float = 1e4
) -> IngestReport:
    """Validate every file, then write all of it in one transaction (or nothing)."""
    store.require_schema()
    policy = revision_policy()
    report = IngestReport()
    batch = _Batch()
    paths = list(paths)
    files = list(_files(paths))
    if not files:
        shown = ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
        raise FileNotFoundError(
            f"no .json or .csv files in {shown}: nothing to ingest; check the path"
        )
    with progress("ingest", total=len(files)) as bar:  # on a terminal only
        for path in files:
            report.files += 1
            _parse_file(path, batch, report, apy_ceiling)
            bar.advance()

    known = _known_pools(store) | {p["pool_id"] for p in batch.pools}
    unknown = sorted(batch.charts - known)
    for pool in unknown:
        batch.bad.append(
            BadRecord(f"{pool}.json", pool, None, "pool", "unknown pool: ingest pools.json first")
        )
    # Neither of two different snapshots at one instant is trusted, whichever file came first.
    drop = set(unknown)
    batch.history = [
        h
        for h in batch.history
        if h["pool_id"] not in drop and (h["pool_id"], h["timestamp"]) not in batch.conflicts
    ]

    json_type = "JSONB" if store.dialect == "postgres" else "JSON"
    with store.transaction():
        history = _table(HISTORY, batch.history)
        revised = changed_rows(store, HISTORY, history, KEYS[HISTORY], "raw_json_data", json_type)
        if revised.num_rows and policy == "refuse":
            _refuse_revisions(batch, revised)
            history = without_keys(history, revised, KEYS[HISTORY])
            revised = revised.slice(0, 0)
        if batch.bad and not skip_bad:
            raise IngestError(batch.bad)
        if revised.num_rows:
            report.revised_examples = keep_revisions(store, history, revised, json_type)
            report.revisions[HISTORY] = revised.num_rows
        tables = {
            "pools": _table("pools", batch.pools),
            HISTORY: history,
            "raw_coinmarketcap_ohlcv": _table("raw_coinmarketcap_ohlcv", batch.ohlcv),
            "gas_fees_daily": _table("gas_fees_daily", batch.gas),
            "ingest_quarantine": _table("ingest_quarantine", _quarantine_rows(batch.bad)),
        }
        for name, data in tables.items():
            if not data.num_rows:
                continue
            casts = {"raw_json_data": json_type} if "raw_json_data" in data.column_names else {}
            changed = store.merge(name, data, KEYS[name], casts=casts)
            report.written[name] = changed - report.revisions.get(name, 0)
    report.quarantined = len(batch.bad)
    return report


def _table(name: str, rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(_dedupe(rows, KEYS[name]), schema=ARROW_SCHEMAS[name])


def _quarantine_rows(bad: list[BadRecord]) -> list[dict[str, Any]]:
    return [
        {
            "file": b.file,
            "pool_id": b.pool_id or "",
            "record_index": -1 if b.index is None else b.index,
            "field": b.field,
            "reason": b.reason,
            "raw": b.raw,
        }
        for b in bad
    ]


def _refuse_revisions(batch: _Batch, revised: pa.Table) -> None:
    """POOLCAST_INGEST_REVISIONS=refuse: each snapshot that would revise a stored one is bad."""
    for pool, ts in zip(*(revised[k].to_pylist() for k in KEYS[HISTORY]), strict=True):
        raw, file, index = batch.seen.get((pool, ts), ("", f"{pool}.json", None))
        why = (
            f"revises the stored snapshot at {ts.isoformat()}Z with other values "
            "(POOLCAST_INGEST_REVISIONS=refuse; =accept loads it, keeping the old values)"
        )
        batch.bad.append(BadRecord(file, pool, index, "timestamp", why, raw))


def _dedupe(rows: list[dict[str, Any]], key: list[str]) -> list[dict[str, Any]]:
    """Last one wins for a key seen twice in one batch (e.g. the same file given twice)."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        out[tuple(row[k] for k in key)] = row
    return list(out.values())
