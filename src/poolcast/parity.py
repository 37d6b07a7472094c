"""Engine parity: the plan's "validate row counts and checksums" risk mitigation, as a command.

Both engines compute the same stage from the same store and the same inputs, without writing
(so parity never touches ``pool_daily_metrics``); then each table is compared per column:
row count, key set, null count, max absolute and max relative difference, and a checksum.

Tolerances:

* metric columns: the same rows, the same NULLs, and a relative difference under ``rel_tol``
  (default 1e-9), where the relative difference of ``a`` and ``b`` is
  ``|a - b| / max(|a|, |b|, 1)``: relative for values of magnitude 1 and up (APYs are percents,
  TVLs dollars), absolute below it, so that a difference of two nearly equal floats (a delta of
  0 in one engine, 1e-17 in the other) does not count as "100 % different".
* forecast columns: the engines train different LightGBM builds (SynapseML's lightgbmlib 3.3.5
  against the ``lightgbm`` package), so forecasts are compared as forecasts: the same pools and
  days, and the mean absolute difference under ``forecast_tol`` (default 5 %) of the mean
  absolute forecast.

The checksum is ``sha256`` over the sorted keys and each column's values rounded to 9
significant digits (values under 1e-9 in magnitude count as 0): equal checksums mean equal tables
to that precision; it is printed so two runs (or a run on Dataproc) can be compared by eye. A
value that sits right on a rounding edge can still flip a checksum: the verdict comes from the
differences, never from the checksums.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_REL_TOL = 1e-9
DEFAULT_FORECAST_TOL = 0.05


@dataclass
class ColumnReport:
    column: str
    nulls_a: int
    nulls_b: int
    null_mismatches: int
    max_abs_diff: float
    max_rel_diff: float
    checksum_a: str
    checksum_b: str
    tolerance: float
    kind: str  # "metric" or "forecast"
    ok: bool


@dataclass
class TableReport:
    table: str
    engine_a: str
    engine_b: str
    rows_a: int
    rows_b: int
    keys_only_in_a: int
    keys_only_in_b: int
    duplicate_keys: int
    columns: list[ColumnReport] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.rows_a == self.rows_b
            and self.keys_only_in_a == 0
            and self.keys_only_in_b == 0
            and self.duplicate_keys == 0
            and all(c.ok for c in self.columns)
        )

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def _sorted_by_key(table: pa.Table, key: Sequence[str]) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in key])


def _key_strings(table: pa.Table, key: Sequence[str]) -> list[tuple[object, ...]]:
    cols = [table.column(k).to_pylist() for k in key]
    return list(zip(*cols, strict=True))


def _float_array(table: pa.Table, column: str) -> np.ndarray:
    col = table.column(column)
    if pa.types.is_null(col.type):
        return np.full(len(table), np.nan)
    values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64)


def _checksum(keys: list[tuple[object, ...]], values: np.ndarray) -> str:
    digest = hashlib.sha256()
    for k, v in zip(keys, values, strict=True):
        digest.update(repr(k).encode())
        digest.update(b"\x00")
        if math.isnan(v):
            text = "null"
        elif abs(v) < 1e-9:  # float noise around zero (a delta of two equal stddevs)
            text = "0"
        else:
            text = f"{v:.9g}"
        digest.update(text.encode())
        digest.update(b"\x01")
    return digest.hexdigest()[:16]


def compare_tables(
    name: str,
    a: pa.Table,
    b: pa.Table,
    key: Sequence[str],
    columns: Sequence[str],
    *,
    engine_a: str = "local",
    engine_b: str = "spark",
    rel_tol: float = DEFAULT_REL_TOL,
    forecast_columns: Sequence[str] = (),
    forecast_tol: float = DEFAULT_FORECAST_TOL,
) -> TableReport:
    """Compare two results of one stage, keyed by ``key``, column by column."""
    report = TableReport(name, engine_a, engine_b, a.num_rows, b.num_rows, 0, 0, 0)
    a = _sorted_by_key(a, key)
    b = _sorted_by_key(b, key)
    keys_a = _key_strings(a, key)
    keys_b = _key_strings(b, key)
    set_a, set_b = set(keys_a), set(keys_b)
    report.duplicate_keys = (len(keys_a) - len(set_a)) + (len(keys_b) - len(set_b))
    report.keys_only_in_a = len(set_a - set_b)
    report.keys_only_in_b = len(set_b - set_a)
    # Align on the common keys (both sorted, so a mask keeps the order).
    common = set_a & set_b
    mask_a = np.array([k in common for k in keys_a], dtype=bool)
    mask_b = np.array([k in common for k in keys_b], dtype=bool)
    keys_common = [k for k, m in zip(keys_a, mask_a, strict=True) if m]
    for column in columns:
        va_all = _float_array(a, column)
        vb_all = _float_array(b, column)
        va, vb = va_all[mask_a], vb_all[mask_b]
        na, nb = np.isnan(va), np.isnan(vb)
        both = ~na & ~nb
        diff = np.abs(va[both] - vb[both])
        scale = np.maximum(np.maximum(np.abs(va[both]), np.abs(vb[both])), 1.0)
        rel = diff / scale if diff.size else diff
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float(rel.max()) if rel.size else 0.0
        is_forecast = column in forecast_columns
        if is_forecast:
            mean_abs = float(np.mean(np.abs(va[both]))) if both.any() else 0.0
            score = float(diff.mean() / mean_abs) if diff.size and mean_abs > 0 else 0.0
            ok = score <= forecast_tol
            tolerance = forecast_tol
            max_rel_reported = score
        else:
            ok = max_rel <= rel_tol
            tolerance = rel_tol
            max_rel_reported = max_rel
        null_mismatch = int(np.count_nonzero(na != nb))
        report.columns.append(
            ColumnReport(
                column=column,
                nulls_a=int(np.count_nonzero(np.isnan(va_all))),
                nulls_b=int(np.count_nonzero(np.isnan(vb_all))),
                null_mismatches=null_mismatch,
                max_abs_diff=max_abs,
                max_rel_diff=max_rel_reported,
                checksum_a=_checksum(keys_common, va),
                checksum_b=_checksum(keys_common, vb),
                tolerance=tolerance,
                kind="forecast" if is_forecast else "metric",
                ok=ok and null_mismatch == 0,
            )
        )
    return report


def format_report(reports: Sequence[TableReport]) -> str:
    """A plain-text table per compared table, and a verdict line."""
    lines: list[str] = []
    for r in reports:
        verdict = "OK" if r.ok else "DIFFERENT"
        lines.append(
            f"== {r.table}: {r.engine_a} {r.rows_a} rows, {r.engine_b} {r.rows_b} rows, "
            f"keys only in {r.engine_a}: {r.keys_only_in_a}, only in {r.engine_b}: "
            f"{r.keys_only_in_b}, duplicate keys: {r.duplicate_keys} -> {verdict}"
        )
        if r.error:
            lines.append(f"   error: {r.error}")
        header = (
            f"   {'column':<28}{'nulls ' + r.engine_a:>12}{'nulls ' + r.engine_b:>12}"
            f"{'null diff':>10}{'max abs diff':>14}{'max rel diff':>14}{'tol':>9}  "
            f"{'checksum ' + r.engine_a:<22}{'checksum ' + r.engine_b:<22}ok"
        )
        if r.columns:
            lines.append(header)
        for c in r.columns:
            rel_label = f"{c.max_rel_diff:.3g}" + ("*" if c.kind == "forecast" else "")
            lines.append(
                f"   {c.column:<28}{c.nulls_a:>12}{c.nulls_b:>12}{c.null_mismatches:>10}"
                f"{c.max_abs_diff:>14.3g}{rel_label:>14}{c.tolerance:>9.0e}  "
                f"{c.checksum_a:<22}{c.checksum_b:<22}{'yes' if c.ok else 'NO'}"
            )
        if any(c.kind == "forecast" for c in r.columns):
            lines.append("   * forecast columns: mean |difference| / mean |forecast|")
    overall = all(r.ok for r in reports)
    lines.append(f"parity: {'OK' if overall else 'FAILED'} ({len(reports)} tables)")
    return "\n".join(lines)
