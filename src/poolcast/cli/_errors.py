"""The one top-level handler: every failure is one `error:` line saying what to do (exit 1), a
signal stops a run cleanly (exit 130 for SIGINT, 143 for SIGTERM); `--debug` (or
``POOLCAST_DEBUG=1``) shows the traceback instead."""

from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from poolcast.log import first_line, redact_url
from poolcast.runs import signals_stop_runs, stop_signal

_EXTRAS = {"google": "gcp", "pyspark": "spark", "synapse": "spark", "pandas": "spark"}


def debug_wanted(ctx: typer.Context | None = None) -> bool:
    if ctx is not None and ctx.params.get("debug"):
        return True
    return os.environ.get("POOLCAST_DEBUG", "").strip().lower() in ("1", "true", "yes")


def _settings_message(exc: Any) -> str:
    """A pydantic ValidationError of the settings, as the environment variable names it."""
    from poolcast.settings import Settings

    parts = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err.get("loc") else "?"
        field = Settings.model_fields.get(name)
        alias = getattr(field, "validation_alias", None) if field else None
        choices = [c for c in getattr(alias, "choices", []) if isinstance(c, str) and c.isupper()]
        label = f"{name} ({'/'.join(choices)})" if choices else name
        given = err.get("input")
        shown = "" if isinstance(given, dict) else f", got {redact_url(str(given))[:80]!r}"
        parts.append(f"{label}: {err['msg']}{shown}")
    return "invalid setting " + "; ".join(parts) + ": fix the option or environment variable"


def explain(exc: BaseException) -> str:
    """One line: what went wrong and what to do about it."""
    from poolcast.store import StoreError

    if isinstance(exc, StoreError):
        return redact_url(str(exc))
    if type(exc).__name__ == "ValidationError" and hasattr(exc, "errors"):
        return _settings_message(exc)
    if isinstance(exc, ModuleNotFoundError):
        top = (exc.name or "").split(".")[0]
        extra = next((v for k, v in _EXTRAS.items() if top.startswith(k)), None)
        if extra:
            return (
                f"this command needs the {extra} extra (no module {exc.name!r}): "
                f"pip install 'poolcast[{extra}]'"
            )
        return f"a module is missing ({exc.name}): reinstall poolcast"
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        what = exc.strerror or first_line(exc)
        if exc.errno == errno.ENOSPC:
            return f"the disk is full{where}: free some space and rerun; nothing half-written"
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return f"cannot write{where}: {what}; use a writable location or check permissions"
        return f"{what}:{where}" if where else what
    text = redact_url(first_line(exc))
    module = type(exc).__module__.split(".")[0]
    if module in ("duckdb", "_duckdb"):
        if "No space left" in text:
            return f"the disk is full: {text}; free some space and rerun; nothing half-written"
        return f"the embedded store failed: {text}. Is --store a poolcast store? `poolcast db init`"
    if module.startswith("adbc"):
        reason = text.split("ERROR:", 1)[1].strip() if "ERROR:" in text else text
        return f"PostgreSQL: {reason}"
    if isinstance(exc, ValueError):
        return text
    return (
        f"unexpected {type(exc).__name__}: {text} (rerun with --debug for the traceback, and "
        "report it)"
    )


class PoolcastGroup(TyperGroup):
    """The top-level command group: its ``invoke`` turns exceptions into one line."""

    def invoke(self, ctx: Any) -> Any:  # typer.core.Context (vendored click)
        with signals_stop_runs():  # the handlers below still see which signal came
            try:
                return super().invoke(ctx)
            except (typer.Exit, typer.Abort, typer.TyperException):  # typer's: usage, exit
                raise
            except KeyboardInterrupt as exc:
                if debug_wanted(ctx):
                    raise
                received = stop_signal() or int(getattr(exc, "signum", signal.SIGINT))
                _line(_stopped(signal.Signals(received).name))
                raise typer.Exit(128 + received) from None
            except Exception as exc:
                if debug_wanted(ctx):
                    raise
                stopped_by = stop_signal()
                if stopped_by is not None:  # a database turned the signal into its own error
                    _line(_stopped(signal.Signals(stopped_by).name))
                    raise typer.Exit(128 + stopped_by) from None
                _line(explain(exc))
                raise typer.Exit(1) from None


def _stopped(name: str) -> str:
    return (
        f"stopped by {name}: nothing is half-written; `poolcast runs` shows what each stage "
        "committed; rerun to finish"
    )


def _line(message: str) -> None:
    sys.stderr.flush()
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
