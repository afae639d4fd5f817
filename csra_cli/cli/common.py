"""The Typer app, the error handling every command shares, and the options several commands take.

Options used by more than one command are declared here once (``Annotated`` types) and reused,
so ``--model``, ``--device`` and the rest mean the same everywhere; the groups of them a command
takes as one value (``RUN_OPTIONS`` -> ``RunSpec``, ``MODEL_OPTIONS`` -> ``ModelSpec``) are
here too. Nothing here imports torch.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import replace
from typing import Annotated, List, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from .. import __version__
from ..cpu import default_workers  # noqa: F401  (callers and tests import it from here)
from ..console import error
from ..engine.run_spec import RunSpec
from ..errors import CSRAError
from ..models.spec import ModelSpec
from .options import REQUIRED, Opt, OptionGroup


def _plain_metavar(param) -> str:
    """What a value looks like in --help: TEXT, N, NUMBER, PATH; nothing for on/off flags."""
    from typing import get_args

    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if param.param_type_name == "argument":
        param.display_type_rich = lambda ctx: None  # the name says it all; no "<list[str]>" column
        return param.name.upper()
    desc = param.type_descriptor
    kind = (get_args(desc.annotation) or (str,))[0] if desc.is_list else desc.annotation
    if desc.is_path:
        return "PATH"
    return {int: "N", float: "NUMBER"}.get(kind, "TEXT")


def _unwrap(text: str | None) -> str | None:
    """Docstrings are wrapped for the source; --help rewraps each paragraph to the terminal."""
    import inspect

    if not text:
        return text
    return "\n\n".join(" ".join(par.split()) for par in inspect.cleandoc(text).split("\n\n"))


def _tidy_help(command) -> None:
    command.help = _unwrap(command.help)
    for param in command.params:
        if param.metavar is None:
            param.metavar = _plain_metavar(param)


class _TidyHelp:
    """--help with plain metavars and unwrapped docstrings (mixed into the command classes)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _tidy_help(self)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class Command(_TidyHelp, TyperCommand):
    pass


# --help lists the commands in the order of the work: tag, look at, measure, then the rest.
COMMAND_ORDER = ("tag", "report", "eval", "train", "export", "bench", "explain", "models")


