"""Config tags: `<method>-K<budget>-<knobs>` plus `-T<steps>` / `-N<prompts>` off the defaults; and parsing."""

from __future__ import annotations

import re
from typing import Any

_TAG = re.compile(r"^(?P<method>.+?)-K(?P<k>\d+)(?P<rest>(?:-[^-]+)*)$")


def _fmt_knob(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, (list, tuple)):
        return "_".join(_fmt_knob(v) for v in value)
    return str(value)


def config_tag(method: str, budget: int | None, **knobs: Any) -> str:
    """Deterministic tag: method, `K<budget>`, then knobs sorted by name as `<name><value>`
    (e.g. `config_tag("dpcache", 13, M=3, O=2) == "dpcache-K13-M3-O2"`); None-valued knobs are left out."""
    parts = [method] + ([f"K{int(budget)}"] if budget is not None else [])
    parts += [f"{k}{_fmt_knob(v)}" for k, v in sorted(knobs.items()) if v is not None]
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))


def variant_tag(tag: str, steps: int, default_steps: int, prompts: int, default_prompts: int) -> str:
    """`tag` with `-T<steps>` and `-N<prompts>` appended where they differ from the suite's defaults, so a
    `--steps 20` or `--num-prompts 1` result never shares a tag (and an expectation) with the default run."""
    return (
        tag
        + (f"-T{steps}" if steps != default_steps else "")
        + (f"-N{prompts}" if prompts != default_prompts else "")
    )


def parse_tag(tag: str) -> tuple[str, int | None, bool]:
    """(method, budget K, is a `-T`/`-N` variant) of a config tag; (tag, None, False) when it has no `K`."""
    m = _TAG.match(tag)
    if not m:
        return tag, None, False
    rest = m["rest"].split("-")[1:]
    return m["method"], int(m["k"]), any(re.fullmatch(r"[TN]\d+", p) for p in rest)
