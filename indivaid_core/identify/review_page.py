"""A self-contained match-review page: each query photo beside its candidate individuals.

Written by `indivaid identify` beside its CSV. It opens from a file (no server, no network):
the thumbnails are embedded as base64 JPEGs and the page is plain HTML + JS. Rows come most
doubtful first; a person accepts a candidate, rejects, or names a new individual, and exports
the decisions as a CSV (identity, path, decision, query) that `indivaid index add --images`
reads. Opened with `#selftest` in the URL, the page makes one decision of each kind itself and
writes the CSV it would export into `<pre id="selftest-csv">` (how the tests check it).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from indivaid_core.data.images import load_rgb

THUMB_PX = 128
GALLERY_PER_CANDIDATE = 3


def thumbnail(path: str | Path, size: int = THUMB_PX) -> str | None:
    """A data URI of a small JPEG of `path`, or None when it cannot be read (shown as missing).

    Read as identify reads it (`load_rgb`): a 105 MP JPEG decodes reduced, and Pillow's
    warnings name the photo."""
    try:
        im = load_rgb(path, (size, size), reduce_large=True)
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=75)
    except (OSError, ValueError):  # DataError, or a failed encode
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def doubt(row: pd.Series, threshold: float | None) -> float:
    """How close the answer is to changing: the top-1's margin to the threshold and, when the
    photo is given a name, its lead over the runner-up, whichever is smaller (smaller = more
    doubtful; errors sort last). A photo flagged new keeps its answer whichever known animal
    is nearest, so a tie between two far candidates does not make it doubtful."""
    d1 = row.get("distance")
    if row.get("error") or d1 is None or pd.isna(d1):
        return math.inf
    margins = [abs(float(d1) - threshold)] if threshold is not None else []
    if threshold is not None and float(d1) > threshold:
        return margins[0]
    d2 = row.get("top2_distance")
    if d2 is not None and pd.notna(d2):
        margins.append(float(d2) - float(d1))
    return min(margins, default=math.inf)


def _gallery_photos(gallery: pd.DataFrame, identity: str, first: Any, n: int) -> list[str]:
    """The matched gallery photo first, then other photos of the same individual."""
    paths = gallery.loc[gallery["identity"] == identity, "path"].astype(str).tolist()
    chosen = [str(first)] if isinstance(first, str) and first else []
    return (chosen + [p for p in paths if p not in chosen])[:n]


def _candidates(row: pd.Series, gallery: pd.DataFrame, images: dict, top_k: int) -> list[dict]:
    out = []
    for r in range(1, top_k + 1):
        ident = row.get(f"top{r}_identity")
        if not isinstance(ident, str) or not ident:
            continue
        photos = _gallery_photos(gallery, ident, row.get(f"top{r}_image"), GALLERY_PER_CANDIDATE)
        for p in photos:
            images.setdefault(p, thumbnail(p))
        conf = row.get("confidence") if r == 1 else None  # P(top-1 right)
        out.append(
            {
                "identity": ident,
                "distance": round(float(row[f"top{r}_distance"]), 3),
                "confidence": None if conf is None or pd.isna(conf) else round(float(conf), 2),
                "photos": photos,
            }
        )
    return out


def page_data(frame: pd.DataFrame, gallery: pd.DataFrame, threshold: float | None) -> dict:
    """The page's rows (most doubtful first) and one thumbnail per distinct photo."""
    top_k = sum(1 for c in frame.columns if c.startswith("top") and c.endswith("_identity"))
    images: dict[str, str | None] = {}
    rows = []
    for _, row in frame.iterrows():
        query = str(row["query"])
        absolute = str(Path(query).absolute())
        images.setdefault(absolute, thumbnail(query))
        flagged = row.get("new_individual")
        rows.append(
            {
                "query": query,
                "path": absolute,
                "error": str(row.get("error") or ""),
                "flagged": bool(flagged) if flagged is not None and pd.notna(flagged) else False,
                "doubt": doubt(row, threshold),
                "candidates": [] if row.get("error") else _candidates(row, gallery, images, top_k),
            }
        )
    rows.sort(key=lambda r: r["doubt"])
    for r in rows:
        r["doubt"] = None if math.isinf(r["doubt"]) else round(r["doubt"], 3)
    return {"threshold": threshold, "rows": rows, "images": images}