class Group(_TidyHelp, TyperGroup):
    def list_commands(self, ctx):
        names = super().list_commands(ctx)
        rank = {n: i for i, n in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


class App(typer.Typer):
    """Every command of the app gets the tidy --help (``Command``)."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or Command, **kwargs)


app = App(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=Group,
          help="Tag images with CSRA multi-label models: tag, report, eval, train, export, bench, explain, models.")
models_app = App(no_args_is_help=False, invoke_without_command=True, cls=Group,
                 help="List, inspect, download and import models.")
app.add_typer(models_app, name="models")

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_state = {"debug": False}


def handle_errors(fn):
    """Expected failures become one line on stderr and exit code 2 (a traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (CSRAError, ValueError, FileExistsError, FileNotFoundError, IsADirectoryError,
                PermissionError, NotImplementedError) as exc:
            if _state["debug"]:
                raise
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            error(msg)
            raise typer.Exit(getattr(exc, "exit_code", EXIT_USAGE))

    return wrapper


def version_callback(value: bool):
    if value:
        typer.echo(f"csra {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
):
    _state["debug"] = debug


def usage_error(message: str):
    """Bad usage found while parsing: one line on stderr, exit 2 (Typer's own errors draw a box)."""
    error(message)
    raise typer.Exit(EXIT_USAGE)


def in_range(flag: str, low: float | None = None, high: float | None = None):
    """An option callback refusing values outside [low, high] with one line."""

    def check(value):
        if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
            bounds = (f"between {low:g} and {high:g}" if low is not None and high is not None
                      else f"at least {low:g}" if low is not None else f"at most {high:g}")
            usage_error(f"{flag} {value:g}: must be {bounds}")
        return value

    return check


def check_inputs_exist(inputs: list[str], flag: str = "") -> None:
    """A named file or folder that is not there is bad usage, found before any model work;
    glob patterns may match nothing (that is a warning while tagging)."""
    name = f"{flag} " if flag else ""
    for arg in inputs:
        if arg != "-" and not os.path.lexists(arg) and not set("*?[") & set(arg):
            raise CSRAError(f"{name}{arg}: no such file or folder")


def check_output(path, flag: str = "--out", overwrite: bool | None = None) -> None:
    """The one rule for outputs (files and folders alike): their parent folder must exist, so a
    typo never creates folders (a folder csra chooses by default is created), and an existing
    file is replaced only with --overwrite (``overwrite`` None: the caller checks that itself)."""
    from pathlib import Path

    if path is None or str(path) == "-":
        return
    parent = Path(path).expanduser().absolute().parent
    if not parent.is_dir():
        raise CSRAError(f"{flag} {path}: the folder {parent} does not exist")
    if overwrite is False and Path(path).is_file():
        raise CSRAError(f"{flag} {path} exists; use --overwrite to replace it")


@contextlib.contextmanager
def writing_into_cache():
    """Writing a model into $CSRA_HOME: a folder that cannot take it (read-only, full, not
    yours) is one line naming it and the way out, not a traceback."""
    try:
        yield
    except OSError as exc:
        from ..models.registry import cache_dir

        raise CSRAError(f"cannot write into {cache_dir()} ({exc.strerror or exc}); "
                        "set CSRA_HOME to a folder you can write") from exc


def warn_official_settings(model: ModelSpec) -> None:
    """An official .pth does not record λ or its class names: say which flags supply them."""
    from pathlib import Path

    from ..console import warn

    source = model.source
    if not source or Path(source).suffix not in (".pth", ".pt", ".bin", ".ckpt") or not Path(source).is_file():
        return
    missing = [f for f, v in (("--lam (else 0.1)", model.lam), ("--class-names voc|coco|wider|a,b,c|FILE "
                                                                 "(else tags are class_0, class_1, …)", model.class_names))
               if v is None]
    if missing:
        warn(f"{source} is an official checkpoint that does not record its settings; pass " + " and ".join(missing))


def _check_device(value: str) -> str:
    from ..engine.device import parse_device

    try:
        return parse_device(value)
    except CSRAError as exc:  # one line, like every other usage error
        usage_error(str(exc))


# ----------------------------------------------------------------------------- shared options
# The model to use: a registry name, our .safetensors or card .json, an official .pth or an exported .onnx.
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m",
    help="Model name, .safetensors or its card .json, official .pth or .onnx (default: the shipped model).")]
# What an official .pth cannot tell by its keys.
ArchOpt = Annotated[Optional[str], typer.Option(help="Architecture of an official .pth (else inferred from its keys).")]
HeadsOpt = Annotated[Optional[int], typer.Option(help="CSRA heads of an official .pth (checked against its keys).")]
LamOpt = Annotated[Optional[float], typer.Option(help="Lambda of an official .pth.")]
ClassNamesOpt = Annotated[Optional[str], typer.Option(
    "--class-names", help="Class names of an official .pth: voc, coco, wider, a,b,c or a file.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", callback=_check_device)]
PrecisionOpt = Annotated[str, typer.Option(
    help="auto (fp16/bf16 autocast on CUDA, fp32 on CPU), fp32, fp16, bf16, or int8 (CPU, onnxruntime: the "
         "int8 export shipped beside the model, or one made with 'csra export --onnx --int8').")]
BackendOpt = Annotated[str, typer.Option(
    help="auto (onnxruntime on CPU, PyTorch on GPU), torch, or onnx with --model FILE.onnx.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", callback=in_range("--batch-size", 1),
                                            help="Images per model call.")]
WorkersOpt = Annotated[int, typer.Option("--workers", "-j", callback=in_range("--workers", -1),
                                         help="Decoding workers (-1: cores - 1, at most 4): threads, or processes with CSRA_DECODE=processes.")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", callback=in_range("--top-k", 1),
                                                help="At most K classes per image, best first.")]
TTAOpt = Annotated[bool, typer.Option(
    "--tta", help="Test-time augmentation: average each image's scores with its mirror image's (2x the model work).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace output files that exist (else refused).")]
# Where the images are decoded and scored: this process, or a Ray cluster (pip install 'csra[ray]').
EngineOpt = Annotated[str, typer.Option(
    help="local (this machine) or ray (a Ray cluster through Ray Data; pip install 'csra\\[ray]').")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", help="Ray cluster for --engine ray: host:port, ray://host:10001, auto or local "
                          "(default: RAY_ADDRESS or a running 'ray start' cluster, else a local instance).")]

