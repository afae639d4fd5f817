"""``csra models``: list, info, download, import."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..models import registry
from ..models.card import heads_text, model_files
from .common import handle_errors, models_app, writing_into_cache
from ..console import info, warn
from ..errors import CSRAError


def _size(n: int | None) -> str:
    """Decimal units, as export, report and the README give sizes."""
    if not n:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "?"


def _rows() -> list[dict]:
    """One row per model: its whole registry entry (or card, for imported ones) plus where it is."""
    default = registry.default_name()
    short = {}
    for alias, name in registry.aliases().items():
        if alias != "default":
            short.setdefault(name, []).append(alias)
    rows = []
    for e in registry.entries():
        path = registry.installed_path(e)
        rows.append({**e, "default": e["name"] == default, "aliases": short.get(e["name"], []), "kind": e.get("kind", "official"),
                     "arch": e.get("arch"), "heads": e.get("num_heads"), "dataset": e.get("dataset"),
                     "mAP": (e.get("metrics") or {}).get("mAP"), "size": e.get("size"),
                     "installed": str(path) if path else None})
    for p in registry.imported_models():
        card = json.loads(p.with_suffix(".json").read_text())
        rows.append({**card, "name": p.stem, "default": False, "aliases": [], "kind": "imported", "arch": card.get("arch"),
                     "heads": card.get("num_heads"), "dataset": None,
                     "mAP": (card.get("metrics") or {}).get("mAP"), "size": model_files(p).weights.stat().st_size,
                     "installed": str(p)})
    return rows


# Table columns, most wanted first; the ones after the name are dropped right to left when the
# terminal is too narrow, so a model name is never cut.
_COLUMNS = [("name", lambda r: r["name"] + "".join(f" ({a})" for a in r["aliases"]) + (" *" if r["default"] else "")),
            ("installed", lambda r: "yes" if r["installed"] else "no"),
            ("mAP (split)", lambda r: "" if r["mAP"] is None else f"{r['mAP']} ({map_split(r)})"),
            ("kind", lambda r: r["kind"]),
            ("arch", lambda r: str(r["arch"])),
            ("heads", lambda r: str(r["heads"])),
            ("size", lambda r: _size(r["size"])),
            ("data", lambda r: str(r["dataset"] or ""))]


def map_split(row: dict) -> str:
    """Which images a listed mAP comes from: the paper's VOC/COCO test sets for the official
    releases, the validation split (VOC val) for ours and for trained ones."""
    return (row.get("metrics") or {}).get("split") or ("test" if row["kind"] == "official" else "val")


def models_table(rows: list[dict], width: int):
    """The listing as a rich table at most ``width`` wide: whole cells, never an ellipsis."""
    from rich.table import Table

    cells = {name: [get(r) for r in rows] for name, get in _COLUMNS}
    need = {name: max([len(name), *map(len, col)]) for name, col in cells.items()}
    shown, used = [], 1  # the left border
    for name, _ in _COLUMNS:
        cost = need[name] + 3  # padding and border
        if name == "data":  # a long free text: it may wrap, at 12 characters or more
            cost = min(cost, 15) if width - used >= 15 else cost
        if not shown or used + cost <= width:
            shown.append(name)
            used += cost
    notes = (["* the default model"] if any(r["default"] for r in rows) else []) + \
        (["(name): a short name for --model"] if any(r.get("aliases") for r in rows) else [])
    table = Table(title="csra models", caption="; ".join(notes) or None)
    for name in shown:
        table.add_column(name, no_wrap=name != "data", min_width=need[name] if name != "data" else None,
                         overflow="fold")
    for i in range(len(rows)):
        table.add_row(*(cells[name][i] for name in shown))
    return table


@models_app.callback(invoke_without_command=True)
@handle_errors
def models(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="The whole registry as JSON on stdout.")):
    """List known models: shipped, official releases (downloadable) and imported ones."""
    if ctx.invoked_subcommand:
        return
    rows = _rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console

    console = Console(highlight=False)
    console.print(models_table(rows, console.width))


@models_app.command("info")
@handle_errors
def models_info(name: str = typer.Argument(..., help="A model name (see 'csra models').")):
    """Everything known about a model: registry entry, and its card when installed."""
    local = registry.imported(name)
    out: dict = {}
    if local is None:
        entry = registry.entry(name)
        out["registry"] = entry
        path = registry.installed_path(entry)
        out["installed"] = str(path) if path else None
        if path is not None and path.suffix in (".safetensors", ".json"):
            out["card"] = json.loads(model_files(path).card.read_text())
    else:
        out = {"installed": str(local), "card": json.loads(local.with_suffix(".json").read_text())}
    typer.echo(json.dumps(out, indent=2))


@models_app.command("download")
@handle_errors
def models_download(
    name: Annotated[str, typer.Argument(help="A model name from 'csra models'.")],
    url: Annotated[Optional[str], typer.Option(help="Fetch from this URL (a mirror) instead of the registry's.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if installed.")] = False,
):
    """Download a model into the cache ($CSRA_HOME, default ~/.cache/csra), sha256-checked."""
    from ..fileio import atomic_write_bytes
    from ..models.download import check_model_file, digest_record, download, recorded_digest_mismatch

    entry = registry.entry(name)
    dest = registry.cache_dir() / entry["file"]
    have = registry.installed_path(entry)
    if have and not force:
        problem = recorded_digest_mismatch(have)
        if problem:
            raise CSRAError(f"{problem}; download it again with --force")
        info(f"{name} is already installed at {have}")
        return
    source = url or entry.get("url")
    if not source:
        raise CSRAError(f"{name} has no download URL; it ships in weights/")
    info(f"downloading {name} from {source}")
    digest = download(source, dest, entry.get("sha256"), check=check_model_file)
    if entry.get("sha256"):
        info(f"verified sha256 {digest}; saved {dest}")
    else:
        atomic_write_bytes(digest_record(dest), f"{digest}  {dest.name}\n".encode())
        warn(f"sha256 {digest}: could not verify (the registry lists no digest for {name}); saved {dest} "
             "and recorded its digest to check it later")


@models_app.command("import")
@handle_errors
def models_import(
    checkpoint: Annotated[Path, typer.Argument(help="An official CSRA .pth checkpoint.")],
    lam: Annotated[float, typer.Option(help="Lambda the model was trained with.")],
    classes: Annotated[str, typer.Option(help="voc, coco, wider, a,b,c or a file with one name per line.")],
    arch: Annotated[Optional[str], typer.Option(help="Architecture (else inferred from the keys).")] = None,
    heads: Annotated[Optional[int], typer.Option(help="CSRA heads (checked against the keys).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Name to use it by (default: the file's stem).")] = None,
    input_size: Annotated[Optional[int], typer.Option(help="Input size (default: 448 ResNet, the checkpoint's for ViT).")] = None,
):
    """Convert an official checkpoint into our format (safetensors + card) in the cache."""
    from ..models.loading import load_official
    from ..models.checkpoint import save_csra

    model = load_official(checkpoint, arch=arch, num_heads=heads, lam=lam, classes=classes, name=name,
                          input_size=input_size)
    dest = registry.cache_dir() / f"{model.card.name}.safetensors"
    with writing_into_cache():
        save_csra(model, model.card, dest)
    info(f"imported {checkpoint} as '{model.card.name}' ({model.card.arch}, {heads_text(model.card.num_heads)}, "
         f"{model.card.num_classes} classes) -> {dest}")
