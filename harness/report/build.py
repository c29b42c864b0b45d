"""Static HTML report from the JSON-lines records: `<out>/<run>/index.html` per run, `<out>/index.html`."""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from dpcache.atomic_io import write_text_atomic
from harness.context import contained_path
from harness.report.data import (
    COST_CURVE,
    Record,
    by_model,
    is_video,
    latest_per_config,
    load_records,
    methods_of,
    prompt_spread,
    read_cost_curve,
    tag,
)
from harness.report.html import (
    esc,
    figure,
    image_grid,
    index_page,
    leader_table,
    missing,
    not_run_list,
    page,
    results_table,
)
from harness.report.plots import (
    DIFF_GAIN,
    cost_curve_plot,
    difference_map,
    method_styles,
    plottable,
    schedule_strips,
    speedup_quality_plot,
)

__all__ = ["build_report", "build_run", "load_records", "write_index"]

SUMMARY = "run.json"
MAX_GRID_PROMPTS = 16
_PROMPT_FILE = re.compile(r"prompt(\d+)")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def _date(invocation: str) -> str | None:
    m = re.match(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})", invocation)
    return f"{m[1]}-{m[2]}-{m[3]} {m[4]}:{m[5]}:{m[6]}" if m else None


def _prompt_images(config_dir: Path) -> dict[int, list[Path]]:
    """Saved images of one config by prompt index: `promptNN.png` (an image or a video's middle frame), or
    several files per prompt (`promptNN_fMM.png`: frames, shown as a strip)."""
    out: dict[int, list[Path]] = defaultdict(list)
    if config_dir.is_dir():
        for f in sorted(config_dir.glob("prompt*.png")):
            m = _PROMPT_FILE.match(f.name)
            if m and contained_path(config_dir, f.name):  # a symlink out of the folder is not read
                out[int(m[1])].append(f)
    return dict(out)


def _copy(src: Path, run_dir: Path, rel: str) -> str:
    dst = run_dir / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return rel


def _speed_section(recs: list[Record], run_dir: Path, mdir: str, model: str) -> str:
    png = speedup_quality_plot(recs, run_dir / mdir / "speedup_quality.png", title=model)
    _, left_out = plottable(recs)
    out = "<h3>Speedup vs quality</h3>"
    if png is None:
        return out + missing(
            "nothing to plot: no record other than the reference has both a speedup and a PSNR"
        )
    caption = (
        "One curve per method over its budgets K. Dashed staircase and ringed points: the Pareto front "
        "over all methods (no other point has both a higher speedup and a higher PSNR). The full-step "
        "reference (1×, PSNR capped at 100 dB) is not drawn."
    )
    spread = [r for r in plottable(recs)[0] if prompt_spread(r) is not None]
    if spread:
        n = max(len((r.get("per_prompt") or {}).get("psnr") or []) for r in spread)
        caption += (
            f" Error bars: min–max of the per-prompt PSNR over the {n} evaluation prompts (the point is the "
            "mean); a point without a bar has fewer than two per-prompt values."
        )
    if left_out:
        caption += " Not drawn: " + "; ".join(left_out) + "."
    return out + figure(f"{mdir}/{png.name}", f"{model}: speedup vs PSNR with the Pareto front", esc(caption))


def _schedule_section(recs: list[Record], run_dir: Path, mdir: str, model: str) -> str:
    png = schedule_strips(recs, run_dir / mdir / "schedules.png")
    out = "<h3>Computed steps</h3>"
    if png is None:
        return out + missing(
            "no record of this model has a step schedule or traced computed steps (records written before "
            "the runner traced them, or only full / fewer-steps ran)"
        )
    other = sorted({tag(r) for r in recs if r["method"] != "full" and not r.get("computed")})
    caption = (
        "One strip per method and budget on the T-step axis. A cell in the method's colour ran the "
        "transformer (its last block) on every evaluation prompt and CFG branch; light grey was predicted "
        "from the cache on all of them; in between, the shade is the fraction of prompts × branches that "
        "computed the step (methods that decide online: TeaCache, FORA, …)."
    )
    if other:
        caption += " No strip: " + ", ".join(other) + " (sampled with other than T steps, or not traced)."
    return out + figure(
        f"{mdir}/{png.name}", f"{model}: computed and predicted steps per budget", esc(caption)
    )


