"""TaylorSeer through diffusers' own hook (fixed interval, Taylor forecast of attention and MLP outputs), with the bench knob."""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

from dpcache.diffusers_internals import TAYLORSEER_HOOK

from . import _wrapped
from .base import FAMILIES, CacheMethod

# What TaylorSeer forecasts, as diffusers `cache_identifiers` / `skip_predict_identifiers` (re.fullmatch on module
# names). The authors (`Shenyi-Z/TaylorSeer`, TaylorSeer-FLUX) forecast every block's attention and MLP outputs —
# double-stream `img_attn`, `img_mlp`, `txt_attn`, `txt_mlp`; single-stream the fused `linear2` output ("total") —
# and recompute only the cheap modulation on forecast steps. diffusers' default patterns cover attention only (and,
# matched with fullmatch, miss `attn1` / `attn2`: Wan's blocks, DiT's BasicTransformerBlock), which leaves the MLPs —
# most of a tiny FLUX step — running at every step. Here:
# * forecast (active): each block's attention (`attn`, `attn1`, `attn2`) and MLPs (`ff`, `ff_context`, Wan's
#   `ffn`) in the double-stream / single-stack blocks, and the single-stream blocks' `proj_out` (= "total");
# * inactive (diffusers' "skip" mode: computed on full steps, zeros of the recorded shape on forecast steps): the
#   single-stream blocks' `attn` and `proj_mlp`, whose outputs only feed the forecast `proj_out`.
FORECAST_IDENTIFIERS = (
    r"^blocks\.\d+\.(attn\d?|ffn|ff)",
    r"^transformer_blocks\.\d+\.(attn\d?|ff|ff_context)",
    r"^single_transformer_blocks\.\d+\.proj_out",
)
INACTIVE_IDENTIFIERS = (r"^single_transformer_blocks\.\d+\.(attn|proj_mlp)",)
# diffusers' attention-only patterns with `attn1`/`attn2` (the bench's former setting; `forecast_mlp=False`).
ATTENTION_IDENTIFIERS = (
    r"^blocks.*attn\d?",
    r"^transformer_blocks.*attn\d?",
    r"^single_transformer_blocks.*attn\d?",
)


