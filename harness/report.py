"""Static HTML report from the JSON-lines records: one page per run (speedup-vs-quality plot, schedule strips,
cost-tensor heatmap, per-prompt image grids, a table) plus an index.html — matplotlib PNGs, no server."""

from __future__ import annotations

import html
import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

COLUMNS = ("method", "budget", "flops_speedup", "wall_speedup", "psnr", "ssim", "lpips", "adherence")


def load_records(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Records of a JSON-lines file grouped by invocation (file order kept; unreadable lines skipped)."""
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            runs[str(rec.get("invocation", "unknown"))].append(rec)
    return dict(runs)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def speedup_quality_plot(records: list[dict[str, Any]], png: Path) -> Path:
    """FLOPs speedup (x) vs PSNR (y), one line per method (the full-step reference, PSNR capped at 100 dB,
    is left out so the methods' differences stay visible)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    by_method: dict[str, list[tuple[float, float, Any]]] = defaultdict(list)
    for r in records:
        if r.get("flops_speedup") is not None and r.get("psnr") is not None and r["psnr"] < 99.99:
            by_method[r["method"]].append((r["flops_speedup"], r["psnr"], r.get("budget")))
    for method, pts in sorted(by_method.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        for x, y, k in pts:
            ax.annotate(f"K{k}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="FLOPs speedup (x)", ylabel="PSNR vs full-step reference (dB)", title=records[0]["model"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def schedule_strips(records: list[dict[str, Any]], png: Path) -> Path | None:
    """One step strip per record with a schedule: filled cells are full-compute steps."""
    rows = [r for r in records if r.get("schedule")]
    if not rows:
        return None
    plt = _plt()
    t = max(r["num_steps"] for r in rows)
    fig, ax = plt.subplots(figsize=(max(5.0, t * 0.14), 0.35 * len(rows) + 0.8))
    for y, r in enumerate(rows):
        keys = set(r["schedule"])
        ax.bar(range(t), [0.8] * t, bottom=y - 0.4, width=0.9,
               color=["#1f77b4" if i in keys else "#e6e6e6" for i in range(t)])
    ax.set_yticks(range(len(rows)), [r["config_tag"] for r in rows], fontsize=7)
    ax.set_xlabel("step (0 = noisiest)")
    ax.set_xlim(-0.5, t - 0.5)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def image_grid(records: list[dict[str, Any]], model_dir: Path, png: Path) -> Path | None:
    """Rows = configs, columns = prompts, from the per-prompt PNGs the runner saved."""
    from PIL import Image

    rows = []
    for r in records:
        files = sorted((model_dir / r["config_tag"]).glob("prompt*.png"))
        if files:
            rows.append([Image.open(f).convert("RGB") for f in files])
    if not rows:
        return None
    h = max(im.height for row in rows for im in row)
    w = max(im.width for row in rows for im in row)
    scale = max(1, 96 // max(h, 1))
    cols = max(len(row) for row in rows)
    grid = Image.new("RGB", (cols * w * scale, len(rows) * h * scale), "white")
    for y, row in enumerate(rows):
        for x, im in enumerate(row):
            grid.paste(im.resize((w * scale, h * scale), Image.NEAREST), (x * w * scale, y * h * scale))
    grid.save(png)
    return png


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape("-" if v is None else str(v))


def _table(records: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{c}</th>" for c in (*COLUMNS, "cache hits", "schedule"))
    body = []
    for r in records:
        hits = r.get("cache_hits")
        hits = sum(hits) if isinstance(hits, list) else hits
        cells = [_cell(r.get(c)) for c in COLUMNS] + [_cell(hits), _cell(r.get("schedule"))]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _run_page(invocation: str, records: list[dict[str, Any]], out: Path, artifacts: Path | None) -> Path:
    parts = [f"<h1>dpcache benchmark run {html.escape(invocation)}</h1>"]
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_model[r["model"]].append(r)
    img_dir = out / invocation
    img_dir.mkdir(parents=True, exist_ok=True)
    for model, recs in by_model.items():
        parts.append(f"<h2>{html.escape(model)}</h2>")
        sp = speedup_quality_plot(recs, img_dir / f"{model}-speedup-quality.png")
        parts.append(f'<img src="{invocation}/{sp.name}" alt="speedup vs quality">')
        strips = schedule_strips(recs, img_dir / f"{model}-schedules.png")
        if strips:
            parts.append(f'<h3>schedules</h3><img src="{invocation}/{strips.name}" alt="schedules">')
        model_dir = artifacts / invocation / model if artifacts else None
        if model_dir is not None and (model_dir / "cost_tensor.png").is_file():
            shutil.copyfile(model_dir / "cost_tensor.png", img_dir / f"{model}-cost-tensor.png")
            parts.append(f'<h3>cost tensor</h3><img src="{invocation}/{model}-cost-tensor.png" alt="cost tensor">')
        grid = image_grid(recs, model_dir, img_dir / f"{model}-images.png") if model_dir else None
        if grid:
            tags = ", ".join(html.escape(r["config_tag"]) for r in recs if (model_dir / r["config_tag"]).is_dir())
            parts.append(f'<h3>per-prompt images</h3><p>rows: {tags}</p><img src="{invocation}/{grid.name}">')
        parts.append(_table(recs))
        unavailable = sorted({f"{k}: {v}" for r in recs for k, v in (r.get("unavailable") or {}).items()})
        if unavailable:
            parts.append("<h3>unavailable metrics</h3><ul>" + "".join(f"<li>{html.escape(u)}</li>" for u in unavailable) + "</ul>")
    page = out / f"{invocation}.html"
    page.write_text(_html(f"run {invocation}", "\n".join(parts)))
    return page


def _html(title: str, body: str) -> str:
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{body}</body></html>\n"


def build_report(
    json_path: str | Path,
    out_dir: str | Path,
    *,
    invocation: str | None = None,
    artifacts_root: str | Path | None = None,
) -> Path:
    """Write `<out_dir>/<invocation>.html` per run (or only `invocation`) and `<out_dir>/index.html`.

    Images come from `artifacts_root/<invocation>/<model>/` (default: `<out_dir>/runs`, then
    `<json dir>/bench-artifacts/runs`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_records(json_path)
    if invocation is not None:
        if invocation not in runs:
            raise ValueError(f"no records of invocation {invocation!r} in {json_path}")
        runs = {invocation: runs[invocation]}
    candidates = [Path(artifacts_root)] if artifacts_root else [out / "runs", Path(json_path).parent / "bench-artifacts" / "runs"]
    pages = []
    for inv, recs in runs.items():
        art = next((c for c in candidates if (c / inv).is_dir()), None)
        pages.append((inv, recs, _run_page(inv, recs, out, art)))
    items = "".join(
        f'<li><a href="{p.name}">{html.escape(inv)}</a>: {len(recs)} record(s), models '
        f"{html.escape(', '.join(sorted({r['model'] for r in recs})))}</li>"
        for inv, recs, p in pages
    )
    index = out / "index.html"
    index.write_text(_html("dpcache benchmark", f"<h1>dpcache benchmark runs</h1><ul>{items}</ul>"))
    return index
