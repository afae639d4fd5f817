"""An evaluation -> one self-contained HTML page: AP per class, precision-recall curves (inline
SVG) with the thresholds marked, and per class the images that went wrong, so a weak class
shows *why* it is weak. Classes come weakest first."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes
from .html import BASE_CSS, esc, link_to, thumbnails

CSS = BASE_CSS + """
.summary td{font-variant-numeric:tabular-nums}.bars text{font-size:12px;fill:var(--fg)}
.bars a:hover rect{fill:#173d91}.cls{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 14px;
margin:12px 0}.cls h3{margin:0 0 6px;font-size:15px}.row{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}
.pr text{font-size:10px;fill:var(--muted)}.strip{display:flex;gap:6px;flex-wrap:wrap}
.shot{width:112px;font-size:11px;text-align:center}.shot img{width:112px;height:112px;object-fit:cover;border-radius:4px;
display:block}.shot .nopic{width:112px;height:112px;background:#eeeeea;display:flex;align-items:center;
justify-content:center;color:var(--muted)}.fp{border:3px solid #d98c1f;border-radius:6px}
.miss{border:3px solid #b3261e;border-radius:6px}h4{margin:4px 0;font-size:13px}
"""
MARK_COLOURS = ("#d98c1f", "#2e8b57", "#8e44ad")


def _ap_bars(classes: list[str], aps: list[float | None]) -> str:
    """Horizontal bars, one per class, each a link to the class's section."""
    w, row, label = 620, 18, 120
    h = row * len(classes) + 24
    parts = [f'<svg class="bars" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="AP per class">']
    for x in range(0, 101, 25):
        px = label + x * (w - label - 60) / 100
        parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="0" y2="{h - 18}" stroke="#deded8"/>'
                     f'<text x="{px:.1f}" y="{h - 4}" text-anchor="middle">{x}</text>')
    for i, (c, ap) in enumerate(zip(classes, aps)):
        y = i * row
        bar = 0 if ap is None else ap * (w - label - 60) / 100
        value = "no positive" if ap is None else f"{ap:.1f}"
        parts.append(f'<a href="#class-{i}"><text x="{label - 6}" y="{y + 13}" text-anchor="end">{esc(c)}</text>'
                     f'<rect x="{label}" y="{y + 3}" width="{bar:.1f}" height="{row - 6}" fill="#2457c5"/>'
                     f'<text x="{label + bar + 5:.1f}" y="{y + 13}">{value}</text></a>')
    return "".join(parts) + "</svg>"


def _point_at(scores: np.ndarray, labels: np.ndarray, t: float) -> tuple[float, float]:
    keep = labels >= 0
    s, y = scores[keep], labels[keep] == 1
    pred = s >= t
    tp = float((pred & y).sum())
    return (tp / pred.sum() if pred.sum() else 1.0), (tp / y.sum() if y.sum() else 0.0)


def _pr_svg(curve: dict, marks: list[tuple[str, float, float, float]], size=(260, 210)) -> str:
    """The curve (at most ~400 points drawn) with a dot per threshold: (name, t, precision, recall)."""
    w, h, pad = size[0], size[1], 30
    sx = lambda r: pad + r * (w - pad - 8)  # noqa: E731
    sy = lambda p: h - pad - p * (h - pad - 8)  # noqa: E731
    parts = [f'<svg class="pr" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="precision-recall">',
             f'<rect x="{pad}" y="8" width="{w - pad - 8}" height="{h - pad - 8}" fill="#fafaf8" stroke="#deded8"/>']
    for v in (0, 0.5, 1):
        parts.append(f'<text x="{sx(v):.1f}" y="{h - pad + 12}" text-anchor="middle">{v:g}</text>'
                     f'<text x="{pad - 4}" y="{sy(v) + 3:.1f}" text-anchor="end">{v:g}</text>')
    parts.append(f'<text x="{(w + pad) / 2:.0f}" y="{h - 4}" text-anchor="middle">recall</text>'
                 f'<text x="10" y="{(h - pad) / 2:.0f}" transform="rotate(-90 10 {(h - pad) / 2:.0f})" '
                 f'text-anchor="middle">precision</text>')
    r, p = curve["recall"], curve["precision"]
    if r:
        step = max(1, len(r) // 400)
        idx = list(range(0, len(r), step)) + ([len(r) - 1] if (len(r) - 1) % step else [])
        pts = " ".join(f"{sx(r[i]):.1f},{sy(p[i]):.1f}" for i in idx)
        parts.append(f'<polyline class="curve" points="{sx(0):.1f},{sy(p[0]):.1f} {pts}" fill="none" '
                     f'stroke="#2457c5" stroke-width="1.6"/>')
    for k, (name, t, mp, mr) in enumerate(marks):
        colour = MARK_COLOURS[k % len(MARK_COLOURS)]
        parts.append(f'<circle class="mark" cx="{sx(mr):.1f}" cy="{sy(mp):.1f}" r="4.5" fill="{colour}">'
                     f"<title>{esc(name)} {t:.3g}: P {mp:.2f} R {mr:.2f}</title></circle>")
    return "".join(parts) + "</svg>"


def _strip(items: list[tuple[int, float]], paths: list[str], thumbs: dict, page: Path, cls: str, empty: str) -> str:
    if not items:
        return f'<p class="muted">{esc(empty)}</p>'
    out = []
    for i, s in items:
        pic = (f'<img src="data:image/jpeg;base64,{thumbs[i]}" alt="{esc(Path(paths[i]).name)}">' if thumbs.get(i)
               else '<div class="nopic">no preview</div>')
        out.append(f'<div class="shot {cls}" title="{esc(paths[i])}"><a href="{esc(link_to(paths[i], page))}">{pic}</a>'
                   f"{esc(Path(paths[i]).name)}<br>score {s:.3f}</div>")
    return '<div class="strip">' + "".join(out) + "</div>"


def build_eval_report(report: dict, classes: list[str], curves: list[dict], scores: np.ndarray, labels: np.ndarray,
                      paths: list[str], thresholds: dict[str, list[float]], page: Path, *, top: int = 6) -> dict:
    """Write the page. ``thresholds``: name -> per-class thresholds to mark (the first one picks the
    missed positives); ``scores``/``labels``/``paths``: the images evaluated, row for row."""
    started = time.time()
    aps = [report["per_class"][c]["AP"] for c in classes]
    first = np.asarray(next(iter(thresholds.values())), dtype=np.float64)
    picks = {}
    for j in range(len(classes)):
        s, y = scores[:, j], labels[:, j]
        neg, pos = np.nonzero(y == 0)[0], np.nonzero(y == 1)[0]
        fps = neg[np.argsort(-s[neg], kind="mergesort")][:top]  # the negatives it is surest of
        missed = pos[s[pos] < first[j]]
        missed = missed[np.argsort(s[missed], kind="mergesort")][:top]  # the positives it is least sure of
        picks[j] = ([(int(i), float(s[i])) for i in fps], [(int(i), float(s[i])) for i in missed])
    wanted = sorted({i for a, b in picks.values() for i, _ in a + b})
    thumbs = dict(zip(wanted, thumbnails([paths[i] for i in wanted], size=112)))

    order = sorted(range(len(classes)), key=lambda j: (aps[j] is None, aps[j] if aps[j] is not None else 0))
    sections = []
    for j in order:
        c, ap = classes[j], aps[j]
        marks = [(name, float(ts[j]), *_point_at(scores[:, j], labels[:, j], float(ts[j])))
                 for name, ts in thresholds.items()]
        legend = "".join(f'<div><span style="color:{MARK_COLOURS[k % 3]}">●</span> {esc(n)} {t:.3g}: '
                         f"precision {p * 100:.1f}, recall {r * 100:.1f}</div>" for k, (n, t, p, r) in enumerate(marks))
        fps, missed = picks[j]
        pc = report["per_class"][c]
        sections.append(
            f'<section class="cls" id="class-{j}" data-class="{esc(c)}"><h3>{esc(c)} — AP '
            f'{"n/a (no positive)" if ap is None else f"{ap:.1f}"}</h3>'
            f'<div class="muted">{pc["positives"]} positives of {int((labels[:, j] >= 0).sum())} images</div>'
            f'<div class="row">{_pr_svg(curves[j], marks)}<div>{legend}'
            f"<h4>top false positives (not labelled {esc(c)}, scored highest)</h4>"
            f'{_strip(fps, paths, thumbs, page, "fp", "none")}'
            f"<h4>missed positives (labelled {esc(c)}, below the {esc(next(iter(thresholds)))})</h4>"
            f'{_strip(missed, paths, thumbs, page, "miss", "none missed")}</div></div></section>')
    keys = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")
    summary = ("<table class=\"summary\"><tr>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr><tr>"
               + "".join(f"<td>{'-' if report.get(k) is None else f'{report[k]:.1f}'}</td>" for k in keys)
               + "</tr></table>")
    title = f"csra eval: {report.get('model', '')} on {report.get('dataset', '')}"
    when = datetime.now(timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M")
    html = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1><div class=\"muted\">"
            f"{report.get('num_images', len(paths))} images, {len(classes)} classes, AP {esc(report.get('ap', ''))}"
            f" · made {when} by csra</div></header><main>{summary}<h2>AP per class</h2>{_ap_bars(classes, aps)}"
            f"<h2>classes, weakest first</h2>{''.join(sections)}</main></body></html>\n")
    atomic_write_bytes(page, html.encode("utf-8"))
    return {"classes": len(classes), "bytes": len(html.encode("utf-8")), "seconds": time.time() - started}
