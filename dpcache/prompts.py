"""Calibration prompt sets: DrawBench, PartiPrompts or a file, with the released sampling rules."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import numpy as np

_BUNDLED = {"drawbench": ("DrawBench.csv", ",", "Prompts"), "parti": ("PartiPrompts.tsv", "\t", "Prompt")}


def _read_table(text: str, delimiter: str, column: str) -> list[str]:
    rows = csv.DictReader(text.splitlines(), delimiter=delimiter)
    return [row[column] for row in rows if row.get(column)]


def load_prompts(source: str, rule: str = "fix", size: int | None = 10) -> list[str]:
    """Prompts for calibration.

    Args:
        source: "drawbench", "parti", or a path to a text file (one prompt per line) or a CSV/TSV with a
            `Prompts`/`Prompt` column.
        rule: "fix" takes every (n // size)-th prompt, as released (DrawBench, 10 → every 20th);
            "random" draws `size` prompts without replacement with seed 42.
        size: how many prompts; None or 0 takes them all.
    """
    if source in _BUNDLED:
        name, delimiter, column = _BUNDLED[source]
        text = resources.files("dpcache").joinpath("data", "prompts", name).read_text(encoding="utf-8")
        prompts = _read_table(text, delimiter, column)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {source} (or use 'drawbench' / 'parti')")
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".csv", ".tsv"):
            delimiter = "\t" if path.suffix == ".tsv" else ","
            header = text.splitlines()[0].split(delimiter) if text else []
            column = next((c for c in ("Prompts", "Prompt", "prompt") if c in header), None)
            if column is None:
                raise ValueError(f"{source}: no 'Prompts' or 'Prompt' column in {header}")
            prompts = _read_table(text, delimiter, column)
        else:
            prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"no prompts in {source}")
    if not size or size >= len(prompts):
        return prompts
    if rule == "fix":
        return prompts[:: len(prompts) // size][:size]
    if rule == "random":
        idx = np.random.RandomState(42).choice(len(prompts), size=size, replace=False)
        return [prompts[i] for i in idx]
    raise ValueError(f"unknown sampling rule {rule!r}: use 'fix' or 'random'")


def calibration_seeds(n: int, base: int = 42) -> list[int]:
    """The released seeds: 42 + i for the i-th calibration prompt."""
    return [base + i for i in range(n)]
