"""`reports/BENCHMARKS.md`: the latest tiny-scale results per model as markdown tables, written atomically."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from dpcache.atomic_io import write_text_atomic
from harness.methods import display_name
from harness.report.data import (
    Record,
    by_model,
    fmt_metric,
    latest_per_config,
    leaders,
    load_records,
    metric_value,
    not_run,
    raw_point,
    unmatched,
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
    records (all of them: `model_section` keeps the last per config and lists those that did not run).
    `dpcache-bench run` invocations (suite `bench`: timed alone) are
    preferred over pytest-suite ones (often timed next to other xdist workers)."""
    latest: dict[tuple[str, bool], tuple[str, list[Record]]] = {}
    for inv, recs in load_records(json_path).items():
        if invocation is not None and inv != invocation:
            continue
        for model, mrecs in by_model(recs).items():
            mine = [r for r in mrecs if scale is None or r.get("scale") == scale]
            if mine:
                bench = all(r.get("suite") == "bench" for r in mine)
                latest[(model, bench)] = (inv, mine)
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


def _k_cell(r: Record) -> str:
    k, measured = r.get("budget"), metric_value(r, "measured_k")
    text = "n/a" if k is None else str(k)
    if unmatched(r):
        return text + f" (measured {measured:.1f}: UNMATCHED)"
    if measured is not None and k is not None and r["method"] != "full":
        text += f" (measured {measured:.1f})"
    return text


def leader_lines(records: list[Record], metric: str = "psnr") -> list[str]:
    """The ranking: each method's quality at exactly K (interpolated in measured K) beside its raw point."""
    table = leaders(records, metric)
    if not table:
        return []
    lines = [
        f"**Ranking at exactly K** ({metric.upper()}, linear in measured K between the two settings that "
        "bracket K; the raw point beside it, UNMATCHED when its measured K is off by more than 5 %):",
        "",
        "| K | rank | method | at K | how | raw point |",
        "|--:|--:|:--|--:|:--|:--|",
    ]
    for k, rows in table.items():
        for n, row in enumerate(rows, start=1):
            raw, at = row["raw"], row["value"]
            raw_text = raw_point(raw, metric)
            rank = str(n) if at is not None else "–"
            value = f"{at:.2f}" if at is not None else "n/a"
            lines.append(f"| {k} | {rank} | {row['method']} | {value} | {row['how']} | {raw_text} |")
    return lines


def not_run_lines(records: list[Record]) -> list[str]:
    """Every configuration asked for that did not run, with the measured floor and the reason; caveats."""
    lines = []
    gone = not_run(records)
    if gone:
        lines += ["", "**Did not run** (asked for, not measured):", ""]
        for r in gone:
            floor = f" (measured floor K={r['floor']:.2f})" if r.get("floor") is not None else ""
            lines.append(
                f"- {r['method']} K={r.get('budget')}{floor}: {r.get('reason') or 'no reason recorded'}"
            )
    caveats = [c for r in latest_per_config(records) for c in r.get("caveats") or []]
    if caveats:
        lines += ["", "**Caveats:**", ""] + [f"- {c}" for c in caveats]
    return lines


def model_section(model: str, invocation: str, all_records: list[Record]) -> str:
    """One model's heading, provenance line and table (unavailable metrics footnoted with their reason), the
    ranking at exactly K, the configurations that did not run and the caveats."""
    records = latest_per_config(all_records) or all_records
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
    for r in latest_per_config(all_records):
        cells = [display_name(str(r["method"])), _k_cell(r)] + [_cell(r, m, notes) for _, m in MD_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [
            f"{mark} {why}" + ("  " if i < len(notes) - 1 else "")
            for i, (why, mark) in enumerate(notes.items())
        ]
    ranking = leader_lines(latest_per_config(all_records))
    if ranking:
        lines += ["", *ranking]
    lines += not_run_lines(all_records)
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
        "finds. K (measured …): full computations measured on the evaluation prompts; UNMATCHED: more than "
        "5 % off K, so that row is not a result at K (the ranking interpolates each method to exactly K). "
        "n/a: not available, reason in the footnote. Full reports: `dpcache-bench report` "
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
