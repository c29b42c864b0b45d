"""Which denoising steps really ran the transformer's last block (per CFG branch), for every method alike."""

from __future__ import annotations

from typing import Any


def _probe_module(transformer: Any) -> Any:
    """The module whose call means "this transformer call computed": the first Linear of the last block's
    attention (a cache that reuses attention outputs inside the block counts as not computed, as in the
    authors'-code comparisons of benchmarks/fidelity), else the last block itself."""
    import torch

    from dpcache.adapters import block_layout

    last = block_layout(transformer).blocks[-1]
    attn = next((c for n, c in last.named_children() if n in ("attn", "attn1")), None)
    if attn is not None:
        linear = next((m for m in attn.modules() if isinstance(m, torch.nn.Linear)), None)
        if linear is not None:
            return linear
    return last


class StepTrace:
    """Context manager around one sample: records, per transformer call, whether the last block computed.

    `steps(num_steps)` splits the calls into CFG branches (a pipeline that runs the conditional and the
    unconditional pass as two calls per step alternates them) and returns each branch's computed steps."""

    def __init__(self, transformer: Any) -> None:
        self.transformer = getattr(transformer, "_real", transformer)  # harness.context's counting proxy
        self.calls: list[bool] = []
        self._handles: list[Any] = []

    def __enter__(self) -> StepTrace:
        self.calls = []
        try:
            probe = _probe_module(self.transformer)
        except TypeError:  # no recognisable block stack: nothing traced, `steps` says None
            return self
        self._handles = [
            self.transformer.register_forward_pre_hook(lambda *a: self.calls.append(False)),
            probe.register_forward_hook(self._hit),
        ]
        return self

    def _hit(self, *args: Any) -> None:
        if self.calls:
            self.calls[-1] = True

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def steps(self, num_steps: int) -> list[list[int]] | None:
        """Computed step indices per branch, or None when the calls do not divide into `num_steps` steps (a
        method that calls the transformer a varying number of times per step)."""
        n = len(self.calls)
        if num_steps <= 0 or n == 0 or n % num_steps:
            return None
        branches = n // num_steps
        return [[i for i, c in enumerate(self.calls[b::branches]) if c] for b in range(branches)]


def computed_fractions(passes: list[list[int]], num_steps: int) -> list[float]:
    """Per step, the fraction of passes (prompt × branch) that computed it."""
    if not passes:
        return []
    counts = [0] * num_steps
    for p in passes:
        for s in set(p):
            if 0 <= s < num_steps:
                counts[s] += 1
    return [c / len(passes) for c in counts]


def merge_passes(per_prompt: list[list[list[int]] | None]) -> tuple[list[list[int]] | None, int | None]:
    """(every pass prompt-major, passes per prompt) of the evaluation prompts' traces; (None, None) unless
    every prompt was traced with the same number of branches."""
    if not per_prompt or any(p is None for p in per_prompt):
        return None, None
    branches = {len(p) for p in per_prompt if p is not None}
    if len(branches) != 1:
        return None, None
    return [list(b) for p in per_prompt if p is not None for b in p], branches.pop()
