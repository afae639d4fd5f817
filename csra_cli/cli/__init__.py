"""The ``csra`` command line: the Typer app and one module per command."""
from __future__ import annotations

import sys

import importlib

# One module a command, each registering it on import; --help lists them in this order.
COMMANDS = ("bench", "eval", "explain", "export", "models", "report", "tag", "train")


def load_commands(names=COMMANDS) -> None:
    for name in names:
        importlib.import_module(f"{__name__}.{name}")


def __getattr__(name: str):
    """``app``: the Typer app with every command (for tests and scripts); main loads one."""
    if name == "app":
        load_commands()
        from .common import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _named_command(argv: list[str]) -> str | None:
    """The command the arguments run ("tag" in ``csra tag ...``), if they name one before any
    other argument; None for ``csra --help`` and the like."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def main() -> None:
    """Run the app; a command-line mistake (unknown option, missing value or argument) is one line
    on stderr and exit 2, where Typer would draw a box with the usage above it. Only the command
    run is imported and built (the others cost ~20 ms of every start)."""
    import typer

    from .common import EXIT_USAGE, app

    named = _named_command(sys.argv[1:])
    load_commands((named,) if named else COMMANDS)

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
