"""Report HTML: the page shell (HTML5, self-contained), the results table, image grids and the runs index."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from harness.methods import display_name
from harness.report.data import (
    Record,
    cache_hits,
    computed_summary,
    fmt_metric,
    leaders,
    not_run,
    ran,
    raw_point,
    reason,
    shade,
    sort_records,
    tag,
    unmatched,
)

# (header, metric) columns of the per-model table after method / K / config
METRIC_COLUMNS = (
    ("FLOPs ×", "flops_speedup"),
    ("wall ×", "wall_speedup"),
    ("PSNR (dB)", "psnr"),
    ("SSIM", "ssim"),
    ("LPIPS", "lpips"),
    ("adherence", "adherence"),
    ("measured K", "measured_k"),
)

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1b1b1b;
 background:#fff;line-height:1.4}
main{max-width:1200px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.6em;margin:.4em 0 .2em}h2{font-size:1.35em;border-bottom:2px solid #ddd;padding-bottom:4px;
 margin-top:1.6em}h3{font-size:1.1em;margin:1.3em 0 .4em}
.meta{color:#555;font-size:.9em}.note{color:#666;font-size:.88em;margin:.2em 0 .6em}
.missing{color:#8a4b00;background:#fff6e5;border:1px solid #f0d9a8;padding:6px 10px;border-radius:4px}
nav a{margin-right:1em}
figure{margin:0 0 8px}figure img{max-width:100%;height:auto;display:block}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{border:1px solid #d5d5d5;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td.l,th.l{text-align:left}
td.na{color:#999;cursor:help}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px}
.strip{display:inline-grid;width:200px;height:12px;gap:1px;vertical-align:middle;cursor:help}
.strip i{background:#e3e3e3}
table.grid td,table.grid th{text-align:center;vertical-align:top;white-space:normal;padding:4px}
table.grid th.l{text-align:left;width:150px;max-width:150px;font-weight:normal;font-size:12px}
.grids{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}.grids h4{margin:.6em 0 .1em}
table.grid img{width:96px;height:auto;image-rendering:pixelated;display:block;margin:0 auto}
table.grid .frames img{width:48px;display:inline-block}
table.grid small{color:#555;display:block}
table.grid .pair{display:flex;gap:3px;justify-content:center}table.grid .pair img{display:inline-block}
table.grid .diff img{outline:1px solid #bbb}
.broken{outline:3px solid #d00}
#img-status{display:none}body[data-imgs-ok="false"] #img-status{display:block;color:#fff;background:#c00;
 padding:6px 12px}
"""

# Marks every <img> that failed to load and records the result on <body> (checked by the browser test).
CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images), bad = [];
  imgs.forEach(function (im) {
    if (!(im.complete && im.naturalWidth > 0)) {
      bad.push(im.getAttribute("src"));
      im.classList.add("broken");
    }
  });
  var b = document.body;
  b.dataset.imgsTotal = String(imgs.length);
  b.dataset.imgsBroken = bad.join(" ");
  b.dataset.imgsOk = String(bad.length === 0);
  b.dataset.scrollWidth = String(document.documentElement.scrollWidth);
  var s = document.getElementById("img-status");
  if (s && bad.length) { s.textContent = bad.length + " image(s) failed to load: " + bad.join(", "); }
});
"""


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def url(path: str) -> str:
    """A relative URL for a path under the page's folder."""
    return quote(path, safe="/")