def render(
    frame: pd.DataFrame,
    gallery: pd.DataFrame,
    threshold: float | None,
    title: str,
    index_path: str = "INDEX",
) -> str:
    """The whole page as one HTML string (data as JSON, safe inside <script>).

    The export holds the photos' absolute paths (the download may land in any folder), so the
    page names the `index add` command with --allow-outside-root, which says so explicitly.
    """
    data = json.dumps(page_data(frame, gallery, threshold)).replace("</", "<\\/")
    parts = {
        "__TITLE__": html.escape(title),
        "__INDEX__": html.escape(str(index_path)),
        "__STYLE__": STYLE,
        "__SCRIPT__": SCRIPT,
        "__DATA__": data,
    }
    # one pass: a title or path that happens to contain "__DATA__" stays text
    return re.sub("|".join(parts), lambda m: parts[m.group(0)], TEMPLATE)


STYLE = """
body{font-family:system-ui,sans-serif;margin:1em;color:#222}
header{display:flex;gap:1em;align-items:center;flex-wrap:wrap;margin-bottom:1em}
.query-row{display:flex;gap:1em;border:1px solid #ccc;border-radius:6px;padding:.6em;
 margin-bottom:.8em;align-items:flex-start}
.query-row.flagged{border-color:#e67e22;background:#fff8f0}
.query-row.decided{opacity:.65}
.query{width:170px;flex:none;font-size:.85em;word-break:break-all}
.badge{display:inline-block;background:#e67e22;color:#fff;border-radius:3px;padding:0 .4em}
.cands{display:flex;gap:.8em;flex-wrap:wrap;flex:1}
.cand{border:1px solid #ddd;border-radius:4px;padding:.3em;font-size:.85em}
.cand img,.query img{height:96px;margin:1px;border-radius:3px}
.missing{display:inline-block;width:96px;height:96px;background:#eee;color:#999;
 text-align:center;line-height:96px}
.decide{width:230px;flex:none;font-size:.9em}
.decide label{display:block}
.error{color:#b00}
"""

