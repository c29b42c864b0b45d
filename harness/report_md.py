"""`reports/BENCHMARKS.md`: the latest tiny-scale results per model as markdown tables, written atomically."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from harness.report_data import (
    Record,
    by_model,
    fmt_metric,
    latest_per_config,
    load_records,
    metric_value,
    write_text_atomic,
)

# (header, metric) columns after method and K
MD_COLUMNS = (
    ("FLOPs ×", "flops_speedup"),
    ("wall ×", "wall_speedup"),
    ("PSNR (dB)", "psnr"),
    ("SSIM", "ssim"),
    ("adherence", "adherence"),
)
DEFAULT_COMMAND = "dpcache-bench report --json-in results.jsonl --benchmarks-md reports/BENCHMARKS.md"


def machine() -> str:
    """CPU model, core count, OS and Python of the machine writing the table."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def latest_runs(
    json_path: str | Path, scale: str | None = "tiny", invocation: str | None = None
) -> dict[str, tuple[str, list[Record]]]:
    """Per model of `scale` (None: any): the latest invocation in file order (or `invocation`) and its
    records, one per config (the last). `dpcache-bench run` invocations (suite `bench`: timed alone) are
    preferred over pytest-suite ones (often timed next to other xdist workers)."""
    latest: dict[tuple[str, bool], tuple[str, list[Record]]] = {}
    for inv, recs in load_records(json_path).items():
        if invocation is not None and inv != invocation:
            continue
        for model, mrecs in by_model(recs).items():
            mine = [r for r in mrecs if scale is None or r.get("scale") == scale]
            if mine:
                bench = all(r.get("suite") == "bench" for r in mine)
                latest[(model, bench)] = (inv, latest_per_config(mine))
    models = sorted({m for m, _ in latest})
    return {m: latest.get((m, True)) or latest[(m, False)] for m in models}


def _cell(r: Record, metric: str, notes: dict[str, str]) -> str:
    text, why = fmt_metric(r, metric)
    if metric == "psnr" and text == "ref":
        return "ref"
    if text == "n/a" and why:
        mark = notes.setdefault(why, f"[{len(notes) + 1}]")
        return f"n/a{mark}"
    return text.replace("–", "n/a")


def model_section(model: str, invocation: str, records: list[Record]) -> str:
    """One model's heading, provenance line and table (unavailable metrics footnoted with their reason)."""
    r0 = records[0]
    versions = r0.get("versions") or {}
    timing = next((r.get("timing") for r in records if r.get("timing", {}).get("repeats")), {}) or {}
    facts = [
        f"T = {r0.get('num_steps', '?')}",
        f"{len(r0.get('prompts') or [])} evaluation prompts",
        f"run `{invocation}` (suite {r0.get('suite', '?')})",
    ]
    if r0.get("git_sha"):
        facts.append(f"git `{str(r0['git_sha'])[:12]}`")
    if "torch" in versions:
        facts.append(f"torch {versions['torch']}")
    facts.append(f"device {r0.get('device') or '?'}")
    if timing.get("repeats"):
        facts.append(
            f"wall-clock: median of {timing['repeats']} timed runs after {timing.get('warmup', 0)} warm-up"
        )
    notes: dict[str, str] = {}
    lines = [
        f"## {model}",
        "",
        "; ".join(facts) + ".",
        "",
        "| method | K | " + " | ".join(h for h, _ in MD_COLUMNS) + " |",
        "|:--|--:|" + "--:|" * len(MD_COLUMNS),
    ]
    for r in records:
        k = r.get("budget")
        measured = metric_value(r, "measured_k")
        k_text = "n/a" if k is None else str(k)
        if measured is not None and k is not None and abs(measured - k) > 0.05 * k:
            k_text += f" (measured {measured:.1f})"
        cells = [str(r["method"]), k_text] + [_cell(r, m, notes) for _, m in MD_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [
            f"{mark} {why}" + ("  " if i < len(notes) - 1 else "")
            for i, (why, mark) in enumerate(notes.items())
        ]
    return "\n".join(lines)


def benchmarks_markdown(
    json_path: str | Path,
    *,
    command: str = DEFAULT_COMMAND,
    scale: str | None = "tiny",
    invocation: str | None = None,
    now: float | None = None,
) -> str:
    """The whole BENCHMARKS.md text; ValueError when the JSON lines hold no record of `scale`."""
    runs = latest_runs(json_path, scale, invocation)
    if not runs:
        what = f"{scale}-scale " if scale else ""
        raise ValueError(
            f"no {what}records in {json_path}" + (f" for invocation {invocation}" if invocation else "")
        )
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now))
    head = [
        "# Benchmarks" + (f" ({scale} scale)" if scale else ""),
        "",
        "<!-- generated: do not edit by hand -->",
        f"Latest {scale + '-scale ' if scale else ''}results per model (its latest `dpcache-bench run`, "
        "else its latest suite run), regenerated with",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Generated {stamp} on {machine()}.",
        "",
        "K: full transformer computations per sample (out of T steps). FLOPs × and wall ×: speedup over the "
        "full-step run (transformer FLOPs; median pipeline wall-clock). PSNR and SSIM: "
        "against the full-step reference on the same prompts and seeds (`ref` = the reference itself). "
        "Adherence: fraction of the prompt's attributes (digit, colour, background) the zoo classifier "
        "finds. n/a: not available, reason in the footnote. Full reports: `dpcache-bench report` "
        "(HTML, `reports/bench/`).",
    ]
    body = [model_section(m, inv, recs) for m, (inv, recs) in runs.items()]
    return "\n".join(head) + "\n\n" + "\n\n".join(body) + "\n"


def write_benchmarks_md(
    json_path: str | Path,
    out: str | Path,
    *,
    command: str = DEFAULT_COMMAND,
    scale: str | None = "tiny",
    invocation: str | None = None,
) -> Path:
    """Regenerate `out` (e.g. reports/BENCHMARKS.md) from the JSON lines, atomically (temp file + rename)."""
    return write_text_atomic(
        out, benchmarks_markdown(json_path, command=command, scale=scale, invocation=invocation)
    )
