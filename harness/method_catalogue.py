"""The methods' catalogue (name, families, knob, description, why not elsewhere) as a committed JSON file, so
`dpcache-bench methods` answers without importing torch, diffusers and every baseline; it is generated from
the method registry (`python -m harness.method_catalogue`) and a test keeps the two equal."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CATALOGUE = Path(__file__).with_name("method_catalogue.json")


def build() -> list[dict[str, Any]]:
    """One row per registered method, from the registry itself (imports every baseline)."""
    from baselines.base import FAMILIES
    from harness.methods import registry

    rows = []
    for name, m in registry().items():
        fams = [f for f in FAMILIES if m.supports(f)[0]]
        rows.append(
            {
                "name": name,
                "families": fams,
                "knob": m.knob,
                "description": m.description,
                "unsupported": {f: m.supports(f)[1] for f in FAMILIES if f not in fams},
            }
        )
    return rows


def rows() -> list[dict[str, Any]]:
    """The committed catalogue; built from the registry when the file is missing or unreadable."""
    try:
        return json.loads(CATALOGUE.read_text())
    except (OSError, ValueError):
        return build()


def write(path: Path = CATALOGUE) -> Path:
    from dpcache.atomic_io import write_text_atomic

    write_text_atomic(path, json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else CATALOGUE))