def _cost_section(recs: list[Record], model_art: Path | None, run_dir: Path, mdir: str, model: str) -> str:
    out = "<h3>Cost tensor</h3>"
    src = model_art / "cost_tensor.png" if model_art is not None else None
    if src is None or not src.is_file():
        where = f"no cost_tensor.png in {src.parent}" if src is not None else "no images folder for this run"
        return out + missing(
            f"cost-tensor heatmap not available: {where} (saved by `dpcache-bench run` "
            "when DPCache is among the methods)"
        )
    rel = _copy(src, run_dir, f"{mdir}/cost_tensor.png")
    out += figure(
        rel,
        f"{model}: cost tensor heatmap and path cost vs K",
        esc(
            "Left: log10 min_a C[a, i, j], the calibrated cost of predicting steps i+1…j from key "
            "step i. Right: the optimal path cost against the budget K, per solver."
        ),
    )
    return out + _cost_curve(recs, src.with_name(COST_CURVE), run_dir, mdir, model)


def _cost_curve(recs: list[Record], src: Path, run_dir: Path, mdir: str, model: str) -> str:
    """The path cost vs K redrawn from `cost_curve.json` with the K DPCache ran at in this run marked."""
    chosen = sorted(
        {int(r["budget"]) for r in recs if r["method"] == "dpcache" and r.get("budget") is not None}
    )
    curve = read_cost_curve(src) if src.is_file() else None
    if curve is None:
        return missing(
            f"chosen K not marked on the cost curve: no readable {COST_CURVE} beside the heatmap (written by "
            "runs since the report marks it)"
        )
    png = cost_curve_plot(curve, chosen, run_dir / mdir / "cost_curve.png", title=f"{model}: path cost vs K")
    if png is None:
        return missing(f"{COST_CURVE} holds no budget with a positive path cost: nothing to draw")
    opts = ", ".join(f"K={k}" for k in chosen) or "none (DPCache did not run at a budget here)"
    caption = (
        "The optimal path cost against the budget K (per solver, log scale), with the K DPCache ran at in "
        f"this run marked (dotted line, ringed point on the exact solver's curve): {opts}."
    )
    return figure(f"{mdir}/{png.name}", f"{model}: path cost vs K with the chosen K marked", esc(caption))


def _images_section(recs: list[Record], model_art: Path | None, run_dir: Path, mdir: str, model: str) -> str:
    out = "<h3>Per-prompt images</h3>"
    found = (
        {tag(r): _prompt_images(d) if (d := contained_path(model_art, tag(r))) else {} for r in recs}
        if model_art is not None
        else {}
    )
    if not any(found.values()):
        return out + missing(
            "no per-prompt images saved for this run (they are saved by `dpcache-bench run`; "
            "suite runs keep only the JSON lines)"
        )
    copied: dict[str, dict[int, list[str]]] = {}
    for t, files in found.items():
        copied[t] = {
            i: [_copy(f, run_dir, f"{mdir}/img/{_safe(t)}/{f.name}") for f in fs]
            for i, fs in sorted(files.items())[:MAX_GRID_PROMPTS]
        }
    full = next((r for r in recs if r["method"] == "full"), None)
    ref_files = copied.get(tag(full), {}) if full else {}
    ref_col = (f"reference (full, K={full.get('budget') if full else 'T'})", full, ref_files)
    diffs = {
        t: _difference_maps(files, ref_files, run_dir, f"{mdir}/diff/{_safe(t)}")
        for t, files in copied.items()
    }
    budgets = sorted({r.get("budget") for r in recs if r["method"] != "full"}, key=lambda b: -(b or 0))
    prompts = next((r.get("prompts") for r in recs if r.get("prompts")), []) or []
    video = is_video(model)
    grids = []
    for k in budgets:
        cols = [
            (r["method"], r, copied.get(tag(r), {}))
            for r in recs
            if r["method"] != "full" and r.get("budget") == k
        ]
        if any(files for _, _, files in cols):
            maps = [{}, *(diffs.get(tag(r), {}) for _, r, _ in cols)]
            grids.append(image_grid(k, [ref_col, *cols], [str(p) for p in prompts], video, maps, DIFF_GAIN))
    if not grids:
        return out + missing("no images saved for the methods of this run")
    n = max((len(v) for v in found.values()), default=0)
    note = (
        f'<p class="note">Rows: the first {MAX_GRID_PROMPTS} of {n} prompts</p>'
        if n > MAX_GRID_PROMPTS
        else ""
    )
    return out + note + '<div class="grids">' + "".join(grids) + "</div>"


