"""The contract every competitor cache follows: how to apply it at a knob value, and the catalogue of them all."""

from __future__ import annotations

from collections.abc import Callable
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
            compute matches the budget K (how it searches is the harness's: `harness.knob_search`).
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
    calibrate: Callable[[Any, Calibration], dict] | None = None
    unsupported: dict[str, str] = field(default_factory=dict)
    origin: str = ""
    budget_limit: str = ""
    config_id: str = ""

    def supports(self, family: str) -> tuple[bool, str]:
        if family in self.families:
            return True, ""
        return False, self.unsupported.get(family, f"{self.name} does not support the {family} family")


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
    """Every baseline module's `METHOD`, by name (a module whose file is absent is left out). The one registry
    of methods the harness runs is `harness.methods.registry()`, built from this catalogue."""
    import importlib

    methods: dict[str, CacheMethod] = {}
    for module in _MODULES:
        try:
            method = importlib.import_module(f"baselines.{module}").METHOD
        except ModuleNotFoundError as exc:
            if exc.name != f"baselines.{module}":
                raise
            continue
        if methods.setdefault(method.name, method) is not method:
            raise ValueError(f"two baseline modules define a cache method named {method.name!r}")
    return methods


def get_method(name: str) -> CacheMethod:
    methods = load_all()
    if name not in methods:
        raise KeyError(f"unknown cache method {name!r}; known: {', '.join(sorted(methods))}")
    return methods[name]
