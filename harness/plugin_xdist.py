"""pytest-xdist glue for the plugin: `--dist loadgroup` groups again under pytest >= 9.2."""

from __future__ import annotations

import pytest


def regroup_for_xdist(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make `--dist loadgroup` group again under pytest ≥ 9.2: xdist 3.8 appends `@<group>` to
    `item._nodeid`, which pytest 9.2 no longer reads (node ids live in `item._id`), so every group was
    silently scattered over the workers (each then loaded and sampled the same model again)."""
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import coerce_node_id
    except ImportError:  # older pytest: xdist's own suffix works
        return
    for item in items:
        names = sorted(
            {
                str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                for m in item.iter_markers("xdist_group")
            }
        )
        if names and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")
