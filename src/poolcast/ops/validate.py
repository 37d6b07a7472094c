"""`poolcast validate`: named checks a person on call runs before trusting a run.

"Today" is the store's as-of day (default: the latest data day), never the wall clock: the
plan's Task 4.3 queries used ``CURRENT_DATE``, which on historical data or a late run checks an
empty day.
As in the plan, forecasts are made for the day after the latest data: "today" in its queries is the
forecast day (as-of + 1) and "yesterday" is the as-of day.

Checks:

* the plan's three queries: ``recent_coverage`` (records and rolling-metric coverage of the last
  7 days, earliest and latest dates), ``forecasts_for_today``, ``largest_errors_yesterday``;
* ``unique_pool_date``: no (pool, date) twice. The table's primary key makes this impossible in
  a store poolcast created; the check guards tables that lost it (the plan's Spark JDBC
  ``mode="overwrite"`` recreates the table without constraints);
* ``grid_gaps``: every pool's rows form one unbroken run of days;
* ``value_ranges``: APY in [-100, ceiling] %, TVL in [0, 1e12] USD, no NaN or infinity;
* ``raw_consistency``: every observed day's APY/TVL equals the latest raw snapshot of that day, for
  every pool in the window: catches a snapshot added after metrics ran (a second one on one day
  changes which one counts) and metrics that are behind the raw data;
* ``reference_sample``: every metric of a random sample of pools recomputed from the raw tables
  by the plain Python reference of the spec (`poolcast.ops.reference`, sharing no code with the
  engines) and compared;
* ``forecast_coverage``: every active pool has a forecast for the day after its latest data;
* ``stale_pools`` (warning only): active pools without a snapshot in the last 7 days.

Each run's summary (verdict, counts, each check's status and message, seed, when) is kept in
``validate_results``, one row per as-of day (:mod:`poolcast.ops.validate_results`), where
``report`` and ``sql`` read it later.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from poolcast.ops.reference import REL_TOL, close, reference_metrics
from poolcast.settings import Settings
from poolcast.spec import APY_FLOOR, TVL_CEILING
from poolcast.store import Store, StoreError
from poolcast.store.queries import latest_data_day

Status = Literal["pass", "fail", "warn", "info", "skip"]

RECENT_DAYS = 7
EVIDENCE_ROWS = 20


@dataclass
class Check:
    name: str
    status: Status
    message: str
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Checks:
    store: str
    as_of: dt.date
    forecast_day: dt.date
    window_start: dt.date
    seed: int | None
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def run_checks(
    store: Store, settings: Settings, *, sample: int = 5, seed: int | None = None
) -> Checks:
    """Every check, relative to ``settings.as_of`` or the latest data day."""
    store.require_schema()
    as_of = settings.as_of or latest_data_day(store)
    if as_of is None:
        raise StoreError(f"no pool snapshots in {store.safe_url()}: run `poolcast ingest` first")
    window_start, window_note = _metrics_window(store, settings, as_of)
    seed = random.SystemRandom().randrange(10**6) if seed is None else seed
    tomorrow = as_of + dt.timedelta(days=1)
    checks = [
        _recent_coverage(store, as_of),
        _forecasts_for_today(store, tomorrow),
        _largest_errors(store, as_of),
        _unique_pool_date(store),
        _grid_gaps(store),
        _value_ranges(store, settings.apy_ceiling),
        _raw_consistency(store, window_start, as_of),
        _reference_sample(store, window_start, as_of, sample, seed, window_note),
        _forecast_coverage(store, window_start, as_of),
        _stale_pools(store, as_of),
    ]
    return Checks(store.safe_url(), as_of, tomorrow, window_start, seed, checks)


def _metrics_window(store: Store, settings: Settings, as_of: dt.date) -> tuple[dt.date, str]:
    """First day of the window the stored metrics were computed on: from the latest successful
    metrics run record when there is one (its as-of and lookback), else from the settings."""
    from poolcast.runs import recent_runs

    runs = recent_runs(store, 1, stage="metrics", status="succeeded")
    run = runs[0] if runs else None
    if run and run["details"].get("as_of") and run["parameters"].get("lookback_days"):
        run_as_of = dt.date.fromisoformat(run["details"]["as_of"])
        lookback = int(run["parameters"]["lookback_days"])
        note = f"window of metrics run {run['run_id']} (as of {run_as_of}, {lookback} days)"
    else:
        run_as_of, lookback = as_of, settings.lookback_days
        note = f"no metrics run record: assumed {lookback} days of lookback"
    return run_as_of - dt.timedelta(days=lookback - 1), note


def _rows(store: Store, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    return store.fetch_arrow(sql, params).to_pylist()


def _recent_coverage(store: Store, as_of: dt.date) -> Check:
    since = as_of - dt.timedelta(days=RECENT_DAYS - 1)
    [row] = _rows(
        store,
        """SELECT COUNT(*) AS total_records,
                  COUNT(actual_apy) AS records_with_apy,
                  COUNT(rolling_apy_7d) AS records_with_7d_rolling,
                  COUNT(rolling_apy_30d) AS records_with_30d_rolling,
                  MIN(date) AS earliest_date,
                  MAX(date) AS latest_date
           FROM pool_daily_metrics
           WHERE date >= $1 AND date <= $2""",
        [since, as_of],
    )
    [span] = _rows(store, "SELECT MIN(date) AS first, MAX(date) AS last FROM pool_daily_metrics")
    text = (
        f"{since} to {as_of}: {row['total_records']} records, {row['records_with_7d_rolling']} "
        f"with 7d rolling, {row['records_with_30d_rolling']} with 30d rolling; "
        f"table spans {span['first']} to {span['last']}"
    )
    if not row["total_records"]:
        return Check("recent_coverage", "fail", f"no metrics in {text}: run `poolcast metrics`")
    if row["latest_date"] < as_of:
        return Check(
            "recent_coverage", "fail",
            f"metrics end on {row['latest_date']} but data reaches {as_of}: run `poolcast metrics`",
            [row],
        )
    missing = row["records_with_apy"] - min(
        row["records_with_7d_rolling"], row["records_with_30d_rolling"]
    )
    if missing > 0:
        return Check(
            "recent_coverage", "fail", f"{missing} records have an APY but no rolling mean; {text}",
            [row],
        )
    return Check("recent_coverage", "pass", text, [row])


def _forecasts_for_today(store: Store, day: dt.date) -> Check:
    [row] = _rows(
        store,
        """SELECT COUNT(DISTINCT pool_id) AS pools_with_forecasts
           FROM pool_daily_metrics WHERE date = $1 AND forecasted_apy IS NOT NULL""",
        [day],
    )
    return Check(
        "forecasts_for_today", "info",
        f"{row['pools_with_forecasts']} pools have a forecast for {day} (the forecast day); "
        "forecast_coverage checks each pool at its own latest day",
        [row],
    )


def _largest_errors(store: Store, day: dt.date) -> Check:
    rows = _rows(
        store,
        f"""SELECT pool_id, date, actual_apy, forecasted_apy,
                   ABS(actual_apy - forecasted_apy) AS error
            FROM pool_daily_metrics
            WHERE date = $1 AND forecasted_apy IS NOT NULL AND actual_apy IS NOT NULL
              AND is_observed
            ORDER BY error DESC, pool_id
            LIMIT {EVIDENCE_ROWS}""",  # noqa: S608 - a constant
        [day],
    )
    if not rows:
        return Check(
            "largest_errors_yesterday", "info",
            f"no scored forecast for {day}: a day's forecast is made by the run of the day before",
        )
    return Check(
        "largest_errors_yesterday", "info",
        f"largest absolute APY error on {day}: {rows[0]['error']:.4g} points "
        f"({rows[0]['pool_id']}); {len(rows)} pools scored",
        rows,
    )


def _unique_pool_date(store: Store) -> Check:
    rows = _rows(
        store,
        f"""SELECT pool_id, date, COUNT(*) AS copies FROM pool_daily_metrics
            GROUP BY pool_id, date HAVING COUNT(*) > 1
            ORDER BY copies DESC, pool_id, date LIMIT {EVIDENCE_ROWS}""",  # noqa: S608
    )
    if rows:
        first = rows[0]
        return Check(
            "unique_pool_date", "fail",
            f"{len(rows)}{'+' if len(rows) == EVIDENCE_ROWS else ''} (pool, date) pairs appear "
            f"more than once, e.g. {first['pool_id']} on {first['date']} x{first['copies']}: "
            "the table lost its primary key (pool_id, date); deduplicate and restore it",
            rows,
        )
    return Check("unique_pool_date", "pass", "every (pool, date) appears once")


def _grid_gaps(store: Store) -> Check:
    rows = _rows(
        store,
        f"""SELECT pool_id, MIN(date) AS first_day, MAX(date) AS last_day,
                   COUNT(DISTINCT date) AS days, (MAX(date) - MIN(date)) + 1 AS span
            FROM pool_daily_metrics GROUP BY pool_id
            HAVING COUNT(DISTINCT date) < (MAX(date) - MIN(date)) + 1
            ORDER BY pool_id LIMIT {EVIDENCE_ROWS}""",  # noqa: S608
    )
    if rows:
        r = rows[0]
        return Check(
            "grid_gaps", "fail",
            f"{len(rows)} pools miss days inside their grid, e.g. {r['pool_id']}: "
            f"{r['days']} of {r['span']} days from {r['first_day']} to {r['last_day']}",
            rows,
        )
    return Check("grid_gaps", "pass", "every pool's days are contiguous")


_OUT_OF_RANGE = """
NOT (actual_apy BETWEEN $1 AND $2) OR NOT (forecasted_apy BETWEEN $1 AND $2)
OR NOT (actual_tvl BETWEEN 0 AND $3) OR NOT (forecasted_tvl BETWEEN 0 AND $3)
"""


def _value_ranges(store: Store, apy_ceiling: float) -> Check:
    params = [APY_FLOOR, apy_ceiling, TVL_CEILING]
    [count] = _rows(
        store, f"SELECT COUNT(*) AS n FROM pool_daily_metrics WHERE {_OUT_OF_RANGE}", params  # noqa: S608
    )
    bounds = f"APY in [{APY_FLOOR:g}, {apy_ceiling:g}] %, TVL in [0, {TVL_CEILING:g}] USD"
    if not count["n"]:
        return Check("value_ranges", "pass", f"every value within {bounds}, no NaN or infinity")
    rows = _rows(
        store,
        f"""SELECT pool_id, date, actual_apy, forecasted_apy, actual_tvl, forecasted_tvl
            FROM pool_daily_metrics WHERE {_OUT_OF_RANGE}
            ORDER BY pool_id, date LIMIT {EVIDENCE_ROWS}""",  # noqa: S608
        params,
    )
    return Check(
        "value_ranges", "fail",
        f"{count['n']} rows outside {bounds} (or NaN/infinite), e.g. {rows[0]['pool_id']} on "
        f"{rows[0]['date']}",
        rows,
    )


_DAILY_SQL = """
SELECT pool_id, CAST(timestamp AS DATE) AS date, timestamp,
       CAST(raw_json_data->>'apy' AS DOUBLE PRECISION) AS apy,
       CAST(raw_json_data->>'tvlUsd' AS DOUBLE PRECISION) AS tvl_usd,
       row_number() OVER (
           PARTITION BY pool_id, CAST(timestamp AS DATE) ORDER BY timestamp DESC) AS nth,
       COUNT(*) OVER (PARTITION BY pool_id, CAST(timestamp AS DATE)) AS snapshots_that_day
