"""``csra bench``."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import RUN_OPTIONS, app, check_inputs_exist, handle_errors, in_range
from ..console import err, info
from ..engine.run_spec import RunSpec
from ..errors import CSRAError


@app.command()
@handle_errors
@RUN_OPTIONS.into("run", only=("source", "batch_size", "workers", "device", "precision", "backend"))
def bench(
    run: RunSpec,
    images: Annotated[Optional[str], typer.Option("--images", help="Folder of images, or a text file with one path per line.")] = None,
    limit: Annotated[int, typer.Option(callback=in_range("--limit", 0), help="Use at most N images of --images (0: all).")] = 0,
    synthetic: Annotated[int, typer.Option("--synthetic", help="Without --images: N generated 500x375 JPEGs.")] = 64,
    baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="Also time the official-style loops.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
    whole_process: Annotated[bool, typer.Option("--whole-process", help="Also time `csra tag` on the images as a whole "
                                                "process, and the start-up times (--version, tag of one image).")] = False,
):
    """Throughput (model only and end to end), latency p50/p95, peak RSS/GPU memory, and the
    ratios against demo-style and val-style baselines timed in the same run."""
    from ..engine.bench import run_bench
    from ..data.inputs import expand_inputs
    from ..engine.device import set_threads

    if synthetic < 1 and not images:
        raise CSRAError("--synthetic must be at least 1 (or give --images)")
    paths = None
    if images:
        check_inputs_exist([images], "--images")
        listed = Path(images)
        if listed.is_file() and listed.suffix.lower() in (".txt", ".lst"):
            paths = [ln.strip() for ln in listed.read_text().splitlines() if ln.strip()]
            check_inputs_exist(paths, f"--images {images}:")
        else:
            paths = list(expand_inputs([images]))
        paths = paths[:limit] if limit else paths
        if not paths:
            raise CSRAError(f"--images {images}: no images found")
    run = replace(run, workers=run.resolved_workers)
    run.checked_precision()
    set_threads()
    result = run_bench(run, paths, synthetic, baselines, log=None if as_json else info, whole_process=whole_process)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"csra bench: {result['model']} @ {result['input_size']}px, {result['runner_precision']} "
                    f"({result['backend']}), {result['images']} images, {result['device']}, batch "
                    f"{result['batch_size']}, {result['workers']} workers")
    for col in ("pipeline", "images/s", "p50 ms/batch", "p95 ms/batch"):
        t.add_column(col)
    for key, label in (("model_only", "model only"), ("model_only_fp32", "model only, fp32 (alternating)"),
                       ("model_only_int8", "model only, int8 (alternating)"),
                       ("end_to_end", "end to end (csra tag)"), ("whole_process", "csra tag, whole process"),
                       ("demo_style", "baseline: demo-style"), ("val_style", "baseline: val-style")):
        if key in result:
            r = result[key]
            t.add_row(label, f"{r['images_per_s']:.1f}", str(r.get("p50_ms", "")), str(r.get("p95_ms", "")))
    err.print(t)
    if "ratios" in result:
        r = result["ratios"]
        err.print(f"end to end vs demo-style: {r['end_to_end_vs_demo']}x, vs val-style: {r['end_to_end_vs_val']}x; "
                  f"tags same as exact resize: {result['tags_same_as_exact_resize_pct']}%")
    if "ceiling" in result:
        c = result["ceiling"]
        err.print(f"end to end {c['end_to_end_images_per_s']} images/s = {100 * c['end_to_end_share_of_model_only']:.1f}% "
                  f"of model only on the same photos ({c['model_only_images_per_s']} images/s; {result['runner_precision']}, "
                  f"{c['lanes']} lanes; median of {len(c['rounds']['model_only'])} alternating rounds)")
    if "int8_vs_fp32_model_only" in result:
        err.print(f"int8 vs fp32, model only: {result['int8_vs_fp32_model_only']}x (median of alternating rounds)")
    if "whole_process_tag_vs_demo" in result.get("ratios", {}):
        err.print(f"csra tag as a whole process vs demo-style: {result['ratios']['whole_process_tag_vs_demo']}x")
    if "startup" in result:
        s = result["startup"]
        err.print(f"start-up: import torch {s['import_torch_s']} s, csra --version {s['version_s']} s "
                  f"({s['version_vs_import_torch']}x), csra tag one image {s['tag_one_s']} s ({s['tag_one_vs_import_torch']}x)")
    err.print(f"model idle (waiting for decoding): {result['end_to_end'].get('model_idle_pct')}%; {result.get('cpu_model', '')}")
    err.print(f"peak RSS {result['peak_rss_mb']} MB" + (f", peak GPU {result['peak_gpu_mb']} MB" if "peak_gpu_mb" in result else ""))
