"""What both Dataproc entry points do: settings from the batch, one stage on the Spark engine.

The batch passes settings as driver environment variables (``DB_HOST``, ``DB_NAME``,
``DB_USER``, ``DB_PASSWORD_SECRET``, ``TRAIN_DAYS``, ...; see ``poolcast.deploy.dataproc``) and
optionally as arguments, named as the CLI's (``--incremental`` is the daily mode, as in ``poolcast
run --incremental``). The password is read from Secret Manager into the driver's environment
(:func:`poolcast.deploy.secret_env.load_db_password`), never from an argument.

Exit status: 0 on success, 1 when the stage failed (the batch is then FAILED, and the message
names the stage, the step and the cause), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import asdict


def parse_args(kind: str, argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"{kind}_job", description=f"poolcast {kind} on Spark")
    p.add_argument("--store", help="postgresql://... (default: DB_HOST/DB_PORT/DB_NAME/DB_USER)")
    p.add_argument("--as-of", type=dt.date.fromisoformat, help="last day of the grid (metrics)")
    p.add_argument("--lookback-days", type=int, help="days of history (metrics)")
    p.add_argument("--train-days", type=int, help="training window (forecast)")
    p.add_argument("--model-dir", help="where the forecast model is saved (a gs:// URI works)")
    p.add_argument(
        "--incremental",
        action="store_true",
        default=None,
        help="daily mode, as `poolcast run --incremental`: metrics recompute only the days that "
        "can change; forecast reuses a model trained at most POOLCAST_RETRAIN_DAYS before "
        "[env: POOLCAST_INCREMENTAL]",
    )
    return p.parse_args(list(argv))


def main(kind: str, argv: Sequence[str] | None = None) -> int:
    from poolcast.deploy.secret_env import load_db_password
    from poolcast.engines._spark_session import end_submitted_driver, stopping_spark
    from poolcast.log import setup_logging
    from poolcast.runs import observed_stage
    from poolcast.settings import load_settings
    from poolcast.stages import forecast_stage, metrics_stage, new_run_id
    from poolcast.store import StoreError, open_configured

    args = parse_args(kind, sys.argv[1:] if argv is None else argv)
    setup_logging()  # JSON lines on the driver's stderr: Cloud Logging parses them
    load_db_password()
    settings = load_settings(
        store=args.store,
        engine="spark",
        as_of=args.as_of,
        lookback_days=args.lookback_days,
        train_days=args.train_days,
        model_dir=args.model_dir,
        incremental=args.incremental,
    )
    # These scripts are Dataproc's entry points: never fall back to a local master there.
    if settings.spark.environment is None:
        settings.spark.environment = os.environ.get("SPARK_ENVIRONMENT") or "dataproc"  # type: ignore[assignment]
    stage = metrics_stage if kind == "metrics" else forecast_stage
    status = 1  # an unexpected error too: the batch must end FAILED, not hang
    try:
        with stopping_spark(), open_configured(settings) as store:
            # A pipeline_runs row, and Cloud Monitoring metrics where PROJECT_ID is set.
            result = observed_stage(store, kind, settings, stage, run_id=new_run_id())
        print(json.dumps(asdict(result), default=str))
        status = 0
    except (StoreError, ValueError) as exc:
        print(f"poolcast {kind} job failed: {exc}", file=sys.stderr)
    except BaseException:
        traceback.print_exc()  # before the driver ends below
        raise
    finally:
        # The batch ends with its stage, whatever SynapseML left running in the JVM.
        end_submitted_driver(status)
    return status
