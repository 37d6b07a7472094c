"""Issue 23: every expected failure is one `error:` line with what to do (a traceback only with
--debug), unknown choices and parameters that select nothing are errors, only `db init`,
`ingest` and `generate` make a store, readers share it, and a signal stops a run cleanly."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from fault_inputs import small_history
from typer.testing import CliRunner

from poolcast.cli import app
from poolcast.stages import metrics_stage
from poolcast.stages.ingest import ingest
from poolcast.store import Store, open_store
from poolcast.store.checksums import DATA_TABLES, store_checksums

runner = CliRunner()
# GCP commands reach Google (their inputs are tested against fakes in test_deploy_*): here they
# get usage errors only.
REMOTE = {"deploy", "submit"}


@pytest.fixture(autouse=True)
def _no_stale_log_handler() -> Iterator[None]:
    yield
    import logging

    logger = logging.getLogger("poolcast")
    for handler in [h for h in logger.handlers if h.get_name() == "poolcast"]:
        logger.removeHandler(handler)


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _bad_invocations(tmp_path: Path) -> list[list[str]]:
    """Each command with: an unknown option; --store a directory, a missing file and a file
    that is not a store; each numeric option as text and as -5."""
    data = small_history(tmp_path / "in")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    foreign = tmp_path / "notes.duckdb"
    foreign.write_text("not a database")
    needs = {("sql",): ["SELECT 1"], ("db", "grant"): ["job"], ("ingest",): [str(data)],
             ("generate",): ["--pools", "2", "--days", "3"]}
    calls: list[list[str]] = []
    for path, command in _commands(typer.main.get_group(app)):
        base = [*path, *needs.get(path, [])]
        calls.append([*base, "--no-such-option"])
        if path[0] in REMOTE:
            continue
        options = {p.opts[0]: p for p in command.params if p.param_type_name == "option"}
        if "--store" in options:
            calls.append([*base, "--store", str(folder)])
            calls.append([*base, "--store", str(foreign)])
            if path not in (("db", "init"), ("ingest",), ("generate",)):
                calls.append([*base, "--store", str(tmp_path / "missing" / "x.duckdb")])
        for name, param in options.items():
            if param.bare_type() in ("int", "float"):
                calls.append([*base, "--store", str(foreign), name, "abc"])
                calls.append([*base, "--store", str(foreign), name, "-5"])
    return calls


def test_every_command_with_bad_arguments_says_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POOLCAST_MODEL_DIR", str(tmp_path / "models"))
    calls = _bad_invocations(tmp_path)
    assert len(calls) > 60
    for args in calls:
        result = runner.invoke(app, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            args, repr(result.exception),
        )
        assert result.exit_code in (1, 2), (args, result.output)
        assert "Traceback" not in result.output, (args, result.output)
        if result.exit_code == 1:
            errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1, (args, result.output)
    assert not (tmp_path / "missing").exists()  # no reader made a store


def _cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "poolcast.cli", *args],
        env={**os.environ, "POOLCAST_LOG_FORMAT": "json", **(env or {})},
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The process's one `error:` line (JSON log lines aside); no traceback anywhere."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line and not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_expected_failures_in_a_real_process(tmp_path: Path) -> None:
    data = small_history(tmp_path / "in")
    corrupt = tmp_path / "corrupt.duckdb"
    with open_store(str(corrupt)) as s:
        s.init_schema()
        ingest(s, [data])
    with corrupt.open("r+b") as fh:  # headers intact, data blocks overwritten
        fh.seek(12288)
        fh.write(os.urandom(262144 * 2))
    shim = tmp_path / "no-gcp"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['google'] = None\n")
    cases = [
        (["runs"], {"DB_HOST": "localhost", "DB_PORT": "abc"}, "invalid setting db_port (DB_PORT)"),
        (["ingest", str(data), "--store", str(tmp_path)], {}, "is a directory"),
        (["runs", "--store", str(tmp_path / "poolcast.duckbd")], {}, "no poolcast store at"),
        (["deploy", "list", "--project", "p"], {"PYTHONPATH": str(shim)}, "needs the gcp extra"),
        (["validate", "--store", str(corrupt)], {}, "the embedded store"),
    ]
    for args, env, expected in cases:
        proc = _cli(*args, env=env, cwd=tmp_path)
        assert proc.returncode == 1, (args, proc.stderr)
        assert expected in _one_error_line(proc), (args, proc.stderr)
    assert not (tmp_path / "poolcast.duckbd").exists()
    debug = _cli("--debug", "runs", env={"DB_HOST": "localhost", "DB_PORT": "abc"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_unknown_choices_and_bad_numbers_are_usage_errors(tmp_path: Path) -> None:
    store = str(tmp_path / "s.duckdb")
    assert runner.invoke(app, ["db", "init", "--store", store]).exit_code == 0
    for args in (
        ["sql", "SELECT 1", "--format", "xml"],
        ["runs", "--status", "bogus"],
        ["runs", "--stage", "bogus"],
        ["metrics", "--lookback-days", "0"],
        ["forecast", "--train-days", "0"],
        ["sql", "SELECT 1", "--timeout", "0"],
    ):
        result = runner.invoke(app, [*args, "--store", store])
        assert result.exit_code == 2, (args, result.output)
        assert "Invalid value" in result.output, (args, result.output)
    helped = runner.invoke(app, ["runs", "--help"], env={"COLUMNS": "200"}).output
    assert all(s in helped for s in ("succeeded", "stopped", "died", "default: 20")), helped


def test_parameters_that_select_nothing_are_errors(store: Store, tmp_path: Path) -> None:
    ingest(store, [small_history(tmp_path / "in")])  # 2024-06-01 .. 2024-07-10
    url = store.url
    store.close()
    for as_of in ("2030-01-01", "2020-01-01"):
        result = runner.invoke(app, ["metrics", "--store", url, "--as-of", as_of])
        assert result.exit_code == 1, result.output
        assert f"--as-of {as_of} selects no day" in result.output
    inside = runner.invoke(app, ["metrics", "--store", url, "--as-of", "2024-08-01"])
    assert inside.exit_code == 0, inside.output  # 22 days after the last: filled, not empty
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["ingest", "--store", url, str(empty)])
    assert result.exit_code == 1 and "no .json or .csv files in" in result.output


def test_only_db_init_ingest_and_generate_make_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "x.duckdb"
    for args in (
        ["sql", "SELECT 1"], ["runs"], ["validate"], ["report", "-o", str(tmp_path / "r.html")],
        ["backtest"], ["metrics"], ["forecast"], ["run"],
    ):
        result = runner.invoke(app, [*args, "--store", str(missing)])
        assert result.exit_code == 1, (args, result.output)
        assert f"no poolcast store at {missing}" in result.output, (args, result.output)
        assert not missing.parent.exists(), args
    grant = runner.invoke(app, ["db", "grant", "job", "--store", str(missing)])
    assert grant.exit_code == 1 and "roles exist only on PostgreSQL" in grant.output
    assert not missing.parent.exists()
    data = small_history(tmp_path / "in")
    makers = (["db", "init"], ["ingest", str(data)], ["generate", "--pools", "2", "--days", "3"])
    for args in makers:
        target = tmp_path / args[0] / "made.duckdb"
        result = runner.invoke(app, [*args, "--store", str(target)])
        assert result.exit_code == 0, (args, result.output)
        assert target.exists()


def test_readers_share_the_store_and_take_no_writers_lock(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    with open_store(str(path)) as s:
        s.init_schema()
        ingest(s, [small_history(tmp_path / "in")])
    # Another process reads the file (as `poolcast validate` or `backtest` does) meanwhile.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1], "
         "read_only=True); print('open', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        readers = (["runs"], ["validate", "--sample", "0"], ["sql", "SELECT count(*) FROM pools"])
        for args in readers:
            result = runner.invoke(app, [*args, "--store", str(path)])
            assert result.exit_code in (0, 1), (args, result.output)  # validate: 1 = a check
            if args[0] == "validate":
                # Its checks ran on the shared file; only keeping their summary needs the writer's
                # lock, and losing it is a warning, not the command's failure.
                assert "stale_pools" in result.output, result.output
                assert "validate.not_recorded" in result.output, result.output
                continue
            assert "cannot open" not in result.output, (args, result.output)
        writer = _cli("metrics", "--store", str(path), env={"POOLCAST_MODEL_DIR": str(tmp_path)})
        assert writer.returncode == 1
        assert "Another poolcast process has it open" in _one_error_line(writer)
    finally:
        holder.communicate("", timeout=30)


# -- signals ---------------------------------------------------------------------------------


def _forecast_ready_store(store: Store, tmp_path: Path) -> str:
    """Metrics for 150 synthetic pools: a forecast on them trains for a few seconds."""
    from poolcast.ops.generate import generate
    from poolcast.settings import Settings

    generate(store, 150, 120)
    metrics_stage(store, Settings(model_dir=str(tmp_path / "models")))
    url = store.url
    store.close()
    return url


def _stop_forecast(url: str, tmp_path: Path, signum: int) -> tuple[int, str]:
    """`poolcast forecast` with its stderr on a terminal (so it draws progress), sent
    ``signum`` once training has begun; its exit code and everything it wrote there."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "poolcast.cli", "forecast", "--store", url],
        env={**os.environ, "POOLCAST_LOG_FORMAT": "json",
             "POOLCAST_MODEL_DIR": str(tmp_path / "models")},
        stdout=subprocess.DEVNULL, stderr=child, stdin=subprocess.DEVNULL,
    )
    os.close(child)
    seen, sent = b"", False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal closed: the process ended
                break
            if not chunk:
                break
            seen += chunk
        if not sent and b"training [" in seen:  # the progress bar of the model fits
            time.sleep(0.3)
            proc.send_signal(signum)
            sent = True
    os.close(main)
    return proc.wait(timeout=60), seen.decode(errors="replace")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_run_cleanly(
    store: Store, tmp_path: Path, signum: signal.Signals
) -> None:
    if signum == signal.SIGINT and store.dialect == "postgres":
        pytest.skip("SIGINT takes the same path as SIGTERM; PostgreSQL is covered by SIGTERM")
    url = _forecast_ready_store(store, tmp_path)
    with open_store(url) as s:
        before = store_checksums(s, DATA_TABLES)
        forecasts = s.fetch_arrow("SELECT count(*) AS n FROM forecasts").column("n")[0].as_py()
    code, text = _stop_forecast(url, tmp_path, signum)
    assert code == 128 + signum, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    errors = [line for line in text.splitlines() if "error: " in line]
    assert len(errors) == 1 and f"error: stopped by {signum.name}" in errors[0], text
    # The progress line was drawn, then cleared before the error line.
    drawn = text.rfind("forecast running")
    assert drawn >= 0 and text.find("\r\x1b[2K", drawn) < text.find("error: stopped"), text
    with open_store(url) as s:
        assert store_checksums(s, DATA_TABLES) == before  # nothing of the stage was committed
        assert s.fetch_arrow("SELECT count(*) AS n FROM forecasts").column("n")[0].as_py() == (
            forecasts
        )
    runs = json.loads(runner.invoke(app, ["runs", "--store", url, "--json"]).stdout)
    stopped = [r for r in runs if r["stage"] == "forecast"]
    assert [r["status"] for r in stopped] == ["stopped"], runs
    assert stopped[0]["error"] == f"stopped by {signum.name}; nothing was committed"
    assert stopped[0]["details"]["committed"] is False
    listed = runner.invoke(app, ["runs", "--store", url, "--status", "stopped", "--json"])
    assert [r["stage"] for r in json.loads(listed.stdout)] == ["forecast"]


