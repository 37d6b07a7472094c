"""poolcast's logs: JSON lines whenever stderr is not a terminal, text with every field on one,
whichever command logs (also those that never set logging up, such as `db init` or `sql`)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from poolcast.log import event, log, setup_logging

_CHILD = """
import logging
from poolcast.log import event
event("db.retry", logging.WARNING, attempt=2, of=3, wait_s=2.0, store="x.duckdb",
      error="server closed the connection unexpectedly")
event("lock.waiting", logging.WARNING, stage="metrics", store="x.duckdb")
"""


def _child(env: dict[str, str]) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POOLCAST_LOG")}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], env={**clean, **env}, capture_output=True, text=True,
        timeout=60, check=True,
    )
    return done.stderr.splitlines()


@pytest.fixture(autouse=True)
def _restore() -> object:
    yield
    setup_logging()


def test_an_event_logged_before_any_setup_is_a_json_line_with_its_fields() -> None:
    """A process that never called setup_logging (stderr a pipe): one JSON object per event,
    every field a key, not Python's bare "db.retry"."""
    first, second = (json.loads(line) for line in _child({}))
    assert first["event"] == "db.retry" and first["severity"] == "WARNING"
    assert (first["attempt"], first["of"], first["wait_s"]) == (2, 3, 2.0)
    assert first["error"] == "server closed the connection unexpectedly"
    assert second == {**second, "event": "lock.waiting", "stage": "metrics", "store": "x.duckdb"}


def test_the_format_can_be_forced() -> None:
    [line, _] = _child({"POOLCAST_LOG_FORMAT": "text"})
    assert line == (
        'warning: db.retry attempt=2 of=3 wait_s=2.0 store=x.duckdb '
        'error="server closed the connection unexpectedly"'
    )


def test_the_handler_follows_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit stream the line goes to stderr as it is when logged (a CLI runner
    or test capture swaps it), never to a stream closed since."""
    for h in list(log.handlers):
        log.removeHandler(h)
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    event("stage.started", run_id="a")
    monkeypatch.setattr(sys, "stderr", second)
    first.close()
    event("stage.started", run_id="b")
    assert json.loads(second.getvalue())["run_id"] == "b"
    assert len([h for h in log.handlers if h.get_name() == "poolcast"]) == 1


def test_text_lines_carry_every_field_and_nested_ones_as_json() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    setup_logging(tty)
    event("run_record.lost", logging.WARNING, error="a b", record={"run_id": "r1"}, empty="",
          skipped=None)
    assert tty.getvalue() == (
        'warning: run_record.lost error="a b" record={"run_id": "r1"} empty=""\n'
    )


def test_progress_steps_are_lines_that_stay_or_log_events(monkeypatch) -> None:
    """A long command's steps (`poolcast parity`): on a terminal, one line per finished step
    above the bar; elsewhere the log event `<label>.step` with its seconds."""
    from poolcast.log import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = Progress("parity", total=2, stream=tty, doing="metrics local")
    bar.step("metrics local", 3.14, doing="metrics spark")
    bar.step("metrics spark", 41.0)
    bar.close()
    text = tty.getvalue()
    assert "\r\x1b[2Kparity: metrics local 3.1 s\n" in text
    assert "\r\x1b[2Kparity: metrics spark 41.0 s\n" in text
    assert "]  50% 1/2" in text and "  metrics spark" in text and text.endswith("\r\x1b[2K")

    piped = io.StringIO()
    setup_logging(piped)
    try:
        bar = Progress("parity", total=1, stream=io.StringIO())
        bar.step("spark session", 15.25)
        bar.close()
    finally:
        setup_logging()  # back to stderr as it is at each line
    line = json.loads(piped.getvalue())
    assert (line["event"], line["step"], line["seconds"]) == ("parity.step", "spark session", 15.25)
