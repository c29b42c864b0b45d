"""Report figures (matplotlib, Agg): speedup-vs-quality with the Pareto front, and schedule strips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.report.data import (
    PSNR_IDENTICAL,
    Record,
    computed_summary,
    methods_of,
    num,
    pareto_front,
    prompt_spread,
    shade,
    sort_records,
    tag,
)

PALETTE = (
    "#d62728",
    "#1f77b4",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
PREDICTED = "#e3e3e3"
SPEED_AXES = (("flops_speedup", "FLOPs speedup (×)"), ("wall_speedup", "wall-clock speedup (×, median)"))


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def method_styles(methods: list[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per method, stable for a given set of methods; `full` is black."""
    styles, i = {}, 0
    for m in methods:
        if m == "full":
            styles[m] = ("#000000", "*")
            continue
        styles[m] = (PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)])
        i += 1
    return styles


def plottable(records: list[Record]) -> tuple[list[Record], list[str]]:
    """Records with a FLOPs speedup and a PSNR below the 100 dB cap, and why the others are left out."""
    keep, left_out = [], []
    for r in records:
        psnr, sp = num(r.get("psnr")), num(r.get("flops_speedup"))
        if r["method"] == "full":
            continue
        if psnr is None or sp is None:
            missing = "PSNR" if psnr is None else "FLOPs speedup"
            why = (r.get("unavailable") or {}).get("psnr" if psnr is None else "flops_speedup")
            left_out.append(f"{tag(r)}: no {missing}" + (f" ({why})" if why else ""))
        elif psnr >= PSNR_IDENTICAL:
            left_out.append(f"{tag(r)}: identical to the reference (PSNR capped at 100 dB)")
        else:
            keep.append(r)
    return keep, left_out


def speedup_quality_plot(records: list[Record], png: Path, title: str = "") -> Path | None:
    """Two panels, FLOPs and wall-clock speedup (x) vs PSNR to the full-step reference (y): one curve per
    method over its budgets, each point with an error bar from the lowest to the highest per-prompt PSNR
    (`prompt_spread`), and the Pareto front over all methods (dashed staircase, ringed points). The
    reference itself (PSNR capped at 100 dB) is left out. None when nothing is plottable."""
    recs, _ = plottable(records)
    if not recs:
        return None
    plt = _plt()
    from matplotlib.lines import Line2D

    styles = method_styles(methods_of(records))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, (metric, xlabel) in zip(axes, SPEED_AXES):
        pts = [(num(r.get(metric)), num(r["psnr"]), r) for r in recs]
        pts = [(x, y, r) for x, y, r in pts if x is not None]
        for method in methods_of(r for _, _, r in pts):
            mine = sorted((x, y, r) for x, y, r in pts if r["method"] == method)
            colour, marker = styles[method]
            ax.plot(
                [p[0] for p in mine],
                [p[1] for p in mine],
                color=colour,
                marker=marker,
                lw=1.6,
                ms=7,
                zorder=3,
            )
            for x, y, r in mine:
                if (spread := prompt_spread(r)) is not None:  # min–max over the evaluation prompts
                    lo, hi = spread
                    ax.errorbar(
                        [x],
                        [y],
                        yerr=[[max(y - lo, 0.0)], [max(hi - y, 0.0)]],
                        fmt="none",
                        ecolor=colour,
                        elinewidth=1.0,
                        capsize=3,
                        alpha=0.75,
                        zorder=2.5,
                    )
                ax.annotate(
                    f"K{r.get('budget')}",
                    (x, y),
                    fontsize=8,
                    xytext=(4, 4),
                    textcoords="offset points",
                    color=colour,
                )
        if pts:
            front = [pts[i] for i in pareto_front([(x, y) for x, y, _ in pts])]
            ax.plot(
                [p[0] for p in front],
                [p[1] for p in front],
                color="#111111",
                ls="--",
                lw=1.2,
                drawstyle="steps-pre",
                zorder=2,
            )
            ax.scatter(
                [p[0] for p in front],
                [p[1] for p in front],
                s=190,
                facecolors="none",
                edgecolors="#111111",
                linewidths=1.6,
                zorder=4,
            )
        else:
            ax.text(0.5, 0.5, f"no {metric.replace('_', ' ')} measured", ha="center", transform=ax.transAxes)
        ax.axvline(1.0, color="#999999", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR vs full-step reference (dB)")
    if title:
        fig.suptitle(title)
    handles = [
        Line2D([], [], color=styles[m][0], marker=styles[m][1], lw=1.6, ms=7, label=m)
        for m in methods_of(recs)
    ]
    handles.append(
        Line2D([], [], color="#111111", ls="--", marker="o", mfc="none", ms=11, label="Pareto front")
    )
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=10, frameon=False)
    fig.tight_layout()
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return png


