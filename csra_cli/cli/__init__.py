"""The ``csra`` command line: the Typer app and one module per command."""
from __future__ import annotations

import sys

from . import bench, eval, explain, export, models, report, tag, train  # noqa: F401  (each registers its command)
from .app import EXIT_USAGE, app


def main() -> None:
    """Run the app; a command-line mistake (unknown option, missing value or argument) is one line
    on stderr and exit 2, where Typer would draw a box with the usage above it."""
    import typer

    try:  # recent Typer carries its own copy of Click; older ones use Click itself
        from typer._click import exceptions as click_errors
    except ImportError:
        from click import exceptions as click_errors
    from ..console import error

    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="csra", standalone_mode=False)
    except click_errors.UsageError as exc:
        if not exc.format_message().strip():  # plain `csra`: Typer has printed the help already
            sys.exit(EXIT_USAGE)
        # an option's missing value comes without a context: name the command from the arguments
        sub = next((a for a in sys.argv[1:] if a in getattr(command, "commands", {})), None)
        where = exc.ctx.command_path if exc.ctx else f"csra {sub}" if sub else "csra"
        error(f"{exc.format_message()} (see '{where} --help')")
        sys.exit(EXIT_USAGE)
    except click_errors.ClickException as exc:
        error(exc.format_message())
        sys.exit(exc.exit_code)
    except typer.Abort:  # Ctrl-C while Click itself was waiting (a prompt)
        error("aborted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
