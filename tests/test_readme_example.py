"""The README's "Use it in your pipeline" example runs as written: its DPCacheConfig line names the bundled
FLUX.1-dev tensor by file name, which resolves to `dpcache/data/official/` from any working directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def readme_config_line() -> str:
    text = README.read_text()
    section = text[text.index("## Use it in your pipeline") :]
    block = re.search(r"```python\n(.*?)```", section, re.S)[1]
    (line,) = [ln for ln in block.splitlines() if "DPCacheConfig(" in ln and "apply_dpcache(" in ln]
    return line


def test_readme_config_line_runs_as_written_in_an_empty_directory(tmp_path, monkeypatch):
    import torch

    from dpcache import DPCacheConfig, apply_dpcache, dpcache_stats
    from harness.zoo import flux_tiny

    line = readme_config_line()
    assert 'cost="flux_dev_T50_cost.safetensors"' in line
    monkeypatch.chdir(tmp_path)  # no such file here: it must resolve the bundled tensor by name
    pipe = flux_tiny.build_pipeline(seed=0)  # stands in for FLUX.1-dev (same pipeline class)
    pipe.set_progress_bar_config(disable=True)
    exec(line, {"pipe": pipe, "DPCacheConfig": DPCacheConfig, "apply_dpcache": apply_dpcache})
    kw = flux_tiny.call_kwargs("a red 7 on a black background")
    pipe(**kw, num_inference_steps=50, generator=torch.Generator("cpu").manual_seed(0))
    stats = dpcache_stats(pipe)
    assert stats and all(len(run.computed_steps) == 13 for run in stats.values())
    assert all(run.cache_hits == 50 - 13 for run in stats.values())


def test_a_cost_name_that_is_neither_a_file_nor_bundled_is_one_clear_error(tmp_path, monkeypatch):
    from dpcache import CostTensor
    from dpcache.errors import CostTensorError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CostTensorError, match=r"nope\.safetensors.*bundled: flux_dev_T50_cost\.safetensors"):
        CostTensor.load("nope.safetensors")


def test_a_local_file_of_the_bundled_name_wins(tmp_path, monkeypatch):
    import numpy as np

    from dpcache import CostTensor

    monkeypatch.chdir(tmp_path)
    arr = np.ones((4, 5, 5))
    CostTensor.from_array(arr, model_id="local").save(tmp_path / "flux_dev_T50_cost.safetensors")
    assert CostTensor.load("flux_dev_T50_cost.safetensors").meta.model_id == "local"
