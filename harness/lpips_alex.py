"""LPIPS (AlexNet, v0.1) without torchvision: the backbone's layers in plain torch, its weights from the torch
hub cache, the linear heads from the file torchmetrics ships — nothing downloaded, nothing unpickled."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ALEXNET_WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"  # what torchvision's AlexNet_Weights.IMAGENET1K_V1 loads
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_WEIGHTS_FILE}"
CHANNELS = (64, 192, 384, 256, 256)
# LPIPS' input scaling (richzhang/PerceptualSimilarity ScalingLayer), for inputs in [-1, 1]
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# torchvision's AlexNet `features` indices after which LPIPS taps an activation (relu1 … relu5)
TAPS = (1, 4, 7, 9, 11)


def alexnet_weights_path() -> Path:
    """Where torchvision would look for the AlexNet weights (the torch hub checkpoint cache)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS_FILE


def heads_path() -> Path | None:
    """torchmetrics' copy of the LPIPS v0.1 linear heads for AlexNet (`lpips_models/alex.pth`), if installed."""
    spec = importlib.util.find_spec("torchmetrics")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = (
        Path(next(iter(spec.submodule_search_locations)))
        / "functional"
        / "image"
        / "lpips_models"
        / "alex.pth"
    )
    return path if path.is_file() else None


def available() -> tuple[bool, str]:
    """LPIPS runs when the heads (torchmetrics) and the AlexNet backbone weights are on disk."""
    heads = heads_path()
    if heads is None:
        return False, "torchmetrics is not installed (LPIPS' linear heads ship with it)"
    path = alexnet_weights_path()
    if not path.is_file():
        return False, (
            f"AlexNet backbone weights are not in the torch hub cache ({path}); not downloading — seed them "
            "with `dpcache-bench seed-metrics` on a machine with network (docs/nightly.md)"
        )
    return True, f"AlexNet weights at {path}, heads at {heads}"


def _features() -> torch.nn.Sequential:
    """torchvision's `alexnet().features`, layer for layer (same indices, so its state dict loads)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
    )


class AlexLPIPS:
    """LPIPS distance with the AlexNet backbone; `distance(a, b)` takes images in [0, 1], shape (N, 3, H, W)."""

    def __init__(self, backbone: str | Path | None = None, heads: str | Path | None = None) -> None:
        import torch

        backbone = Path(backbone) if backbone else alexnet_weights_path()
        heads = Path(heads) if heads else heads_path()
        if heads is None or not Path(heads).is_file():
            raise FileNotFoundError("LPIPS heads not found (torchmetrics' lpips_models/alex.pth)")
        self.features = _features().eval()
        sd = torch.load(backbone, map_location="cpu", weights_only=True)
        feats = {k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")}
        self.features.load_state_dict(feats, strict=True)
        lin = torch.load(heads, map_location="cpu", weights_only=True)
        # keys `lin<k>.model.1.weight` (index 1: the dropout before the 1x1 conv, as trained)
        self.heads = [lin[f"lin{k}.model.1.weight"].float() for k in range(len(CHANNELS))]
        for k, w in enumerate(self.heads):
            if tuple(w.shape) != (1, CHANNELS[k], 1, 1):
                raise ValueError(
                    f"LPIPS head lin{k} has shape {tuple(w.shape)}, expected (1, {CHANNELS[k]}, 1, 1)"
                )
        self.shift = torch.tensor(SHIFT).view(1, 3, 1, 1)
        self.scale = torch.tensor(SCALE).view(1, 3, 1, 1)

    def to(self, device: str | torch.device) -> AlexLPIPS:
        self.features.to(device)
        self.heads = [w.to(device) for w in self.heads]
        self.shift, self.scale = self.shift.to(device), self.scale.to(device)
        return self

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x)
        return out

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS, shape (N,): unit-normalised activations, squared difference, heads, spatial mean."""
        import torch

        with torch.no_grad():
            xa = ((2 * a.float() - 1) - self.shift) / self.scale
            xb = ((2 * b.float() - 1) - self.shift) / self.scale
            total = torch.zeros(a.shape[0], device=a.device)
            for fa, fb, w in zip(self._taps(xa), self._taps(xb), self.heads, strict=True):
                na = fa / torch.sqrt(1e-8 + (fa**2).sum(dim=1, keepdim=True))
                nb = fb / torch.sqrt(1e-8 + (fb**2).sum(dim=1, keepdim=True))
                total += torch.nn.functional.conv2d((na - nb) ** 2, w).mean(dim=(1, 2, 3))
        return total
