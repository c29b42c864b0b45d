"""FLUX suite: PSNR / SSIM / adherence of every method × budget against the full-step references."""

from __future__ import annotations

import pytest

from suites.flux.conftest import QUALITY_METRICS, gate_record, result


@pytest.mark.quality
def test_quality(flux_session, gate, method, budget):
    record = result(flux_session, method, budget)
    gate_record(flux_session, gate, record, QUALITY_METRICS)
