"""Structured logs and terminal progress: the one place every room logs through.

Imports nothing of poolcast's, so any module may use it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

log = logging.getLogger("poolcast")

_URL_PASSWORD = re.compile(r"(://[^:/@?#\s]+):[^@\s]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#\s]*", re.IGNORECASE)


def redact_url(text: str) -> str:
    """``text`` with any URL password (user-info or ``?password=``) masked, for messages and
    logs."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", text))


# -- structured logging ------------------------------------------------------------------------
class _JsonFormatter(logging.Formatter):
    """One JSON object per line: what log collectors (Cloud Logging included) parse."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso(dt.datetime.fromtimestamp(record.created, dt.UTC)),
            "severity": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, sort_keys=False)


class _TextFormatter(logging.Formatter):
    """Short lines for a person at a terminal: the event, then every field as ``key=value``
    (a value with spaces in quotes)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={_text(v)}" for k, v in fields.items() if v is not None)
        line = f"{record.levelname.lower()}: {record.getMessage()} {extra}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() for c in text) else text


_JSON = _JsonFormatter()
_TEXT = _TextFormatter()


class _Handler(logging.StreamHandler[IO[str]]):
    """poolcast's one handler. Without an explicit stream it writes to whatever ``sys.stderr``
    is when a line is logged (a test runner or CLI runner replaces it), and it chooses JSON or
    text per line: JSON unless that stream is a terminal, or as ``fmt`` or
    ``POOLCAST_LOG_FORMAT`` (``json``/``text``) says."""

    def __init__(self, stream: IO[str] | None, fmt: str | None) -> None:
        super().__init__(stream or sys.stderr)
        self._follow = stream is None
        self._fmt = fmt
        self.set_name("poolcast")

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow:
            self.stream = sys.stderr
        fmt = self._fmt or os.environ.get("POOLCAST_LOG_FORMAT") or (
            "text" if _isatty(self.stream) else "json"
        )
        self.setFormatter(_TEXT if fmt.strip().lower() == "text" else _JSON)
        super().emit(record)


def setup_logging(stream: IO[str] | None = None, fmt: str | None = None) -> None:
    """Send poolcast's logs to ``stream`` (by default stderr, as it is at each line): JSON lines
    unless it is a terminal.

    ``fmt`` or ``POOLCAST_LOG_FORMAT`` (``json``/``text``) overrides the choice. Idempotent: a
    second call replaces the handler, so repeated CLI invocations in one process do not stack.
    :func:`event` calls it when nothing has, so every command logs the same way.
    """
    for old in [h for h in log.handlers if h.get_name() == "poolcast"]:
        log.removeHandler(old)
    log.addHandler(_Handler(stream, fmt))
    log.setLevel(os.environ.get("POOLCAST_LOG_LEVEL", "INFO").strip().upper() or "INFO")
    log.propagate = False


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``name`` with structured ``fields`` (keys become JSON keys; on a terminal,
    ``key=value`` after the name). Sets up poolcast's handler first when no command has."""
    if not any(h.get_name() == "poolcast" for h in log.handlers):
        setup_logging()
    log.log(level, name, extra={"fields": fields})


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def first_line(exc: BaseException, *, typed: bool = False, limit: int = 500) -> str:
    """The first meaningful line of an error (JVM stack and traceback lines skipped), for a
    one-line message; ``typed`` puts the exception's class name in front."""
    text = ""
    for line in str(exc).strip().splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "at ", "py4j")):
            text = line[:limit]
            break
    if typed:
        return f"{type(exc).__name__}: {text}"
    return text or type(exc).__name__


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# -- progress on a terminal only ---------------------------------------------------------------
class Progress:
    """A one-line progress display on a terminal; silent otherwise (the logs say start and end).

    With a ``total`` it is a bar advanced by the caller; without one, a ticker of elapsed seconds
    redrawn by a daemon thread. Nested displays take the line over until they close.
    """

    _stack: list[Progress] = []

    def __init__(
        self,
        label: str,
        total: int | None = None,
        stream: IO[str] | None = None,
        doing: str = "",
    ) -> None:
        self.label, self.total, self.done, self.doing = label, total, 0, doing
        self.stream = stream or sys.stderr
        self.enabled = _isatty(self.stream) and os.environ.get("POOLCAST_PROGRESS", "1") != "0"
        self._started = time.monotonic()
        self._shown = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.enabled:
            Progress._stack.append(self)
            self._draw(force=True)
            if total is None:
                self._thread = threading.Thread(target=self._tick, daemon=True)
                self._thread.start()

    def advance(self, n: int = 1, doing: str | None = None) -> None:
        """``n`` more done; ``doing`` names the step that starts now (shown after the bar)."""
        self.done += n
        if doing is not None:
            self.doing = doing
            self._draw(force=True)
        else:
            self._draw()

    def step(self, name: str, seconds: float, doing: str | None = None) -> None:
        """Step ``name`` finished after ``seconds``: one line that stays, ``<label>: <name>
        <seconds> s``, above the bar on a terminal; elsewhere (or with progress off) the log
        event ``<label>.step``, so a long command says what it did either way. Then one more
        done, with ``doing`` the step that starts now."""
        if self.enabled:
            with self._lock:
                self.stream.write(f"\r\x1b[2K{self.label}: {name} {seconds:.1f} s\n")
                self.stream.flush()
        else:
            event(f"{self.label}.step", step=name, seconds=round(seconds, 3))
        self.advance(doing=doing if doing is not None else "")

    def _tick(self) -> None:
        while not self._stop.wait(0.25):
            self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        if not self.enabled or not Progress._stack or Progress._stack[-1] is not self:
            return
        now = time.monotonic()
        if not force and now - self._shown < 0.1 and self.done != self.total:
            return
        self._shown = now
        elapsed = now - self._started
        if self.total:
            width = 30
            filled = int(width * min(self.done, self.total) / self.total)
            share = min(self.done, self.total) / self.total
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {share:4.0%} {self.done}/{self.total}"
        else:
            bar = "running"
        with self._lock:
            doing = f"  {self.doing}" if self.doing else ""
            self.stream.write(f"\r\x1b[2K{self.label} {bar} {elapsed:5.1f} s{doing}")
            self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
        if self in Progress._stack:
            Progress._stack.remove(self)


@contextmanager
def progress(label: str, total: int | None = None, doing: str = "") -> Iterator[Progress]:
    bar = Progress(label, total, doing=doing)
    try:
        yield bar
    finally:
        bar.close()
