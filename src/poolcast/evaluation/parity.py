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

import datetime as dt
import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from poolcast.log import Progress
    from poolcast.settings import Settings
    from poolcast.store import Store

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


# -- running both engines --------------------------------------------------------------------------
class _Steps:
    """Each timed part of a parity run: its seconds for the report, and a progress line when it
    ends (``parity: metrics spark 44.7 s``; the log event ``parity.step`` off a terminal)."""

    def __init__(self, bar: Progress | None = None) -> None:
        self.bar = bar
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        name = key.replace("_", " ")
        if self.bar is not None:
            self.bar.advance(0, doing=name)
        start = time.perf_counter()
        yield
        self.seconds[key] = time.perf_counter() - start
        if self.bar is not None:
            self.bar.step(name, self.seconds[key])


def _spark(settings: Settings, steps: _Steps) -> Any:
    """The Spark session, its start timed as a step the first time."""
    from poolcast.engines._spark_session import _active_session, get_spark_session

    if _active_session() is not None or "spark_session" in steps.seconds:
        return get_spark_session(settings, "poolcast-parity", training=True)
    with steps("spark_session"):
        return get_spark_session(settings, "poolcast-parity", training=True)


@dataclass
class HoldoutReport:
    """Next-day MAE of each engine's model on the last ``days`` days, trained on the days before."""

    cutoff: str
    days: int
    rows: int
    mae_local: float
    mae_spark: float
    tolerance: float

    @property
    def rel_diff(self) -> float:
        return abs(self.mae_spark - self.mae_local) / self.mae_local if self.mae_local else 0.0

    @property
    def ok(self) -> bool:
        return self.rel_diff <= self.tolerance


def _metric_tables(
    store: Store, settings: Settings, steps: _Steps | None = None
) -> tuple[pa.Table, pa.Table, dict[str, float]]:
    from poolcast.engines import spark as spark_engine
    from poolcast.engines.local import compute_metrics
    from poolcast.stages import resolve_as_of
    from poolcast.store.queries import read_market, read_snapshots

    steps = steps or _Steps()
    as_of = resolve_as_of(store, settings)
    with steps("metrics_local"):
        local = compute_metrics(
            read_snapshots(store, as_of, settings.lookback_days),
            read_market(store, as_of),
            as_of,
        )
    spark = _spark(settings, steps)
    with steps("metrics_spark"), spark_engine._exchange(spark, store, settings) as exchange:
        snapshots, market = spark_engine.read_inputs(exchange, as_of, settings.lookback_days)
        frame = spark_engine.compute_metrics(spark, snapshots, market, as_of)
        remote = exchange.spark_to_arrow(frame, "metrics")
    return local, remote, steps.seconds


def _forecast_tables(
    store: Store,
    settings: Settings,
    holdout_days: int,
    full_metrics: pa.Table | None = None,
    steps: _Steps | None = None,
) -> tuple[list[tuple[str, pa.Table, pa.Table]], HoldoutReport | None, dict[str, float]]:
    """Both engines' forecast panels and forecasts from the stored metrics, and the holdout."""
    from poolcast.engines import spark as spark_engine
    from poolcast.engines.local import compute_features
    from poolcast.model import ForecastModel, forecast_table
    from poolcast.store.queries import read_panel

    steps = steps or _Steps()
    model = "production"
    with steps("forecast_local"):
        metrics = read_panel(store, settings.train_days, horizon=30)
        if metrics.num_rows == 0:
            raise ValueError("pool_daily_metrics is empty: run `poolcast metrics` first")
        panel_local = compute_features(metrics)
        local = ForecastModel(
            model, train_days=settings.train_days, seed=settings.seed
        ).fit(panel_local)
        forecasts_local = forecast_table(local, panel_local)
        horizons_local = local.forecasts(panel_local)

    spark = _spark(settings, steps)
    with spark_engine._exchange(spark, store, settings) as exchange:
        with steps("forecast_spark"):
            panel = spark_engine.forecast_panel(exchange, settings.train_days)
            compute = spark_engine.spark_compute(exchange, panel.count())
            panel = compute.keep(compute.by_pools(panel))
            remote = ForecastModel(
                model, train_days=settings.train_days, seed=settings.seed, compute=compute
            ).fit(panel)
            # The engine's tables, brought here only to compare them.
            forecasts_spark = exchange.spark_to_arrow(forecast_table(remote, panel), "forecasts")
            horizons_spark = exchange.spark_to_arrow(remote.forecasts(panel), "horizons")
            panel_spark = exchange.spark_to_arrow(panel, "panel")
            compute.close()
        holdout = None
        if holdout_days > 0:
            with steps("holdout"):
                history = full_metrics if full_metrics is not None else read_all_metrics(store)
                holdout = holdout_mae(
                    compute_features(history), holdout_days, settings, exchange, model=model
                )
    apy = pc.equal(horizons_local.column("metric"), "apy")
    apy_s = pc.equal(horizons_spark.column("metric"), "apy")
    tables = [
        ("forecast_panel", panel_local, panel_spark),
        ("forecasts_next_day", forecasts_local, forecasts_spark),
        ("forecasts_horizons", horizons_local.filter(apy), horizons_spark.filter(apy_s)),
    ]
    return tables, holdout, steps.seconds