def _difference_maps(
    files: dict[int, list[str]], ref_files: dict[int, list[str]], run_dir: Path, rel_dir: str
) -> dict[int, list[str]]:
    """Per prompt, |image − reference| maps (plots.difference_map) of the copied images, frame by frame;
    a prompt whose reference is missing or differs in size or frame count gets none."""
    out: dict[int, list[str]] = {}
    for i, paths in files.items():
        refs = ref_files.get(i, [])
        if len(refs) != len(paths) or refs == paths:
            continue
        maps = [
            difference_map(run_dir / p, run_dir / r, run_dir / rel_dir / Path(p).name)
            for p, r in zip(paths, refs)
        ]
        if all(m is not None for m in maps):
            out[i] = [f"{rel_dir}/{Path(p).name}" for p in paths]
    return out


def _header(invocation: str, records: list[Record]) -> str:
    first = records[0]
    versions = first.get("versions") or {}
    facts = [
        f"{len(records)} record(s)",
        f"suite {', '.join(sorted({str(r.get('suite')) for r in records}))}",
    ]
    if _date(invocation):
        facts.append(f"started {_date(invocation)}")
    if first.get("git_sha"):
        facts.append(f"git {str(first['git_sha'])[:12]}")
    facts += [f"{k} {versions[k]}" for k in ("torch", "diffusers") if k in versions]
    facts.append(f"device {first.get('device') or '?'}")
    models = by_model(records)
    nav = " ".join(f'<a href="#{esc(_safe(m))}">{esc(m)}</a>' for m in models)
    return (
        f'<p class="meta"><a href="../index.html">← all runs</a></p>'
        f'<h1>dpcache benchmark — run {esc(invocation)}</h1><p class="meta">{esc(" · ".join(facts))}</p>'
        f"<nav>{nav}</nav>"
    )


