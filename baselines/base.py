"""The contract every competitor cache registers with: how to apply it at a knob value, and its budget knob."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAMILIES = ("flux", "wan", "hunyuan-video", "dit")


@dataclass(frozen=True)
class Calibration:
    """What a method may learn offline from full-compute runs (TeaCache's polynomial, MagCache's ratios …).

    `runs` calls the pipeline once per calibration prompt at full compute; `out_dir` is where the method
    stores its artifacts (JSON / safetensors, never pickle) keyed by model, so they are reused.
    """

    model_name: str
    num_steps: int
    run_prompts: Callable[[], None]  # runs every calibration prompt once, full compute
    out_dir: Path


@dataclass(frozen=True)
class CacheMethod:
    """One cache method as the harness sees it.

    Args:
        name: stable registry name (`teacache`, `dicache` …).
        families: model families it applies to; `unsupported` says why for the others.
        knob: name of the budget knob (`threshold`, `interval` …) the harness searches so the measured
            compute matches the budget K.
        knob_values: the discrete values of an integer knob (intervals): bisected over the sorted values when
            `knob_monotone`, else searched exhaustively; or None.
        knob_range: (lo, hi) of a continuous knob, bisected; or None. It should reach the method's saturation
            (the knob value beyond which nothing more is skipped), so the least compute it reports is the
            method's own floor, not the range's.
        knob_scale: with `knob_range`: bisect `asinh(knob / knob_scale)` (linear below the scale, logarithmic
            above), so a range up to saturation (1e3) still resolves small thresholds; None = linear.
        knob_monotone: compute is monotone in the knob (False for fixed-pattern methods whose call counter
            makes a larger interval skip fewer steps at some T: their values are searched exhaustively).
        compute_grows_with_knob: True if a larger knob means more full computations (intervals are the
            opposite: a larger interval means fewer).
        never_skip: a knob value at which the method computes every step (output == uncached).
        apply: `apply(pipe, knob, num_steps, artifacts)` attaches the cache to `pipe.transformer`.
        remove: `remove(pipe)` detaches it; the pipeline is uncached again.
        cache_hits: `cache_hits(pipe)` after a call: how many (step, branch) pairs were served from cache.
        calibrate: optional `calibrate(pipe, calibration) -> artifacts dict` (JSON-serialisable).
        unsupported: family -> reason, for families not in `families`.
        origin: where the method comes from (paper, code, diffusers hook) and what is interpretation.
        budget_limit: why the method's compute cannot go below (or above) what its knob range reaches — its
            warm-up, caps, probe or the part of the model it never skips; quoted when a budget is unreachable.
        config_id: the method's fixed settings besides the knob (what changes its compute at a given knob);
            part of the budget-cache key, so change it whenever those settings change.
    """

    name: str
    families: frozenset[str]
    knob: str
    apply: Callable[..., None]
    remove: Callable[[Any], None]
    cache_hits: Callable[[Any], int]
    never_skip: float
    compute_grows_with_knob: bool
    knob_values: Sequence[float] | None = None
    knob_range: tuple[float, float] | None = None
    calibrate: Callable[[Any, Calibration], dict] | None = None
    unsupported: dict[str, str] = field(default_factory=dict)
    origin: str = ""
    knob_scale: float | None = None
    knob_monotone: bool = True
    budget_limit: str = ""
    config_id: str = ""

    def supports(self, family: str) -> tuple[bool, str]:
        if family in self.families:
            return True, ""
        return False, self.unsupported.get(family, f"{self.name} does not support the {family} family")


_REGISTRY: dict[str, CacheMethod] = {}


def register(method: CacheMethod) -> CacheMethod:
    """Add a method to the registry (a module calls this at import)."""
    if method.name in _REGISTRY and _REGISTRY[method.name] is not method:
        raise ValueError(f"a cache method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


_MODULES = (
    "dicache",
    "omnicache",
    "teacache",
    "taylorseer",
    "fora",
    "toca",
    "delta_dit",
    "magcache",
    "firstblockcache",
    "pab",
    "fastercache",
    "seacache",
    "easycache",
    "dbcache",
)


def load_all() -> dict[str, CacheMethod]:
    """Import every baseline module (each registers itself) and return the registry by name."""
    import importlib

    for module in _MODULES:
        try:
            importlib.import_module(f"baselines.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"baselines.{module}":
                raise
    return dict(_REGISTRY)


def get_method(name: str) -> CacheMethod:
    methods = load_all()
    if name not in methods:
        raise KeyError(f"unknown cache method {name!r}; known: {', '.join(sorted(methods))}")
    return methods[name]