FROM raw_defillama_pool_history
WHERE timestamp >= $1 AND timestamp < $2
"""


def _differs(a: str, b: str) -> str:
    return f"({a} IS NULL OR ABS({a} - {b}) > {REL_TOL} * GREATEST(ABS({b}), 1.0))"


def _raw_consistency(store: Store, start: dt.date, as_of: dt.date) -> Check:
    bounds = [_midnight(start), _midnight(as_of + dt.timedelta(days=1))]
    sql = f"""
WITH daily AS ({_DAILY_SQL}),
snapshots AS (
    SELECT d.pool_id, d.date, d.apy, d.tvl_usd, d.timestamp, d.snapshots_that_day
    FROM daily AS d JOIN pools AS p ON p.pool_id = d.pool_id
    WHERE p.is_active AND d.nth = 1 AND d.apy IS NOT NULL
)
SELECT s.pool_id, s.date, s.snapshots_that_day, s.timestamp AS latest_snapshot,
       s.apy AS snapshot_apy, m.actual_apy, s.tvl_usd AS snapshot_tvl, m.actual_tvl
FROM snapshots AS s
LEFT JOIN pool_daily_metrics AS m ON m.pool_id = s.pool_id AND m.date = s.date
WHERE {_differs("m.actual_apy", "s.apy")}
   OR (s.tvl_usd IS NOT NULL AND {_differs("m.actual_tvl", "s.tvl_usd")})
