"""ToCa: our port (baselines/toca.py) next to Shenyi-Z/TaylorSeer's ToCa mode of its BFL FLUX model (bfl_flux)."""

from __future__ import annotations

from . import bfl_flux
from .bfl_flux import Side, compare_mode
from .common import AuthorsSource, Comparison, Model

REPO = bfl_flux.REPO
MODELS = ("flux-tiny",)
KNOB = "interval"
# 1: every step full on both sides (the adapter's own check, uncached); 3, 5: ToCa steps with partial refresh
VALUES = (1.0, 3.0, 5.0)
NOTE = "cache_type 'attention', fresh_ratio 0.1, 'ToCa' fresh-ratio schedule, first_enhance 3; fresh_threshold = interval"


def _ours() -> Side:
    from baselines.base import get_method

    m = get_method("toca")
    return Side("registered toca", lambda pipe, v, t: m.apply(pipe, v, t, None), m.remove)


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Our registered ToCa at each interval vs the authors' 'ToCa' mode with fresh_threshold = interval."""
    return compare_mode(
        src, model, steps, values, prompts, seeds, method="toca", mode="ToCa", sides=[_ours()], note=NOTE
    )
