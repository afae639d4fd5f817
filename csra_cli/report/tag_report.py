"""Tag records -> one self-contained HTML page: a thumbnail grid, tag counts that filter, a search box.

Everything is inside the one file (no CDN, no server). Thumbnails sit in a JSON block and are
put into an <img> only when its card scrolls near the screen, so a page of 10,000 images opens
at once and stays responsive. The URL fragment holds the filter (``#tag=dog,person&q=beach``)
so a filtered view can be bookmarked or shared.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from ..fileio import atomic_temp
from .html import BASE_CSS, THUMB_PX, esc, link_to, script_json, thumbnails

CSS = BASE_CSS + """
.layout{display:flex;gap:18px;align-items:flex-start}
aside{position:sticky;top:8px;width:210px;flex:none;max-height:calc(100vh - 16px);overflow:auto}
#q{width:100%;padding:6px 8px;border:1px solid var(--line);border-radius:6px;font:inherit;margin-bottom:8px}
.tagbtn{display:flex;justify-content:space-between;width:100%;padding:3px 8px;margin:1px 0;border:0;
border-radius:5px;background:none;font:inherit;cursor:pointer;text-align:left}
.tagbtn:hover{background:#ebebe6}.tagbtn.on{background:var(--accent);color:#fff}
.tagbtn span{opacity:.7;margin-left:8px}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(172px,1fr));gap:10px;flex:1;min-width:0}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:6px;
content-visibility:auto;contain-intrinsic-size:172px 250px}
.card .ph{display:flex;align-items:center;justify-content:center;height:PXpx;background:#eeeeea;border-radius:4px;
overflow:hidden;color:var(--muted);font-size:12px}
.card img{max-width:100%;max-height:PXpx;display:block}
.card .name{font-size:12px;margin:5px 0 3px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.chip{display:inline-block;font-size:12px;background:#e8eefb;color:#1c3f8f;border-radius:10px;padding:0 7px;
margin:0 3px 3px 0;cursor:pointer}.chip b{font-weight:600}.notags{font-size:12px;color:var(--muted)}
#errors summary{cursor:pointer;color:var(--bad);font-weight:600;margin-bottom:6px}
#status{margin:0 0 10px}.clear{border:1px solid var(--line);background:#fff;border-radius:5px;cursor:pointer}
""".replace("PX", str(THUMB_PX))

JS = r"""
const R = JSON.parse(document.getElementById('records').textContent);
const T = JSON.parse(document.getElementById('thumbs').textContent);
const grid = document.getElementById('grid'), q = document.getElementById('q');
const status = document.getElementById('status'), buttons = document.querySelectorAll('.tagbtn');
const chosen = new Set();
const observer = new IntersectionObserver(entries => {
  for (const e of entries) {
    if (!e.isIntersecting) continue;
    const card = e.target, i = +card.dataset.i, ph = card.querySelector('.ph');
    observer.unobserve(card);
    if (T[i]) {
      const img = document.createElement('img');
      img.alt = R[i][0]; img.src = 'data:image/jpeg;base64,' + T[i];
      ph.textContent = ''; ph.appendChild(img);
    } else ph.textContent = 'no preview';
  }
}, {rootMargin: '600px'});
const frag = document.createDocumentFragment();
R.forEach((r, i) => {
  const [path, href, tags] = r, card = document.createElement('div');
  card.className = 'card'; card.dataset.i = i;
  card.dataset.tags = '|' + tags.map(t => t[0]).join('|') + '|';
  card.dataset.text = (path + ' ' + tags.map(t => t[0]).join(' ')).toLowerCase();
  const a = document.createElement('a'); a.href = href; a.className = 'ph'; a.textContent = '…';
  const name = document.createElement('div'); name.className = 'name'; name.title = path;
  name.textContent = path.split(/[\\/]/).pop();
  const chips = document.createElement('div');
  if (!tags.length) { chips.className = 'notags'; chips.textContent = 'no tags'; }
  for (const [t, s] of tags) {
    const c = document.createElement('span'); c.className = 'chip'; c.dataset.tag = t;
    c.append(t + ' '); if (s !== null) { const b = document.createElement('b'); b.textContent = s.toFixed(2); c.append(b); }
    chips.appendChild(c);
  }
  card.append(a, name, chips); frag.appendChild(card); observer.observe(card);
});
grid.appendChild(frag);
function apply(write) {
  const text = q.value.trim().toLowerCase();
  let shown = 0;
  for (const card of grid.children) {
    let ok = !text || card.dataset.text.includes(text);
    for (const t of chosen) if (ok && !card.dataset.tags.includes('|' + t + '|')) ok = false;
    card.hidden = !ok; shown += ok;
  }
  buttons.forEach(b => b.classList.toggle('on', chosen.has(b.dataset.tag)));
  status.textContent = 'showing ' + shown + ' of ' + R.length + ' images' +
    (chosen.size ? ' with ' + [...chosen].join(' + ') : '') + (text ? ' matching "' + q.value.trim() + '"' : '');
  status.dataset.shown = shown;
  if (write) {
    const parts = [];
    if (chosen.size) parts.push('tag=' + [...chosen].map(encodeURIComponent).join(','));
    if (text) parts.push('q=' + encodeURIComponent(q.value.trim()));
    history.replaceState(null, '', parts.length ? '#' + parts.join('&') : location.pathname + location.search);
  }
}
function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  chosen.clear();
  for (const t of (h.get('tag') || '').split(',')) if (t) chosen.add(t);
  q.value = h.get('q') || '';
  apply(false);
}
function toggle(t) { chosen.has(t) ? chosen.delete(t) : chosen.add(t); apply(true); }
buttons.forEach(b => b.addEventListener('click', () => toggle(b.dataset.tag)));
grid.addEventListener('click', e => { const c = e.target.closest('.chip'); if (c) toggle(c.dataset.tag); });
document.getElementById('clear').addEventListener('click', () => { chosen.clear(); q.value = ''; apply(true); });
let timer; q.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(() => apply(true), 150); });
window.addEventListener('hashchange', readHash);
readHash();
document.documentElement.dataset.readyMs = Math.round(performance.now());  // for benchmarks and tests
"""


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def build_tag_report(records: Iterable[dict], page: Path, *, title: str = "csra tags", source: str = "",
                     workers: int | None = None) -> dict:
    """Write the page for these records (path, tags, scores, error); returns counts, size and time."""
    started = time.time()
    ok, errors = [], []
    for rec in records:
        if rec.get("error"):
            errors.append((rec["path"], rec["error"]))
        else:
            scores = rec.get("scores") or {}
            ok.append([rec["path"], link_to(rec["path"], page),
                       [[t, None if scores.get(t) is None else round(float(scores[t]), 4)] for t in rec["tags"]]])
    thumbs = thumbnails([r[0] for r in ok], workers=workers)
    counts = Counter(t for r in ok for t, _ in r[2])
    when = datetime.now(timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M")
    tag_list = "".join(f'<button class="tagbtn" data-tag="{esc(t)}">{esc(t)}<span>{n}</span></button>'
                       for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    error_rows = "".join(f"<tr><td>{esc(p)}</td><td>{esc(e)}</td></tr>" for p, e in errors)
    error_block = (f'<details id="errors" open><summary>{len(errors)} {"image" if len(errors) == 1 else "images"} could not be read</summary>'
                   f"<table><tr><th>path</th><th>error</th></tr>{error_rows}</table></details>" if errors else "")
    head = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1>"
            f'<div class="muted">{plural(len(ok), "image")} tagged, {plural(len(errors), "error")}, {plural(len(counts), "distinct tag")}'
            f'{" · from " + esc(source) if source else ""} · made {when} by csra</div></header><main>'
            f'{error_block}<div class="layout"><aside><input id="q" type="search" placeholder="search paths and tags">'
            f'<button id="clear" class="clear">clear filters</button><h2>tags</h2>{tag_list}</aside>'
            f'<section style="flex:1;min-width:0"><p id="status" class="muted"></p><div id="grid"></div></section>'
            f"</div></main>")
    fd, tmp = atomic_temp(page)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(head)
            fh.write(f'<script type="application/json" id="records">{script_json(ok)}</script>')
            fh.write(f'<script type="application/json" id="thumbs">{script_json(thumbs)}</script>')
            fh.write(f"<script>{JS}</script></body></html>\n")
        os.replace(tmp, page)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"images": len(ok), "errors": len(errors), "tags": len(counts), "bytes": page.stat().st_size,
            "seconds": time.time() - started}
