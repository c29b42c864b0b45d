"""HunyuanVideo suite fixtures: the model per --scale, one benchmark session per model (calibration, references and
sampling done once, cached on disk), the method × budget parametrisation with ids `<model>-<method>-K<k>`."""

from __future__ import annotations

from pathlib import Path

from suites.common import Suite, suite_hooks

SUITE = Suite(
    "hunyuan_video",
    Path(__file__).resolve().parent,
    {"tiny": "hunyuan-video-tiny", "medium": "hunyuan-video-medium", "full": "hunyuan-video"},
    # 4 evaluation prompts (image suites: 8): a video sample costs the most per step, and the CI's 2-core
    # budget (30 min) was exceeded at 8 (2162 s for all four suites and the unit tests); `--num-prompts` raises it
    num_prompts=4,
)


pytest_generate_tests, pytest_collection_modifyitems, suite_session = suite_hooks(SUITE)
