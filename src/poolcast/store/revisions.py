"""Stored rows that new data would change: what ingest reports (and keeps) as revisions."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from poolcast.store._base import Store, ident
from poolcast.store._schema import ARROW_SCHEMAS, KEYS

REVISIONS = "raw_snapshot_revisions"


def changed_rows(
    store: Store, target: str, data: pa.Table, key: Sequence[str], value: str, json_type: str
) -> pa.Table:
    """The rows of ``target`` whose ``key`` is in ``data`` with a different ``value`` (JSON): the
    key columns and the stored value as ``old_value`` text. Run it inside the write's
    transaction, before the merge."""
    target, value = ident(target), ident(value)
    keys = [ident(k) for k in key]
    stage = ident(f"_stage_rev_{target}"[:63])
    join = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    cols = ", ".join(f"t.{k}" for k in keys)
    sql = (
        f"SELECT {cols}, CAST(t.{value} AS TEXT) AS old_value "  # noqa: S608 - checked idents
        f"FROM {target} AS t JOIN {stage} AS s ON {join} "
        f"WHERE t.{value} IS DISTINCT FROM CAST(s.{value} AS {ident(json_type.lower())}) "
        f"ORDER BY {cols}"
    )
    with store.transaction():
        store._stage(stage, data.select([*keys, value]))
        try:
            return store.fetch_arrow(sql)
        finally:
            store._drop_stage(stage)


def without_keys(data: pa.Table, rows: pa.Table, key: Sequence[str]) -> pa.Table:
    """``data`` less the rows whose ``key`` appears in ``rows``."""
    drop = set(zip(*(rows[k].to_pylist() for k in key), strict=True))
    keep = [k not in drop for k in zip(*(data[k].to_pylist() for k in key), strict=True)]
    return data.filter(pa.array(keep, pa.bool_()))


def keep_revisions(
    store: Store, data: pa.Table, revised: pa.Table, json_type: str, examples: int = 5
) -> list[str]:
    """Write ``revised`` (from :func:`changed_rows` on raw snapshots) with the new values from
    ``data`` to ``raw_snapshot_revisions``, in the caller's transaction; the first few named."""
    import datetime as dt

    new = {
        (p, t): r
        for p, t, r in zip(
            data["pool_id"].to_pylist(), data["timestamp"].to_pylist(),
            data["raw_json_data"].to_pylist(), strict=True,
        )
    }
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    rows = [
        {
            "pool_id": p, "timestamp": t, "revised_at": now,
            "old_raw_json_data": old, "new_raw_json_data": new[(p, t)],
        }
        for p, t, old in zip(
            revised["pool_id"].to_pylist(), revised["timestamp"].to_pylist(),
            revised["old_value"].to_pylist(), strict=True,
        )
    ]
    store.merge(
        REVISIONS, pa.Table.from_pylist(rows, schema=ARROW_SCHEMAS[REVISIONS]), KEYS[REVISIONS],
        casts={"old_raw_json_data": json_type, "new_raw_json_data": json_type},
    )
    return [f"pool {r['pool_id']} at {r['timestamp'].isoformat()}Z" for r in rows[:examples]]
