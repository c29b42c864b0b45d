"""Quality metrics against references (PSNR, SSIM, MS-SSIM, LPIPS) and prompt-level scorers, with
missing metrics recorded as `Unavailable(reason)` — never as a number, never as a silent pass."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

# the one PSNR, capped: identical inputs give 100 dB, not inf, so means stay finite (the runtime's tune uses it)
from dpcache.quality import PSNR_CAP_DB, psnr_db

if TYPE_CHECKING:
    import torch

_RANGE_SLACK = 1e-3


@dataclass(frozen=True)
class Unavailable:
    """A metric that could not be computed here, and why (package missing, weights missing, size ...)."""

    reason: str
    metric: str = ""

    def __str__(self) -> str:
        return f"unavailable ({self.reason})"


@dataclass(frozen=True)
class MetricResult:
    """A computed metric: its mean and the per-item (per-prompt / per-sample) values it averages."""

    metric: str
    mean: float
    per_item: tuple[float, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.mean)


Metric = MetricResult | Unavailable


def _frames(x: torch.Tensor, name: str) -> tuple[torch.Tensor, int, int]:
    """(N,C,H,W) or (N,F,C,H,W) in [0,1] → (N*F,C,H,W) clamped, N, F. Raises on other ranks/ranges."""
    if x.dim() == 4:
        n, f = x.shape[0], 1
    elif x.dim() == 5:
        n, f = x.shape[0], x.shape[1]
    else:
        raise ValueError(
            f"{name}: expected (N,C,H,W) images or (N,F,C,H,W) video, got shape {tuple(x.shape)}"
        )
    x = x.detach().float()
    lo, hi = float(x.min()), float(x.max())
    if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        raise ValueError(f"{name}: values must lie in [0, 1] (got min {lo:.4g}, max {hi:.4g})")
    return x.clamp(0, 1).reshape(n * f, *x.shape[-3:]), n, f


def _pair(pred: torch.Tensor, ref: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    if tuple(pred.shape) != tuple(ref.shape):
        raise ValueError(f"{metric}: shape {tuple(pred.shape)} != reference shape {tuple(ref.shape)}")
    a, n, f = _frames(pred, metric)
    b, _, _ = _frames(ref.to(pred.device), metric)
    return a, b, n, f


def _per_sample(values: torch.Tensor, n: int, f: int, metric: str, **details: Any) -> MetricResult:
    """Per-frame values (N*F,) → per-sample means (N,) → overall mean."""
    per = values.double().reshape(n, f).mean(dim=1).tolist()
    return MetricResult(metric, float(sum(per) / len(per)), tuple(float(v) for v in per), details)


def psnr_values(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-frame `psnr_db` on [0, 1], capped at 100 dB (identical frames give 100)."""
    import torch

    a, b, _, _ = _pair(pred, ref, "psnr")
    return torch.tensor([psnr_db(x, y) for x, y in zip(a, b)], dtype=torch.float64)


def psnr(pred: torch.Tensor, ref: torch.Tensor) -> MetricResult:
    """PSNR per frame, averaged per sample, then over samples (each value capped at 100 dB first)."""
    _, n, f = _frames(pred, "psnr")
    return _per_sample(psnr_values(pred, ref), n, f, "psnr", data_range=1.0, cap_db=PSNR_CAP_DB)


def ssim(pred: torch.Tensor, ref: torch.Tensor) -> Metric:
    """SSIM (torchmetrics, Gaussian kernel 11, σ 1.5) per frame, then averaged."""
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError as e:
        return Unavailable(f"torchmetrics is not installed ({e})", "ssim")
    a, b, n, f = _pair(pred, ref, "ssim")
    try:
        vals = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    except (ValueError, RuntimeError) as e:
        return Unavailable(f"SSIM cannot be computed for size {tuple(a.shape[-2:])}: {e}", "ssim")
    return _per_sample(vals, n, f, "ssim", kernel=11, sigma=1.5)


def ms_ssim(pred: torch.Tensor, ref: torch.Tensor) -> Metric:
    """MS-SSIM (torchmetrics, 5 scales, kernel 11) where the image size allows (> 160 px a side)."""
    try:
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure
    except ImportError as e:
        return Unavailable(f"torchmetrics is not installed ({e})", "ms_ssim")
    a, b, n, f = _pair(pred, ref, "ms_ssim")
    h, w = a.shape[-2:]
    if min(h, w) <= 160:
        return Unavailable(
            f"image size {h}x{w} too small for MS-SSIM (5 scales, kernel 11 need > 160 px)", "ms_ssim"
        )
    try:
        vals = multiscale_structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    except (ValueError, RuntimeError) as e:
        return Unavailable(f"MS-SSIM cannot be computed for size {h}x{w}: {e}", "ms_ssim")
    return _per_sample(vals, n, f, "ms_ssim", scales=5, kernel=11)


def lpips_available() -> tuple[bool, str]:
    """LPIPS (AlexNet) needs torchmetrics (its linear heads) and the AlexNet weights already on disk; no
    torchvision (`harness.lpips_alex` holds the backbone's layers)."""
    from harness.lpips_alex import available

    return available()


_LPIPS_MODULES: dict[str, Any] = {}


