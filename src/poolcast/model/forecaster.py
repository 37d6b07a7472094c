"""One model for one horizon: a global LightGBM model (or a baseline) fitted on all pools.

The target is always a later day's APY than the features (the plan trained on the same day's APY
from features that contain it). Only observed targets train or score a model. Choices below were
made on the rolling-origin backtest (``poolcast backtest``, docs/forecasting.md), not by default:

* L1 loss on the change ``apy(t+h) - apy(t)``: L2 on the level (the plan) chases APY spikes and
  loses to "APY stays as today".
* From 7 days on, the change divided by the pool's own scale (30-day std + 5% of its APY): pools
  with 0.01% and 400% APY then teach the model the same mean reversion.
* From 7 days on, an ensemble: one booster learns the change from today's APY, another from the
  30-day mean (at 30 days a third from the 7-day mean); their mean is calibrated as one model.
  At 30 days the pool's noise regime (size of its daily moves, share of days without one) joins
  the features.
* Each fit holds out its last ``calibration_days`` (a time-based split): early stopping, a blend of
  model, naive and 7-day mean (at 1 day and for the 7-day mean also the 30-day mean) fitted there
  (shrinkage toward naive where the model has no edge), a dead zone that keeps today's APY when
  the predicted move is small (at most 0.05 scale at 1 day), and conformal 80% intervals
  from the scaled residuals there. The booster is then refitted on the whole window.

The rows live in the forecaster's :class:`~poolcast.model.compute.Compute` (Arrow tables in this
process unless an engine passes its own): this module gives it functions of a table of whole pools
and gets back counts, sums, ranked values and boosters, so the same code fits on every engine.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poolcast.model.calibration import (
    _blend,
    _blend_group,
    _conformal_ranks,
    _stack_weight,
    blend_edges,
    fit_blends,
)
from poolcast.model.compute import (
    Compute,
    Fit,
    Frame,
    LocalCompute,
    TrainingColumns,
    at_most,
    with_targets,
)
from poolcast.model.features import (
    Horizon,
    _column,
    _matrix,
    horizon_key,
    parse_horizon,
    scale,
    target_column,
    training_rows,
)
from poolcast.model.specs import MODELS, ModelSpec


class Forecaster:
    """One model for one horizon: a global LightGBM model (or a baseline), fitted on all pools."""

    def __init__(
        self,
        model: str = "production",
        *,
        horizon: Horizon = 1,
        train_days: int = 60,
        seed: int = 42,
        num_threads: int = 0,
        params: dict[str, Any] | None = None,
        models: Mapping[str, ModelSpec] = MODELS,
        compute: Compute | None = None,
    ) -> None:
        """``model``: a name in ``models`` (production's registry unless research models are
        passed, :mod:`poolcast.evaluation.research`). ``compute``: where the rows live and what
        trains each booster (default: Arrow tables and LightGBM in this process)."""
        self.model = model
        self.horizon = horizon
        self.train_days = train_days
        self.seed = seed
        self.num_threads = num_threads
        self.params = params
        self.models = models
        self.compute: Compute = compute if compute is not None else LocalCompute()
        self.fits_: list[dict[str, Any]] = []  # the compute's records of this forecaster's fits

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to an engine's workers to predict: the fitted state, not the engine.
        state = dict(self.__dict__)
        state.pop("compute", None)
        state.pop("_memo", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.compute = LocalCompute()

    def _spec(self) -> ModelSpec:
        if self.model not in self.models:
            raise ValueError(f"unknown model {self.model!r}; choose one of {sorted(self.models)}")
        return self.models[self.model].for_horizon(self.horizon)

    def lgb_params(self) -> dict[str, Any]:
        spec = self._spec()
        return {
            **spec.params,
            **(self.params or {}),
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,  # same trees as column-wise here, 13% less time at 1 day
            "num_threads": self.num_threads,
            "verbosity": -1,
        }

    def _scale(self, rows: pa.Table) -> np.ndarray:
        return scale(rows, self._spec().scale)

    def _target_scale(self, rows: pa.Table) -> np.ndarray:
        power = self._spec().scale_power
        scl = self._scale(rows)
        return scl if power == 1.0 else np.round(scl**power, 9)

    # -- the target in the model's own units ----------------------------------------------------
    _member = 0  # the ensemble member (index into bases_) that _to_target/_from_target serve

    def _raw_weight(self, rows: pa.Table) -> np.ndarray:
        """Row weights in the loss before each part is divided by twice its maximum (all under
        1 then; :meth:`_training_columns`).

        Under 1, LightGBM's weighted percentile (an L1 leaf's value) is the weighted median row
        itself: from 1 up it interpolates, on a segment LightGBM 4 (this engine) chose
        differently from LightGBM 3.3 (SynapseML's), and the engines' 7-day forecasts were 9%
        apart. Only ratios of weights matter to the splits and the median.
        """
        spec = self._spec()
        weight = np.ones(rows.num_rows)
        if spec.weight_power:
            weight *= self._scale(rows) ** spec.weight_power
        if spec.half_life:
            weight *= 0.5 ** (_column(rows, "age") / spec.half_life)
        return weight

    def _weighted(self) -> bool:
        spec = self._spec()
        return bool(spec.weight_power or spec.half_life)

    def _base(self, rows: pa.Table) -> np.ndarray:
        """The member's starting point: its base column, today's APY where that is missing."""
        naive = _column(rows, "actual_apy")
        bases = getattr(self, "bases_", None) or self._spec().bases
        if bases[self._member] == "actual_apy":
            return naive
        value = _column(rows, bases[self._member])
        return np.where(np.isfinite(value), value, naive)

    def _to_target(self, rows: pa.Table, y: np.ndarray) -> np.ndarray:
        target = self._spec().target
        if target == "level":
            return y
        change = y - self._base(rows)
        change = change / self._target_scale(rows) if target == "scaled_change" else change
        return np.round(change, 9)  # L1 follows each residual's sign: no last-bit noise

    def _from_target(self, rows: pa.Table, raw: np.ndarray) -> np.ndarray:
        target = self._spec().target
        if target == "level":
            return raw
        change = raw * self._target_scale(rows) if target == "scaled_change" else raw
        return change + self._base(rows)

    def _training_columns(self, rows: pa.Table, weight_max: float | None) -> TrainingColumns:
        """The matrix, each member's target in its own units, and the row weights."""
        spec = self._spec()
        dtype = np.float32 if spec.float32 else np.float64
        labels = []
        try:
            for i in range(len(self.bases_)):
                self._member = i
                y = _column(rows, target_column(self.horizon))
                labels.append(self._to_target(rows, y))
        finally:
            self._member = 0
        weight = None
        if weight_max is not None and rows.num_rows:
            weight = np.round(self._raw_weight(rows) / (2.0 * weight_max), 12)
        return TrainingColumns(_matrix(rows, spec.features, dtype), labels, weight)

    def _train_members(
        self, rows: Frame, rounds: Sequence[int], valid: Frame | None = None
    ) -> list[lgb.Booster]:
        """One booster per base, all trained by the compute (local LightGBM or SynapseML) from
        the same matrix and weights; only their targets differ. With ``valid`` (and early
        stopping in the spec), each stops where its validation loss was lowest."""
        spec = self._spec()
        use_valid = valid is not None and bool(spec.early_stopping)
        params = self.lgb_params()
        params.pop("num_iterations", None)
        params["num_threads"] = self.fit_threads_
        fit = Fit(
            rows,
            valid if use_valid else None,
            self._training_columns,
            self._raw_weight if self._weighted() else None,
            tuple(spec.features),
            params,
            list(rounds),
            spec.early_stopping if use_valid else 0,
        )
        boosters = []
        for booster, best, record in self.compute.train(fit):
            booster.best_iteration = best if best > 0 else 0
            if record is not None:
                self.fits_.append(record)
            boosters.append(booster)
        return boosters

    @property
    def booster_(self) -> lgb.Booster | None:
        """The first member's booster (from today's APY): its text is ``h<horizon>.txt``."""
        members = getattr(self, "members_", None)
        return members[0] if members else None

    def fit(
        self,
        panel: Frame,
        *,
        end: dt.date | None = None,
        stacked: Mapping[Horizon, Forecaster] | None = None,
    ) -> Forecaster:
        """Train on the last ``train_days`` of observed targets (up to ``end`` when given).

        ``panel``: a table of the compute's (an Arrow table for the default one).
        ``stacked``: forecasters of the spec's ``stack`` horizons already fitted on the same panel
        and ``end`` (a :class:`ForecastModel`'s); the others are fitted here.
        """
        self._spec()  # an unknown model fails here, before any work
        compute = self.compute
        started = time.perf_counter()
        self.stacked_: dict[Horizon, Forecaster] = {}
        self.fits_ = []
        target = target_column(self.horizon)
        if target not in compute.columns(panel):
            panel = with_targets(compute, panel, [self.horizon])
        window = compute.per_pools(  # counted, and only the capped rows kept
            panel,
            functools.partial(
                training_rows, train_days=self.train_days, horizon=self.horizon, end=end
            ),
        )
        self.window_rows_ = compute.count(window)
        rows = compute.keep(
            at_most(compute, window, self.window_rows_, self._spec().max_rows, self.seed)
        )
        try:
            self._fit_rows(rows, panel, end, stacked)
        finally:
            compute.release(rows)
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def _fit_rows(
        self,
        rows: Frame,
        panel: Frame,
        end: dt.date | None,
        stacked: Mapping[Horizon, Forecaster] | None,
    ) -> None:
        spec = self._spec()
        compute = self.compute
        target = target_column(self.horizon)
        n_rows, first, last, fingerprint = compute.summary(
            rows, _fingerprint_columns(compute.columns(rows), spec.features, target)
        )
        if n_rows < 10:
            raise ValueError(
                f"only {n_rows} training rows with an observed {self.horizon}-day-ahead APY "
                f"in the last {self.train_days} days; ingest more history or raise TRAIN_DAYS"
            )
        threads = self.num_threads or (
            # OpenMP threads cost more than they give on small sets (and spin under contention).
            1 if n_rows < 200_000 else (os.cpu_count() or 1)
        )
        self.fit_threads_ = threads
        self.features_ = spec.features
        self.n_train_ = n_rows
        assert first is not None and last is not None
        self.train_window_ = (first, last)
        self.fingerprint_ = fingerprint
        self.bases_ = spec.bases
        self.members_: list[lgb.Booster] = []
        self.anchors_ = spec.anchors
        # (weights, dead zone) per blend group; the groups split today's APY at blend_edges_.
        self.blend_edges_: tuple[float, ...] = ()
        self.blends_: list[tuple[tuple[float, ...], float]] = [
            ((1.0,) + (0.0,) * len(spec.anchors), 0.0)
        ]
        self.quantiles_: tuple[float, float] | None = None
        self.calibration_: dict[str, Any] = {}
        rounds = [int(self.lgb_params().get("num_iterations", 100))] * len(self.bases_)
        if spec.calibrate:
            days = spec.calibration_days
            calib = compute.keep(
                compute.per_pools(rows, lambda t: t.filter(pc.less(t.column("age"), days)))
            )
            early = compute.keep(
                compute.per_pools(
                    rows, lambda t: t.filter(pc.greater_equal(t.column("age"), days))
                )
            )
            try:
                n_calib, n_early = compute.total(
                    rows,
                    lambda t: np.array(
                        [pc.sum(pc.less(t.column("age"), days)).as_py() or 0,
                         pc.sum(pc.greater_equal(t.column("age"), days)).as_py() or 0],
                        dtype=np.float64,
                    ),
                )
                n_calib = int(n_calib)
                if n_calib and n_early >= 10:
                    self._calibrate(early, calib, n_calib, rounds)
                    if self.best_iterations_:
                        rounds = self.best_iterations_
            finally:
                compute.release(calib)
                compute.release(early)
        if spec.baseline is None:
            self.members_ = self._train_members(rows, rounds)
        self.member_rounds_ = rounds if spec.baseline is None else [0] * len(rounds)
        self.rounds_ = self.member_rounds_[0]
        self.stack_weight_ = _stack_weight(self.calibration_.get("ratio"), spec.stack_edge)
        # After calibration, which judged this model's own forecasts.
        for h in spec.stack:
            given = (stacked or {}).get(h)
            self.stacked_[h] = given or _forecaster(self, h).fit(panel, end=end)

    def _calibrate(
        self, early: Frame, calib: Frame, n_calib: int, rounds: Sequence[int]
    ) -> None:
        """Fit on the early part, judge on the held-out last days: blend, dead zone, intervals.
        Every pass over the held-out rows is a sum, a count or a few ranked values."""
        spec = self._spec()
        compute = self.compute
        target = target_column(self.horizon)
        self.best_iterations_: list[int] = []
        # Each pass over a table predicts it again: the local compute passes the same table
        # every time, so its predictions are kept while calibrating.
        self._memo: dict[tuple[int, str], tuple[pa.Table, np.ndarray]] | None = {}
        try:
            if spec.baseline is None:
                self.members_ = self._train_members(early, rounds, valid=calib)
                self.best_iterations_ = [
                    b.best_iteration or r for b, r in zip(self.members_, rounds, strict=True)
                ]
                self.blend_edges_ = blend_edges(compute, calib, spec.blend_groups)
                self.blends_ = fit_blends(self, calib, spec.dead_zones)

            def residual(t: pa.Table) -> np.ndarray:
                point = self._memoized(t, "point", self.predict)
                return (_column(t, target) - point) / self._scale(t)

            n, values = compute.ranked(
                calib, residual, lambda n: _conformal_ranks(n, spec.interval) if n else ()
            )
            self.quantiles_ = (values[0], values[1]) if n else (0.0, 0.0)

            def errors(t: pa.Table) -> np.ndarray:
                y = _column(t, target)
                point = self._memoized(t, "point", self.predict)
                return np.array(
                    [np.sum(np.abs(y - point)), np.sum(np.abs(y - _column(t, "actual_apy")))]
                )

            error, naive_error = compute.total(calib, errors)
        finally:
            self._memo = None
        self.calibration_ = {
            "n": int(n_calib),
            "mae": float(error / n_calib),
            "naive_mae": float(naive_error / n_calib),
            "blend_edges": list(self.blend_edges_),
            "weights": [list(w) for w, _ in self.blends_],
            "dead_zone": [z for _, z in self.blends_],
            "best_iteration": self.best_iterations_[0] if self.best_iterations_ else None,
            "quantiles": list(self.quantiles_),
        }
        self.calibration_["ratio"] = (
            self.calibration_["mae"] / self.calibration_["naive_mae"]
            if self.calibration_["naive_mae"]
            else None
        )

    _memo: dict[tuple[int, str], tuple[pa.Table, np.ndarray]] | None = None

    def _memoized(
        self, rows: pa.Table, what: str, fn: Callable[[pa.Table], np.ndarray]
    ) -> np.ndarray:
        """``fn(rows)``, kept while calibrating for the same table object."""
        if self._memo is None:
            return fn(rows)
        key = (id(rows), what)
        hit = self._memo.get(key)
        if hit is None or hit[0] is not rows:
            hit = (rows, fn(rows))
            self._memo[key] = hit
        return hit[1]

    def _anchors(self, rows: pa.Table) -> np.ndarray:
        """The blend's baselines (today's APY where one is missing), one column each."""
        naive = _column(rows, "actual_apy")
        cols = [_column(rows, a) for a in self.anchors_]
        if not cols:
            return np.empty((rows.num_rows, 0))
        return np.column_stack([np.where(np.isfinite(c), c, naive) for c in cols])

    def _raw_predict(self, rows: pa.Table, iterations: Sequence[int] | None = None) -> np.ndarray:
        spec = self._spec()
        if spec.baseline is not None:
            value = _column(rows, spec.baseline)
            return np.where(np.isfinite(value), value, _column(rows, "actual_apy"))
        assert self.members_, "the forecaster is not fitted"
        dtype = np.float32 if spec.float32 else np.float64
        matrix = _matrix(rows, self.features_, dtype)
        values = []
        try:
            for i, booster in enumerate(self.members_):
                self._member = i
                raw = booster.predict(
                    matrix,
                    num_iteration=iterations[i] if iterations else None,
                    num_threads=self.fit_threads_,
                )
                values.append(self._from_target(rows, np.asarray(raw, dtype=np.float64)))
        finally:
            self._member = 0
        return values[0] if len(values) == 1 else np.mean(values, axis=0)

    def predict(self, rows: pa.Table) -> np.ndarray:
        """Point forecasts for the given origin rows."""
        own = self._own_predict(rows)
        stacked = self.stacked_
        if not stacked:
            return own
        others = [f.predict(rows) for f in stacked.values()]
        w = self.stack_weight_
        if w == 1.0:  # the plain mean: the same bits as before stack weights
            return np.mean([own, *others], axis=0)
        return (w * own + np.sum(others, axis=0)) / (w + len(others))

    def _own_predict(self, rows: pa.Table) -> np.ndarray:
        model = self._raw_predict(rows)
        spec = self._spec()
        if spec.baseline is not None or not spec.calibrate:
            return model  # a baseline, or a model as trained (the plan's)
        naive = _column(rows, "actual_apy")
        anchors = self._anchors(rows)
        scl = self._scale(rows)
        group = _blend_group(naive, self.blend_edges_)
        value = np.empty_like(model)
        for k, (weights, zone) in enumerate(self.blends_):
            m = group == k
            value[m] = _blend(model[m], naive[m], anchors[m], scl[m], weights, zone)
        # A pool whose APY has not moved for 30 days gives no evidence of a move: keep it.
        flat = _column(rows, "stddev_apy_30d") == 0.0
        return np.where(flat, naive, value)

    def predict_interval(self, rows: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point forecast and its 80% interval (NaN bounds for a model without calibration)."""
        point = self.predict(rows)
        if self.quantiles_ is None:
            nan = np.full(point.shape, np.nan)
            return point, nan, nan
        scl = self._scale(rows)
        return point, point + self.quantiles_[0] * scl, point + self.quantiles_[1] * scl

    def model_text(self) -> str:
        return self.booster_.model_to_string() if self.booster_ is not None else ""

    def member_texts(self) -> list[str]:
        """The other members' native models (bases after the first), in order."""
        return [b.model_to_string() for b in getattr(self, "members_", [])[1:]]

    def metadata(self) -> dict[str, Any]:
        spec = self._spec()
        return {
            "model": asdict(spec) | {"params": self.lgb_params()},
            "horizon": self.horizon,
            "features": list(self.features_),
            "train_days": self.train_days,
            "train_window": [d.isoformat() for d in self.train_window_],
            "n_train": self.n_train_,
            "window_rows": self.window_rows_,
            "rounds": self.rounds_,
            "members": [
                {"base": b, "rounds": r}
                for b, r in zip(self.bases_, self.member_rounds_, strict=True)
            ],
            "data_fingerprint": self.fingerprint_,
            "blend_anchors": list(self.anchors_),
            "blend_edges": list(self.blend_edges_),
            "blend_weights": [list(w) for w, _ in self.blends_],
            "dead_zone": [z for _, z in self.blends_],
            "interval_quantiles": list(self.quantiles_) if self.quantiles_ else None,
            "calibration": self.calibration_,
            "stack": [horizon_key(h) for h in self.stacked_],
            "stack_weight": self.stack_weight_,
            # The engine's trainer, if not local LightGBM ("engine", "trainer", its fits).
            **self.compute.describe(self.fits_),
        }

    @classmethod
    def _restore(
        cls,
        meta: dict[str, Any],
        text: str,
        members: Sequence[str] = (),
        *,
        models: Mapping[str, ModelSpec] = MODELS,
    ) -> Forecaster:
        """A fitted forecaster from its saved metadata and model texts (no training); its model
        must be named in ``models``."""
        horizon = parse_horizon(meta["horizon"])
        self = cls(
            meta["model"]["name"],
            horizon=horizon,
            train_days=meta["train_days"],
            seed=int(meta["model"]["params"].get("seed", 42)),
            models=models,
        )
        self.fit_threads_ = 1
        self.features_ = tuple(meta["features"])
        self.n_train_ = meta["n_train"]
        self.window_rows_ = meta.get("window_rows", self.n_train_)
        first, last = meta["train_window"]
        self.train_window_ = (dt.date.fromisoformat(first), dt.date.fromisoformat(last))
        self.fingerprint_ = meta["data_fingerprint"]
        self.rounds_ = meta["rounds"]
        # Artifacts from before ensembles had one member, from today's APY.
        saved = meta.get("members") or [{"base": "actual_apy", "rounds": self.rounds_}]
        self.bases_ = tuple(m["base"] for m in saved)
        self.member_rounds_ = [m["rounds"] for m in saved]
        # Artifacts from before the anchors were a setting blended the 7-day mean only.
        self.anchors_ = tuple(meta.get("blend_anchors", ["rolling_apy_7d"]))
        # Artifacts from before blend groups held one blend: a flat weight list and one zone.
        weights, zones = meta["blend_weights"], meta["dead_zone"]
        if not isinstance(zones, list):
            weights, zones = [weights], [zones]
        self.blend_edges_ = tuple(float(e) for e in meta.get("blend_edges", []))
        self.blends_ = [
            (tuple(float(w) for w in ws), float(z)) for ws, z in zip(weights, zones, strict=True)
        ]
        q = meta["interval_quantiles"]
        self.quantiles_ = (q[0], q[1]) if q else None
        self.calibration_ = meta["calibration"]
        # Artifacts from before stack_edge weighed their own model like each stacked horizon.
        self.stack_weight_ = float(meta.get("stack_weight", 1.0))
        texts = [text, *members] if text else []
        self.members_ = [lgb.Booster(model_str=t) for t in texts]
        self.stacked_ = {}  # ForecastModel.load wires the saved ``stack`` horizons
        return self


def _forecaster(like: Any, horizon: Horizon) -> Forecaster:
    """An unfitted forecaster for ``horizon`` with the model, window, seed, threads, registry and
    compute of ``like`` (a :class:`Forecaster` or a ``ForecastModel``)."""
    return Forecaster(
        like.model,
        horizon=horizon,
        train_days=like.train_days,
        seed=like.seed,
        num_threads=like.num_threads,
        params=like.params,
        models=like.models,
        compute=like.compute,
    )


def _fingerprint_columns(
    names: Sequence[str], features: Sequence[str], target: str
) -> list[str]:
    """The columns a model's data fingerprint hashes: keys, today's APY, its stored features and
    its target (store-independent: no schema metadata)."""
    return [
        c
        for c in dict.fromkeys(("pool_id", "date", "actual_apy", *features, target))
        if c in names
    ]