def schedule_records(records: list[Record]) -> list[Record]:
    """Records with computed steps on the T-step axis (fixed schedules and every traced method; not `full`),
    largest budget first."""
    return [r for r in sort_records(records) if r.get("computed") and r["method"] != "full"]


def schedule_strips(records: list[Record], png: Path) -> Path | None:
    """One strip per (method, budget): T cells on a step-index axis, each shaded from light grey (no pass
    computed the step: predicted from the cache) to the method's colour (every evaluation prompt and CFG
    branch computed it). Fixed schedules are all-or-nothing; online methods show the fraction. None when
    no record has computed steps."""
    rows = schedule_records(records)
    if not rows:
        return None
    plt = _plt()
    import numpy as np
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    styles = method_styles(methods_of(records))
    t = max(len(r["computed"]) for r in rows)
    img = np.ones((len(rows), t, 3))
    for y, r in enumerate(rows):
        for i, f in enumerate(r["computed"]):
            img[y, i] = to_rgb(shade(styles[r["method"]][0], f, PREDICTED))
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(rows) + 1.5))
    ax.imshow(img, aspect="auto", interpolation="nearest", extent=(-0.5, t - 0.5, len(rows) - 0.5, -0.5))
    ax.set_xticks(np.arange(-0.5, t, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, len(rows), 1), minor=True)
    ax.grid(which="minor", color="white", lw=1.0)
    ax.tick_params(which="minor", length=0)
    ax.set_xticks(range(0, t, 5 if t > 12 else 1))
    labels = [f"{r['method']} K={r.get('budget')}  ({computed_summary(r)} computed)" for r in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=9)
    ax.set_xlabel(
        "step index (0 = first, noisiest); shade = fraction of prompts × CFG branches that computed it"
    )
    ax.set_xlim(-0.5, t - 0.5)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    legend = [Patch(color=styles[m][0], label=f"computed ({m})") for m in methods_of(rows)]
    legend.append(Patch(color=PREDICTED, label="predicted (cache)"))
    ax.legend(
        handles=legend,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=min(len(legend), 6),
        fontsize=9,
        frameon=False,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return png


DIFF_GAIN = 8  # difference maps: |method − reference| × 8, so white is a difference of 32/255 or more


def difference_map(image: Path, reference: Path, out: Path, gain: int = DIFF_GAIN) -> Path | None:
    """`out`: |image − reference| per pixel (largest over the colour channels) × `gain`, as a greyscale
    PNG (black: equal; white: off by 255/gain or more). None when the two sizes differ or a file is
    unreadable."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(image) as a, Image.open(reference) as b:
            x = np.asarray(a.convert("RGB"), dtype=np.int16)
            y = np.asarray(b.convert("RGB"), dtype=np.int16)
    except OSError:
        return None
    if x.shape != y.shape:
        return None
    d = np.clip(np.abs(x - y).max(axis=-1) * gain, 0, 255).astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(d).save(out)  # 2-D uint8: greyscale
    return out


def cost_curve_plot(
    curve: dict[str, list[tuple[int, float]]], chosen: list[int], png: Path, title: str = ""
) -> Path | None:
    """DPCache's optimal path cost against K (log scale, one line per solver) with each chosen K (the budgets
    DPCache ran at in this run) marked: a dotted vertical line and a ringed point on the exact solver's
    curve, labelled with K and its path cost. None when the curve is empty."""
    pts = {s: [(k, c) for k, c in p if c > 0] for s, p in curve.items()}
    if not any(pts.values()):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for s, p in pts.items():
        ax.plot([k for k, _ in p], [c for _, c in p], marker=".", lw=1.4, label=s)
    main = dict(pts.get("exact") or next(p for p in pts.values() if p))
    for k in sorted(set(chosen)):
        ax.axvline(k, color="#d62728", ls=":", lw=1.2, zorder=1)
        if k in main:
            ax.scatter(
                [k], [main[k]], s=140, facecolors="none", edgecolors="#d62728", linewidths=1.8, zorder=4
            )
            ax.annotate(
                f"chosen K={k}\n{main[k]:.3g}",
                (k, main[k]),
                xytext=(6, 8),
                textcoords="offset points",
                fontsize=8,
                color="#d62728",
            )
    ax.set(xlabel="budget K (full computations)", ylabel="optimal path cost", yscale="log")
    ax.set_title(title or "path cost vs K", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return png
