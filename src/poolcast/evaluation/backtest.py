"""Rolling-origin backtest: would these forecasts have beaten "APY stays as today"?

At each cutoff day every model is fitted on what was known that day (targets observed on or before
it), then forecasts each pool from every day of the ``window`` that starts there (by default the
days up to the next cutoff: the model is refitted every ``spacing`` days and forecasts daily in
between, as a weekly retrain with daily forecasts does in production). Only observed targets are
scored. Cutoffs default to 6, 14 days apart, the last one placed so that its window's longest
horizon ends on the day most pools last reported (the median of the pools' last observed days): a
lone series that runs months longer than the others does not drag every cutoff into a period
where only it has data.

``unseen_folds > 0`` also scores pools the models never saw: the pools are split into folds by a
hash of their id, and each fold is forecast by models fitted on the other folds only.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poolcast.evaluation.research import ALL_MODELS
from poolcast.evaluation.scoring import (
    LOW_APY,
    apy_scored,
    concat,
    coverage,
    fold_of,
    groups,
    horizon_out,
    low_pools,
    scored,
    scores,
    take,
)
from poolcast.log import progress
from poolcast.model.features import (
    HORIZONS,
    Horizon,
    _column,
    add_targets,
    horizon_days,
    horizon_key,
    target_column,
)
from poolcast.model.forecast_model import _tvl_baseline, choose_tvl_baseline
from poolcast.model.forecaster import Forecaster
from poolcast.spec import FEATURE_CONTEXT_DAYS
from poolcast.store import Store

DEFAULT_MODELS: tuple[str, ...] = ("naive", "mean7d", "production", "plan")


@dataclass(frozen=True)
class BacktestConfig:
    cutoffs: int = 6
    spacing_days: int = 14
    # Origin days scored per cutoff (None: ``spacing_days``, every day between cutoffs). One origin
    # per cutoff scores a pool on ~5 targets: pool-level wins are then close to coin tosses.
    window_days: int | None = None
    train_days: int = 60
    horizons: tuple[Horizon, ...] = HORIZONS
    models: tuple[str, ...] = DEFAULT_MODELS
    last_cutoff: dt.date | None = None
    unseen_folds: int = 0
    seed: int = 42
    num_threads: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    # Also score the bounds of evaluation.headroom (they cheat on purpose) on the same targets.
    headroom: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.window <= self.spacing_days:
            raise ValueError(
                f"window_days must be between 1 and spacing_days ({self.spacing_days}), not "
                f"{self.window_days}: a longer window would score some days twice"
            )

    @property
    def window(self) -> int:
        return self.spacing_days if self.window_days is None else self.window_days


def last_cutoff(panel: pa.Table, horizons: Sequence[Horizon], window: int = 1) -> dt.date:
    """The cutoff whose window's last origin is the longest horizon before the median of the
    pools' last observed days."""
    observed = panel.filter(pc.field("is_observed"))
    last = observed.group_by("pool_id").aggregate([("date", "max")]).column("date_max")
    days = sorted(last.to_pylist())
    if not days:
        raise ValueError("no observed pool days to backtest on")
    median = days[(len(days) - 1) // 2]
    longest = max(horizon_days(h) for h in horizons)
    return median - dt.timedelta(days=longest + window - 1)


def cutoff_days(panel: pa.Table, config: BacktestConfig) -> list[dt.date]:
    end = config.last_cutoff or last_cutoff(panel, config.horizons, config.window)
    return sorted(end - dt.timedelta(days=config.spacing_days * k) for k in range(config.cutoffs))


def history_needed(day: dt.date, horizon: Horizon, train_days: int) -> dt.date:
    """The first metrics day a fit at cutoff ``day`` reads: its oldest training origin, less the
    days its features look back over."""
    oldest_origin = day - dt.timedelta(days=horizon_days(horizon) + train_days - 1)
    return oldest_origin - dt.timedelta(days=FEATURE_CONTEXT_DAYS - 1)


def history_check(
    panel: pa.Table, cutoffs: Sequence[dt.date], config: BacktestConfig
) -> dict[str, Any]:
    """How far the fits reach before the first stored metrics day.

    A fit whose every training origin lies before it cannot be fitted: an error that says what to
    do (such fits used to be skipped, leaving fewer scores without a word). A fit that reaches only
    partly before it trains on fewer days, with feature windows cut short at that day as on a
    pool's first days: reported, with the lookback that stores enough history.
    """
    dates = panel.column("date")
    first, last = pc.min(dates).as_py(), pc.max(dates).as_py()
    short = []
    for day in cutoffs:
        for h in config.horizons:
            need = history_needed(day, h, config.train_days)
            if day - dt.timedelta(days=horizon_days(h)) < first:
                name = _horizon_name(horizon_key(h))
                raise ValueError(
                    f"backtest cutoff {day} cannot be fitted at {name}: all its "
                    f"training days lie before the stored metrics, which begin on {first}. Store "
                    f"more history (`poolcast metrics --lookback-days {_lookback(last, need)}`), "
                    "or choose a later --last-cutoff or fewer --cutoffs"
                )
            if need < first:
                oldest_origin = need + dt.timedelta(days=FEATURE_CONTEXT_DAYS - 1)
                short.append(
                    {
                        "cutoff": day.isoformat(),
                        "horizon": horizon_out(horizon_key(h)),
                        "needs_from": need.isoformat(),
                        "days_short": (first - need).days,
                        "train_days_short": max(0, (first - oldest_origin).days),
                    }
                )
    earliest = min((dt.date.fromisoformat(s["needs_from"]) for s in short), default=None)
    return {
        "metrics_from": first.isoformat(),
        "fits": len(cutoffs) * len(config.horizons),
        "short": short,
        "lookback_days": _lookback(last, earliest) if earliest else None,
    }


def _lookback(last: dt.date, need: dt.date) -> int:
    return (last - need).days + 1


def _horizon_name(key: str) -> str:
    return "the 7-day mean" if key == "mean7" else f"{key} day{'s' if key != '1' else ''}"


def history_note(history: dict[str, Any]) -> str:
    """One line for the human output ('' when every fit had its whole history)."""
    short = history["short"]
    if not short:
        return ""
    worst = max(short, key=lambda s: s["days_short"])
    fewer = sum(1 for s in short if s["train_days_short"])
    return (
        f"note: the stored metrics begin on {history['metrics_from']}; {len(short)} of the "
        f"{history['fits']} fits (cutoff x horizon) read days before it (up to "
        f"{worst['days_short']}: cutoff {worst['cutoff']}, {_horizon_name(str(worst['horizon']))}"
        "), so their oldest "
        "training rows have feature windows cut short there"
        + (f", and {fewer} of them train on fewer days" if fewer else "")
        + f". `poolcast metrics --lookback-days {history['lookback_days']}` stores enough history "
        "for exact scores."
    )


class Backtest:
    """Forecasts of every model at every cutoff, and their scores."""

    seconds_: float = 0.0

    def __init__(self, config: BacktestConfig | None = None) -> None:
        self.config = config or BacktestConfig()

    def run(self, metrics: pa.Table) -> Backtest:
        """``metrics``: pool_daily_metrics rows with the spec's features (engines.local)."""
        cfg = self.config
        panel = add_targets(metrics, cfg.horizons)
        self.cutoffs_ = cutoff_days(panel, cfg)
        self.history_ = history_check(panel, self.cutoffs_, cfg)
        splits: list[tuple[str, pa.Table, pa.Table]] = [("all", panel, panel)]
        if cfg.unseen_folds > 1:
            pools = panel.column("pool_id").to_pylist()
            folds = np.array([fold_of(p, cfg.unseen_folds) for p in pools])
            for k in range(cfg.unseen_folds):
                splits.append(
                    (
                        "unseen",
                        panel.filter(pa.array(folds != k)),
                        panel.filter(pa.array(folds == k)),
                    )
                )
        parts: list[dict[str, Any]] = []
        self.fit_seconds_: dict[str, list[float]] = {}
        fits = len(splits) * len(self.cutoffs_) * len(cfg.horizons)
        with progress("backtest", total=fits, doing="cutoff x horizon fits") as bar:
            for split, train, score in splits:
                for day in self.cutoffs_:
                    for h in cfg.horizons:
                        parts.extend(self._one(split, train, score, day, h))
                        bar.advance()
        if cfg.headroom:
            for h in cfg.horizons:
                parts.extend(self._headroom(panel, h))
        self.predictions_ = concat(parts)
        return self

    def _one(
        self, split: str, train: pa.Table, score: pa.Table, day: dt.date, h: Horizon
    ) -> list[dict[str, Any]]:
        cfg = self.config
        rows = self._origins(score, day, h)
        if rows.num_rows == 0:
            return []
        out = []
        for name in cfg.models:
            model = Forecaster(
                name,
                horizon=h,
                train_days=cfg.train_days,
                seed=cfg.seed,
                num_threads=cfg.num_threads,
                params=cfg.params or None,
                models=ALL_MODELS,
            )
            try:
                model.fit(train, end=day)
            except ValueError as exc:
                where = f"{_horizon_name(horizon_key(h))}, model {name}, {split} pools"
                raise ValueError(f"backtest cutoff {day} ({where}): {exc}") from exc
            self.fit_seconds_.setdefault(name, []).append(model.fit_seconds_)
            value, lower, upper = model.predict_interval(rows)
            out.append(
                apy_scored(
                    rows,
                    h,
                    split=split,
                    cutoff=day,
                    model=name,
                    value=value,
                    lower=lower,
                    upper=upper,
                )
            )
        if h != "mean7":
            out.extend(self._tvl(split, train, rows, day, int(h)))
        return out

    def _origins(self, score: pa.Table, day: dt.date, h: Horizon) -> pa.Table:
        """The rows a model fitted at ``day`` forecasts from: observed days of its window whose
        ``h`` target was observed."""
        date = score.column("date")
        until = day + dt.timedelta(days=self.config.window)
        mask = pc.and_(
            pc.and_(
                pc.and_(
                    pc.greater_equal(date, pa.scalar(day, pa.date32())),
                    pc.less(date, pa.scalar(until, pa.date32())),
                ),
                pc.fill_null(score.column("is_observed"), False),
            ),
            pc.is_valid(score.column(target_column(h))),
        )
        return score.filter(mask)

    def _headroom(self, panel: pa.Table, h: Horizon) -> list[dict[str, Any]]:
        """The headroom bounds on the targets the models scored (every pool, every window)."""
        from poolcast.evaluation.headroom import hindsight, oracle_linear

        windows = [(day, self._origins(panel, day, h)) for day in self.cutoffs_]
        windows = [(day, rows) for day, rows in windows if rows.num_rows]
        if not windows:
            return []
        rows = pa.concat_tables([r for _, r in windows])
        cutoff = np.concatenate([np.full(r.num_rows, day, dtype=object) for day, r in windows])
        nan = np.full(rows.num_rows, np.nan)
        # (split, values): the oracle and in_sample are fitted on the scored pools' own targets,
        # hindsight never sees the pools it scores, so its rows sit beside the models' never-seen
        # ones.
        refit = partial(
            hindsight,
            panel,
            windows,
            h,
            train_days=self.config.train_days,
            seed=self.config.seed,
            num_threads=self.config.num_threads,
        )
        values = {
            "oracle_linear": ("all", oracle_linear(rows, h)),
            "hindsight": ("unseen", refit()),
            "in_sample": ("all", refit(held_out=False)),
        }
        return [
            apy_scored(
                rows, h, split=split, cutoff=cutoff, model=name, value=value, lower=nan, upper=nan
            )
            for name, (split, value) in values.items()
        ]

    def _tvl(
        self, split: str, train: pa.Table, rows: pa.Table, day: dt.date, h: int
    ) -> list[dict[str, Any]]:
        y = _column(rows, f"target_tvl_h{h}")
        naive = _column(rows, "actual_tvl")
        keep = np.isfinite(y)
        if not keep.any():
            return []
        rows = rows.filter(pa.array(keep))
        y, naive = y[keep], naive[keep]
        chosen = choose_tvl_baseline(train, h, self.config.train_days, end=day)["baseline"]
        out = []
        for name, how in (("naive", "naive"), ("mean7d", "mean7d"), ("production", chosen)):
            value = _tvl_baseline(rows, how)
            nan = np.full(value.shape, np.nan)
            out.append(
                scored(
                    rows,
                    split=split,
                    metric="tvl",
                    cutoff=day,
                    horizon=str(h),
                    model=name,
                    y=y,
                    value=value,
                    lower=nan,
                    upper=nan,
                    naive=naive,
                )
            )
        return out

    # -- scores -----------------------------------------------------------------------------------
    def summary(self) -> list[dict[str, Any]]:
        """Per split, subset, metric, horizon and model: the scores the issue asks for."""
        p = self.predictions_
        low = low_pools(p)
        rows = []
        for subset in ("all", f"apy<{LOW_APY:g}"):
            # pc.is_in: np.isin on 20,000 pool ids (an object array) took many minutes
            in_low = pc.is_in(pa.array(p["pool_id"]), pa.array(sorted(low)))
            base = p if subset == "all" else take(p, in_low.to_numpy(zero_copy_only=False))
            for key, idx in groups(base, ("split", "metric", "horizon", "model")):
                split, metric, horizon, model = key
                rows.append(
                    {
                        "split": split,
                        "subset": subset,
                        "metric": metric,
                        "horizon": horizon_out(horizon),
                        "model": model,
                        **scores(take(base, idx)),
                    }
                )
                if model in self.fit_seconds_ and metric == "apy":
                    rows[-1]["fit_s"] = float(np.mean(self.fit_seconds_[model]))
        order = {m: i for i, m in enumerate(self.config.models)}
        hz = {horizon_key(h): i for i, h in enumerate(self.config.horizons)}
        rows.sort(
            key=lambda r: (
                r["split"] != "all",
                r["subset"] != "all",
                r["metric"] != "apy",
                hz.get(str(r["horizon"]), 99),
                order.get(r["model"], 99),
            )
        )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """What ``poolcast backtest --json`` prints."""
        return {
            "cutoffs": [d.isoformat() for d in self.cutoffs_],
            "config": {
                "cutoffs": self.config.cutoffs,
                "spacing_days": self.config.spacing_days,
                "window_days": self.config.window,
                "train_days": self.config.train_days,
                "models": list(self.config.models),
                "horizons": [horizon_out(horizon_key(h)) for h in self.config.horizons],
                "unseen_folds": self.config.unseen_folds,
                "headroom": self.config.headroom,
            },
            "history": self.history_,
            "summary": self.summary(),
            "pools": self.pools(),
        }

    def pools(self) -> list[dict[str, Any]]:
        """Per pool, horizon and model (APY, every split): n, mae, naive_mae, coverage."""
        p = take(self.predictions_, self.predictions_["metric"] == "apy")
        out = []
        for (split, pool, horizon, model), idx in groups(
            p, ("split", "pool_id", "horizon", "model")
        ):
            t = take(p, idx)
            err = np.abs(t["value"] - t["y"])
            out.append(
                {
                    "split": split,
                    "pool_id": pool,
                    "horizon": horizon_out(horizon),
                    "model": model,
                    "n": int(err.size),
                    "mae": float(err.mean()),
                    "naive_mae": float(np.abs(t["naive"] - t["y"]).mean()),
                    "coverage": coverage(t),
                }
            )
        return out


def run_backtest(metrics: pa.Table, config: BacktestConfig | None = None) -> Backtest:
    """``metrics``: pool_daily_metrics rows; the features are computed here."""
    from poolcast.engines.local import compute_features

    started = time.perf_counter()
    bt = Backtest(config).run(compute_features(metrics))
    bt.seconds_ = time.perf_counter() - started
    return bt


# The whole history of active pools: a backtest needs every day before its earliest cutoff.
HISTORY_SQL = """
SELECT m.*, p.project  -- the project: peers for spec.PEER_MEDIANS
FROM pool_daily_metrics AS m
JOIN pools AS p ON p.pool_id = m.pool_id
WHERE p.is_active
"""


def backtest_store(store: Store, config: BacktestConfig | None = None) -> Backtest:
    store.require_schema()
    metrics = store.fetch_arrow(HISTORY_SQL)
    if metrics.num_rows == 0:
        raise ValueError("pool_daily_metrics is empty: run `poolcast metrics` first")
    return run_backtest(metrics, config)