SCRIPT = r"""
const DATA = JSON.parse(document.getElementById('data').textContent);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
};
function img(path) {
  const src = DATA.images[path];
  return src ? el('img', {src: src, alt: path, title: path}) : el('span', {class: 'missing'}, '?');
}
function candidate(c, rank) {
  const conf = c.confidence === null ? '' : ` · confidence ${Math.round(c.confidence * 100)}%`;
  const box = el('div', {class: 'cand'}, el('b', {}, `${rank}. ${c.identity}`),
                 el('div', {}, `distance ${c.distance.toFixed(3)}${conf}`));
  const pics = el('div');
  c.photos.forEach(p => pics.append(img(p)));
  box.append(pics);
  return box;
}
function decision(r, i) {
  const box = el('div', {class: 'decide'});
  const name = `d${i}`;
  const pick = el('select', {class: 'pick'});
  r.candidates.forEach(c => pick.append(el('option', {value: c.identity}, c.identity)));
  const radio = v => el('input', {type: 'radio', name: name, value: v});
  box.append(el('label', {}, radio('accept'), ' accept ', pick));
  box.append(el('label', {}, radio('reject'), ' reject'));
  box.append(el('label', {}, radio('new'), ' new individual named ',
                el('input', {type: 'text', class: 'newname', size: 12})));
  box.addEventListener('change', () => box.parentElement.classList.toggle('decided',
    !!box.querySelector('input[type=radio]:checked')));
  return box;
}
function row(r, i) {
  const cls = 'query-row' + (r.flagged ? ' flagged' : '');
  const e = el('section', {class: cls, 'data-path': r.path});
  const q = el('div', {class: 'query'}, img(r.path), el('div', {}, r.query));
  if (r.flagged) q.append(el('div', {}, el('span', {class: 'badge'}, 'new individual?')));
  if (r.doubt !== null) q.append(el('div', {}, `margin ${r.doubt.toFixed(3)}`));
  if (r.error) q.append(el('div', {class: 'error'}, r.error));
  e.append(q);
  const cands = el('div', {class: 'cands'});
  r.candidates.forEach((c, k) => cands.append(candidate(c, k + 1)));
  e.append(cands);
  if (!r.error) e.append(decision(r, i));
  return e;
}
function applyFilter() {
  const who = document.getElementById('filter').value;
  let shown = 0;
  document.querySelectorAll('.query-row').forEach(e => {
    const on = !who || DATA.rows[+e.dataset.row].candidates.some(c => c.identity === who);
    e.style.display = on ? '' : 'none';
    shown += on;
  });
  document.getElementById('shown').textContent = `${shown} of ${DATA.rows.length} photos`;
  return shown;
}
// a cell a spreadsheet would run as a formula gets a leading quote (OWASP);
// `index add` reads it back
const cell = s => /^[=+\-@\t\r]/.test(s) ? "'" + s : s;
const quote = s => {
  s = cell(s);
  return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
};
function buildCsv() {
  const lines = ['identity,path,decision,query'];
  document.querySelectorAll('.query-row').forEach(e => {
    const choice = e.querySelector('input[type=radio]:checked');
    if (!choice || choice.value === 'reject') return;
    const who = choice.value === 'accept' ? e.querySelector('.pick').value
                                          : e.querySelector('.newname').value.trim();
    if (!who) return;
    const r = DATA.rows[+e.dataset.row];
    lines.push([who, r.path, choice.value, r.query].map(quote).join(','));
  });
  return lines.join('\n') + '\n';
}
function exportCsv() {
  const a = el('a', {download: 'reviewed.csv',
                     href: URL.createObjectURL(new Blob([buildCsv()], {type: 'text/csv'}))});
  document.body.append(a); a.click(); a.remove();
}
function selftest() {
  const rows = [...document.querySelectorAll('.query-row')].filter(e => e.querySelector('.decide'));
  rows.forEach((e, i) => {
    const kind = ['accept', 'new', 'reject'][i % 3];
    e.querySelector(`input[value=${kind}]`).checked = true;
    if (kind === 'new') e.querySelector('.newname').value = `newcomer ${i}`;
  });
  const pre = el('pre', {id: 'selftest-csv'}, buildCsv());
  const first = DATA.rows.find(r => r.candidates.length);
  if (first) {
    document.getElementById('filter').value = first.candidates[0].identity;
    pre.dataset.filtered = applyFilter();
    document.getElementById('filter').value = '';
    applyFilter();
  }
  document.body.append(pre);
}
const list = document.getElementById('rows');
DATA.rows.forEach((r, i) => { const e = row(r, i); e.dataset.row = i; list.append(e); });
const names = [...new Set(DATA.rows.flatMap(r => r.candidates.map(c => c.identity)))].sort();
const filter = document.getElementById('filter');
names.forEach(n => filter.append(el('option', {value: n}, n)));
filter.addEventListener('change', applyFilter);
document.getElementById('export').addEventListener('click', exportCsv);
applyFilter();
if (location.hash === '#selftest') selftest();
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>__STYLE__</style></head>
<body>
<h1>__TITLE__</h1>
<header>
 <label>Individual: <select id="filter"><option value="">all</option></select></label>
 <span id="shown"></span>
 <button id="export">Export decisions as CSV</button>
 <span>Most doubtful photos first. Accepted and newly named photos go into the CSV, which
 <code>indivaid index add __INDEX__ --images reviewed.csv --allow-outside-root</code> adds to
 the gallery (it lists the photos by their absolute paths).</span>
</header>
<main id="rows"></main>
<script type="application/json" id="data">__DATA__</script>
<script>__SCRIPT__</script>
</body></html>
"""
