"""The stored summary of `poolcast validate`: table ``validate_results``, one row per as-of day.

A rerun replaces the day's row (never a second one), in one transaction; one that finds every
check's status as before keeps ``unchanged_since``, so only ``checked_at`` moves. ``report`` and
``sql`` read it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, get_args

import pyarrow as pa

from poolcast import __version__
from poolcast.ops.validate import Checks, Status
from poolcast.store import Store

RESULTS_TABLE = "validate_results"
_RESULTS_SCHEMA = pa.schema(
    [
        ("as_of", pa.date32()),
        ("ok", pa.bool_()),
        ("counts", pa.string()),
        ("checks", pa.string()),
        ("seed", pa.int64()),
        ("sample", pa.int32()),
        ("checked_at", pa.timestamp("us")),
        ("unchanged_since", pa.timestamp("us")),
        ("version", pa.string()),
    ]
)
_RESULTS_SQL = f"""
SELECT as_of, ok, CAST(counts AS TEXT) AS counts, CAST(checks AS TEXT) AS checks, seed, sample,
       checked_at, unchanged_since, version
FROM {RESULTS_TABLE}
"""  # noqa: S608 - constant table name


def summary(result: Checks) -> dict[str, Any]:
    """What is kept of a run: each check's name, status, message and evidence row count, and
    the count of each status (evidence rows stay in ``--json``)."""
    return {
        "counts": {s: sum(c.status == s for c in result.checks) for s in get_args(Status)},
        "checks": [
            {"name": c.name, "status": c.status, "message": c.message, "evidence": len(c.rows)}
            for c in result.checks
        ],
    }


def _verdict(checks: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["name"], c["status"]) for c in checks]


def record_checks(
    store: Store, result: Checks, sample: int, *, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Keep ``result`` as the latest validate of its as-of day, in one transaction: a rerun
    replaces the day's row (never a second one), and one that finds every check's status as
    before keeps ``unchanged_since`` (only ``checked_at``, and any message, moves). Returns the
    stored row."""
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    kept = summary(result)
    json_type = "JSONB" if store.dialect == "postgres" else "JSON"
    with store.transaction():
        before = stored_checks(store, result.as_of)
        same = before is not None and _verdict(before["checks"]) == _verdict(kept["checks"])
        row = {
            "as_of": result.as_of,
            "ok": result.ok,
            "counts": json.dumps(kept["counts"]),
            "checks": json.dumps(kept["checks"]),
            "seed": result.seed,
            "sample": sample,
            "checked_at": now,
            "unchanged_since": before["unchanged_since"] if same and before else now,
            "version": __version__,
        }
        store.merge(
            RESULTS_TABLE,
            pa.Table.from_pylist([row], schema=_RESULTS_SCHEMA),
            ("as_of",),
            casts={"counts": json_type, "checks": json_type},
        )
    return {**row, **kept, "changed": not same}


def stored_checks(store: Store, as_of: dt.date | None = None) -> dict[str, Any] | None:
    """The stored validate of ``as_of`` (by default the one checked last), or None."""
    if as_of is None:
        sql, params = _RESULTS_SQL + " ORDER BY checked_at DESC LIMIT 1", None
    else:
        sql, params = _RESULTS_SQL + " WHERE as_of = $1", [as_of]
    rows = store.fetch_arrow(sql, params).to_pylist()
    if not rows:
        return None
    row = rows[0]
    row["counts"] = json.loads(row["counts"])
    row["checks"] = json.loads(row["checks"])
    return dict(row)

