"""FLUX suite: the full-step output recomputed now still matches the committed reference (no drift)."""

from __future__ import annotations

import pytest


@pytest.mark.quality
def test_reference(flux_session, prompt_index):
    from harness.references import ReferenceDriftError

    key = flux_session.reference_keys()[prompt_index]
    store = flux_session.committed_store
    if key not in store:
        flux_session.references()  # with --update-references this writes the committed reference
    fresh = flux_session.fresh_full(prompt_index)
    try:
        psnr = store.check_drift(key, fresh)
    except ReferenceDriftError as e:
        pytest.fail(str(e), pytrace=False)
    assert psnr >= 40.0