@dataclass
class TaylorSeerBenchConfig:
    """TaylorSeer (Liu et al., arXiv 2503.06923) as benchmarked: diffusers' `TaylorSeerCacheConfig`.

    Rule: the authors' (`Shenyi-Z/TaylorSeer` `cal_type`, TaylorSeer mode): the first `first_enhance` steps
    compute (here `disable_cache_before_step`, 3 as theirs), then every `cache_interval`-th step after the last of
    them; a computed step before step `first_enhance − 1` starts a new expansion (order 0 only, as their
    `derivative_approximation`). At the other steps every hooked module returns its order-`max_order` Taylor
    forecast (divided differences over the last computed steps) instead of running — diffusers' hook, whose own
    step rule (`(step − before − 1) % N == 0`, higher orders from step 1 on) is replaced by the authors'.

    Fidelity (benchmarks/fidelity/taylorseer.py, `reports/competitors.md`): against Shenyi-Z/TaylorSeer @ 288776d,
    its diffusers FLUX forwards (`TaylorSeers-Diffusers/taylorseer_flux`, loaded at run time) on flux-tiny, T = 10,
    N = 3 and 4, max_order 2: identical images (max |ours − theirs| = 0) and computed steps. With diffusers' own
    step rule (`authors_schedule=False`, the former port) the computed steps differ ([0, 1, 2, 4, 7] vs theirs
    [0, 1, 2, 5, 8] at N = 3) and the images by up to 0.47. Kept from diffusers: the hook machinery, float32
    factors; the module patterns follow the authors' forwards (attention and MLP outputs, single-stream "total").
    Wan (benchmarks/fidelity/taylorseer_wan.py): against `TaylorSeer-Wan2.1` @ 288776d, its `wan_forward` /
    `wan_attention_forward` bound to the WanModel of their `wan` copy carrying wan-tiny's weights and driven by
    our WanPipeline (`wan_official.py`; their `@torch.compile` on the forecast helper run eagerly), T = 50,
    N = 3 / 5, 2 prompts: at equal settings identical computed steps and max |ours − theirs| ≤ 9.2e-6 on frames in
    [0, 1] (their code at our O = 2 / first_enhance 3, and our port at their O = 1 / first_enhance 1; uncached
    floor 2.3e-6) — self-attention, cross-attention and FFN outputs forecast before their gates, as ours. Kept,
    flagged for the lead: their released Wan settings (`cache_init` mode 'Taylor': max_order 1, first_enhance 1,
    computing steps 0, N, 2N …) differed from the FLUX settings the port first used on Wan too (O = 2, first 3:
    steps 0, 1, 2, 2+N …; max |d| up to 0.34). Effect on wan-tiny (T = 50, 4 evaluation prompts, PSNR vs full
    compute, `benchmarks/fidelity/effect.py`): FLUX settings N = 5 K = 12.7 35.2 dB, N = 4 K = 14.7 37.1 dB,
    N = 8 K = 8.8 21.3 dB; theirs N = 4 K = 13.7 39.8 dB, N = 5 K = 10.7 32.0 dB, N = 7 K = 8.8 27.7 dB — theirs
    is better at matched compute, so the bench now runs their Wan settings on Wan (`FAMILY_SETTINGS`; the config
    id says so), even though their coarser step grid may leave no interval within 5 % of K = 13.
    DiT (benchmarks/fidelity/taylorseer_dit.py): against `TaylorSeer-DiT` @ 288776d — their `DiT` class (facebookresearch
    DiT's models.py with their cache) carrying dit-tiny's weights, driven by our DiTPipeline (`dit_official.py`;
    caching off: identical images) — T = 50, N = 3 / 4, 2 prompts: at equal settings identical computed steps and
    max |ours − theirs| ≤ 3.8e-6 (their code at our O = 2 / first_enhance 3: 0; our port at their O = 4 /
    first_enhance 2). Their DiT code as released (README: N = 4, max_order 4; `cache_init` fixes first_enhance
    2) differed from the FLUX settings the bench first ran on DiT (max |d| up to 0.53). Effect on dit-tiny
    (T = 50, 4 evaluation prompts, PSNR vs full, benchmarks/fidelity/effects_dit.jsonl): FLUX settings N = 5
    K = 12.7 24.9 dB, N = 8 K = 8.8 18.3 dB; theirs N = 5 K = 11.7 30.1 dB, N = 4 K = 14.6 25.6 dB, N = 7
    K = 8.8 21.1 dB (no N within 5 % of K = 13) — theirs is better at matched compute, so the bench runs their
    DiT settings on DiT (`FAMILY_SETTINGS`; the config id says so).
    HunyuanVideo (benchmarks/fidelity/taylorseer_hunyuan.py): against `TaylorSeer-HunyuanVideo` @ 288776d — their
    cached `HYVideoDiffusionTransformer` (their `hyvideo` copy) carrying hunyuan-video-tiny's weights, driven by our
    pipeline (`hunyuan_official.py`; one cache per CFG branch, which equals their batched CFG: data-independent
    schedule, elementwise forecasts) — T = 50, N = 3 / 5, 2 prompts: at equal settings identical computed steps
    and max |ours − theirs| ≤ 3.1e-5 (their code at our O = 2 / first_enhance 3, and our port at their O = 1 /
    first_enhance 1; uncached floor 5.1e-6). Their HunyuanVideo code as released (`cache_init` mode 'Taylor':
    O = 1, first_enhance 1, N = 5) differed from the FLUX settings the bench first ran on HunyuanVideo (max |d|
    up to 0.62). Effect on hunyuan-video-tiny (T = 50, 4 evaluation prompts, PSNR vs full,
    benchmarks/fidelity/effects_hunyuan.jsonl): FLUX settings N = 5 K = 13.6 27.9 dB, N = 10 K = 8.8 18.4 dB;
    theirs N = 4 K = 14.5 32.1 dB, N = 5 K = 11.7 24.5 dB, N = 8 K = 8.8 24.5 dB (no N within 5 % of K = 13) —
    theirs is better at matched compute, so the bench runs their settings on HunyuanVideo (`FAMILY_SETTINGS`).

    Args:
        cache_interval: the budget knob N (diffusers default 5); N = 1 computes every step (never skips). The bench
            searches N = 1 … 50: N ≥ T − disable_cache_before_step − 1 computes only the warm-up and step
            `disable_cache_before_step + 1` (the diffusers rule allows any N).
        disable_cache_before_step: warm-up steps, all computed (diffusers default 3, kept).
        disable_cache_after_step: diffusers default None (no cool-down; the paper has none), kept.
        max_order: Taylor order; 2 as in the paper's reported FLUX settings (N=4/O=2, N=7/O=2); diffusers' default is 1.
        taylor_factors_dtype: storage dtype of the factors; float32 here (diffusers' default bf16 would add a
            rounding error of its own to these fp32 models).
        authors_schedule: True: the authors' step rule above; False: diffusers' (`(step − before − 1) % N == 0`).
        forecast_mlp: True (the authors' method): attention and MLP outputs are forecast (`FORECAST_IDENTIFIERS`,
            `INACTIVE_IDENTIFIERS`); False: diffusers' attention-only default (`ATTENTION_IDENTIFIERS`), whose
            forecast steps still run every MLP — on flux-tiny that bounds the compute at K ≥ 36.8 of 50.

    Least compute (`BUDGET_LIMIT`): the warm-up steps and step `before − 1 + N` (the rule's first refresh) compute,
    and forecast steps still run the norms / timestep modulation and the embedding and output layers, so a sample
    costs at least `before + (T − before)·m` full steps (m = that share of a step, a few %). (Measured with the
    former diffusers rule at T = 50: flux-tiny K ≥ 4.8, N = 5 → 13.6, N = 10 → 8.7; dit-tiny N = 6 → 11.9,
    N = 10 → 9.0; the authors' rule computes about one step fewer at the same N.)

    Differences from diffusers' defaults, all stated above: the step rule, the module patterns, `max_order`, dtype. State is per
    cache context and per module; the schedule is fixed, so a batch behaves like its samples run alone.
    """

    cache_interval: int = 5
    disable_cache_before_step: int = 3
    disable_cache_after_step: int | None = None
    max_order: int = 2
    taylor_factors_dtype: torch.dtype = torch.float32
    forecast_mlp: bool = True
    authors_schedule: bool = True

    @property
    def config_id(self) -> str:
        """The fixed settings besides the knob and T, as the bench's budget cache keys them."""
        after = "none" if self.disable_cache_after_step is None else self.disable_cache_after_step
        dtype = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[
            self.taylor_factors_dtype
        ]
        schedule = "authors-schedule" if self.authors_schedule else "interval-schedule"
        mlp = "attn+mlp" if self.forecast_mlp else "attn"
        return (
            f"{mlp};before{self.disable_cache_before_step};after-{after};O{self.max_order};{dtype};{schedule}"
        )

    def diffusers_config(self) -> TaylorSeerCacheConfig:
        active = FORECAST_IDENTIFIERS if self.forecast_mlp else ATTENTION_IDENTIFIERS
        return TaylorSeerCacheConfig(
            cache_interval=self.cache_interval,
            disable_cache_before_step=self.disable_cache_before_step,
            disable_cache_after_step=self.disable_cache_after_step,
            max_order=self.max_order,
            taylor_factors_dtype=self.taylor_factors_dtype,
            cache_identifiers=list(active),
            skip_predict_identifiers=list(INACTIVE_IDENTIFIERS) if self.forecast_mlp else None,
        )


