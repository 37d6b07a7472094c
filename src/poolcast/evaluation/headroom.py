"""How much a forecast could gain on these data at best: three bounds that cheat on purpose.

``poolcast backtest --headroom`` scores them on the backtest's own targets, beside the models:

* ``oracle_linear``: per pool, today's APY moved toward its 7- and 30-day means and against
  yesterday's move, ``apy + a (mean7 - apy) + b (mean30 - apy) + r delta``, with ``a``, ``b``
  and ``r`` chosen on the very targets it is scored on (least absolute error on a grid). No
  per-pool linear mean-reversion model fitted on the past can beat it on the same targets.
* ``hindsight``: production itself (features, ensembles, calibration, stacks), refitted at each
  cutoff as in the backtest, but on the other pools' targets up to the last day its window
  scores, and scored on the pools held out (5 folds of pools). It has seen how every other pool
  moved over the very days it forecasts, and is calibrated on them: it knows the market's near
  future, which no forecast does.
* ``in_sample``: the same refit, on every pool's targets up to the last day the window scores,
  the scored pools' own included. It has seen the very targets it is scored on: what
  production's features and tree budget can fit of them. A target it misses asks more than
  this model can express on these data, even told the answers.

Where production is close to ``oracle_linear`` and ``hindsight``, a target below them asks more
than these features hold; where ``hindsight`` is far below production, more data or a better
learner may still pay.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poolcast.evaluation.scoring import fold_of
from poolcast.model.features import Horizon, _column, horizon_days, target_column
from poolcast.model.forecaster import Forecaster

HEADROOM_MODELS: tuple[str, ...] = ("oracle_linear", "hindsight", "in_sample")
HINDSIGHT_FOLDS = 5

_STEPS = np.round(np.arange(0.0, 1.01, 0.1), 1)
# (a, b, r): shares of the way to the 7- and 30-day means (a + b <= 1), and of yesterday's
# move taken back.
_GRID = np.array([(a, b, r) for a in _STEPS for b in _STEPS if a + b <= 1.0 for r in -_STEPS[:9]])


def oracle_linear(rows: pa.Table, horizon: Horizon) -> np.ndarray:
    """Per pool, the best linear reversion on its own scored targets (see the module doc)."""
    y = _column(rows, target_column(horizon))
    apy = _column(rows, "actual_apy")
    moves = np.column_stack(
        [
            np.nan_to_num(_column(rows, "rolling_apy_7d") - apy),
            np.nan_to_num(_column(rows, "rolling_apy_30d") - apy),
            np.nan_to_num(_column(rows, "apy_delta_today_yesterday")),
        ]
    )
    value = apy.copy()
    pools = np.asarray(rows.column("pool_id").to_pylist(), dtype=object)
    for pool in np.unique(pools):
        idx = np.flatnonzero(pools == pool)
        shifts = moves[idx] @ _GRID.T  # rows x grid points
        errors = np.abs(y[idx, None] - apy[idx, None] - shifts).sum(axis=0)
        value[idx] = apy[idx] + shifts[:, int(np.argmin(errors))]
    return value


def hindsight(
    panel: pa.Table,
    windows: Sequence[tuple[dt.date, pa.Table]],
    horizon: Horizon,
    *,
    held_out: bool = True,
    train_days: int = 60,
    seed: int = 42,
    num_threads: int = 0,
) -> np.ndarray:
    """Production refitted at each cutoff as in the backtest, but on targets up to the last one
    its window scores (see the module doc); one array over all ``windows``. ``held_out``: each
    fold of pools forecast by a model fitted on the other pools (``hindsight``); otherwise by
    one fitted on every pool, the scored ones included (``in_sample``).

    ``panel``: the backtest's panel (with targets and peer medians); ``windows``: each cutoff with
    the origin rows its model forecasts.
    """
    folds = HINDSIGHT_FOLDS if held_out else 1
    panel_fold = _folds(panel, folds)
    values = []
    for day, rows in windows:
        # The last target day the window scores: every earlier target of the training pools is
        # known.
        last_origin = pc.max(rows.column("date")).as_py()
        end = last_origin + dt.timedelta(days=horizon_days(horizon))
        score_fold = _folds(rows, folds)
        value = _column(rows, "actual_apy").copy()
        for k in np.unique(score_fold):
            model = Forecaster(
                "production",
                horizon=horizon,
                train_days=train_days + (end - day).days,
                seed=seed,
                num_threads=num_threads,
            )
            train = panel.filter(pa.array(panel_fold != k)) if held_out else panel
            try:
                model.fit(train, end=end)
            except ValueError:
                if not held_out:
                    raise
                continue  # too few other pools: naive stands
            value[score_fold == k] = model.predict(rows.filter(pa.array(score_fold == k)))
        values.append(value)
    return np.concatenate(values)


def _folds(rows: pa.Table, folds: int) -> np.ndarray:
    """Each row's fold: the backtest's hash of its pool id (once per pool, not per row)."""
    pools, index = np.unique(
        np.asarray(rows.column("pool_id").to_pylist(), dtype=object), return_inverse=True
    )
    return np.asarray([fold_of(p, folds) for p in pools], dtype=np.int64)[index]
