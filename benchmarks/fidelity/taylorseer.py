"""TaylorSeer / FORA: our ports next to Shenyi-Z/TaylorSeer's diffusers FLUX forwards (TaylorSeers-Diffusers)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from contextlib import contextmanager
from functools import partial

from .common import AuthorsSource, Comparison, Model, materialize, psnr, traced

REPO = "Shenyi-Z/TaylorSeer"
SUBDIR = "TaylorSeers-Diffusers/taylorseer_flux"
MODELS = ("flux-tiny",)
KNOB = "interval"
VALUES = (3.0, 4.0)
# (our method, authors' max_order, authors' first_enhance): TaylorSeer as the paper's FLUX runs (O = 2, the
# codebase's first_enhance 3); FORA as TaylorSeer's order 0 with FORA's warm-up of one step (the FLUX codebase's
# `cal_type` gives FORA only step 0: "FORA: Uniform")
MODES = (("taylorseer", 2, 3), ("fora", 0, 1))


class _Absent(types.ModuleType):
    """Stands in for a package the authors' files import but this check never calls (xfuser: their multi-GPU
    path); any attribute is a placeholder."""

    def __getattr__(self, name: str):
        if name.startswith(
            "__"
        ):  # no __file__, __path__ …: tools that walk sys.modules (Hypothesis) read them
            raise AttributeError(name)
        return type(name, (), {})


def _load(src: AuthorsSource) -> types.SimpleNamespace:
    root = materialize(src, SUBDIR)
    if "xfuser" not in sys.modules and importlib.util.find_spec("xfuser") is None:
        for name in ("xfuser", "xfuser.config", "xfuser.core", "xfuser.core.distributed"):
            sys.modules[name] = _Absent(name)
        sys.modules["xfuser.core.distributed.parallel_state"] = _Absent(
            "xfuser.core.distributed.parallel_state"
        )
    sys.path.insert(0, str(root))
    forwards = importlib.import_module("forwards")
    cache_init = importlib.import_module("cache_functions").cache_init
    return types.SimpleNamespace(
        flux=forwards.taylorseer_flux_forward,
        double=forwards.taylorseer_flux_double_block_forward,
        single=forwards.taylorseer_flux_single_block_forward,
        cache_init=cache_init,
    )


@contextmanager
def _authors(model: Model, fns, steps: int, interval: int, order: int, first: int):
    """Their forwards bound to the transformer and its blocks (as their script sets them on the classes), one
    `joint_attention_kwargs` state per CFG branch (their state lives there), mode parameters set after their
    `cache_init` (its mode is hard-coded 'Taylor')."""
    tr = model.pipe.transformer
    tr.num_steps = steps
    states = []
    for _ in range(model.branches):
        cache_dic, current = fns.cache_init(tr)
        cache_dic.update(taylor_cache=True, max_order=order, first_enhance=first, fresh_threshold=interval)
        states.append({"cache_dic": cache_dic, "current": current})
    calls = [0]

    def forward(*args, **kwargs):
        kwargs["joint_attention_kwargs"] = states[calls[0] % len(states)]
        calls[0] += 1
        return fns.flux(tr, *args, **kwargs)

    tr.forward = forward
    for b in tr.transformer_blocks:
        b.forward = types.MethodType(fns.double, b)
    for b in tr.single_transformer_blocks:
        b.forward = types.MethodType(fns.single, b)
    try:
        yield
    finally:
        for m in [tr, *tr.transformer_blocks, *tr.single_transformer_blocks]:
            del m.forward
        del tr.num_steps


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Each mode at each interval: our registered method at that knob vs the authors' code."""
    from baselines.base import get_method

    fns = _load(src)
    commit = src.commit()
    rows = []
    for method_name, order, first in MODES:
        method = get_method(method_name)
        for value in values:
            for prompt, seed in zip(prompts, seeds, strict=True):
                sample = partial(model.sample, prompt, seed, steps)
                method.apply(model.pipe, value, steps, None)
                try:
                    a, ta = traced(model, sample)
                finally:
                    method.remove(model.pipe)
                with _authors(model, fns, steps, int(value), order, first):
                    b, tb = traced(model, sample)
                n = model.branches
                rows.append(
                    Comparison(
                        method_name,
                        model.name,
                        REPO,
                        commit,
                        steps,
                        KNOB,
                        value,
                        str(prompt),
                        seed,
                        float((a - b).abs().max()),
                        psnr(a, b),
                        ta.steps(n),
                        tb.steps(n),
                        note=f"authors: Taylor mode, max_order {order}, first_enhance {first}",
                    )
                )
    return rows
