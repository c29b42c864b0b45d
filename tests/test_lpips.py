"""LPIPS offline: the torchvision-free AlexNet path with a stand-in backbone in a temporary torch hub cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness import metrics
from harness.lpips_alex import ALEXNET_WEIGHTS_FILE, TAPS, AlexLPIPS, heads_path

# torchvision's AlexNet `features` convolutions: (index, in, out, kernel, stride, padding)
CONVS = (
    (0, 3, 64, 11, 4, 2),
    (3, 64, 192, 5, 1, 2),
    (6, 192, 384, 3, 1, 1),
    (8, 384, 256, 3, 1, 1),
    (10, 256, 256, 3, 1, 1),
)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A torch hub cache holding a random stand-in for torchvision's AlexNet checkpoint (same keys/shapes)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i, cin, cout, k, _, _ in CONVS:
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
        sd[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.01
    sd["classifier.1.weight"] = torch.zeros(4, 4)  # the checkpoint also holds the classifier: ignored
    (tmp_path / "checkpoints").mkdir()
    torch.save(sd, tmp_path / "checkpoints" / ALEXNET_WEIGHTS_FILE)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    metrics._LPIPS_MODULES.clear()
    yield sd
    metrics._LPIPS_MODULES.clear()


def _reference(sd: dict, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS written out from the paper's recipe with functional ops, independent of `AlexLPIPS`."""
    lin = torch.load(heads_path(), map_location="cpu", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(x):
        out = []
        for n, (i, _, _, _, s, p) in enumerate(CONVS):
            if n in (1, 2):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], stride=s, padding=p))
            out.append(x)
        return out

    total = 0
    for k, (fa, fb) in enumerate(
        zip(taps(((2 * a - 1) - shift) / scale), taps(((2 * b - 1) - shift) / scale))
    ):
        na = fa / (fa.pow(2).sum(1, keepdim=True) + 1e-8).sqrt()
        nb = fb / (fb.pow(2).sum(1, keepdim=True) + 1e-8).sqrt()
        total = total + ((na - nb) ** 2 * lin[f"lin{k}.model.1.weight"]).sum(1).mean(dim=(1, 2))
    return total


def test_heads_ship_with_torchmetrics():
    assert heads_path() is not None and heads_path().name == "alex.pth"
    assert TAPS == (1, 4, 7, 9, 11)


def test_lpips_matches_the_recipe_and_is_a_distance(hub):
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    m = AlexLPIPS()
    d = m.distance(a, b)
    assert d.shape == (3,)
    torch.testing.assert_close(d, _reference(hub, a, b), rtol=1e-5, atol=1e-7)
    assert torch.all(d > 0)
    torch.testing.assert_close(m.distance(b, a), d)
    assert torch.all(m.distance(a, a) == 0)
    # a small perturbation is closer than an unrelated image
    near = (a + 0.01 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert torch.all(m.distance(a, near) < d)


def test_metric_per_sample_and_per_frame(hub):
    g = torch.Generator().manual_seed(2)
    video = torch.rand(2, 3, 3, 32, 32, generator=g)  # (N, F, C, H, W)
    other = torch.rand(2, 3, 3, 32, 32, generator=g)
    r = metrics.lpips(video, other)
    assert isinstance(r, metrics.MetricResult), r
    frames = AlexLPIPS().distance(video.flatten(0, 1), other.flatten(0, 1)).double().view(2, 3).mean(1)
    assert r.per_item == pytest.approx(frames.tolist(), rel=1e-6)
    assert r.mean == pytest.approx(float(frames.mean()), rel=1e-6)
    assert metrics.lpips(video, video).mean == 0


def test_unavailable_without_backbone_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    r = metrics.lpips(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    assert isinstance(r, metrics.Unavailable)
    assert str(tmp_path / "checkpoints" / ALEXNET_WEIGHTS_FILE) in r.reason and "not downloading" in r.reason


def test_wrong_checkpoint_is_unavailable_not_a_number(hub, tmp_path):
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "checkpoints" / ALEXNET_WEIGHTS_FILE)
    metrics._LPIPS_MODULES.clear()
    r = metrics.lpips(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    assert isinstance(r, metrics.Unavailable) and "failed to load" in r.reason
