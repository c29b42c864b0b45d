"""HunyuanVideo suite fixtures: the model per --scale, one benchmark session per model (calibration, references and
sampling done once, cached on disk), the method × budget parametrisation with ids `<model>-<method>-K<k>`."""

from __future__ import annotations

from pathlib import Path

from suites.common import Suite, suite_hooks

SUITE = Suite(
    "hunyuan_video",
    Path(__file__).resolve().parent,
    {"tiny": "hunyuan-video-tiny", "medium": "hunyuan-video-medium", "full": "hunyuan-video"},
    # 8 evaluation prompts, as the image suites: with FLOPs counted once per call shape (harness/flops.py) the
    # whole CI takes about 15 min on 2 cores (it was over 30 min at 8 video prompts before, so they had 4)
    num_prompts=8,
)


pytest_generate_tests, pytest_collection_modifyitems, suite_session = suite_hooks(SUITE)