def apply_taylorseer(pipe: Any, config: TaylorSeerBenchConfig) -> None:
    """Attach diffusers' TaylorSeer hooks to `pipe.transformer` (`enable_cache`, or `apply_taylorseer_cache` on DiT)."""
    transformer = pipe.transformer
    _wrapped.apply_config(transformer, config.diffusers_config(), apply_taylorseer_cache)
    probes = _wrapped.hooked_modules(transformer, [TAYLORSEER_HOOK])
    if not probes:
        raise RuntimeError(f"TaylorSeer found no attention module in {type(transformer).__name__}")
    if config.authors_schedule:
        for module in probes:
            hook = module._diffusers_hook.get_hook(TAYLORSEER_HOOK)
            hook._measure_should_compute = types.MethodType(_authors_should_compute, hook)
    _wrapped.install(pipe, probes)


def _authors_should_compute(hook: Any) -> tuple[bool, Any]:
    """The authors' `cal_type` (TaylorSeer mode) in place of diffusers' rule: full on the first
    `first_enhance = disable_cache_before_step` steps and then every `cache_interval`-th step after the last of
    them (`interval_full`); and, as their `derivative_approximation`, a full step before step `first_enhance − 1`
    keeps only the order-0 factor (the update starts a new expansion)."""
    from ._stack_hooks import interval_full

    state = hook.state_manager.get_state()
    state.current_step += 1
    step, first = state.current_step, hook.disable_cache_before_step
    compute = interval_full(step, hook.cache_interval, first)
    if compute and step <= first - 2:
        state.last_update_step = None
    return compute, state


