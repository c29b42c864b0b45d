"""Δ-DiT: our port (baselines/delta_dit.py) next to the Δ-DiT re-implementation in Shenyi-Z/TaylorSeer's BFL FLUX
model (the paper's code is unreleased; bfl_flux drives the re-implementation with our pipeline)."""

from __future__ import annotations

from . import bfl_flux
from .bfl_flux import Side, compare_mode
from .common import AuthorsSource, Comparison, Model

REPO = bfl_flux.REPO
MODELS = ("flux-tiny",)
KNOB = "interval"
# 1: every step full; 2: full / Δ-cache alternating (the re-implementation has no other step type at 2);
# 3, 4: its "Delta" mode also has reuse steps (see baselines/delta_dit.py, `reimpl_reuse_steps`)
VALUES = (1.0, 2.0, 3.0, 4.0)
NOTE = "re-implementation (paper code unreleased): Δ of the single-stream stack, first_enhance 1; fresh_threshold = interval"


def _side(label: str, deliberate: str = "", **fields) -> Side:
    from baselines.delta_dit import DeltaDiTConfig, apply_delta_dit, remove_delta_dit

    def apply(pipe, value: float, steps: int) -> None:
        apply_delta_dit(pipe, DeltaDiTConfig(interval=int(value), num_inference_steps=steps, **fields))

    return Side(label, apply, remove_delta_dit, deliberate)


def sides() -> list[Side]:
    """Our registered Δ-DiT (the paper's stage switch), without the switch, and set to the re-implementation."""
    return [
        _side(
            "registered delta-dit (stage switch at T/2)",
            "the paper's stage switch: from T/2 on the front (double-stream) span is cached instead",
        ),
        _side(
            "stage_switch=False",
            "the re-implementation's reuse steps (every 2nd cached step after a full one, intervals >= 3) not taken",
            stage_switch=False,
        ),
        _side("stage_switch=False, reimpl_reuse_steps=True", stage_switch=False, reimpl_reuse_steps=True),
    ]


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Each of our sides at each interval vs the re-implementation's 'Delta' mode with fresh_threshold = interval."""
    return compare_mode(
        src, model, steps, values, prompts, seeds, method="delta-dit", mode="Delta", sides=sides(), note=NOTE
    )
