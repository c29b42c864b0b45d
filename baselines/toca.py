"""ToCa (Zou et al., ICLR 2025) as diffusers hooks: cached attention and MLP outputs, a fraction of tokens refreshed by score."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.hooks import ModelHook

from dpcache.adapters import block_layout
from dpcache.hook_utils import (
    ContextStateManager,
    apply_cache_hooks,
    register_hook,
    transformer_of,
)

from . import _toca_dit as _dit
from ._stack_hooks import (
    ATTENTION_CHILDREN,
    TOKENWISE_CHILDREN,
    StepHook,
    StepState,
    batch_rows,
    block_submodules,
    cache_hits_counter,
    interval_full,
    remove_hooks,
)
from .base import FAMILIES, CacheMethod

_STEP_HOOK = "toca_step_hook"
_MODULE_HOOK = "toca_module_hook"
# joint attention's key order: FLUX puts the text tokens first, HunyuanVideo after the image tokens
_TEXT_FIRST = {"FluxTransformer2DModel": True, "HunyuanVideoTransformer3DModel": False}
_PART = {
    "ff": "img",
    "ff_context": "txt",
}  # double-stream MLPs; every other token-wise module sees all tokens


@dataclass
class ToCaConfig:
    """Configuration of ToCa (Zou et al., "Accelerating Diffusion Transformers with Token-wise Feature Caching",
    ICLR 2025), ported from its re-implementation in `Shenyi-Z/TaylorSeer` (TaylorSeer-FLUX `cache_init` mode
    "ToCa": `cache_type = 'attention'`, `fresh_ratio = 0.1`, `fresh_ratio_schedule = 'ToCa'`, `first_enhance = 3`;
    `cal_type`, `cache_cutfresh`, `scores.attn_score`, `fresh_ratio_scheduler`, `update_cache`).

    Full steps: the first `first_enhance` steps, then every `interval`-th. On a full step each block's self / joint
    attention is computed explicitly (softmax(QKᵀ)V, as the authors' `dot_product_attention`) and its map, averaged
    over heads and queries, kept as the block's token score (the attention each token receives). On the other (ToCa)
    steps each block's attention outputs are reused from the cache, and each token-wise module (MLPs `ff`,
    `ff_context`, `ffn`; single-stream `proj_mlp`, `proj_out`) is recomputed for the tokens with the highest score
    only — `int(r · N)` of its N tokens, a real partial computation the FLOP counter sees — and those tokens are
    written into its cache; the other tokens keep their cached outputs. The share follows the authors' 'ToCa'
    schedule: `r = fresh_ratio · (1.5 − layer / 27) · s`, s = 0.4 in double-stream blocks, 1.6 in single-stream
    blocks (layer = index within its stream; 27 is the authors' constant), clipped to [0, 1]. A double-stream
    block's image / text MLPs take the image / text columns of the score. In a FLUX single-stream block
    `proj_mlp` and `proj_out` refresh the same tokens, so the block output equals the authors' `linear2` of the
    cached attention and the fresh MLP at those tokens.

    Fidelity: checked by running the authors' code — Shenyi-Z/TaylorSeer @ 288776d, the ToCa mode of its BFL
    `flux` package (`cache_init` mode 'ToCa', `fresh_threshold` = interval), driven by our FluxPipeline through
    `benchmarks/fidelity/bfl_flux.py` with flux-tiny's weights: T = 10 (intervals 1 / 3 / 5) and T = 50 (7 / 24),
    two prompts, max |ours − theirs| = 4.0e-6 on images in [0, 1] (uncached: 1.5e-6, the two FLUX implementations' float
    rounding), computed steps identical (`python -m benchmarks.fidelity.run toca`). The check sees the token
    choice: the former score (`score="similarity"`) differs from theirs by 0.15–0.23, a constant ratio by
    0.07–0.21, no refresh (`fresh_ratio=0`) by 0.17–0.30. Differences: none on FLUX. Interpretation where their
    FLUX code says nothing: single-stack models (Wan, DiT) take stream factor s = 1; the score of a step is the
    one of the last full step (as theirs, whose map is only refreshed on full steps). The former port (similarity
    score, constant ratio) stays available as `score="similarity", schedule="constant"`.
    DiT (benchmarks/fidelity/toca_dit.py): the paper's own DiT code (Shenyi-Z/ToCa @ e84096f, `DiT-ToCa`, its
    README's DDIM-50 settings with fresh_threshold = N) on its DiT class carrying dit-tiny's weights, driven by our
    DiTPipeline (`dit_official.py`; caching off: 1.1e-6 from its explicit softmax). Its rule differs from the FLUX
    re-implementation's: a per-block full / ToCa decision with a step-dependent period (`force_scheduler`:
    round(N / (1.4 − 0.8·sd/T)), sd counting down; 2 for sd in 0.2T–0.4T), the 'ToCa-ddim50' MLP ratio (0.07 ×
    step, layer and module factors; attention outputs never refreshed) and a score adding 0.25 × cache age / N
    and a 0.6 bonus to each 2×2 patch's best token. `rule="dit"` (`baselines._toca_dit`, with fresh_ratio 0.07)
    ports it: T = 50, N = 3 / 4, 2 prompts, computed steps identical, max |ours − theirs| ≤ 6.7e-6. Kept, on
    purpose: the registered method runs the re-implementation's rule on DiT too (max |d| to DiT-ToCa 0.21–0.49),
    better at matched compute on dit-tiny (T = 50, 4 prompts, PSNR vs full: K = 13 22.0 vs 16.6 dB, K = 9 15.0
    vs 13.6 dB; benchmarks/fidelity/effects_dit.jsonl).
    Wan: no authors' code to check against — Shenyi-Z/ToCa @ e84096f has none (DiT, PixArt-α, Open-Sora), and
    TaylorSeer-Wan2.1's block forward implements only 'full' and 'Taylor' steps (its ToCa mode's cached steps,
    type 'ToCa', raise "Not supported type"); tests/test_fidelity_wan_more.py pins both facts.

    Args:
        interval: N, a full step every N steps. 1 never skips. The bench searches N = 1 … 50 (the rule allows any
            N; N ≥ T − 3 computes only the warm-up). The authors report N up to 12 (ToCa N=12 on FLUX).
        fresh_ratio: base share of tokens recomputed per token-wise module on ToCa steps (authors: 0.1).
        first_enhance: the first steps always full (authors' ToCa mode: 3).
        score: "attention" (authors' `cache_type`) or "similarity" (1 − cosine similarity to the cached input).
        schedule: "toca" (authors' layer / stream schedule) or "constant".
        rule: "flux" (the re-implementation's rule above) or "dit" (DiT-ToCa's own rule, single-stack square
            token grids: `baselines._toca_dit`; `interval` is its fresh_threshold, `first_enhance` and
            `schedule` unused).
    """

    interval: int = 5
    fresh_ratio: float = 0.1
    first_enhance: int = 3
    num_inference_steps: int = 50
    score: str = "attention"
    schedule: str = "toca"
    rule: str = "flux"

    @property
    def config_id(self) -> str:
        """The fixed settings besides the knob and T, as the bench's budget cache keys them."""
        rule = ";dit-toca-rule" if self.rule == "dit" else ""
        return f"fe{self.first_enhance};fresh{self.fresh_ratio};{self.score};{self.schedule}-schedule{rule}"


def fresh_ratio_for(base: float, layer: int, stream: str, schedule: str = "toca") -> float:
    """The authors' 'ToCa' fresh-ratio schedule (step weight 0, layer weight 0.5, stream weight 0.6)."""
    if schedule == "constant":
        return min(max(base, 0.0), 1.0)
    stream_factor = {"double": 1 - 0.6, "single": 1 + 0.6}.get(stream, 1.0)
    return min(max(base * (1 + 0.5 - 2 * 0.5 * layer / 27) * stream_factor, 0.0), 1.0)


class ToCaState(StepState):
    """Per cache context: whether this step is full; each module's cached output, input and each block's score."""

    def reset(self) -> None:
        super().reset()
        self.full = True
        self.record = False
        self.outputs: dict[int, object] = {}
        self.inputs: dict[int, torch.Tensor] = {}
        self.scores: dict[int, torch.Tensor] = {}
        self.threshold: float | None = None  # rule "dit": the refresh period block 0 set last
        self.block_full: dict[int, bool] = {}  # rule "dit": this step's decision per block
        self.ages: dict[int, torch.Tensor] = {}  # rule "dit": steps since each token was refreshed


class ToCaStepHook(StepHook):
    """On the transformer: decides full vs ToCa for the step (a fixed schedule)."""

    def __init__(self, manager: ContextStateManager, config: ToCaConfig) -> None:
        super().__init__(manager, config.num_inference_steps)
        self.config = config

    def forward_step(self, module: torch.nn.Module, state: ToCaState, args: tuple, kwargs: dict):
        c = self.config
        if c.rule == "dit":  # decided per block (ToCaModuleHook); block 0's prospective decision counts hits
            sd = self.num_steps - 1 - state.step
            state.full = _dit.block_full(sd, self.num_steps, c.interval, state.threshold) or not state.outputs
            state.block_full = {}
            if not state.full:
                state.hits += batch_rows(args, kwargs)
            return self.fn_ref.original_forward(*args, **kwargs)
        state.full = interval_full(state.step, c.interval, c.first_enhance) or not state.outputs
        # the score is only needed when a ToCa step follows (so interval 1 runs the fused kernel: == uncached)
        nxt = state.step + 1
        state.record = (
            state.full and nxt < self.num_steps and not interval_full(nxt, c.interval, c.first_enhance)
        )
        if not state.full:
            state.hits += batch_rows(args, kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)


@contextmanager
def _attention_maps(sink: list[torch.Tensor], over_queries: bool = True) -> Iterator[None]:
    """Inside: scaled_dot_product_attention computed explicitly, each map's mean over heads and queries (B, S)
    appended to `sink` (the authors' `dot_product_attention`; same FLOPs as the fused kernel)."""
    fused = F.scaled_dot_product_attention

    def explicit(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        if is_causal or kw.get("enable_gqa"):
            return fused(query, key, value, attn_mask, dropout_p, is_causal, scale, **kw)
        weight = (query @ key.transpose(-2, -1)) * (
            1 / math.sqrt(query.shape[-1]) if scale is None else scale
        )
        if attn_mask is not None:
            weight = (
                weight.masked_fill(~attn_mask, -math.inf)
                if attn_mask.dtype == torch.bool
                else weight + attn_mask
            )
        attn = weight.softmax(dim=-1)
        sink.append(attn.mean(dim=1).mean(dim=1) if over_queries else attn.mean(dim=1))
        return attn @ value

    torch.nn.functional.scaled_dot_product_attention = explicit
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = fused


class ToCaModuleHook(ModelHook):
    """On an attention module (reused whole; on full steps it records its block's score if `block` is set) or a
    token-wise module (fresh tokens recomputed, the rest reused)."""

    def __init__(self, manager: ContextStateManager, key: int, config: ToCaConfig, **site) -> None:
        super().__init__()
        self.manager, self.key, self.config = manager, key, config
        self.tokenwise: bool = site.get("tokenwise", False)
        self.block: int | None = site.get("block")  # the block whose score this module records / reads
        self.ratio: float = site.get("ratio", config.fresh_ratio)
        self.part: str = site.get("part", "all")
        self.text_first: bool = site.get("text_first", True)
        self.records = site.get("records", False)

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: ToCaState = self.manager.get_state()
        if self.config.rule == "dit":
            return self._dit_forward(state, args, kwargs)
        x = args[0] if args else kwargs.get("hidden_states")
        if state.full or self.key not in state.outputs:
            if self.records and state.record and self.config.score == "attention":
                sink: list[torch.Tensor] = []
                with _attention_maps(sink):
                    output = self.fn_ref.original_forward(*args, **kwargs)
                if sink:
                    state.scores[self.block] = sink[0].float()
            else:
                output = self.fn_ref.original_forward(*args, **kwargs)
            state.outputs[self.key] = output
            if self.tokenwise and isinstance(x, torch.Tensor):
                state.inputs[self.key] = x
            return output
        cached = state.outputs[self.key]
        if not self.tokenwise or not isinstance(cached, torch.Tensor) or x is None or x.dim() != 3:
            return cached
        fresh = int(self.ratio * x.shape[1])
        score = self._score(state, x)
        if fresh == 0 or score is None:
            return cached
        idx = score.argsort(dim=-1, descending=True)[:, :fresh].unsqueeze(-1)  # (B, k, 1), authors' argsort
        fresh_x = x.gather(1, idx.expand(-1, -1, x.shape[-1]))
        rest = args[1:]
        fresh_out = (
            self.fn_ref.original_forward(fresh_x, *rest, **kwargs)
            if args
            else (self.fn_ref.original_forward(*args, **{**kwargs, "hidden_states": fresh_x}))
        )
        output = cached.scatter(1, idx.expand(-1, -1, cached.shape[-1]), fresh_out.to(cached.dtype))
        state.outputs[self.key] = output
        state.inputs[self.key] = state.inputs[self.key].scatter(1, idx.expand(-1, -1, x.shape[-1]), fresh_x)
        return output

    def _dit_forward(self, state: ToCaState, args: tuple, kwargs: dict):
        """DiT-ToCa's rule (`baselines._toca_dit`): the block's attention decides full / ToCa for its block
        (block 0 then sets the refresh period); full: compute (the attention recording its map's score), reset
        the token ages; ToCa: attention reused, the MLP recomputed for the selected tokens."""
        c = self.config
        n = c.num_inference_steps
        sd = n - 1 - state.step
        x = args[0] if args else kwargs.get("hidden_states")
        if self.records:
            full = _dit.block_full(sd, n, c.interval, state.threshold) or self.key not in state.outputs
            state.block_full[self.block] = full
            if full and self.block == 0:
                state.threshold = _dit.threshold(c.interval, sd, n, c.fresh_ratio)
        else:
            full = state.block_full.get(self.block, True) or self.key not in state.outputs
        if full:
            if self.records:
                sink: list[torch.Tensor] = []
                with _attention_maps(sink, over_queries=False):
                    output = self.fn_ref.original_forward(*args, **kwargs)
                state.scores[self.block] = _dit.attention_score(sink[0].float())
            else:
                output = self.fn_ref.original_forward(*args, **kwargs)
            state.outputs[self.key] = output
            if self.tokenwise and isinstance(x, torch.Tensor):
                state.ages[self.key] = torch.zeros(x.shape[:2], dtype=torch.int, device=x.device)
            return output
        cached = state.outputs[self.key]
        if not self.tokenwise or self.key not in state.ages:
            return cached
        count = _dit.fresh_count(c.fresh_ratio, self.block, sd, n, x.shape[1])
        fresh = _dit.select(state.scores[self.block], state.ages[self.key], c.interval, count)
        idx = fresh.unsqueeze(-1)
        fresh_x = x.gather(1, idx.expand(-1, -1, x.shape[-1]))
        fresh_out = self.fn_ref.original_forward(fresh_x, *args[1:], **kwargs)
        output = cached.scatter(1, idx.expand(-1, -1, cached.shape[-1]), fresh_out.to(cached.dtype))
        state.outputs[self.key] = output
        return output

    def _score(self, state: ToCaState, x: torch.Tensor) -> torch.Tensor | None:
        """(B, N) score of this module's tokens: the block's attention columns, or 1 − cosine similarity."""
        if self.config.score == "similarity":
            return 1 - F.cosine_similarity(x.float(), state.inputs[self.key].float(), dim=-1)
        s = state.scores.get(self.block)
        if s is None or s.shape[0] != x.shape[0]:
            return None
        n, total = x.shape[1], s.shape[1]
        if total == n:
            return s
        img_last = self.text_first
        take_last = (self.part == "img") == img_last
        return s[:, total - n :] if take_last else s[:, :n]


def _sites(transformer: torch.nn.Module) -> list[tuple[int, str, int, torch.nn.Module]]:
    """(block index, stream, layer within the stream, block) for every block: double / single on two-stream
    models (FLUX, HunyuanVideo), 'stack' on single-stack ones."""
    layout = block_layout(transformer)
    lists = {name.rsplit(".", 1)[0] for name in layout.names}
    two = {"transformer_blocks", "single_transformer_blocks"} <= lists
    out = []
    for i, (name, block) in enumerate(zip(layout.names, layout.blocks, strict=True)):
        list_name, idx = name.rsplit(".", 1)
        stream = ("single" if list_name == "single_transformer_blocks" else "double") if two else "stack"
        out.append((i, stream, int(idx), block))
    return out


def apply_toca(module: torch.nn.Module | object, config: ToCaConfig) -> None:
    """Apply ToCa to a diffusion transformer (or a pipeline's transformer).

    Example:
        ```python
        >>> from diffusers import FluxPipeline
        >>> from baselines.toca import ToCaConfig, apply_toca

        >>> pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", torch_dtype=torch.bfloat16)
        >>> apply_toca(pipe, ToCaConfig(interval=5, fresh_ratio=0.1, num_inference_steps=50))
        >>> image = pipe("a red apple", num_inference_steps=50).images[0]
        ```
    """
    apply_cache_hooks(
        module,
        _STEP_HOOK,
        ToCaState,
        lambda manager: ToCaStepHook(manager, config),
        lambda transformer, manager, _: _module_hooks(transformer, manager, config),
        already="ToCa is already applied to this transformer; call remove_toca first",
    )


def _module_hooks(transformer: torch.nn.Module, manager: ContextStateManager, config: ToCaConfig) -> None:
    text_first = _TEXT_FIRST.get(type(transformer).__name__, True)
    key = 0
    for block_idx, stream, layer, block in _sites(transformer):
        ratio = fresh_ratio_for(config.fresh_ratio, layer, stream, config.schedule)
        recorder = next((n for n in ("attn", "attn1") if getattr(block, n, None) is not None), None)
        for name, child in block_submodules(block):
            site = {
                "block": block_idx,
                "tokenwise": name in TOKENWISE_CHILDREN,
                "ratio": ratio,
                "part": _PART.get(name, "all"),
                "text_first": text_first,
                "records": name == recorder and name in ATTENTION_CHILDREN,
            }
            register_hook(child, ToCaModuleHook(manager, key, config, **site), _MODULE_HOOK)
            key += 1


def remove_toca(module: torch.nn.Module | object) -> None:
    """Remove ToCa; the model runs uncached again."""
    remove_hooks(transformer_of(module), _STEP_HOOK, _MODULE_HOOK)


def _apply(pipe, knob: float, num_steps: int, artifacts: dict | None = None) -> None:
    apply_toca(pipe, ToCaConfig(interval=int(knob), num_inference_steps=num_steps))


METHOD = CacheMethod(
    name="toca",
    families=frozenset(FAMILIES),
    knob="interval",
    budget_limit="ToCa computes its first_enhance=3 steps in full and every ToCa step still recomputes "
    "the scheduled share of the tokens of each MLP (base 0.1, authors' layer/stream schedule) plus the norms, "
    "modulation, embedding and output layers; the interval values 1..50 reach that floor",
    config_id=ToCaConfig().config_id,
    never_skip=1,
    apply=_apply,
    remove=remove_toca,
    cache_hits=cache_hits_counter(_STEP_HOOK),
    origin=(
        "ported from the ToCa re-implementation in Shenyi-Z/TaylorSeer (FLUX ToCa mode): attention-map score, "
        "the authors' layer/stream fresh-ratio schedule, first_enhance 3; ToCa steps are partial compute"
    ),
)
