"""The demo suite the pytest-plugin tests run with pytester: one dpcache result gated against a tiny
expected.json (PSNR and budgets settable through DEMO_PSNR / DEMO_BUDGETS), and how to run it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
import os
import pytest
from harness.metrics import Unavailable
from harness.records import ResultRecord

PSNR = float(os.environ.get("DEMO_PSNR", "30.0"))

@pytest.mark.parametrize("budget", [int(b) for b in os.environ.get("DEMO_BUDGETS", "13").split(",")])
def test_quality(gate, bench_options, budget):
    gate(ResultRecord.create(suite="demo", model=f"demo-{bench_options.scale}", scale=bench_options.scale,
                             method="dpcache", budget=budget, num_steps=50, knobs={"M": 3, "O": 2}, psnr=PSNR,
                             flops_speedup=3.85, ssim=0.9, lpips=Unavailable("torchvision is not installed")))
"""
SPECS = {
    "psnr": {"value": 30.0, "tol": 0.5, "better": "higher"},
    "flops_speedup": {"value": 3.85, "tol": 0.01, "better": "higher"},
    "ssim": {"value": 0.9, "tol": 0.01, "better": "higher"},
}
EXPECTED = {"schema": 2, "models": {"demo-tiny": {"configs": {"dpcache-K13-M3-O2": SPECS}}}}


def configs(path: Path, model: str = "demo-tiny") -> dict:
    """The expected configurations of `model` in the expected.json at `path`."""
    return json.loads(path.read_text())["models"][model]["configs"]


def make_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester folder holding the demo suite and its expected.json, the harness importable."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pytester.makepyfile(test_demo=SUITE)
    (pytester.path / "expected.json").write_text(json.dumps(EXPECTED))
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """The suite in a subprocess with the harness plugin, MLflow off."""
    return pytester.runpytest_subprocess("-p", "harness.plugin", "--mlflow-uri", "off", *args)