def test_disk_and_permission_failures_say_what_to_do() -> None:
    """A full or read-only disk, as the handler words them (this suite runs as root on one disk,
    so the failures themselves are not provoked here)."""
    import errno

    import duckdb

    from poolcast.cli._errors import explain

    full = OSError(errno.ENOSPC, "No space left on device", "/data/poolcast.duckdb")
    assert explain(full) == (
        "the disk is full /data/poolcast.duckdb: free some space and rerun; nothing half-written"
    )
    ro = OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x.duckdb")
    assert explain(ro).startswith("cannot write /mnt/ro/x.duckdb: Read-only file system")
    wal = duckdb.IOException('Could not write file "x.wal": No space left on device')
    assert explain(wal).startswith("the disk is full: ")


def test_readers_work_on_a_store_that_cannot_be_written(tmp_path: Path) -> None:
    """A read-only store (here an immutable file: this suite runs as root, whom file modes do not
    stop): the readers open it; a writer says so in one line."""
    path = tmp_path / "ro.duckdb"
    with open_store(str(path)) as s:
        s.init_schema()
        ingest(s, [small_history(tmp_path / "in")])
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        for args in (["runs"], ["sql", "SELECT count(*) AS n FROM pools"],
                     ["report", "-o", str(tmp_path / "r.html")]):
            result = runner.invoke(app, [*args, "--store", str(path)])
            assert result.exit_code == 0, (args, result.output)
        writer = _cli("ingest", str(tmp_path / "in"), "--store", str(path))
        assert writer.returncode == 1
        assert "cannot be written here" in _one_error_line(writer)
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