def lpips(pred: torch.Tensor, ref: torch.Tensor) -> Metric:
    """LPIPS v0.1 with the AlexNet backbone (inputs scaled to [-1, 1]) per frame, then averaged; only when the
    backbone weights are already present locally — it never downloads."""
    ok, reason = lpips_available()
    if not ok:
        return Unavailable(reason, "lpips")
    import torch

    from harness.lpips_alex import AlexLPIPS

    a, b, n, f = _pair(pred, ref, "lpips")
    try:
        dev = str(a.device)
        if dev not in _LPIPS_MODULES:
            _LPIPS_MODULES[dev] = AlexLPIPS().to(a.device)
        vals = _LPIPS_MODULES[dev].distance(a, b).cpu()
    except Exception as e:  # a broken backbone load is reported, not hidden
        return Unavailable(f"LPIPS failed to load or run: {type(e).__name__}: {e}", "lpips")
    return _per_sample(torch.as_tensor(vals), n, f, "lpips", backbone="alex", input_range="[-1, 1]")


def fidelity_metrics(pred: torch.Tensor, ref: torch.Tensor) -> dict[str, Metric]:
    """All reference-fidelity metrics at once: psnr, ssim, ms_ssim, lpips."""
    return {
        "psnr": psnr(pred, ref),
        "ssim": ssim(pred, ref),
        "ms_ssim": ms_ssim(pred, ref),
        "lpips": lpips(pred, ref),
    }


# ---------------------------------------------------------------- prompt-level scorers


@runtime_checkable
class Scorer(Protocol):
    """A prompt-level metric: says whether it can run here, then scores images against their prompts."""

    name: str

    def available(self) -> tuple[bool, str]: ...

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]: ...


def run_scorer(scorer: Scorer, images: torch.Tensor, prompts: Sequence[str]) -> Metric:
    """Per-prompt scores and their mean, or `Unavailable` with the scorer's reason (or its failure)."""
    ok, reason = scorer.available()
    if not ok:
        return Unavailable(reason, scorer.name)
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{scorer.name}: {images.shape[0]} images but {len(prompts)} prompts")
    try:
        values = [float(v) for v in scorer.score(images, prompts)]
    except Exception as e:
        return Unavailable(f"{scorer.name} scorer failed: {type(e).__name__}: {e}", scorer.name)
    if len(values) != len(prompts) or not all(math.isfinite(v) for v in values):
        return Unavailable(
            f"{scorer.name} returned {len(values)} values for {len(prompts)} prompts: {values}", scorer.name
        )
    return MetricResult(scorer.name, sum(values) / len(values), tuple(values), {"scorer": repr(scorer)})


def _hf_cached(repo_id: str) -> bool:
    if Path(repo_id).is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


@dataclass
class ClipScorer:
    """CLIP score (torchmetrics) with a named backbone, only from the local Hugging Face cache."""

    model: str = "openai/clip-vit-base-patch16"
    name: str = "clip_score"

    def available(self) -> tuple[bool, str]:
        for pkg in ("torchmetrics", "transformers"):
            if importlib.util.find_spec(pkg) is None:
                return False, f"{pkg} is not installed (CLIP score)"
        if not _hf_cached(self.model):
            return (
                False,
                f"CLIP weights {self.model} are not in the local Hugging Face cache; not downloading",
            )
        return True, self.model

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        import torch
        from torchmetrics.multimodal.clip_score import CLIPScore

        metric = CLIPScore(model_name_or_path=self.model).to(images.device)
        x = images if images.dim() == 4 else images[:, images.shape[1] // 2]  # video: middle frame
        values = []
        with torch.no_grad():
            for i, p in enumerate(prompts):
                metric.reset()
                values.append(float(metric(x[i : i + 1] * 255, [p])))
        return values


INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


def fid(images: torch.Tensor, real_images: torch.Tensor | None) -> Metric:
    """FID of a sample set against real images (torchmetrics + torch-fidelity Inception, local only).
    A set-level metric: no per-prompt values."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return Unavailable("torch-fidelity is not installed (FID needs its Inception network)", "fid")
    import torch.hub

    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if not path.is_file():
        return Unavailable(
            f"FID Inception weights are not in the torch hub cache ({path}); not downloading", "fid"
        )
    if real_images is None:
        return Unavailable("no real-image statistics given for FID", "fid")
    from torchmetrics.image.fid import FrechetInceptionDistance

    m = FrechetInceptionDistance(feature=2048, normalize=True)
    m.update(real_images.float(), real=True)
    m.update(images.float(), real=False)
    return MetricResult("fid", float(m.compute()), (), {"feature": 2048, "n": int(images.shape[0])})


def clip_score(
    images: torch.Tensor, prompts: Sequence[str], *, model: str = "openai/clip-vit-base-patch16"
) -> Metric:
    """CLIP score per prompt (backbone recorded in details), or Unavailable."""
    return run_scorer(ClipScorer(model), images, prompts)


def image_reward(images: torch.Tensor, prompts: Sequence[str], *, python: str | None = None) -> Metric:
    """ImageReward-v1.0 per prompt, run in the separate evaluation environment (see `harness.eval_env`)."""
    from harness.eval_env import image_reward_scorer

    return run_scorer(image_reward_scorer(python), images, prompts)


def vbench(videos: torch.Tensor, prompts: Sequence[str], *, python: str | None = None) -> Metric:
    """VBench per prompt, run in the separate evaluation environment (see `harness.eval_env`)."""
    from harness.eval_env import vbench_scorer

    return run_scorer(vbench_scorer(python), videos, prompts)