def read_all_metrics(store: Store) -> pa.Table:
    """Every stored metric row of the active pools (the holdout needs more than a panel)."""
    from poolcast.evaluation.backtest import HISTORY_SQL

    return store.fetch_arrow(HISTORY_SQL)


def holdout_cutoff(panel: pa.Table, holdout_days: int) -> dt.date:
    """A time-based split: the median pool's latest observed day minus ``holdout_days``.

    Pools stop on different days (most of the sample ends in June 2025, one series runs to
    November): a cutoff from the latest day overall would leave one pool to test on.
    """

    observed = panel.filter(pc.field("is_observed"))
    last = observed.group_by("pool_id").aggregate([("date", "max")]).column("date_max")
    days = sorted(last.to_pylist())
    return days[len(days) // 2] - dt.timedelta(days=holdout_days)


def holdout_mae(
    panel: pa.Table,
    holdout_days: int,
    settings: Settings,
    exchange: Any,
    *,
    model: str = "production",
    tolerance: float = DEFAULT_FORECAST_TOL,
) -> HoldoutReport:
    """Fit both engines' next-day model on targets observed by the cutoff (``fit(end=...)``),
    forecast every observed next day of the ``holdout_days`` after it, and compare the MAEs.
    Both models score the same rows; the Spark model is the native LightGBM text that SynapseML
    produced, loaded by ``lightgbm``."""

    from poolcast.engines.spark import spark_compute
    from poolcast.model import ForecastModel

    cutoff = holdout_cutoff(panel, holdout_days)
    until = cutoff + dt.timedelta(days=holdout_days)

    local = ForecastModel(
        model,
        horizons=(1,),
        train_days=settings.train_days,
        seed=settings.seed,
    ).fit(panel, end=cutoff)
    compute = spark_compute(exchange)
    remote = ForecastModel(
        model, horizons=(1,), train_days=settings.train_days, seed=settings.seed, compute=compute
    ).fit(exchange.arrow_to_spark(panel, "holdout"), end=cutoff)
    compute.close()
    test = panel.filter(
        pc.and_(
            pc.and_(
                pc.greater_equal(panel.column("date"), pa.scalar(cutoff, pa.date32())),
                pc.less(panel.column("date"), pa.scalar(until, pa.date32())),
            ),
            pc.and_(
                pc.is_valid(panel.column("target_h1")), pc.is_valid(panel.column("actual_apy"))
            ),
        )
    )
    y = test.column("target_h1").to_numpy(zero_copy_only=False)
    pred_local = local.horizons_[1].predict(test)
    pred_spark = remote.horizons_[1].predict(test)
    return HoldoutReport(
        cutoff=str(cutoff),
        days=int(len(set(test.column("date").to_pylist()))),
        rows=test.num_rows,
        mae_local=float(np.mean(np.abs(pred_local - y))),
        mae_spark=float(np.mean(np.abs(pred_spark - y))),
        tolerance=tolerance,
    )


@dataclass
class ParityResult:
    tables: list[TableReport]
    holdout: HoldoutReport | None
    seconds: dict[str, float]
    cluster: dict[str, Any] = field(default_factory=dict)  # the Spark side's master, executors

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables) and (self.holdout is None or self.holdout.ok)

    def format(self) -> str:
        text = format_report(self.tables)
        lines = text.splitlines()[:-1]
        if self.holdout is not None:
            h = self.holdout
            lines.append(
                f"== holdout (next-day MAE, trained up to {h.cutoff}, {h.days} days, "
                f"{h.rows} rows): "
                f"local {h.mae_local:.4f}, spark {h.mae_spark:.4f}, relative difference "
                f"{h.rel_diff:.2%} (tolerance {h.tolerance:.0%}) -> {'OK' if h.ok else 'DIFFERENT'}"
            )
        lines.append("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in self.seconds.items()))
        if self.cluster:
            lines.append(
                f"spark: master {self.cluster['master']}, {self.cluster['executors']} executor(s), "
                f"{self.cluster['cores']} task slot(s)"
            )
        lines.append(f"parity: {'OK' if self.ok else 'FAILED'}")
        return "\n".join(lines)


def run_parity(
    store: Store,
    settings: Settings,
    *,
    stages: Sequence[str] = ("metrics", "forecast"),
    rel_tol: float = DEFAULT_REL_TOL,
    forecast_tol: float = DEFAULT_FORECAST_TOL,
    holdout_days: int = 14,
) -> ParityResult:
    """Run both engines on ``store`` without writing anything, and compare what they compute.

    Progress: one line per step as it ends (``parity: metrics local 0.1 s``) on a terminal, the
    log event ``parity.step`` elsewhere."""
    from poolcast.log import progress

    total = _step_count(stages, holdout_days)
    with progress("parity", total=total, doing="starting") as bar:
        return _run_parity(
            store, settings, _Steps(bar), stages=stages, rel_tol=rel_tol,
            forecast_tol=forecast_tol, holdout_days=holdout_days,
        )


def _step_count(stages: Sequence[str], holdout_days: int) -> int:
    from poolcast.engines._spark_session import _active_session

    count = 0 if _active_session() is not None else 1  # starting Spark
    if "metrics" in stages:
        count += 2
    if "forecast" in stages:
        count += 2 + (1 if holdout_days > 0 else 0)
    return count


def _run_parity(
    store: Store,
    settings: Settings,
    steps: _Steps,
    *,
    stages: Sequence[str],
    rel_tol: float,
    forecast_tol: float,
    holdout_days: int,
) -> ParityResult:
    from poolcast.spec import FEATURES, metric_names

    reports: list[TableReport] = []
    seconds = steps.seconds
    holdout = None
    full_metrics = None
    key = ("pool_id", "date")
    if "metrics" in stages:
        local, remote, _ = _metric_tables(store, settings, steps)
        full_metrics = local
        reports.append(
            compare_tables(
                "pool_daily_metrics", local, remote, key, [*metric_names(), "is_observed"],
                rel_tol=rel_tol,
            )
        )
    if "forecast" in stages:
        tables, holdout, _ = _forecast_tables(store, settings, holdout_days, full_metrics, steps)
        (_, panel_l, panel_s), (_, fc_l, fc_s), (_, hz_l, hz_s) = tables
        reports.append(
            compare_tables(
                "forecast_panel", panel_l, panel_s, key, [f.name for f in FEATURES] + ["target_h1"],
                rel_tol=rel_tol,
            )
        )
        reports.append(
            compare_tables(
                "forecasts (next day)", fc_l, fc_s, key, ["forecasted_apy", "forecasted_tvl"],
                rel_tol=rel_tol, forecast_columns=("forecasted_apy",), forecast_tol=forecast_tol,
            )
        )
        # One report per horizon: a horizon whose models differ cannot hide among the others.
        from poolcast.model import HORIZONS, horizon_key

        order = {horizon_key(h): i for i, h in enumerate(HORIZONS)}
        found = {*hz_l.column("horizon").to_pylist(), *hz_s.column("horizon").to_pylist()}
        for horizon in sorted(found, key=lambda h: (order.get(h, len(order)), h)):
            reports.append(
                compare_tables(
                    f"forecasts (apy, horizon {horizon})",
                    hz_l.filter(pc.equal(hz_l.column("horizon"), horizon)),
                    hz_s.filter(pc.equal(hz_s.column("horizon"), horizon)),
                    ("pool_id", "made_on"),
                    ["value", "lower", "upper"], rel_tol=rel_tol,
                    forecast_columns=("value", "lower", "upper"), forecast_tol=forecast_tol,
                )
            )
        if holdout is not None:
            holdout.tolerance = forecast_tol
    return ParityResult(reports, holdout, seconds, _cluster())


def _cluster() -> dict[str, Any]:
    """Where the Spark side ran: its master, executors and task slots."""
    from poolcast.engines._spark_session import executor_cores, executor_count, get_spark_session

    spark = get_spark_session()
    return {
        "master": str(spark.sparkContext.master),
        "executors": executor_count(spark),
        "cores": executor_cores(spark),
    }
