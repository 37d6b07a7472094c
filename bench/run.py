"""The benchmark harness behind ``make bench``: every stage at 2,000 / 20,000 / 100,000 pools.

Each measurement runs in its own process (bench/_child.py, or the ``poolcast`` CLI itself) so its
peak RSS is its own (``wait4``); wall and CPU seconds are the medians of ``BENCH_REPEAT`` runs, and
speed-ups are against the per-pool pandas baseline measured in the same run.

Environment:
  BENCH_SCENARIOS  comma list of smoke, 2k, 20k, 100k            [2k,20k]
  BENCH_STORES     comma list of duckdb, postgres                [duckdb,postgres]
  BENCH_REPEAT     runs per cheap measurement                    [3]
  BENCH_HEAVY_REPEAT  runs of baseline, Spark, forecast, whole runs [BENCH_REPEAT up to 2k pools,
                      1 above: a 20k run of each takes minutes on 2 cores]
  BENCH_SPARK      1/0: measure the Spark engine (local[1], local[2])  [1 if pyspark imports]
  BENCH_PG_URL     PostgreSQL server (default: POOLCAST_TEST_PG_URL from scripts/with-postgres.sh)
  BENCH_DIR        scratch folder for stores and caches          [/tmp/poolcast-bench]
  BENCH_OUT        results folder                                [bench/results]
  BENCH_ONLY       compute: only generate, read and the metrics engines (first store);
                   runs: only generate and the CLI's full and incremental runs (every store)
  BENCH_SKIP       comma list of compute, forecast: leave those measurements out
  BENCH_BASELINE_POOLS  the pandas baseline runs on at most this many pools [20000]: above it on
                   every k-th pool (pool_id order), its wall and CPU scaled by pools / pools run
                   (the loop's cost is per pool; the row says so: baseline_pools, scale)
Rows measured replace the same (scenario, stage, engine, store) rows in latest.json, the others
stay. Each row records the commit it measured (``-dirty`` when src/ had uncommitted changes) and,
for a run that trained, the model version; latest.md marks every row measured on older code.
Written after each store: latest.json (rows), latest.md (tables, targets), latest.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
POOLCAST = str(Path(PYTHON).with_name("poolcast"))

SCENARIOS: dict[str, tuple[int, int]] = {
    "smoke": (150, 120),
    "2k": (2_000, 365),
    "20k": (20_000, 365),
    "100k": (100_000, 365),
}

# Issue 5's targets, checked on the 20k scenario: (stage, engine, store, limit, unit).
TARGETS = [
    ("metrics compute >= 50x the per-pool pandas baseline", "metrics", "local", "-", 50.0, "x"),
    ("metrics compute peak RSS < 2 GiB", "metrics", "local", "-", 2048.0, "MB"),
    ("full `poolcast run` on PostgreSQL < 150 s", "run_full", "local", "postgres", 150.0, "s"),
    ("incremental run, one new day, < 45 s", "run_incremental", "local", "postgres", 45.0, "s"),
    # Issue 25's.
    ("full `poolcast run` on DuckDB <= 110 s", "run_full", "local", "duckdb", 110.0, "s"),
    ("full run on DuckDB: peak RSS <= 3 GiB", "run_full", "local", "duckdb", 3072.0, "MB"),
]
# Issue 25's at 100k pools: (stage, store, peak RSS limit MB, wall limit as a multiple of 20k's).
SCALE_TARGET = ("run_full", "duckdb", 6144.0, 5.5)
# LightGBM training time, production tree settings / the plan's, same model otherwise (first store).
TRAINING_TARGET = ("train_h1_production", "train_h1_plantrees", 0.5)


def _commit() -> str:
    """HEAD's short hash, ``-dirty`` when src/ differs from it: what a row measured."""
    git = ["git", "-C", str(HERE)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "../src"], capture_output=True, text=True
    )
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _env_list(name: str, default: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


def _spark_available() -> bool:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False
    return shutil.which("java") is not None


def _pg_schema_url(base: str, schema: str) -> str:
    """A URL whose search_path is ``schema`` (created empty): one schema per scenario."""
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(base) as con, con.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        cur.execute(f"CREATE SCHEMA {schema}")
        con.commit()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}"


