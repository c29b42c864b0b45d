"""Wan2.1 suite fixtures: the model per --scale, one benchmark session per model (calibration, references and
sampling done once, cached on disk), the method × budget parametrisation with ids `<model>-<method>-K<k>`."""

from __future__ import annotations

from pathlib import Path

from suites.common import Suite, suite_hooks

SUITE = Suite(
    "wan",
    Path(__file__).resolve().parent,
    # tiny: text-to-video; full: image-to-video as released (K = 12, first_full_steps 4, last_full_steps 1,
    # set in the registry spec)
    {"tiny": "wan-tiny", "medium": "wan-medium", "full": "wan2.1-i2v-14b-720p"},
    budgets={"full": (25, 12, 9), "*": (25, 13, 9)},
    # 4 evaluation prompts (image suites: 8): a video sample costs the most per step, and the CI's 2-core
    # budget (30 min) was exceeded at 8 (2162 s for all four suites and the unit tests); `--num-prompts` raises it
    num_prompts=4,
)


pytest_generate_tests, pytest_collection_modifyitems, suite_session = suite_hooks(SUITE)
