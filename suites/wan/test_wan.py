"""Wan2.1 suite: calibration, schedule snapshots, speedup and quality of every method × budget, reference
drift, and what users hit in practice (another step count, a batch of two, the guidance branches)."""

from suites.checks import (  # noqa: F401  (collected here, run on this suite's model)
    test_batch_of_two_matches_single_samples,
    test_cfg_branches,
    test_cost_tensor,
    test_other_step_count_is_refused,
    test_other_step_count_recalibrates,
    test_quality,
    test_reference,
    test_schedule,
    test_speedup,
)
