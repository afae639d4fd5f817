"""``csra explain``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List

import typer

from .common import MODEL_OPTIONS, DeviceOpt, TopKOpt, app, check_inputs_exist, check_output, handle_errors, load_model_for
from ..console import error, info, warn
from ..errors import CSRAError
from ..models.spec import ModelSpec


@app.command()
@handle_errors
@MODEL_OPTIONS.into("model")
def explain(
    images: Annotated[List[str], typer.Argument(help="Image files, folders or glob patterns (as for tag).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the heatmaps.")],
    class_: Annotated[List[str], typer.Option("--class", "-c", help="Class to draw (repeatable; default: the predicted ones).")] = [],
    top_k: TopKOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="png (overlays + grid) or npy (raw maps).")] = "png",
    *,
    model: ModelSpec,
    device: DeviceOpt = "auto",
):
    """Class attention heatmaps: where the CSRA head finds each class.

    For multi-head models the map drawn is the sum of the heads' class score maps (its mean over
    positions is the base logit), so it reflects the whole model rather than one head."""
    from ..data.inputs import expand_inputs
    from ..explain.heatmaps import MAP_NOTE, explain_image
    from ..engine.device import pick_device

    if fmt not in ("png", "npy"):
        raise CSRAError("--format: use png or npy")
    if out.exists() and not out.is_dir():
        raise CSRAError(f"--out {out}: exists and is not a folder")
    check_output(out)
    check_inputs_exist(images)
    paths = list(expand_inputs(images, warn=warn))
    if not paths:
        raise CSRAError("no images found in the inputs")
    m = load_model_for(model)
    unknown = [c for c in class_ if c not in m.classes]
    if unknown:
        raise CSRAError(f"--class: unknown {', '.join(unknown)}; the model's classes are {', '.join(m.classes)}")
    dev = pick_device(device)
    m.to(dev)
    info(f"drawing: {MAP_NOTE}" + (f" ({m.card.num_heads} heads)" if m.card.num_heads > 1 else ""))
    failed = 0
    for path in paths:
        try:
            written = explain_image(m, path, out, class_ or None, top_k, fmt, dev)
        except (OSError, ValueError) as exc:
            failed += 1
            error(f"{path}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")
            continue
        info(f"{path}: " + ", ".join(p.name for p in written))
    if failed:
        raise typer.Exit(1)