ORDER BY s.pool_id, s.date
"""  # noqa: S608 - composed of constants
    rows = _rows(store, sql, bounds)
    if not rows:
        return Check(
            "raw_consistency", "pass",
            f"every observed day from {start} to {as_of} matches the latest snapshot of that day",
        )
    r = rows[0]
    if r["actual_apy"] is None:
        hint = "no metrics for a day with a snapshot: run `poolcast metrics`"
    elif r["snapshots_that_day"] > 1:
        hint = (
            f"{r['snapshots_that_day']} snapshots on that day and the latest "
            f"({r['latest_snapshot']}) is not the one in the metrics: a snapshot arrived after "
            "metrics ran; rerun `poolcast metrics`"
        )
    else:
        hint = "the raw snapshot changed after metrics ran: rerun `poolcast metrics`"
    return Check(
        "raw_consistency", "fail",
        f"{len(rows)} pool-days disagree with the raw snapshots, e.g. {r['pool_id']} on "
        f"{r['date']}: snapshot APY {_fmt(r['snapshot_apy'])}, metrics {_fmt(r['actual_apy'])}; "
        f"{hint}",
        rows[:EVIDENCE_ROWS],
    )


def _forecast_coverage(store: Store, start: dt.date, as_of: dt.date) -> Check:
    rows = _rows(
        store,
        """WITH last AS (
               SELECT m.pool_id, MAX(m.date) AS last_day
               FROM pool_daily_metrics AS m JOIN pools AS p ON p.pool_id = m.pool_id
               WHERE p.is_active AND m.is_observed AND m.date >= $1 AND m.date <= $2
               GROUP BY m.pool_id
           )
           SELECT l.pool_id, l.last_day, f.forecasted_apy
           FROM last AS l
           LEFT JOIN pool_daily_metrics AS f ON f.pool_id = l.pool_id AND f.date = l.last_day + 1
           ORDER BY l.pool_id""",
        [start, as_of],
    )
    missing = [r for r in rows if r["forecasted_apy"] is None]
    if not rows:
        return Check("forecast_coverage", "fail", f"no active pool has data up to {as_of}")
    if missing:
        names = ", ".join(f"{r['pool_id']} (for {r['last_day'] + dt.timedelta(days=1)})"
                          for r in missing[:5])
        return Check(
            "forecast_coverage", "fail",
            f"{len(missing)} of {len(rows)} active pools have no forecast for the day after their "
            f"latest data: {names}{' ...' if len(missing) > 5 else ''}: run `poolcast forecast`",
            missing[:EVIDENCE_ROWS],
        )
    return Check(
        "forecast_coverage", "pass",
        f"all {len(rows)} active pools have a forecast for the day after their latest data",
    )


def _stale_pools(store: Store, as_of: dt.date) -> Check:
    since = as_of - dt.timedelta(days=RECENT_DAYS - 1)
    rows = _rows(
        store,
        """SELECT p.pool_id, CAST(MAX(h.timestamp) AS DATE) AS last_snapshot
           FROM pools AS p JOIN raw_defillama_pool_history AS h ON h.pool_id = p.pool_id
           WHERE p.is_active AND h.timestamp < $2
           GROUP BY p.pool_id
           HAVING MAX(h.timestamp) < $1
           ORDER BY last_snapshot, p.pool_id""",
        [_midnight(since), _midnight(as_of + dt.timedelta(days=1))],
    )
    [active] = _rows(store, "SELECT COUNT(*) AS n FROM pools WHERE is_active")
    if rows:
        return Check(
            "stale_pools", "warn",
            f"{len(rows)} of {active['n']} active pools have no snapshot since {since} (oldest: "
            f"{rows[0]['pool_id']}, {rows[0]['last_snapshot']}); their forecasts are for "
            "older days",
            rows[:EVIDENCE_ROWS],
        )
    return Check("stale_pools", "pass", f"every active pool has a snapshot since {since}")


# -- reference recomputation ------------------------------------------------------------------
def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time())


def _reference_sample(
    store: Store, start: dt.date, as_of: dt.date, sample: int, seed: int, note: str
) -> Check:
    if sample <= 0:
        return Check("reference_sample", "skip", "no pools sampled (--sample 0)")
    bounds = [_midnight(start), _midnight(as_of + dt.timedelta(days=1))]
    candidates = sorted(
        r["pool_id"]
        for r in _rows(
            store,
            """SELECT DISTINCT h.pool_id FROM raw_defillama_pool_history AS h
               JOIN pools AS p ON p.pool_id = h.pool_id
               WHERE p.is_active AND h.timestamp >= $1 AND h.timestamp < $2""",
            bounds,
        )
    )
    pools = random.Random(seed).sample(candidates, min(sample, len(candidates)))
    if not pools:
        return Check("reference_sample", "skip", f"no active pool has snapshots since {start}")
    market = _rows(
        store,
        """SELECT symbol AS source, CAST(data_timestamp AS DATE) AS date, data_timestamp AS ts,
                  CAST(raw_json_data->'USD'->>'close' AS DOUBLE PRECISION) AS value
           FROM raw_coinmarketcap_ohlcv WHERE data_timestamp < $1
           UNION ALL
           SELECT 'gas' AS source, date, CAST(date AS TIMESTAMP) AS ts,
                  actual_avg_gas_gwei AS value
           FROM gas_fees_daily WHERE date <= $2""",
        [bounds[1], as_of],
    )
    mismatches: list[dict[str, Any]] = []
    compared = 0
    for pool in sorted(pools):
        snaps = _rows(
            store,
            """SELECT timestamp, CAST(raw_json_data->>'apy' AS DOUBLE PRECISION) AS apy,
                      CAST(raw_json_data->>'tvlUsd' AS DOUBLE PRECISION) AS tvl_usd
               FROM raw_defillama_pool_history
               WHERE pool_id = $1 AND timestamp >= $2 AND timestamp < $3""",
            [pool, *bounds],
        )
        expected = _expected(pool, snaps, market, as_of)
        stored = {
            r["date"]: r
            for r in _rows(
                store,
                "SELECT * FROM pool_daily_metrics WHERE pool_id = $1 AND date >= $2 AND date <= $3",
                [pool, start, as_of],
            )
        }
        for day in sorted(set(expected) | set(stored)):
            compared += 1
            want, got = expected.get(day), stored.get(day)
            if want is None or got is None:
                mismatches.append({"pool_id": pool, "date": day, "column": "(row)",
                                   "expected": "row" if want else None,
                                   "stored": "row" if got else None})
                continue
            for column, value in want.items():
                if not close(value, got.get(column)):
                    mismatches.append({"pool_id": pool, "date": day, "column": column,
                                       "expected": value, "stored": got.get(column)})
    label = f"{len(pools)} pools (seed {seed}, {note})"
    if mismatches:
        m = mismatches[0]
        return Check(
            "reference_sample", "fail",
            f"{len(mismatches)} values differ from a plain recomputation from raw for {label}, "
            f"e.g. {m['pool_id']} {m['date']} {m['column']}: expected {m['expected']}, "
            f"stored {m['stored']}",
            mismatches[:EVIDENCE_ROWS],
        )
    return Check(
        "reference_sample", "pass",
        f"{compared} pool-days of {label} match a plain recomputation from raw: {', '.join(pools)}",
    )


def _expected(
    pool: str, snapshots: list[dict[str, Any]], market: list[dict[str, Any]], as_of: dt.date
) -> dict[dt.date, dict[str, Any]]:
    """The reference's metric columns of one pool by date, from its rows of the raw tables."""
    rows = reference_metrics(
        [(pool, s["timestamp"], s["apy"], s["tvl_usd"]) for s in snapshots],
        [(q["source"], q["date"], q["value"], q["ts"]) for q in market],
        as_of,
    )
    expected: dict[dt.date, dict[str, Any]] = {}
    for row in rows:  # all of this pool: keyed by date, compared column by column
        del row["pool_id"]
        expected[row.pop("date")] = row
    return expected