def remove_taylorseer(pipe: Any) -> None:
    """Detach it; the pipeline is uncached again."""
    _wrapped.uninstall(pipe, [TAYLORSEER_HOOK])


# The authors' released settings per model where they differ from their FLUX code (and the paper's FLUX
# settings: max_order 2, first_enhance 3): TaylorSeer-Wan2.1 `cache_init` (mode 'Taylor') max_order 1,
# first_enhance 1; TaylorSeer-DiT max_order 4, first_enhance 2; TaylorSeer-HunyuanVideo max_order 1,
# first_enhance 1. Each beats the FLUX settings at matched compute on its tiny model (see Fidelity).
FAMILY_SETTINGS = {
    "WanTransformer3DModel": {"max_order": 1, "disable_cache_before_step": 1},
    "DiTTransformer2DModel": {"max_order": 4, "disable_cache_before_step": 2},
    "HunyuanVideoTransformer3DModel": {"max_order": 1, "disable_cache_before_step": 1},
}


def _apply(pipe: Any, knob: float, num_steps: int, artifacts: dict | None = None) -> None:
    own = FAMILY_SETTINGS.get(type(getattr(pipe, "transformer", pipe)).__name__, {})
    apply_taylorseer(pipe, TaylorSeerBenchConfig(cache_interval=int(knob), **own))


BUDGET_LIMIT = (
    "TaylorSeer computes its first_enhance=3 warm-up steps and step 2+N (its first refresh), and its "
    "forecast steps still run the norms, timestep modulation, embedding and output layers; the interval values "
    "1..50 reach that floor"
)

METHOD = CacheMethod(
    name="taylorseer",
    families=frozenset(FAMILIES),
    knob="cache_interval",
    budget_limit=BUDGET_LIMIT,
    config_id=TaylorSeerBenchConfig().config_id + ";wan:O1-first1;dit:O4-first2;hunyuan-video:O1-first1",
    never_skip=1,
    apply=_apply,
    remove=remove_taylorseer,
    cache_hits=_wrapped.cache_hits,
    origin="diffusers 0.42 TaylorSeerCacheConfig hook with the authors' step rule (cal_type); forecasts attention "
    "and MLP outputs as the authors do (diffusers' default: attention only), float32 factors; the authors' "
    "released settings per model: FLUX max_order 2, first_enhance 3 (paper), Wan and HunyuanVideo 1 / 1, DiT 4 / 2; "
    "matches Shenyi-Z/TaylorSeer's FLUX, Wan2.1, DiT and HunyuanVideo code; DiT through apply_taylorseer_cache "
    "in a default cache context",
)
