"""The production forecast: one :class:`~poolcast.model.forecaster.Forecaster` per horizon, the TVL
baselines, and the artifact they are saved and loaded as (``h<horizon>.txt`` native LightGBM models
and ``metadata.json``, in a local folder or under ``gs://``)."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poolcast.model.artifacts import location, save_files
from poolcast.model.compute import Compute, Frame, LocalCompute, ensure_targets
from poolcast.model.features import (
    HORIZONS,
    Horizon,
    _column,
    horizon_days,
    horizon_key,
    latest_rows,
    parse_horizon,
    training_rows,
)
from poolcast.model.forecaster import Forecaster, _forecaster
from poolcast.model.specs import MODELS, ModelSpec
from poolcast.spec import DERIVED, PEER_MEDIANS

FORECASTS_SCHEMA = pa.schema(
    [
        ("pool_id", pa.string()),
        ("made_on", pa.date32()),
        ("target_date", pa.date32()),
        ("metric", pa.string()),
        ("horizon", pa.string()),
        ("value", pa.float64()),
        ("lower", pa.float64()),
        ("upper", pa.float64()),
        ("model_version", pa.string()),
    ]
)


NEXT_DAY_SCHEMA = pa.schema(
    [
        ("pool_id", pa.string()),
        ("date", pa.date32()),
        ("forecasted_apy", pa.float64()),
        ("forecasted_tvl", pa.float64()),
    ]
)


def forecast_table(model: Forecaster | ForecastModel, panel: Frame) -> Frame:
    """One next-day forecast per pool: pool_id, date (latest observed day + horizon),
    forecasted_apy, forecasted_tvl (the TVL forecast that backtested better; TVL carried from that
    day, the plan's baseline, for a single :class:`Forecaster`). A table of the model's compute."""
    compute = model.compute
    panel = ensure_targets(compute, panel, [1])
    return compute.per_pools(panel, functools.partial(_next_day, model), NEXT_DAY_SCHEMA)


def _next_day(model: Forecaster | ForecastModel, panel: pa.Table) -> pa.Table:
    rows = latest_rows(panel)
    if isinstance(model, ForecastModel):
        one = model.horizons_[1]
        tvl = model.tvl_forecast(rows, 1)
    else:
        one, tvl = model, _column(rows, "actual_tvl")
    dates = pc.add(
        pc.cast(rows.column("date"), pa.timestamp("s")),
        pa.scalar(dt.timedelta(days=horizon_days(one.horizon)), pa.duration("s")),
    )
    return pa.table(
        {
            "pool_id": pc.cast(rows.column("pool_id"), pa.string()),
            "date": pc.cast(dates, pa.date32()),
            "forecasted_apy": pa.array(_predict(one, rows), pa.float64()),
            "forecasted_tvl": pa.array(tvl, pa.float64()),
        }
    )


def _predict(model: Forecaster, rows: pa.Table) -> np.ndarray:
    return model.predict(rows) if rows.num_rows else np.empty(0)


# -- the multi-horizon production model and its artifacts ------------------------------------------


def _tvl_baseline(rows: pa.Table, how: str) -> np.ndarray:
    naive = _column(rows, "actual_tvl")
    if how == "naive":
        return naive
    mean = _column(rows, "rolling_tvl_7d")
    return np.where(np.isfinite(mean), mean, naive)


_TVL_BASELINES = ("naive", "mean7d")


def choose_tvl_baseline(
    panel: Frame,
    horizon: int,
    train_days: int,
    *,
    end: dt.date | None = None,
    compute: Compute | None = None,
) -> dict[str, Any]:
    """TVL forecast by whichever baseline had the lower MAE over the training window."""
    compute = compute if compute is not None else LocalCompute()
    panel = ensure_targets(compute, panel, [horizon])
    rows = compute.per_pools(
        panel, functools.partial(training_rows, train_days=train_days, horizon=horizon, end=end)
    )

    def errors(t: pa.Table) -> np.ndarray:
        y = _column(t, f"target_tvl_h{horizon}")
        ok = np.isfinite(y)
        return np.array(
            [*(np.sum(np.abs(_tvl_baseline(t, how)[ok] - y[ok])) for how in _TVL_BASELINES),
             ok.sum()]
        )

    *sums, n = compute.total(rows, errors)
    # Micro-dollars: a sum's last bits depend on how the rows were split (engine, pool batches).
    maes = {
        how: round(float(s / n), 6) if n else None
        for how, s in zip(_TVL_BASELINES, sums, strict=True)
    }
    ok_n = n
    valid = {k: v for k, v in maes.items() if v is not None}
    best = min(valid, key=lambda k: valid[k]) if valid else "naive"
    return {"baseline": best, "mae": maes, "n": int(ok_n)}


class ForecastModel:
    """The production forecast: one :class:`Forecaster` per horizon, saved and loaded as one."""

    backtest_: dict[str, Any] | None = None  # a loaded artifact's backtest summary

    def __init__(
        self,
        model: str = "production",
        *,
        horizons: Sequence[Horizon] = HORIZONS,
        train_days: int = 60,
        seed: int = 42,
        num_threads: int = 0,
        params: dict[str, Any] | None = None,
        models: Mapping[str, ModelSpec] = MODELS,
        compute: Compute | None = None,
    ) -> None:
        """``model``: a name in ``models``; ``compute``: where the rows live and what trains
        every horizon's boosters (default: Arrow tables and LightGBM in this process; the Spark
        engine passes its DataFrames and SynapseML)."""
        self.model = model
        self.horizons = tuple(horizons)
        self.train_days = train_days
        self.seed = seed
        self.num_threads = num_threads
        self.params = params
        self.models = models
        self.compute: Compute = compute if compute is not None else LocalCompute()

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to an engine's workers to predict: the fitted state, not the engine.
        state = dict(self.__dict__)
        state.pop("compute", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.compute = LocalCompute()

    def fit(
        self,
        panel: Frame,
        *,
        end: dt.date | None = None,
        on_horizon: Callable[[], object] | None = None,
    ) -> ForecastModel:
        """Fit every horizon on the panel's targets observed up to ``end``; ``on_horizon`` is
        called after each horizon (a progress bar's ``advance``)."""
        if 1 not in self.horizons:
            raise ValueError("the horizons must include 1: forecasted_apy is the next-day forecast")
        self._check_stacks()
        panel = self.compute.keep(ensure_targets(self.compute, panel, self.horizons))
        self.horizons_: dict[Horizon, Forecaster] = {}
        self.tvl_: dict[str, dict[str, Any]] = {}
        self.skipped_: dict[str, str] = {}
        for h in self.horizons:
            forecaster = _forecaster(self, h)
            try:
                self.horizons_[h] = forecaster.fit(panel, end=end, stacked=self.horizons_)
            except ValueError as exc:
                if h == 1:
                    raise
                # A short history still gets its next-day forecast; longer horizons wait.
                self.skipped_[horizon_key(h)] = str(exc)
                if on_horizon is not None:
                    on_horizon()
                continue
            if h != "mean7":
                self.tvl_[horizon_key(h)] = choose_tvl_baseline(
                    panel, int(h), self.train_days, end=end, compute=self.compute
                )
            if on_horizon is not None:
                on_horizon()
        self.compute.release(panel)
        self.version_ = self._version()
        return self

    def _check_stacks(self) -> None:
        """A horizon that averages others' forecasts needs them fitted (and saved) before it."""
        for h in self.horizons:
            spec = self.models[self.model].for_horizon(h) if self.model in self.models else None
            before = self.horizons[: self.horizons.index(h)]
            if spec is not None and not set(spec.stack) <= set(before):
                raise ValueError(
                    f"horizon {h} of {self.model} averages horizons {list(spec.stack)}: list them "
                    f"before it (horizons {list(self.horizons)})"
                )

    def _version(self) -> str:
        digest = hashlib.sha256()
        for h, f in self.horizons_.items():
            for text in (f.model_text(), *f.member_texts()):
                digest.update(horizon_key(h).encode() + b"\0" + text.encode() + b"\0")
            digest.update(json.dumps(f.metadata(), sort_keys=True, default=str).encode())
        digest.update(json.dumps(self.tvl_, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def tvl_forecast(self, rows: pa.Table, horizon: Horizon) -> np.ndarray:
        choice = self.tvl_.get(horizon_key(horizon), {"baseline": "naive"})
        return _tvl_baseline(rows, choice["baseline"])

    def forecasts(self, panel: Frame) -> Frame:
        """Every horizon for every pool, from its latest observed day: the ``forecasts`` table's
        rows (metric ``apy`` with its 80% interval, metric ``tvl`` without one), a table of the
        model's compute."""
        panel = ensure_targets(
            self.compute, panel, [h for h in self.horizons if h != "mean7"] or [1]
        )
        return self.compute.per_pools(panel, self._forecasts, FORECASTS_SCHEMA)

    def _forecasts(self, panel: pa.Table) -> pa.Table:
        rows = latest_rows(panel)
        made_on = rows.column("date")
        parts = []
        for h, f in self.horizons_.items():
            if rows.num_rows:
                value, lower, upper = f.predict_interval(rows)
            else:
                value = lower = upper = np.empty(0)
            target_date = pc.cast(
                pc.add(
                    pc.cast(made_on, pa.timestamp("s")),
                    pa.scalar(dt.timedelta(days=horizon_days(h)), pa.duration("s")),
                ),
                pa.date32(),
            )
            base = {
                "pool_id": rows.column("pool_id"),
                "made_on": made_on,
                "target_date": target_date,
            }
            n = rows.num_rows
            parts.append(
                pa.table(
                    {
                        **base,
                        "metric": pa.array(["apy"] * n),
                        "horizon": pa.array([horizon_key(h)] * n),
                        "value": pa.array(value, pa.float64()),
                        "lower": pa.array(
                            np.where(np.isfinite(lower), lower, np.nan),
                            pa.float64(),
                            from_pandas=True,
                        ),
                        "upper": pa.array(
                            np.where(np.isfinite(upper), upper, np.nan),
                            pa.float64(),
                            from_pandas=True,
                        ),
                        "model_version": pa.array([self.version_] * n),
                    }
                )
            )
            if h != "mean7":
                parts.append(
                    pa.table(
                        {
                            **base,
                            "metric": pa.array(["tvl"] * n),
                            "horizon": pa.array([horizon_key(h)] * n),
                            "value": pa.array(self.tvl_forecast(rows, h), pa.float64()),
                            "lower": pa.nulls(n, pa.float64()),
                            "upper": pa.nulls(n, pa.float64()),
                            "model_version": pa.array([self.version_] * n),
                        }
                    )
                )
        return pa.concat_tables(parts).sort_by(
            [("pool_id", "ascending"), ("metric", "ascending"), ("horizon", "ascending")]
        )

    def metadata(self, backtest: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "format": "poolcast-forecast-model/1",
            "version": self.version_,
            "model": self.model,
            "seed": self.seed,
            "train_days": self.train_days,
            "features": list(
                dict.fromkeys(f for fc in self.horizons_.values() for f in fc.features_)
            ),
            # The model-side features any horizon uses, with their formulas.
            "derived_features": {
                k: list(v)
                for k, v in DERIVED.items()
                if any(k in f.features_ for f in self.horizons_.values())
            },
            "peer_medians": {k: [c, list(g)] for k, (c, g) in PEER_MEDIANS.items()},
            "lightgbm": lgb.__version__,
            "horizons": {horizon_key(h): f.metadata() for h, f in self.horizons_.items()},
            "tvl": self.tvl_,
            "skipped_horizons": getattr(self, "skipped_", {}),
            # Each fit's own time-based holdout (its last calibration days), a one-cutoff backtest.
            "backtest": backtest
            if backtest is not None
            else {horizon_key(h): f.calibration_ for h, f in self.horizons_.items()},
            # The engine's trainer, if not local LightGBM ("engine", "trainer").
            **self.compute.describe(),
        }

    def files(self, backtest: dict[str, Any] | None = None) -> dict[str, bytes]:
        """The artifact's files: ``h<horizon>.txt`` native LightGBM models and ``metadata.json``."""
        out = {f"h{horizon_key(h)}.txt": f.model_text().encode() for h, f in self.horizons_.items()}
        for h, f in self.horizons_.items():
            for i, text in enumerate(f.member_texts(), start=1):
                out[f"h{horizon_key(h)}.b{i}.txt"] = text.encode()
        out["metadata.json"] = json.dumps(
            self.metadata(backtest), indent=2, sort_keys=True, default=str
        ).encode()
        return out

    def save(self, where: str | Path, backtest: dict[str, Any] | None = None) -> str:
        """Write the artifact under a local folder or a ``gs://bucket/prefix``; returns where."""
        return save_files(where, f"{self.model}-{self.version_}", self.files(backtest))

    @classmethod
    def load(
        cls,
        where: str | Path,
        *,
        models: Mapping[str, ModelSpec] = MODELS,
        compute: Compute | None = None,
    ) -> ForecastModel:
        """An artifact written by :meth:`save` (local folder or ``gs://``), ready to forecast
        with ``compute``; its model must be named in ``models`` (pass the research models to
        load one of theirs)."""
        folder = location(where)
        base = folder.uri
        try:
            meta = json.loads(folder.read_text("metadata.json"))
        except (FileNotFoundError, NotADirectoryError):
            missing = f"no model artifact at {base} (metadata.json missing)"
            raise FileNotFoundError(missing) from None
        read = folder.read_text
        if meta.get("format") != "poolcast-forecast-model/1":
            raise ValueError(f"{base} is not a poolcast forecast model artifact")
        self = cls(
            meta["model"],
            horizons=[parse_horizon(h) for h in meta["horizons"]],
            train_days=meta["train_days"],
            seed=meta["seed"],
            models=models,
            compute=compute,
        )
        self.horizons_ = {
            parse_horizon(k): Forecaster._restore(
                m,
                read(f"h{k}.txt"),
                [read(f"h{k}.b{i}.txt") for i in range(1, len(m.get("members") or [None]))],
                models=models,
            )
            for k, m in meta["horizons"].items()
        }
        for k, m in meta["horizons"].items():
            # Artifacts from before stacking have no ``stack``: each horizon forecasts alone.
            for s in m.get("stack", []):
                if parse_horizon(s) not in self.horizons_:
                    raise ValueError(f"{base}: horizon {k} averages horizon {s}, which is missing")
                self.horizons_[parse_horizon(k)].stacked_[parse_horizon(s)] = self.horizons_[
                    parse_horizon(s)
                ]
        for f in self.horizons_.values():
            f.compute = self.compute
        self.tvl_ = meta["tvl"]
        self.version_ = meta["version"]
        self.backtest_ = meta.get("backtest")
        return self
