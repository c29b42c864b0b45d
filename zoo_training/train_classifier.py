"""Train the scene classifier behind prompt adherence (``python -m zoo_training.train classifier``)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from harness.zoo import digits_data
from harness.zoo.classifier import CLASSIFIER_DIR, HEADS, SceneClassifier, load_classifier


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random blur (what a small VAE does), brightness jitter and pixel noise."""
    n = x.shape[0]
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    a = torch.rand(n, 1, 1, 1, generator=g)
    x = x * (1 - a) + blurred * a
    x = x * (0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=g))
    x = x + 0.04 * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def _targets(scenes: Sequence[digits_data.Scene]) -> dict[str, torch.Tensor]:
    return {
        "digit": torch.tensor([s.digit for s in scenes]),
        "colour": torch.tensor([digits_data.COLOUR_NAMES.index(s.colour) for s in scenes]),
        "background": torch.tensor([digits_data.BACKGROUND_NAMES.index(s.background) for s in scenes]),
    }


def train_classifier(seed: int = 0, iters: int = 1500, batch: int = 128, n_data: int = 30000) -> dict:
    """Train on fresh scenes and save to CLASSIFIER_DIR; returns held-out accuracies."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    images, scenes = digits_data.sample_scenes(n_data, seed=seed + 500, **digits_data.CLASSIFIER_SCENES)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y_all = _targets(scenes)
    model = SceneClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for it in range(iters):
        idx = torch.randint(0, n_data, (batch,), generator=g)
        out = model(_augment(x_all[idx], g))
        loss = sum(F.cross_entropy(out[k], y_all[k][idx]) for k in HEADS)
        for group in opt.param_groups:
            group["lr"] = 2e-3 * min(1.0, (it + 1) / 100) * (1 - it / iters)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 100 == 0:
            print(f"classifier it {it} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    acc = {}
    for name, kw in (("default", {}), ("generator", digits_data.GENERATOR_SCENES)):
        test_images, test_scenes = digits_data.sample_scenes(2000, seed=seed + 999, **kw)
        acc[name] = evaluate(model, torch.from_numpy(test_images).permute(0, 3, 1, 2), test_scenes)
    CLASSIFIER_DIR.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(CLASSIFIER_DIR / "model.safetensors"),
        metadata={"format": "pt", "heads": json.dumps(HEADS)},
    )
    (CLASSIFIER_DIR / "config.json").write_text(
        json.dumps(
            {
                "heads": HEADS,
                "colours": digits_data.COLOUR_NAMES,
                "backgrounds": digits_data.BACKGROUND_NAMES,
                "held_out_accuracy": acc,
                "seed": seed,
                "iters": iters,
            },
            indent=2,
        )
        + "\n"
    )
    load_classifier.cache_clear()
    return {"train_seconds": time.time() - t0, "held_out_accuracy": acc}


@torch.no_grad()
def evaluate(
    model: SceneClassifier, x: torch.Tensor, scenes: Sequence[digits_data.Scene]
) -> dict[str, float]:
    out = model(x.float())
    y = _targets(scenes)
    return {k: float((out[k].argmax(1) == y[k]).float().mean()) for k in HEADS}
