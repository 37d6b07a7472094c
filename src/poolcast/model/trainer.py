"""What trains a booster in this process: the local compute's LightGBM.

The forecaster builds the matrix, the label and the row weights; the local compute
(:mod:`~poolcast.model.compute`) hands them to :class:`LocalTrainer` (``lightgbm.train`` in this
process). The Spark engine's compute trains on SynapseML instead (``poolcast.engines._synapse``)
and hands back the same native booster.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import lightgbm as lgb
import numpy as np


class Trained(NamedTuple):
    """One fitted booster, the iteration early stopping picked (0: none, use every tree) and the
    trainer's own record of the fit (None: nothing to record)."""

    booster: lgb.Booster
    best_iteration: int
    record: dict[str, Any] | None = None


@dataclass(frozen=True, eq=False)
class TrainingSet:
    """The rows one booster learns from: the matrix, label and row weights (None: every row
    counts alike), and the validation rows early stopping watches (None: no early stopping).
    Members of one ensemble pass the very same matrix objects; only their labels differ."""

    matrix: np.ndarray
    label: np.ndarray
    weight: np.ndarray | None
    feature_names: Sequence[str]
    valid_matrix: np.ndarray | None = None
    valid_label: np.ndarray | None = None
    valid_weight: np.ndarray | None = None


class LocalTrainer:
    """``lightgbm.train`` in this process. Ensemble members on the same rows share one binned
    dataset (binning is the larger part of a small fit): only the label is set anew."""

    def __init__(self) -> None:
        self._binned: tuple[tuple[int, int], lgb.Dataset, lgb.Dataset | None] | None = None

    def train(
        self, data: TrainingSet, *, params: Mapping[str, Any], rounds: int, early_stopping: int
    ) -> Trained:
        matrix, valid_matrix, valid_label = data.matrix, data.valid_matrix, data.valid_label
        key = (id(matrix), id(valid_matrix))
        if self._binned is not None and self._binned[0] == key:
            # Another ensemble member on the same rows: the bins are the same, only labels differ.
            _, binned, valid_data = self._binned
            binned.set_label(data.label)
            if valid_data is not None:
                valid_data.set_label(valid_label)
        else:
            binned = lgb.Dataset(
                matrix,
                label=data.label,
                weight=data.weight,
                feature_name=list(data.feature_names),
                free_raw_data=True,
                params={"max_bin": params.get("max_bin", 255)},
            )
            valid_data = None
            if valid_matrix is not None:
                valid_data = lgb.Dataset(
                    valid_matrix, label=valid_label, weight=data.valid_weight, reference=binned
                )
            self._binned = (key, binned, valid_data)
            # Kept while the matrices live (ids are unique only as long): the caller's ensemble.
            for m in (matrix, valid_matrix):
                if m is not None:
                    weakref.finalize(m, self._forget, key)
        callbacks: list[Callable[..., Any]] = []
        valid_sets = []
        if valid_data is not None:
            valid_sets = [valid_data]
            callbacks = [lgb.early_stopping(early_stopping, verbose=False)]
        booster = lgb.train(
            dict(params),
            binned,
            num_boost_round=rounds,
            valid_sets=valid_sets,
            callbacks=callbacks,
        )
        return Trained(booster, booster.best_iteration)

    def _forget(self, key: tuple[int, int]) -> None:
        if self._binned is not None and self._binned[0] == key:
            self._binned = None