def page(title: str, body: str) -> str:
    """A complete, self-contained HTML5 document."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        '<div id="img-status" role="alert"></div>\n'
        f"<main>\n{body}\n</main>\n<script>{CHECK_SCRIPT}</script>\n</body>\n</html>\n"
    )


def figure(src: str, alt: str, caption: str = "") -> str:
    cap = f'<figcaption class="note">{caption}</figcaption>' if caption else ""
    return f'<figure><img src="{url(src)}" alt="{esc(alt)}">{cap}</figure>'


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def swatch(colour: str) -> str:
    return f'<span class="swatch" style="background:{esc(colour)}"></span>'


def _td(text: str, title: str | None = None, cls: str = "") -> str:
    classes = " ".join(c for c in (cls, "na" if text in ("n/a", "–") else "") if c)
    attrs = (f' class="{classes}"' if classes else "") + (f' title="{esc(title)}"' if title else "")
    return f"<td{attrs}>{esc(text)}</td>"


def strip_html(r: Record, colour: str) -> str:
    """The computed steps as a 200 px CSS strip (method colour: computed, grey: predicted, in between: the
    fraction of prompts × CFG branches that computed the step); the steps in the tooltip."""
    fr = r.get("computed")
    if not fr or r["method"] == "full":
        return ""
    t = len(fr)
    cells = "".join(f'<i style="background:{esc(shade(colour, f))}"></i>' if f else "<i></i>" for f in fr)
    if all(f in (0.0, 1.0) for f in fr):
        keys = [i for i, f in enumerate(fr) if f]
        title = f"computed steps ({len(keys)}/{t}): " + ", ".join(map(str, keys))
    else:
        title = f"computed steps ({computed_summary(r)}), fraction per step: " + ", ".join(
            f"{i}:{f:.2f}" for i, f in enumerate(fr) if f
        )
    style = f"grid-template-columns:repeat({t},1fr)"
    return f'<span class="strip" style="{style}" title="{esc(title)}">{cells}</span>'


def results_table(records: Sequence[Record], colours: dict[str, str]) -> str:
    """Every record of one model: numbers formatted, unavailable metrics `n/a` with the reason as tooltip."""
    head = ['<th class="l">method</th>', "<th>K</th>", '<th class="l">config</th>']
    head += [f"<th>{esc(h)}</th>" for h, _ in METRIC_COLUMNS]
    head += ["<th>cache hits</th>", '<th class="l">schedule</th>']
    rows = []
    for r in sort_records(x for x in records if ran(x)):
        wall = r.get("timing") or {}
        cells = [
            f'<td class="l">{swatch(colours.get(r["method"], "#000"))}{esc(display_name(r["method"]))}</td>',
            _td(str(r.get("budget", "–"))),
            _td(tag(r), cls="l"),
        ]
        for _, metric in METRIC_COLUMNS:
            text, title = fmt_metric(r, metric)
            if metric == "wall_speedup" and title is None and wall.get("repeats"):
                title = f"median over {wall['repeats']} timed runs after {wall.get('warmup', 0)} warm-up"
            if metric == "measured_k" and unmatched(r):
                text, title = (
                    f"{text} UNMATCHED",
                    "more than 5 % off K on the evaluation prompts: not ranked at K",
                )
            cells.append(_td(text, title))
        hits = cache_hits(r)
        cells.append(_td("–" if hits is None else str(hits), None if hits is not None else "no cache"))
        strip = strip_html(r, colours.get(r["method"], "#000"))
        cells.append(f'<td class="l">{strip}</td>' if strip else _td("–"))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    table = (
        f'<div class="scroll"><table><thead><tr>{"".join(head)}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
    reasons = sorted({f"{m}: {why}" for r in records for m, why in (r.get("unavailable") or {}).items()})
    if reasons:
        items = "".join(f"<li>{esc(x)}</li>" for x in reasons)
        table += (
            f'<details><summary class="note">unavailable metrics ({len(reasons)})</summary><ul class="note">'
            f"{items}</ul></details>"
        )
    return table


def leader_table(records: Sequence[Record], metric: str = "psnr") -> str:
    """The ranking at exactly K: each method's quality interpolated in measured K, beside its raw point."""
    rows = []
    for k, entries in leaders(records, metric).items():
        for n, row in enumerate(entries, start=1):
            raw, at = row["raw"], row["value"]
            raw_text = raw_point(raw, metric)
            cells = [_td(str(k)), _td(str(n) if at is not None else "–"), _td(row["method"], cls="l")]
            cells += [_td(f"{at:.2f}" if at is not None else "n/a", row["how"]), _td(row["how"], cls="l")]
            cells.append(_td(raw_text, cls="l"))
            rows.append("<tr>" + "".join(cells) + "</tr>")
    if not rows:
        return missing("no method ran at a budget below T: nothing to rank")
    head = "".join(
        f"<th>{h}</th>" for h in ("K", "rank", "method", f"{metric.upper()} at K", "how", "raw point")
    )
    return (
        '<p class="note">Each method at exactly K: linear in measured K between its two settings that bracket K '
        "(a raw point off K by more than 5 % is UNMATCHED and never ranked at K).</p>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    )


def not_run_list(records: Sequence[Record]) -> str:
    """Configurations asked for that did not run (measured floor, reason), and the records' caveats."""
    out = ""
    gone = not_run(records)
    if gone:
        items = "".join(
            f"<li>{esc(r['method'])} K={esc(r.get('budget'))}"
            + (f" (measured floor K={r['floor']:.2f})" if r.get("floor") is not None else "")
            + f": {esc(r.get('reason') or 'no reason recorded')}</li>"
            for r in gone
        )
        out += f'<h3>Did not run</h3><ul class="note">{items}</ul>'
    caveats = [c for r in records if ran(r) for c in r.get("caveats") or []]
    if caveats:
        out += '<h3>Caveats</h3><ul class="note">' + "".join(f"<li>{esc(c)}</li>" for c in caveats) + "</ul>"
    return out


def image_grid(
    budget: Any,
    columns: Sequence[tuple[str, Record | None, dict[int, list[str]]]],
    prompts: Sequence[str],
    video: bool,
    diffs: Sequence[dict[int, list[str]]] = (),
    gain: int = 8,
) -> str:
    """One budget's grid: rows = prompts, columns = (label, record, {prompt index: image paths}); `diffs`
    (aligned with `columns`): per prompt, |image − reference| × `gain` maps shown beside the image."""
    head = '<th class="l">prompt</th>' + "".join(f"<th>{esc(label)}</th>" for label, _, _ in columns)
    indices = sorted({i for _, _, files in columns for i in files})
    rows = []
    for i in indices:
        text = prompts[i] if i < len(prompts) else f"prompt {i}"
        cells = [f'<th class="l">{i}: {esc(text)}</th>']
        for n, (label, rec, files) in enumerate(columns):
            paths = files.get(i, [])
            if not paths:
                cells.append('<td class="na" title="no image saved">n/a</td>')
                continue
            imgs = "".join(
                f'<a href="{url(p)}"><img src="{url(p)}" alt="{esc(label)}, prompt {i}"></a>' for p in paths
            )
            maps = diffs[n].get(i, []) if n < len(diffs) else []
            if maps:
                what = f"|{label} − reference| × {gain}, prompt {i}"
                imgs = (
                    f'<span class="pair"><span>{imgs}</span><span class="diff">'
                    + "".join(
                        f'<a href="{url(p)}"><img src="{url(p)}" alt="{esc(what)}" title="{esc(what)}"></a>'
                        for p in maps
                    )
                    + "</span></span>"
                )
            cls = ' class="frames"' if len(paths) > 1 else ""
            score = _prompt_psnr(rec, i)
            cells.append(f"<td{cls}>{imgs}{score}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    frames = any(len(paths) > 1 for _, _, files in columns for paths in files.values())
    what = (
        "frames of each clip, left to right"
        if frames
        else "middle frame of each clip"
        if video
        else "one image per prompt"
    )
    scale = (
        f"; right of a method's image: |method − reference| × {gain} per pixel (black: equal, white: "
        f"off by {255 / gain:.0f}/255 or more)"
        if any(d for d in diffs)
        else ""
    )
    return (
        f'<div class="scroll"><h4>K = {esc(budget)}</h4><p class="note">{what}; PSNR to the reference '
        f'under each image{esc(scale)}</p><table class="grid"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _prompt_psnr(rec: Record | None, i: int) -> str:
    if rec is None or rec["method"] == "full":
        return ""
    vals = (rec.get("per_prompt") or {}).get("psnr") or []
    v = vals[i] if i < len(vals) else None
    if not isinstance(v, (int, float)):
        why = reason(rec, "psnr")
        return f'<small title="{esc(why or "not measured")}">n/a</small>'
    return f"<small>{v:.1f} dB</small>"


def index_page(runs: Sequence[dict[str, Any]], history: str | None = None) -> str:
    """The runs index: newest first, each linking to `<invocation>/index.html`; `history`: a line linking
    the history page (each gated metric over the runs, with its step changes)."""
    rows = []
    for s in runs:
        rows.append(
            "<tr>"
            + f'<td class="l"><a href="{url(s["dir"])}/index.html">{esc(s["invocation"])}</a></td>'
            + _td(s.get("date") or "–", cls="l")
            + _td(", ".join(s.get("suites") or []) or "–", cls="l")
            + _td(", ".join(s.get("models") or []), cls="l")
            + _td(", ".join(s.get("methods") or []), cls="l")
            + _td(str(s.get("records", 0)))
            + "</tr>"
        )
    head = (
        "".join(f'<th class="l">{h}</th>' for h in ("run", "date", "suite", "models", "methods"))
        + "<th>records</th>"
    )
    body = (
        '<h1>dpcache benchmark runs</h1><p class="meta">One report per run (invocation), newest first; '
        "each is self-contained in its folder.</p>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
    if history:
        body += f'<p class="meta"><a href="history/index.html">History</a>: {esc(history)}</p>'
    if not runs:
        body += missing("no runs in this report folder yet")
    return page("dpcache benchmark runs", body)
