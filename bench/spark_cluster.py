"""The Spark engine on executors in separate JVMs: peak RSS per process and seconds per stage.

``make bench`` runs it after ``bench/run.py``; alone:
``scripts/with-postgres.sh .venv/bin/python bench/spark_cluster.py``.

For each pool count, a fresh PostgreSQL schema gets ``poolcast generate`` data, then
``poolcast metrics`` and ``poolcast forecast`` run with ``--engine spark --spark-master
local-cluster[...]`` as a user runs them. While each runs, every process of its tree is sampled:
the Python driver (``poolcast``), the driver JVM (``SparkSubmit``) and each executor JVM
(``CoarseGrainedExecutorBackend``); their peak RSS is ``VmHWM``. The event log gives the tasks of
each stage (LightGBM's training stages must have one per executor).

Environment:
  BENCH_CLUSTER_POOLS   comma list of pool counts            [2000,20000]
  BENCH_CLUSTER_MASTER  the master                           [local-cluster[2,1,2048]]
  BENCH_CLUSTER_STAGES  comma list of metrics, forecast      [metrics,forecast]
  BENCH_CLUSTER_TIMEOUT seconds a stage may take             [3600]
  BENCH_PG_URL          PostgreSQL server (default: POOLCAST_TEST_PG_URL)
  BENCH_DIR, BENCH_OUT  scratch and results folders          [/tmp/poolcast-bench, bench/results]
Results: spark_cluster.json and spark_cluster.md in BENCH_OUT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from run import _pg_schema_url  # bench/run.py, beside this file (on sys.path as the script dir)

HERE = Path(__file__).resolve().parent
POOLCAST = str(Path(sys.executable).with_name("poolcast"))


def _env_list(name: str, default: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        for child in text.split():
            out.append(int(child))
            out.extend(_children(int(child)))
    return out


def _role(pid: int) -> str | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    if "CoarseGrainedExecutorBackend" in cmd:
        return "executor"
    if "org.apache.spark.deploy.SparkSubmit" in cmd:
        return "driver_jvm"
    if "java" in cmd.split(" ", 1)[0]:
        return "other_jvm"
    return None


def _hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _run_sampled(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``cmd``; the peak RSS of the Python driver, the driver JVM and each executor."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, tuple[str, float]] = {}
    while proc.poll() is None:
        if time.perf_counter() - started > timeout:
            proc.kill()
            break
        for pid in [proc.pid, *_children(proc.pid)]:
            role = "driver_python" if pid == proc.pid else _role(pid)
            hwm = _hwm_mb(pid)
            if role and hwm is not None:
                peaks[pid] = (role, max(hwm, peaks.get(pid, (role, 0.0))[1]))
        time.sleep(0.25)
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    executors = sorted((mb for role, mb in peaks.values() if role == "executor"), reverse=True)
    by_role = {
        role: max((mb for r, mb in peaks.values() if r == role), default=None)
        for role in ("driver_python", "driver_jvm")
    }
    return {
        "returncode": proc.returncode,
        "seconds": round(seconds, 1),
        "driver_python_mb": by_role["driver_python"],
        "driver_jvm_mb": by_role["driver_jvm"],
        "executor_mb": [round(mb, 1) for mb in executors],
        "stdout_tail": out[-600:],
        "stderr_tail": err[-1500:] if proc.returncode else "",
        "large_task_warnings": err.count("contains a task of very large size"),
    }


def stage_tasks(events: Path) -> list[tuple[str, int]]:
    out = []
    for log in sorted(events.iterdir()):
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event.get("Event") == "SparkListenerStageCompleted":
                info = event["Stage Info"]
                out.append((info["Stage Name"], info["Number of Tasks"]))
    return out


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def main() -> None:
    base = os.environ.get("BENCH_PG_URL") or os.environ.get("POOLCAST_TEST_PG_URL")
    if not base:
        sys.exit("BENCH_PG_URL or POOLCAST_TEST_PG_URL: run under scripts/with-postgres.sh")
    master = os.environ.get("BENCH_CLUSTER_MASTER", "local-cluster[2,1,2048]")
    stages = _env_list("BENCH_CLUSTER_STAGES", "metrics,forecast")
    timeout = float(os.environ.get("BENCH_CLUSTER_TIMEOUT", "3600"))
    scratch = Path(os.environ.get("BENCH_DIR", "/tmp/poolcast-bench")) / "cluster"
    out_dir = Path(os.environ.get("BENCH_OUT", HERE / "results"))
    scratch.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    for pools in [int(p) for p in _env_list("BENCH_CLUSTER_POOLS", "2000,20000")]:
        url = _pg_schema_url(base, f"bench_cluster_{uuid.uuid4().hex[:10]}")
        subprocess.run([POOLCAST, "db", "init", "--store", url], check=True, capture_output=True)
        subprocess.run(
            [POOLCAST, "generate", "--pools", str(pools), "--store", url],
            check=True, capture_output=True,
        )
        for stage in stages:
            events = scratch / f"events-{pools}-{stage}-{uuid.uuid4().hex[:6]}"
            events.mkdir()
            env = {
                **os.environ,
                "POOLCAST_MODEL_DIR": str(scratch / "models"),
                "PYSPARK_SUBMIT_ARGS": f"--conf spark.eventLog.enabled=true --conf "
                f"spark.eventLog.dir={events.as_uri()} pyspark-shell",
            }
            cmd = [POOLCAST, stage, "--engine", "spark", "--spark-master", master, "--store", url]
            result = _run_sampled(cmd, env, timeout)
            tasks = stage_tasks(events) if result["returncode"] == 0 else []
            # SynapseML 1.1.3's training stage: one task per LightGBM worker.
            training = sorted({n for name, n in tasks if "LightGBMBase.scala:623" in name})
            row = {
                "pools": pools, "stage": stage, "master": master, "commit": commit,
                **{k: v for k, v in result.items() if k != "stdout_tail"},
                "training_stage_tasks": training,
                "max_tasks_per_stage": max((n for _, n in tasks), default=None),
            }
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "stderr_tail"}), flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spark_cluster.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        f"# Spark on {master} (PostgreSQL store), commit {commit}",
        "",
        "| pools | stage | exit | wall s | driver Python MB | driver JVM MB | driver total MB "
        "| executors MB | LightGBM tasks/stage | large-task warnings |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        both = (r["driver_python_mb"] or 0) + (r["driver_jvm_mb"] or 0)
        lines.append(
            f"| {r['pools']:,} | {r['stage']} | {r['returncode']} | {r['seconds']} "
            f"| {_mb(r['driver_python_mb'])} | {_mb(r['driver_jvm_mb'])} | {_mb(both)} "
            f"| {', '.join(str(x) for x in r['executor_mb']) or '-'} "
            f"| {', '.join(str(x) for x in r['training_stage_tasks']) or '-'} "
            f"| {r['large_task_warnings']} |"
        )
    (out_dir / "spark_cluster.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