# The model options make a ModelSpec (export, explain); with the options of how to run it, a
# RunSpec (tag, eval, bench). A command takes a group with ``@RUN_OPTIONS.into("run")``.
MODEL_OPTIONS = OptionGroup(ModelSpec, "Model", source=Opt(ModelOpt), arch=Opt(ArchOpt), heads=Opt(HeadsOpt),
                            lam=Opt(LamOpt), class_names=Opt(ClassNamesOpt))
RUN_OPTIONS = OptionGroup(
    RunSpec.from_options, "Model and how to run it", **MODEL_OPTIONS.options, batch_size=Opt(BatchSizeOpt, 16),
    workers=Opt(WorkersOpt, -1), device=Opt(DeviceOpt, "auto"), precision=Opt(PrecisionOpt, "auto"),
    backend=Opt(BackendOpt, "auto"), tta=Opt(TTAOpt, False), engine=Opt(EngineOpt, "local"),
    ray_address=Opt(RayAddressOpt))
# tag's: --model may be given several times (several models in one pass over the images).
ModelsOpt = Annotated[List[str], typer.Option(
    "--model", "-m", help="Model name, .safetensors or its card .json, official .pth or .onnx (default: the shipped "
                          "model). Give it again to run several models in one pass: --model default --model imagenet.")]
MULTI_RUN_OPTIONS = OptionGroup(RunSpec.from_options, "Model and how to run it",
                                **{**RUN_OPTIONS.options, "source": Opt(ModelsOpt, [])})

# Which labelled set: eval and train (train has its own defaults and help for some).
DATASET_OPTIONS = OptionGroup(
    "DatasetOptions", "Dataset",
    dataset=Opt(Annotated[str, typer.Option(help="voc, coco or csv.")], REQUIRED),
    root=Opt(Annotated[Optional[str], typer.Option(help="VOC: VOCdevkit or VOC2007 folder.")]),
    split=Opt(Annotated[str, typer.Option(help="VOC split (difficult-only classes are ignored on test).")], "test"),
    annotations=Opt(Annotated[Optional[str], typer.Option(help="COCO: instances JSON (2014 or 2017).")]),
    images=Opt(Annotated[Optional[str], typer.Option(help="COCO: images folder.")]),
    labels=Opt(Annotated[Optional[str], typer.Option(help="CSV: labels file with the columns path,tags.")]),
    tag_sep=Opt(Annotated[str, typer.Option(help="CSV: tag separator.")], ";"))
DatasetOptions = DATASET_OPTIONS.build


def open_selected(data):
    """The labelled set the dataset options name."""
    from ..data.selection import open_dataset

    return open_dataset(data.dataset, data.root, data.split, data.annotations, data.images, data.labels, data.tag_sep)


def load_model_for(model: ModelSpec):
    """The PyTorch model a ModelSpec names."""
    from ..models.loading import load_spec

    warn_official_settings(model)
    return load_spec(model)


def resolved_run(run: RunSpec):
    """(the run with its models resolved once, the card where it can be read without loading
    the models: our format; for several models, their merged card), so that checks needing only
    the card come before any loading or one-time export."""
    from ..models.loading import find_card, resolve_spec

    models = tuple(m if m.is_onnx else resolve_spec(m) for m in run.models)
    found = [None if m.is_onnx else find_card(m) for m in models]
    cards = [f[1] for f in found if f]
    run = replace(run, models=models)
    if len(cards) != len(models):
        return run, None
    if len(cards) == 1:
        return run, cards[0]
    from ..engine.model_set import merged_card

    return run, merged_card(cards)


def runner_for(run: RunSpec):
    """The runner (PyTorch or onnxruntime) of the run's model, as the run says to run it; for
    several models (tag --model A --model B) one ModelSet of their runners."""
    from ..engine.runners import build_runner

    run.checked_precision()
    for model in run.models:
        warn_official_settings(model)
    if len(run.models) == 1:
        return build_runner(run.model, run)
    from ..engine.model_set import ModelSet

    return ModelSet([build_runner(m, run) for m in run.models])


def check_engine(run: RunSpec) -> None:
    """For --engine ray, Ray's absence is reported here, before any model is loaded."""
    if run.checked_engine() == "local":
        return
    from ..engine.ray_engine import require_ray

    require_ray()
    run.checked_precision()
