"""The ``csra`` command line: the Typer app and one module per command."""
from __future__ import annotations

from . import bench, eval, explain, export, models, report, tag, train  # noqa: F401  (each registers its command)
from .app import app


def main() -> None:
    app()
