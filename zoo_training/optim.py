"""Training helpers of the image trainer (``zoo_training.train``): the EMA of a model's weights and the
warm-up + cosine learning rate."""

from __future__ import annotations

import copy

import numpy as np
import torch


class EMA:
    """Exponential moving average of a module's parameters."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow.parameters(), module.parameters()):
            s.mul_(d).add_(p.detach(), alpha=1 - d)


def lr_at(it: int, iters: int, peak: float, warmup: int = 200) -> float:
    return peak * min(1.0, (it + 1) / warmup) * (0.5 * (1 + np.cos(np.pi * it / iters)) * 0.9 + 0.1)


def optimise(
    opt: torch.optim.Optimizer,
    loss: torch.Tensor,
    model: torch.nn.Module,
    ema: EMA,
    it: int,
    iters: int,
    peak: float,
) -> float:
    """One training step of the image trainers: scheduled lr, backward, clip at 1, step, EMA; the loss value."""
    for group in opt.param_groups:
        group["lr"] = lr_at(it, iters, peak)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    ema.update(model, it)
    return loss.item()
