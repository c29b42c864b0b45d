"""ToCa's own DiT rule (Shenyi-Z/ToCa `DiT-ToCa`): per-block full / ToCa decision, the 'ToCa-ddim50' ratio and the score.

Used by `baselines.toca` with `ToCaConfig(rule="dit")`. `sd` is the authors' step index, counting down from T − 1
(their `ddim_sample_loop_progressive`); arithmetic in float32 where theirs is a torch tensor, so the token counts
and thresholds agree exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LAYERS_CONST = 27  # the authors' layer-factor constant (DiT-XL/2's last block index), kept on every depth
SOFT_FRESH_WEIGHT = 0.25  # their README's --soft-fresh-weight (s3: cache age)
BONUS, GRID = 0.6, 2  # `local_selection_with_bonus(score, 0.6, 2)` (s4: uniform spatial distribution)


def threshold(interval: int, sd: int, num_steps: int, fresh_ratio: float) -> float:
    """`force_scheduler`: the refresh period set when block 0 computes at step `sd`."""
    w = 0.0 if fresh_ratio == 0 else 0.4
    factor = torch.tensor(1 + w - 2 * w * sd / num_steps)
    value = torch.round(interval / factor)
    if sd in range(int(num_steps * 0.2), int(num_steps * 0.4)) and fresh_ratio != 0:
        return 2.0
    return float(value)


def block_full(sd: int, num_steps: int, interval: int, current_threshold: float | None) -> bool:
    """`cal_type`: full on the first step, else when `sd` is a multiple of the current threshold."""
    first = sd == num_steps - 1
    thr = interval if first or current_threshold is None else current_threshold
    return first or float(torch.tensor(sd) % torch.tensor(thr)) == 0


def fresh_count(fresh_ratio: float, layer: int, sd: int, num_steps: int, tokens: int) -> int:
    """'ToCa-ddim50' `fresh_ratio_scheduler` for the MLP, clamped as `cache_cutfresh`, as a token count."""
    step_factor = 1 + 2.0 - 2 * 2.0 * sd / num_steps
    layer_factor = 1 + (-0.2) - 2 * (-0.2) * layer / LAYERS_CONST
    module_factor = 1 + 0.6 * 2.5
    ratio = torch.clamp(torch.tensor(fresh_ratio * layer_factor * step_factor * module_factor), 0.0, 1.0)
    return int(ratio * tokens)


def attention_score(head_mean_map: torch.Tensor) -> torch.Tensor:
    """`scores.attn_score`: the attention each token receives (head-mean map summed over queries), L2-normalised."""
    return F.normalize(head_mean_map.sum(dim=1), dim=1, p=2)


def select(score: torch.Tensor, ages: torch.Tensor, interval: int, count: int) -> torch.Tensor:
    """`score_evaluate` + `cache_cutfresh`: the `count` fresh token indices (B, count); `ages` updated in place."""
    s = score + SOFT_FRESH_WEIGHT * (ages.float() / interval)
    s = _local_bonus(s)
    fresh = s.argsort(dim=-1, descending=True)[:, :count]
    ages += 1
    ages.scatter_(dim=1, index=fresh, src=torch.zeros_like(fresh, dtype=torch.int))
    return fresh


def _local_bonus(score: torch.Tensor) -> torch.Tensor:
    """`local_selection_with_bonus`: each 2×2 patch's best token gets + 0.6 × its score."""
    b, n = score.shape
    side = int(n**0.5)
    s = score.view(b, side // GRID, GRID, side // GRID, GRID).permute(0, 1, 3, 2, 4).contiguous()
    s = s.view(b, -1, GRID * GRID)
    best, where = s.max(dim=-1, keepdim=True)
    mask = torch.zeros_like(s)
    mask.scatter_(-1, where, 1)
    s = s + mask * best * BONUS
    s = s.view(b, side // GRID, side // GRID, GRID, GRID).permute(0, 1, 3, 2, 4).contiguous()
    return s.view(b, n)
