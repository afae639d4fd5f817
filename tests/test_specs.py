"""The values that say which model to load and how to run it, and the option groups that make them."""
import pickle
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer
from typer.testing import CliRunner

from csra_cli.cli import app
from csra_cli.cli.common import RUN_OPTIONS
from csra_cli.cli.options import REQUIRED, Opt, OptionGroup
from csra_cli.engine.run_spec import RunSpec
from csra_cli.errors import CSRAError
from csra_cli.models.spec import ModelSpec

runner = CliRunner()


def test_run_spec_from_options_makes_its_one_model_and_keeps_defaults():
    run = RunSpec.from_options(source="fast", lam=0.2, batch_size=4, device="cpu")
    assert run.models == (ModelSpec("fast", lam=0.2),) and run.model.source == "fast"
    assert (run.batch_size, run.device, run.precision, run.workers, run.engine) == (4, "cpu", "auto", -1, "local")
    with pytest.raises(FrozenInstanceError):
        run.batch_size = 8
    two = RunSpec(models=(ModelSpec("a"), ModelSpec("b")))
    with pytest.raises(CSRAError, match="one model at a time"):
        two.model
    assert RunSpec(workers=3).resolved_workers == 3 and RunSpec().resolved_workers >= 1


def test_checked_values_refuse_with_one_line():
    with pytest.raises(CSRAError, match="--precision 'int4': use auto, fp32"):
        RunSpec(precision="int4").checked_precision()
    with pytest.raises(CSRAError, match="--engine 'spark': use local or ray"):
        RunSpec(engine="spark").checked_engine()


def test_portable_spec_has_absolute_files_and_nothing_resolved(tmp_path, monkeypatch, tiny_model_path):
    from csra_cli.models.loading import resolve_spec

    monkeypatch.chdir(tiny_model_path.parent)
    spec = resolve_spec(ModelSpec(tiny_model_path.name, lam=0.4))
    assert spec.path == Path(tiny_model_path.name) and spec.entry is None
    moved = spec.portable()
    assert moved.source == str(tiny_model_path.resolve()) and moved.path is None and moved.lam == 0.4
    assert ModelSpec("fast").portable() == ModelSpec("fast")  # a name stays a name: each machine resolves it
    assert pickle.loads(pickle.dumps(moved)) == moved  # travels to Ray actors as it is
    assert resolve_spec(spec) is spec  # resolved once


def test_build_runner_reads_the_run_value(tiny_model_path):
    from csra_cli.engine.runners import FlipAveraged, TorchRunner, build_runner

    model = ModelSpec(str(tiny_model_path))
    plain = build_runner(model, RunSpec(models=(model,), backend="torch", device="cpu"))
    tta = build_runner(model, RunSpec(models=(model,), backend="torch", device="cpu", tta=True))
    assert isinstance(plain, TorchRunner) and isinstance(tta, FlipAveraged) and tta.card.name == "tiny"


def test_an_option_group_becomes_one_parameter_typer_sees_as_options():
    group = OptionGroup("Pair", "Pair", left=Opt(Annotated[int, typer.Option(help="Left.")], REQUIRED),
                        right=Opt(Annotated[Optional[str], typer.Option(help="Right.")]))
    Pair = group.build  # noqa: N806  (the record type the command receives)
    seen = []
    demo = typer.Typer()

    @demo.command()
    @group.into("pair", defaults={"right": "r"}, help={"left": "The left one."})
    def show(pair: "Pair", loud: bool = False):
        seen.append((pair, loud))

    res = runner.invoke(demo, ["--left", "3", "--loud"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    (pair, loud), = seen
    assert (pair.left, pair.right, loud) == (3, "r", True) and type(pair).__name__ == "Pair"
    helped = runner.invoke(demo, ["--help"], env={"COLUMNS": "200"}).stdout
    assert "The left one." in helped and "Pair" in helped and "[default: r]" in helped
    assert runner.invoke(demo, []).exit_code == 2  # a required option stays required
    with pytest.raises(TypeError, match="not options of this group"):
        group.into("pair", only=("middle",))
    with pytest.raises(TypeError, match="no parameter 'other'"):
        group.into("other")(show.__wrapped__)


def test_the_shared_options_are_declared_once_and_read_alike_by_every_command():
    """--model, --batch-size, --precision, ...: the same flags, help and defaults in tag and eval,
    the ones it takes in bench."""
    commands = typer.main.get_command(app).commands
    params = {c: {p.name: p for p in commands[c].params} for c in ("tag", "eval", "bench")}
    for name in RUN_OPTIONS.options:
        tag, ev = params["tag"][name], params["eval"][name]
        if name == "source":  # tag's --model may be given again (several models in one pass)
            assert tag.opts == ev.opts and tag.multiple and not ev.multiple and ev.help in tag.help
            continue
        assert (tag.opts, tag.help, tag.default) == (ev.opts, ev.help, ev.default), name
        if name in params["bench"]:
            assert params["bench"][name].opts == tag.opts
    assert "--model" in params["tag"]["source"].opts and "tta" not in params["bench"]
    assert {"source", "batch_size", "workers", "device", "precision", "backend"} <= set(params["bench"])


def test_a_record_group_taken_in_part_keeps_the_other_defaults_and_pickles():
    from csra_cli.cli.tag import SIDECARS, SidecarOptions

    seen = []
    demo = typer.Typer()

    @demo.command()
    @SIDECARS.into("sidecars", only=("sidecar",))
    def show(sidecars: SidecarOptions):
        seen.append(sidecars)

    assert runner.invoke(demo, ["--sidecar", "txt"]).exit_code == 0
    (got,) = seen
    assert (got.sidecar, got.xmp_name, got.caption_sep) == (["txt"], "full", ", ")
    assert pickle.loads(pickle.dumps(got)) == got and SidecarOptions().sidecar == []
