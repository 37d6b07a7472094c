"""The stages a user runs: metrics (step 7) and forecast (step 11), the same flow on either engine.

Each stage picks its engine adapter (:mod:`poolcast.engines`), reads in bulk, computes, and writes
through one transactional merge, under the stage lock and the connection retry.
"""

from __future__ import annotations

from poolcast.stages._common import StageResult, new_run_id, resolve_as_of
from poolcast.stages.forecast import forecast_stage
from poolcast.stages.metrics import metrics_stage

__all__ = ["StageResult", "forecast_stage", "metrics_stage", "new_run_id", "resolve_as_of"]
