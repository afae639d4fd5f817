"""``csra explain``."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .cli import app, get_model, handle_errors, parse_device
from .console import error, info
from .errors import CSRAError


@app.command()
@handle_errors
def explain(
    images: List[str] = typer.Argument(..., help="Image files."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the heatmaps."),
    class_: List[str] = typer.Option([], "--class", "-c", help="Class to draw (repeatable; default: the predicted ones)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="At most K classes per image."),
    fmt: str = typer.Option("png", "--format", help="png (overlays + grid) or npy (raw maps)."),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    arch: Optional[str] = typer.Option(None),
    heads: Optional[int] = typer.Option(None),
    lam: Optional[float] = typer.Option(None),
    class_names: Optional[str] = typer.Option(None, "--class-names"),
    device: str = typer.Option("auto"),
):
    """Class attention heatmaps: where the CSRA head finds each class.

    For multi-head models the map drawn is the sum of the heads' class score maps (its mean over
    positions is the base logit), so it reflects the whole model rather than one head."""
    from .explain import MAP_NOTE, explain_image
    from .loader import pick_device

    if fmt not in ("png", "npy"):
        raise CSRAError("--format: use png or npy")
    if out.exists() and not out.is_dir():
        raise CSRAError(f"--out {out}: exists and is not a folder")
    m = get_model(model, arch, heads, lam, class_names)
    unknown = [c for c in class_ if c not in m.classes]
    if unknown:
        raise CSRAError(f"--class: unknown {', '.join(unknown)}; the model's classes are {', '.join(m.classes)}")
    dev = pick_device(parse_device(device))
    m.to(dev)
    info(f"drawing: {MAP_NOTE}" + (f" ({m.card.num_heads} heads)" if m.card.num_heads > 1 else ""))
    failed = 0
    for path in images:
        try:
            written = explain_image(m, path, out, class_ or None, top_k, fmt, dev)
        except (OSError, ValueError) as exc:
            failed += 1
            error(f"{path}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")
            continue
        info(f"{path}: " + ", ".join(p.name for p in written))
    if failed:
        raise typer.Exit(1)
