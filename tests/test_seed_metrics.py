"""`dpcache-bench seed-metrics`: lists what is missing, fetches it, reports a failed fetch and exits 1."""

from __future__ import annotations

import torch

from harness import seed_metrics
from harness.lpips_alex import ALEXNET_WEIGHTS_FILE


def test_every_metric_with_weights_is_seeded_and_alexnet_goes_to_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    by_metric = {s.metric: s for s in seed_metrics.seeds()}
    assert list(by_metric) == ["lpips", "clip_score", "image_reward", "vbench"]
    assert by_metric["lpips"].where == str(tmp_path / "checkpoints" / ALEXNET_WEIGHTS_FILE)
    assert not by_metric["lpips"].present()


def test_dry_run_fetch_and_failure(tmp_path, monkeypatch, capsys):
    have = tmp_path / "a.bin"

    def fetch_a():
        have.write_bytes(b"w")

    def fetch_b():
        raise OSError("network unreachable")

    fake = [
        seed_metrics.Seed("a", str(have), have.is_file, fetch_a),
        seed_metrics.Seed("b", "nowhere", lambda: False, fetch_b),
    ]
    monkeypatch.setattr(seed_metrics, "seeds", lambda: fake)
    assert seed_metrics.main(dry_run=True) == 1
    out = capsys.readouterr().out
    assert "a             MISSING" in out and not have.exists()
    assert seed_metrics.main(only=["a"]) == 0
    assert have.is_file() and "a             present" in capsys.readouterr().out
    assert seed_metrics.main() == 1
    out = capsys.readouterr().out
    assert "b             FAILED    OSError: network unreachable" in out and "b             MISSING" in out
