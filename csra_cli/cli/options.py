"""Options declared once and handed to a command as one value.

An ``OptionGroup`` holds options (``Annotated`` Typer types with their defaults) and what they
build: a frozen value such as ``RunSpec``, or, for options only one command reads, a frozen
record made from the option names. ``GROUP.into("run")`` puts the options into a command's
signature where its ``run`` parameter was and calls the command with the built value, so an
option is declared once and reaches every command that takes its group, and no command threads
it through by hand. Typer reads the signature; Python sees one parameter.
"""
from __future__ import annotations

import functools
import inspect
import sys
from copy import copy
from dataclasses import dataclass, field, make_dataclass
from typing import Annotated, Any, Callable, Iterable, get_args

from typer.models import ArgumentInfo

REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Opt:
    """One option: its ``Annotated[type, typer.Option(...)]`` and its default."""

    annotation: Any
    default: Any = None


def _shown(annotation, text: str | None, panel: str | None):
    """The same option with another help text (a command that reads it its own way), under the
    group's heading in --help (arguments stay under Arguments)."""
    if text is None and panel is None:
        return annotation
    kind, info = get_args(annotation)
    info = copy(info)
    if text is not None:
        info.help = text
    if panel is not None and info.rich_help_panel is None and not isinstance(info, ArgumentInfo):
        info.rich_help_panel = panel
    return Annotated[kind, info]


def _evaluated(annotation, command):
    """An annotation written as text (``from __future__ import annotations``) as the object it names
    (a group's record type too: its module names it, ``TagInputs = INPUTS.build``)."""
    if isinstance(annotation, str):
        return eval(annotation, inspect.unwrap(command).__globals__)  # noqa: S307 (the module's own source)
    return annotation


def _record_field(name: str, opt: Opt):
    """A record field with the option's default (a list default copied anew each time)."""
    if opt.default is REQUIRED:
        return name, Any
    if isinstance(opt.default, (list, dict, set)):
        return name, Any, field(default_factory=lambda d=opt.default: copy(d))
    return name, Any, field(default=opt.default)


class OptionGroup:
    """Options that travel together. ``build``: called with the options as keywords; a string
    names a frozen record with one field per option. ``panel``: their heading in --help."""

    def __init__(self, build: Callable[..., Any] | str, panel: str | None = None, **options: Opt):
        if isinstance(build, str):  # the defining module names it (TagInputs = INPUTS.build): picklable
            build = make_dataclass(build, [_record_field(n, o) for n, o in options.items()], frozen=True,
                                   kw_only=True)
            build.__module__ = sys._getframe(1).f_globals.get("__name__", build.__module__)
        self.build, self.panel, self.options = build, panel, options

    def into(self, param: str, *, only: Iterable[str] | None = None, defaults: dict | None = None,
             help: dict | None = None):  # noqa: A002 (the word Typer uses)
        """A decorator: ``param`` of the command becomes these options (``only``: some of them, the
        rest keep their defaults; ``defaults``, ``help``: this command's own)."""
        names = list(self.options) if only is None else list(only)
        unknown = set(names) - set(self.options)
        if unknown:
            raise TypeError(f"not options of this group: {', '.join(sorted(unknown))}")
        defaults, help = defaults or {}, help or {}
        added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(n, self.options[n].default),
                                   annotation=_shown(self.options[n].annotation, help.get(n), self.panel))
                 for n in names]

        def decorate(command):
            signature = inspect.signature(command)
            if param not in signature.parameters:
                raise TypeError(f"{command.__name__} has no parameter {param!r}")
            params = []
            for p in signature.parameters.values():  # keyword-only: Typer passes every option by name
                params += added if p.name == param else [p.replace(kind=inspect.Parameter.KEYWORD_ONLY,
                                                                   annotation=_evaluated(p.annotation, command))]

            @functools.wraps(command)
            def with_group(**kwargs):
                kwargs[param] = self.build(**{n: kwargs.pop(n) for n in names})
                return command(**kwargs)

            with_group.__signature__ = signature.replace(parameters=params)
            with_group.__annotations__ = {p.name: p.annotation for p in params}
            return with_group

        return decorate