def _run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float, str]:
    """Run ``cmd``; wall s, CPU s (user + system of the process), peak RSS MB, stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, text=True, env={**os.environ, **(env or {})}
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stdout


def child(task: str, args: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """One child run: its section timings and info, and its peak RSS in MB."""
    _, _, rss, stdout = _run([PYTHON, str(HERE / "_child.py"), task, json.dumps(args)])
    return json.loads(stdout.strip().splitlines()[-1]), rss


def measure(
    task: str, args: dict[str, Any], repeat: int
) -> tuple[dict[str, dict[str, float]], dict]:
    """Medians over ``repeat`` child runs, per section: wall_s, cpu_s, peak_rss_mb."""
    runs = [child(task, args) for _ in range(repeat)]
    sections: dict[str, dict[str, float]] = {}
    for name in runs[0][0]["timings"]:
        sections[name] = {
            "wall_s": statistics.median(r[0]["timings"][name]["wall_s"] for r in runs),
            "cpu_s": statistics.median(r[0]["timings"][name]["cpu_s"] for r in runs),
            "peak_rss_mb": statistics.median(
                r[1] + r[0]["info"].get("jvm_peak_rss_mb", 0.0) for r in runs
            ),
            "runs": repeat,
        }
    return sections, runs[-1][0]["info"]


def measure_cli(
    argv: list[str],
    repeat: int,
    before: tuple[str, dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    """The ``poolcast`` CLI end to end (process start and imports included)."""
    walls, cpus, rsss = [], [], []
    version = None
    for _ in range(repeat):
        if before:
            child(*before)
        wall, cpu, rss, stdout = _run([POOLCAST, *argv], env)
        walls.append(wall)
        cpus.append(cpu)
        rsss.append(rss)
        trained = re.search(r"model_version=(\w+)\s.*trained=True", stdout)
        version = trained.group(1) if trained else version
    out: dict[str, Any] = {
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "peak_rss_mb": statistics.median(rsss),
        "runs": repeat,
    }
    if version:
        out["model_version"] = version
    return out


class Scenario:
    def __init__(self, name: str, workdir: Path, pg_base: str | None) -> None:
        self.name = name
        self.pools, self.days = SCENARIOS[name]
        self.workdir = workdir / name
        self.pg_base = pg_base
        self.rows: list[dict[str, Any]] = []
        self.out: Path | None = None
        self.commit = _commit()

    def add(self, stage: str, engine: str, store: str, m: dict[str, float], **extra: Any) -> None:
        row = {
            "scenario": self.name,
            "pools": self.pools,
            "days": self.days,
            "stage": stage,
            "engine": engine,
            "store": store,
            "wall_s": round(m["wall_s"], 3),
            "cpu_s": round(m["cpu_s"], 3),
            "peak_rss_mb": round(m["peak_rss_mb"], 1),
            "runs": m.get("runs", 1),
            "speedup_vs_baseline": None,
            "load_avg_1m": round(os.getloadavg()[0], 1),  # other work on the machine
            "commit": self.commit,
            **({"model_version": m["model_version"]} if "model_version" in m else {}),
            **extra,
        }
        self.rows.append(row)
        print(
            f"  {self.name:>5} {stage:<26} {engine:<14} {store:<8} wall {row['wall_s']:8.2f} s  "
            f"cpu {row['cpu_s']:8.2f} s  rss {row['peak_rss_mb']:7.0f} MB",
            flush=True,
        )

    def store_url(self, kind: str) -> str:
        if kind == "duckdb":
            return str(self.workdir / "bench.duckdb")
        assert self.pg_base, "PostgreSQL needs BENCH_PG_URL or scripts/with-postgres.sh"
        return _pg_schema_url(self.pg_base, f"bench_{self.name}_{uuid.uuid4().hex[:6]}")

    def run(
        self,
        stores: list[str],
        repeat: int,
        heavy: int,
        spark: bool,
        only_compute: bool = False,
        skip: tuple[str, ...] = (),
        only_runs: bool = False,
    ) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        cache = str(self.workdir / "cache")
        print(f"scenario {self.name}: {self.pools} pools x {self.days} days", flush=True)
        for i, kind in enumerate(stores):
            url = self.store_url(kind)
            gen, info = measure(
                "generate", {"store": url, "pools": self.pools, "days": self.days}, 1
            )
            self.add("generate", "-", kind, gen["generate"], rows=info["snapshots"])
            if only_runs:
                self._runs(kind, url, heavy)
                continue
            read, info = measure(
                "read_raw", {"store": url, "cache": cache if i == 0 else None}, repeat
            )
            self.add("store_read_raw", "-", kind, read["store_read_raw"], rows=info["rows"])
            if i == 0 and "compute" not in skip:
                self._compute(cache, repeat, heavy, spark)
            if only_compute:
                if self.out is not None:
                    save(self.out, self.rows)
                break
            write, info = measure("metrics_write", {"store": url, "cache": cache}, repeat)
            for section in ("store_write_metrics", "store_rewrite_unchanged"):
                self.add(section, "-", kind, write[section], rows=info["rows"])
            if "forecast" not in skip:
                fc, info = measure("forecast", {"store": url, "plan_model": i == 0}, heavy)
                for section, m in fc.items():
                    self.add(section, "local", kind, m, train_rows=info["train_rows"])
            self._runs(kind, url, heavy)
        self._speedups()

    def _runs(self, kind: str, url: str, heavy: int) -> None:
        """The CLI as a user runs it: a full run, a daily run, a daily run on a saved model."""
        models = self.workdir / f"models-{kind}"
        env = {"POOLCAST_MODEL_DIR": str(models)}
        full = measure_cli(
            ["run", "--store", url], heavy, before=("reset", {"store": url}), env=env
        )
        self.add("run_full", "local", kind, full)
        inc = measure_cli(
            ["run", "--incremental", "--store", url],
            heavy,
            before=("add_day", {"store": url}),
            env=env,
        )
        self.add("run_incremental", "local", kind, inc)
        # The daily run with the latest trained model (retrained on another schedule).
        latest = max(models.iterdir(), key=lambda p: p.stat().st_mtime)
        reuse = measure_cli(
            ["run", "--incremental", "--store", url],
            heavy,
            before=("add_day", {"store": url}),
            env={**env, "POOLCAST_MODEL": str(latest)},
        )
        self.add("run_incremental_saved_model", "local", kind, reuse)
        if kind == "duckdb":
            Path(url).unlink(missing_ok=True)
        if self.out is not None:
            save(self.out, self.rows)  # after each store: a long run keeps what it measured

    def _compute(self, cache: str, repeat: int, heavy: int, spark: bool) -> None:
        local, info = measure("metrics_local", {"cache": cache}, repeat)
        self.add("metrics", "local", "-", local["metrics"], rows=info["rows"])
        limit = int(os.environ.get("BENCH_BASELINE_POOLS", "20000"))
        every = -(-self.pools // limit) if self.pools > limit else 1
        base, info = measure("metrics_baseline", {"cache": cache, "sample_every": every}, heavy)
        m = base["metrics"]
        if every > 1:
            # Measured on a sample of pools: scaled to all of them, and the row says so.
            scale = info["pools_total"] / info["pools"]
            measured = {
                "measured_wall_s": round(m["wall_s"], 3),
                "measured_cpu_s": round(m["cpu_s"], 3),
            }
            m = {**m, "wall_s": m["wall_s"] * scale, "cpu_s": m["cpu_s"] * scale}
            self.add(
                "metrics",
                "pandas-loop",
                "-",
                m,
                rows=info["rows"],
                baseline_pools=info["pools"],
                scale=round(scale, 4),
                **measured,
            )
        else:
            self.add("metrics", "pandas-loop", "-", m, rows=info["rows"])
        if not spark:
            return
        for master in ("local[1]", "local[2]"):
            sp, _ = measure("metrics_spark", {"cache": cache, "master": master}, heavy)
            engine = f"spark-{master}"
            self.add("spark_session_start", engine, "-", sp["spark_session_start"])
            self.add("metrics", engine, "-", sp["metrics"])
            self.add("metrics_warm", engine, "-", sp["metrics_second_run"])

    def _speedups(self) -> None:
        base = next(
            (r for r in self.rows if r["stage"] == "metrics" and r["engine"] == "pandas-loop"), None
        )
        if not base:
            return
        for r in self.rows:
            if r["stage"] in ("metrics", "metrics_warm") and r["engine"] != "pandas-loop":
                r["speedup_vs_baseline"] = round(base["wall_s"] / r["wall_s"], 1)


def _key(row: dict[str, Any]) -> tuple[str, str, str, str]:
    return row["scenario"], row["stage"], row["engine"], row["store"]


def _speedups_across(rows: list[dict[str, Any]]) -> None:
    """Speed-ups after a partial rerun: against the baseline row of the same scenario."""
    for r in rows:
        base = next(
            (
                b
                for b in rows
                if b["scenario"] == r["scenario"]
                and b["stage"] == "metrics"
                and b["engine"] == "pandas-loop"
            ),
            None,
        )
        if base and r["stage"] in ("metrics", "metrics_warm") and r["engine"] != "pandas-loop":
            r["speedup_vs_baseline"] = round(base["wall_s"] / r["wall_s"], 1)


def markdown(rows: list[dict[str, Any]], commit: str | None = None) -> str:
    commit = commit or _commit()
    lines = ["# poolcast benchmark", ""]
    lines.append(
        "Medians of `runs` runs, each in its own process (peak RSS of that process). "
        "`store` `-` = compute on Arrow input, no store. Speed-up = baseline wall / wall. "
        f"Written at commit {commit}; a commit in *italics* is older code than that."
    )
    versions = sorted({r["model_version"] for r in rows if r.get("model_version")})
    if versions:
        lines.append(f"Model versions trained by the runs: {', '.join(versions)}.")
    lines.append("")
    lines.append(_targets(rows, commit))
    header = (
        "| scenario | stage | engine | store | wall s | CPU s | peak RSS MB | runs | speed-up "
        "| commit |"
    )
    lines += ["", "## All measurements", "", header, "|" + "---|" * 10]
    notes = []
    for r in rows:
        speed = f"{r['speedup_vs_baseline']}x" if r.get("speedup_vs_baseline") else ""
        engine = r["engine"]
        if r.get("scale"):
            engine += " *"
            notes.append(
                f"* {r['scenario']} {r['engine']}: measured on {r['baseline_pools']:,} of "
                f"{r['pools']:,} pools (every {round(r['scale'])}th by pool_id), "
                f"{r['measured_wall_s']:.2f} s wall / {r['measured_cpu_s']:.2f} s CPU, scaled "
                f"x{r['scale']:g} to all pools (the loop's cost is per pool); peak RSS is the "
                "sample's."
            )
        lines.append(
            f"| {r['scenario']} | {r['stage']} | {engine} | {r['store']} | {r['wall_s']:.2f} "
            f"| {r['cpu_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['runs']} | {speed} "
            f"| {_commit_cell(r.get('commit'), commit)} |"
        )
    if notes:
        lines += ["", "\\* Baseline measured on a sample of pools:", "", *notes]
    return "\n".join(lines) + "\n"


def _commit_cell(row: str | None, now: str) -> str:
    if row is None:
        return "*unknown*"
    return row if row == now else f"*{row}*"


def _targets(rows: list[dict[str, Any]], commit: str) -> str:
    lines = [
        "## Targets (20k pools x 365 days, 2 cores)",
        "",
        "| target | measured | met | commit |",
        "|---|---|---|---|",
    ]
    for label, stage, engine, store, limit, unit in TARGETS:
        row = next(
            (
                r
                for r in rows
                if r["scenario"] == "20k"
                and r["stage"] == stage
                and r["engine"] == engine
                and r["store"] == store
            ),
            None,
        )
        if row is None:
            lines.append(f"| {label} | not measured | - | - |")
            continue
        if unit == "x":
            value = row.get("speedup_vs_baseline") or 0.0
            ok = value >= limit
        elif unit == "MB":
            value, ok = row["peak_rss_mb"], row["peak_rss_mb"] < limit
        else:
            value, ok = row["wall_s"], row["wall_s"] < limit
        lines.append(
            f"| {label} | {value:.1f} {unit} | {'yes' if ok else 'NO'} "
            f"| {_commit_cell(row.get('commit'), commit)} |"
        )
    ours, theirs, limit = TRAINING_TARGET
    pair = {
        r["stage"]: r
        for r in rows
        if r["scenario"] == "20k" and r["stage"] in (ours, theirs) and r["store"] == "duckdb"
    }
    label = "LightGBM training <= 0.5x the plan's tree settings (next-day model)"
    if len(pair) == 2:
        ratio = pair[ours]["wall_s"] / pair[theirs]["wall_s"]
        lines.append(
            f"| {label} | {ratio:.2f} x ({pair[ours]['wall_s']:.1f} s / "
            f"{pair[theirs]['wall_s']:.1f} s) | {'yes' if ratio <= limit else 'NO'} "
            f"| {_commit_cell(pair[ours].get('commit'), commit)} |"
        )
    else:
        lines.append(f"| {label} | not measured | - | - |")
    stage, store, rss_limit, ratio_limit = SCALE_TARGET
    pick = {
        r["scenario"]: r
        for r in rows
        if r["stage"] == stage and r["store"] == store and r["engine"] == "local"
    }
    big, base = pick.get("100k"), pick.get("20k")
    label = f"100k pools: full run peak RSS <= {rss_limit / 1024:.0f} GiB ({store})"
    if big:
        ok = big["peak_rss_mb"] <= rss_limit
        lines.append(
            f"| {label} | {big['peak_rss_mb']:.1f} MB | {'yes' if ok else 'NO'} "
            f"| {_commit_cell(big.get('commit'), commit)} |"
        )
    else:
        lines.append(f"| {label} | not measured | - | - |")
    label = f"100k pools: full run wall <= {ratio_limit}x the 20k run ({store})"
    if big and base:
        ratio = big["wall_s"] / base["wall_s"]
        lines.append(
            f"| {label} | {ratio:.2f} x ({big['wall_s']:.1f} s / {base['wall_s']:.1f} s) "
            f"| {'yes' if ratio <= ratio_limit else 'NO'} "
            f"| {_commit_cell(big.get('commit'), commit)} |"
        )
    else:
        lines.append(f"| {label} | not measured | - | - |")
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in SCENARIOS if any(r["scenario"] == s for r in rows)]
    fig, axes = plt.subplots(
        1, len(scenarios), figsize=(6.5 * len(scenarios), 7), squeeze=False, sharey=False
    )
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        sel = [r for r in rows if r["scenario"] == scenario]
        labels = [f"{r['stage']} · {r['engine']} · {r['store']}" for r in sel]
        colors = [
            "#d62728"
            if r["engine"] == "pandas-loop"
            else "#ff7f0e"
            if r["engine"].startswith("spark")
            else "#1f77b4"
            for r in sel
        ]
        ax.barh(range(len(sel)), [max(r["wall_s"], 1e-3) for r in sel], color=colors)
        ax.set_yticks(range(len(sel)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("wall seconds (log)")
        ax.set_title(f"{scenario}: {sel[0]['pools']:,} pools x {sel[0]['days']} days")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    scenarios = _env_list("BENCH_SCENARIOS", "2k,20k")
    stores = _env_list("BENCH_STORES", "duckdb,postgres")
    repeat = int(os.environ.get("BENCH_REPEAT", "3"))
    heavy_env = os.environ.get("BENCH_HEAVY_REPEAT")
    spark = os.environ.get("BENCH_SPARK", "1" if _spark_available() else "0") == "1"
    only = os.environ.get("BENCH_ONLY")
    if only not in (None, "", "compute", "runs"):
        sys.exit(f"bench: BENCH_ONLY={only!r}; choose compute or runs")
    only_compute, only_runs = only == "compute", only == "runs"
    skip = tuple(_env_list("BENCH_SKIP", ""))
    pg_base = os.environ.get("BENCH_PG_URL") or os.environ.get("POOLCAST_TEST_PG_URL")
    if "postgres" in stores and not pg_base:
        sys.exit("bench: PostgreSQL needs BENCH_PG_URL (or run under scripts/with-postgres.sh)")
    workdir = Path(os.environ.get("BENCH_DIR", "/tmp/poolcast-bench"))
    out = Path(os.environ.get("BENCH_OUT", str(HERE / "results")))
    out.mkdir(parents=True, exist_ok=True)

    new_rows: list[dict[str, Any]] = []
    for name in scenarios:
        if name not in SCENARIOS:
            sys.exit(f"bench: unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
        scenario = Scenario(name, workdir, pg_base)
        scenario.out = out
        heavy = int(heavy_env) if heavy_env else (repeat if scenario.pools <= 2_000 else 1)
        scenario.run(stores, repeat, heavy, spark, only_compute, skip, only_runs)
        new_rows += scenario.rows
    print(f"bench: wrote {out / 'latest.json'}, latest.md, latest.png")


def save(out: Path, new_rows: list[dict[str, Any]]) -> None:
    """Merge into latest.json: rows measured now replace the same (scenario, stage, engine, store)
    rows, every other row is kept."""

    latest = out / "latest.json"
    fresh = {_key(r) for r in new_rows}
    kept = []
    if latest.exists():
        kept = [r for r in json.loads(latest.read_text()) if _key(r) not in fresh]
    rows = sorted(kept + new_rows, key=lambda r: list(SCENARIOS).index(r["scenario"]))
    _speedups_across(rows)
    latest.write_text(json.dumps(rows, indent=1) + "\n")
    (out / "latest.md").write_text(markdown(rows))
    chart(rows, out / "latest.png")


if __name__ == "__main__":
    main()