# -- output -----------------------------------------------------------------------------------
_MARK = {"pass": "PASS", "fail": "FAIL", "warn": "WARN", "info": "INFO", "skip": "SKIP"}


def format_checks(result: Checks, evidence: int = 5) -> str:
    """Human output: one line per check, evidence rows under a failure."""
    lines = [
        f"poolcast validate: {result.store}, as of {result.as_of} "
        f"(forecast day {result.forecast_day}, metrics window from {result.window_start})"
    ]
    width = max(len(c.name) for c in result.checks)
    for c in result.checks:
        lines.append(f"{_MARK[c.status]}  {c.name:<{width}}  {c.message}")
        if c.rows and c.status in ("fail", "warn", "info"):
            shown = c.rows[:evidence] if c.status != "info" else c.rows[:3]
            indent = " " * (8 + width)
            for row in shown:
                lines.append(indent + "  ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
            if len(c.rows) > len(shown):
                lines.append(indent + f"... {len(c.rows) - len(shown)} more rows in --json")
    counts = {s: sum(c.status == s for c in result.checks) for s in _MARK}
    verdict = "OK" if result.ok else "FAILED"
    lines.append(
        f"{verdict}: {counts['pass']} pass, {counts['fail']} fail, {counts['warn']} warn, "
        f"{counts['info']} info, {counts['skip']} skip"
    )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
