"""The package layout: imports run one way (cli on top), no circles, no torch at start-up."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "csra_cli"
# Each layer may import only from layers after it in this list (and from itself).
LAYERS = ["cli", "engine|train|explain|evaluation", "report|results|models", "data", "errors|console|fileio|cpu"]


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every csra_cli module a file imports, at the top or inside functions."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("csra_cli"):
                continue
            for alias in node.names:  # "from . import registry" names a module
                sub = f"{target}.{alias.name}"
                found.add(sub if (PKG.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                          or (PKG.parent / sub.replace(".", "/")).is_dir() else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("csra_cli")}
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def layer(mod: str) -> int | None:
    parts = mod.split(".")
    if len(parts) < 2:
        return None
    for i, names in enumerate(LAYERS):
        if parts[1] in names.split("|"):
            return i
    return None


def test_no_import_circles():
    g = graph()
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in g.get(m, ()):
            if n not in g or n == m or n == "csra_cli":
                continue
            if state.get(n) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in g:
        if m not in state:
            visit(m, [m])


def test_imports_run_downward():
    wrong = []
    for mod, targets in graph().items():
        here = layer(mod)
        for t in targets:
            there = layer(t)
            if here is not None and there is not None and there < here:
                wrong.append(f"{mod} imports {t}")
    assert not wrong, "imports against the layering: " + "; ".join(sorted(wrong))


def test_nothing_below_cli_imports_cli():
    offenders = [m for m, t in graph().items() if not m.startswith("csra_cli.cli") and m != "csra_cli.__main__"
                 and any(x.startswith("csra_cli.cli") for x in t)]
    assert not offenders


@pytest.mark.parametrize("code", ["import csra_cli.cli", "import csra_cli"])
def test_start_up_leaves_heavy_packages_out(code):
    probe = (f"{code}; import sys; print(','.join(m for m in ('torch', 'torchvision', 'timm', 'onnxruntime') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_help_does_not_import_torch():
    probe = ("import sys, runpy; sys.argv = ['csra', '--help']\n"
             "try:\n    runpy.run_module('csra_cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('TORCH' if 'torch' in sys.modules else 'CLEAN', file=sys.stderr)")
    err = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stderr
    assert err.strip().endswith("CLEAN")


def test_public_api_still_there():
    import csra_cli

    assert callable(csra_cli.load_model) and callable(csra_cli.create_model)
    from csra_cli import CSRAModel, create_model, load_model  # noqa: F401


def test_tag_through_a_cached_onnx_export_never_imports_torch(monkeypatch, isolated_home, tiny_model_path, tmp_path):
    """The CPU fast path: once the export is cached, `csra tag` needs numpy, Pillow and
    onnxruntime only, and scores real photos as PyTorch does (within 1e-4)."""
    import json
    import os

    from typer.testing import CliRunner

    from csra_cli.cli import app

    from .conftest import VOC, make_image

    pytest.importorskip("onnxruntime")
    photos = sorted((VOC / "VOC2007" / "JPEGImages").glob("*.jpg"))[:3] if VOC.is_dir() else []
    photos = [str(p) for p in photos] or [str(make_image(tmp_path / "a.jpg"))]
    monkeypatch.delenv("CSRA_BACKEND")
    runner = CliRunner()
    first = runner.invoke(app, ["tag", *photos, "-m", str(tiny_model_path), "-q", "--device", "cpu"],
                          catch_exceptions=False)  # exports and caches
    assert first.exit_code == 0 and list((isolated_home / "onnx").glob("tiny-*.onnx"))
    probe = ("import sys, runpy\n"
             f"sys.argv = ['csra', 'tag', *{photos!r}, '-m', {str(tiny_model_path)!r}, '-q', '--scores', '-j', '1']\n"
             "try:\n    runpy.run_module('csra_cli', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "loaded = [m for m in ('torch', 'torchvision', 'timm') if m in sys.modules]\n"
             "print('LOADED:' + ','.join(loaded), code, file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "CSRA_BACKEND"}
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=900)
    assert res.stderr.strip().splitlines()[-1] == "LOADED: 0", res.stderr
    fast = [json.loads(line) for line in res.stdout.splitlines()]
    ref = runner.invoke(app, ["tag", *photos, "-m", str(tiny_model_path), "-q", "--scores", "--backend", "torch"],
                        catch_exceptions=False)
    ref = [json.loads(line) for line in ref.stdout.splitlines()]
    assert [r["path"] for r in fast] == photos and [r["tags"] for r in fast] == [r["tags"] for r in ref]
    for a, b in zip(fast, ref):
        assert max(abs(a["scores"][c] - b["scores"][c]) for c in a["scores"]) <= 1e-4


def test_every_subpackage_ships_in_the_wheel():
    """pyproject lists packages by hand (weights/ is mapped in): a new subpackage must be named there."""
    import tomllib

    listed = set(tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {module_name(p) for p in PKG.rglob("__init__.py")}
    assert found <= listed, f"not in pyproject's packages: {sorted(found - listed)}"
    assert "csra_cli.weights" in listed


MAX_PARAMETERS = 10


def parameters_of(node) -> list[str]:
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs] + [x.arg for x in (a.vararg, a.kwarg) if x]
    return [n for n in names if n not in ("self", "cls")]


def test_no_function_takes_more_than_ten_parameters():
    """Which model and how to run it travel as values (ModelSpec, RunSpec, TagPolicy), a command's
    options as OptionGroups: no data clump of loose arguments threaded through the layers."""
    wide = [f"{module_name(p)}.{node.name} ({len(parameters_of(node))})"
            for p in PKG.rglob("*.py") for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            and len(parameters_of(node)) > MAX_PARAMETERS]
    assert not wide, "functions with more than 10 parameters: " + ", ".join(sorted(wide))


def test_the_rule_counts_every_kind_of_parameter():
    tree = ast.parse("def f(a, /, b, *c, d, e=1, **f): pass\nclass K:\n    def m(self, x): pass")
    f, m = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert parameters_of(f) == ["a", "b", "d", "e", "c", "f"] and parameters_of(m) == ["x"]