def build_run(invocation: str, records: list[Record], run_dir: Path, artifacts: Path | None) -> Path:
    """Write `run_dir/index.html` (and its images next to it) for one invocation's records; `artifacts` is
    the run's images folder (`<artifacts>/<model>/<config_tag>/promptNN.png`, `<model>/cost_tensor.png`)."""

    run_dir.mkdir(parents=True, exist_ok=True)
    parts = [_header(invocation, records)]
    for model, all_recs in by_model(records).items():
        recs = latest_per_config(all_recs) or all_recs
        mdir = _safe(model)
        (run_dir / mdir).mkdir(parents=True, exist_ok=True)
        inside = contained_path(artifacts, model) if artifacts is not None else None
        model_art = inside if inside is not None and inside.is_dir() else None
        colours = {m: c for m, (c, _) in method_styles(methods_of(all_recs)).items()}
        r0 = recs[0]
        facts = [
            f"scale {r0.get('scale', '?')}",
            f"T = {r0.get('num_steps', '?')} steps",
            f"{len(r0.get('prompts') or [])} evaluation prompts",
            f"methods {', '.join(methods_of(recs))}",
        ]
        parts.append(
            f'<section id="{esc(mdir)}"><h2>{esc(model)}</h2><p class="meta">{esc(" · ".join(facts))}</p>'
        )
        parts.append(_speed_section(recs, run_dir, mdir, model))
        parts.append(_schedule_section(recs, run_dir, mdir, model))
        parts.append(_cost_section(recs, model_art, run_dir, mdir, model))
        parts.append(_images_section(recs, model_art, run_dir, mdir, model))
        dup = sum(1 for r in all_recs if r.get("status", "ok") == "ok") - len(latest_per_config(all_recs))
        note = (
            f'<p class="note">{dup} repeated record(s) of the same config: plots use the last one.</p>'
            if dup
            else ""
        )
        parts.append(f"<h3>Results</h3>{note}{results_table(all_recs, colours)}")
        parts.append(f"<h3>Ranking at exactly K</h3>{leader_table(recs)}")
        parts.append(f"{not_run_list(all_recs)}</section>")
    index = write_text_atomic(run_dir / "index.html", page(f"dpcache run {invocation}", "\n".join(parts)))
    summary = {
        "invocation": invocation,
        "dir": run_dir.name,
        "date": _date(invocation),
        "records": len(records),
        "models": list(by_model(records)),
        "methods": methods_of(records),
        "suites": sorted({str(r.get("suite")) for r in records if r.get("suite")}),
    }
    write_text_atomic(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return index


def write_index(out_dir: str | Path, history: str | None = None) -> Path:
    """`<out_dir>/index.html` listing every run folder in `out_dir` (those with a run.json), newest first."""

    out = Path(out_dir)
    runs = []
    for f in out.glob(f"*/{SUMMARY}"):
        try:
            runs.append(json.loads(f.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    runs.sort(key=lambda s: str(s.get("invocation")), reverse=True)
    return write_text_atomic(out / "index.html", index_page(runs, history))


def build_report(
    json_path: str | Path,
    out_dir: str | Path,
    *,
    invocation: str | None = None,
    artifacts_root: str | Path | None = None,
) -> Path:
    """Write `<out_dir>/<invocation>/index.html` for every run in the JSON lines (or only `invocation`) and
    `<out_dir>/index.html` listing all runs in `out_dir`; returns the run page when one run was built,
    else the index. Images come from `artifacts_root/<invocation>/<model>/` (default: `<out_dir>/runs`,
    then `<json dir>/bench-artifacts/runs`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_records(json_path)
    if invocation is not None:
        if invocation not in runs:
            raise ValueError(f"no records of invocation {invocation!r} in {json_path}")
        runs = {invocation: runs[invocation]}
    candidates: Sequence[Path] = (
        [Path(artifacts_root)]
        if artifacts_root
        else [out / "runs", Path(json_path).parent / "bench-artifacts" / "runs"]
    )
    pages = []
    for inv, recs in runs.items():
        # `inv` comes from the records: only folders inside the artifacts root are read ("../x" is not)
        art = next((p for c in candidates if (p := contained_path(c, inv)) is not None and p.is_dir()), None)
        pages.append(build_run(inv, recs, out / _safe(inv), art))
    index = write_index(out, write_history(json_path, out / "history"))
    return pages[0] if len(pages) == 1 else index


def write_history(json_path: str | Path, out: Path) -> str | None:
    """The report's history page (`dpcache-bench history`'s, from the same JSON lines): each gated metric
    of each configuration over its runs, steps detected asv-style; the summary line, or None with < 2 runs."""
    from harness.history import build_series, describe, points_from_jsonl, write_html

    series = build_series(points_from_jsonl([Path(json_path)]))
    if not series:
        return None
    write_html(series, out)
    steps = [describe(s, st) for s in series for st in s.steps]
    return f"{len(series)} series over the runs in this file, {len(steps)} step change(s)"
