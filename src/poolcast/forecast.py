"""Step 11: one global LightGBM model that forecasts every pool's APY for a later day.

The target is always a later day's APY than the features (the plan trained on the same day's APY
from features that contain it). Only observed targets train or score a model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poolcast.spec import FEATURE_COLUMNS, PLAN_FEATURE_COLUMNS

# The plan's LightGBM parameters (Task 2.3), as LightGBM's own names.
PLAN_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "num_leaves": 64,
    "num_iterations": 800,
    "learning_rate": 0.03,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 5,
}


@dataclass(frozen=True)
class ModelSpec:
    """What a model learns: its features, its target form and its LightGBM parameters.

    ``target="level"`` learns APY(t+h) itself; ``target="change"`` learns APY(t+h) - APY(t) and adds
    today's APY back, which keeps flat pools flat.
    """

    name: str
    features: tuple[str, ...]
    target: Literal["level", "change"]
    params: dict[str, Any] = field(default_factory=dict)


MODELS: dict[str, ModelSpec] = {
    "plan": ModelSpec("plan", PLAN_FEATURE_COLUMNS, "level", dict(PLAN_PARAMS)),
    "production": ModelSpec(
        "production", FEATURE_COLUMNS, "change", {**PLAN_PARAMS, "objective": "regression_l1"}
    ),
}


def _matrix(panel: pa.Table, features: Sequence[str]) -> np.ndarray:
    return np.column_stack(
        [pc.cast(panel.column(f), pa.float64()).to_numpy(zero_copy_only=False) for f in features]
    ).astype(np.float64)


def training_rows(panel: pa.Table, train_days: int, horizon: int = 1) -> pa.Table:
    """Rows with an observed target, from the last ``train_days`` days of each pool's data.

    Anchored on each pool's latest observed day: where every pool reports daily this is the plan's
    ``date >= today - TRAIN_DAYS``; a pool that paused still teaches the model its latest days.
    """
    target = f"target_h{horizon}"
    observed = panel.filter(pc.field("is_observed"))
    last = observed.group_by("pool_id").aggregate([("date", "max")])
    joined = panel.join(last, "pool_id")
    start = pc.subtract(
        pc.cast(joined.column("date_max"), pa.timestamp("s")),
        pa.scalar(dt.timedelta(days=train_days + horizon - 1), pa.duration("s")),
    )
    mask = pc.and_(
        pc.greater(pc.cast(joined.column("date"), pa.timestamp("s")), start),
        pc.and_(pc.is_valid(joined.column(target)), pc.is_valid(joined.column("actual_apy"))),
    )
    return (
        joined.filter(mask)
        .drop_columns(["date_max"])
        .sort_by([("pool_id", "ascending"), ("date", "ascending")])
    )


def latest_rows(panel: pa.Table) -> pa.Table:
    """Each pool's row on its latest observed day: the features a forecast starts from."""
    observed = panel.filter(pc.field("is_observed"))
    last = observed.group_by("pool_id").aggregate([("date", "max")])
    joined = observed.join(last, "pool_id")
    keep = pc.equal(joined.column("date"), joined.column("date_max"))
    return joined.filter(keep).drop_columns(["date_max"]).sort_by("pool_id")


class Forecaster:
    """A global LightGBM APY model for one horizon."""

    def __init__(
        self,
        model: str = "production",
        *,
        horizon: int = 1,
        train_days: int = 60,
        seed: int = 42,
        num_threads: int = 0,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.horizon = horizon
        self.train_days = train_days
        self.seed = seed
        self.num_threads = num_threads
        self.params = params

    def _spec(self) -> ModelSpec:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {sorted(MODELS)}")
        return MODELS[self.model]

    def lgb_params(self) -> dict[str, Any]:
        spec = self._spec()
        return {
            **spec.params,
            **(self.params or {}),
            "seed": self.seed,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": self.num_threads,
            "verbosity": -1,
        }

    def fit(self, panel: pa.Table) -> Forecaster:
        spec = self._spec()
        rows = training_rows(panel, self.train_days, self.horizon)
        if rows.num_rows < 10:
            raise ValueError(
                f"only {rows.num_rows} training rows with an observed next-day APY in the last "
                f"{self.train_days} days; ingest more history or raise TRAIN_DAYS"
            )
        y = rows.column(f"target_h{self.horizon}").to_numpy(zero_copy_only=False)
        if spec.target == "change":
            y = y - rows.column("actual_apy").to_numpy(zero_copy_only=False)
        dataset = lgb.Dataset(
            _matrix(rows, spec.features),
            label=y,
            feature_name=list(spec.features),
            free_raw_data=True,
        )
        params = self.lgb_params()
        if not self.num_threads:
            # OpenMP threads cost more than they give on small sets (and spin under contention).
            params["num_threads"] = 1 if rows.num_rows < 200_000 else (os.cpu_count() or 1)
        self.fit_threads_ = params["num_threads"]
        rounds = int(params.pop("num_iterations"))
        self.booster_ = lgb.train(params, dataset, num_boost_round=rounds)
        self.features_ = spec.features
        self.n_train_ = rows.num_rows
        self.train_window_ = (
            min(rows.column("date").to_pylist()),
            max(rows.column("date").to_pylist()),
        )
        self.fingerprint_ = _fingerprint(rows, spec.features, f"target_h{self.horizon}")
        return self

    def predict(self, rows: pa.Table) -> np.ndarray:
        spec = self._spec()
        raw = self.booster_.predict(_matrix(rows, self.features_), num_threads=self.fit_threads_)
        if spec.target == "change":
            raw = raw + rows.column("actual_apy").to_numpy(zero_copy_only=False)
        return np.asarray(raw, dtype=np.float64)

    def save(self, directory: str | Path) -> Path:
        """Native LightGBM text plus metadata; the folder is named by the model's content hash."""
        text = self.booster_.model_to_string()
        version = hashlib.sha256(text.encode()).hexdigest()[:16]
        out = Path(directory) / f"{self.model}-h{self.horizon}-{version}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.txt").write_text(text)
        meta = {
            "version": version,
            "model": asdict(self._spec()) | {"params": self.lgb_params()},
            "horizon": self.horizon,
            "features": list(self.features_),
            "train_days": self.train_days,
            "train_window": [d.isoformat() for d in self.train_window_],
            "n_train": self.n_train_,
            "data_fingerprint": self.fingerprint_,
        }
        (out / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        self.version_ = version
        return out


def _fingerprint(rows: pa.Table, features: Sequence[str], target: str) -> str:
    """A hash of exactly the data the model saw (store-independent: no schema metadata)."""
    table = pa.table({n: rows.column(n) for n in ("pool_id", "date", *features, target)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def forecast_table(model: Forecaster, panel: pa.Table) -> pa.Table:
    """One next-day forecast per pool: pool_id, date (latest observed day + horizon),
    forecasted_apy, forecasted_tvl (TVL carried from that day: the plan's baseline)."""
    rows = latest_rows(panel)
    values = model.predict(rows)
    dates = pc.add(
        pc.cast(rows.column("date"), pa.timestamp("s")),
        pa.scalar(dt.timedelta(days=model.horizon), pa.duration("s")),
    )
    return pa.table(
        {
            "pool_id": rows.column("pool_id"),
            "date": pc.cast(dates, pa.date32()),
            "forecasted_apy": pa.array(values, pa.float64()),
            "forecasted_tvl": pc.cast(rows.column("actual_tvl"), pa.float64()),
        }
    )
