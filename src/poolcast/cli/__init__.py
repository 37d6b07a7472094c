"""The `poolcast` command line: one Typer app, its commands grouped by what they do."""

from __future__ import annotations

from poolcast.cli import lab, pipeline, results
from poolcast.cli._common import app

__all__ = ["app", "lab", "main", "pipeline", "results"]


def main() -> None:
    app()
