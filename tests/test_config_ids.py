"""Each baseline's `config_id` (a budget-cache key) is derived from its config dataclass and stays the same string."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from baselines.base import get_method

# The ids as they were written by hand: they key cached budget searches and expectations, so they must not move.
EXPECTED = {
    "dbcache": "cache-dit-1.5.3;F1B0;W8@50;caps-1",
    "delta-dit": "fe1;span-single-or-back-half;stage-switch0.5",
    "dicache": "m1;warm0.2;family-defaults",
    "fastercache": "attention-part;window-1-681;w0.5;per-context",
    "firstblockcache": "diffusers-fbc",
    "fora": "fe1;attn+mlp",
    "omnicache": "ema1.0",
    "pab": "pyramid-N/2N/3N;window100-800;per-context",
    "seacache": "diffusers-sea;r1;e1;c2;o1",
    "taylorseer": "attn+mlp;before3;after-none;O2;f32;authors-schedule",
    "toca": "fe3;fresh0.1;attention;toca-schedule",
}

# methods whose registered id adds settings of one family to the config's (TaylorSeer: the authors' Wan settings)
METHOD_IDS = {"taylorseer": EXPECTED["taylorseer"] + ";wan:O1-first1;dit:O4-first2;hunyuan-video:O1-first1"}


def _configs():
    """Per method: (config class, the bench's default kwargs, a non-default knob / T, a changed fixed setting)."""
    from baselines import (
        dbcache,
        delta_dit,
        dicache,
        fastercache,
        firstblockcache,
        fora,
        omnicache,
        pab,
        seacache,
        taylorseer,
        toca,
    )

    return {
        "dbcache": (
            dbcache.DBCacheBenchConfig,
            {"num_inference_steps": 50},
            {"num_inference_steps": 10, "residual_diff_threshold": 0.3},
            {"Fn_compute_blocks": 2},
        ),
        "delta-dit": (
            delta_dit.DeltaDiTConfig,
            {},
            {"interval": 5, "num_inference_steps": 10},
            {"stage_boundary": 0.4},
        ),
        "dicache": (dicache.DiCacheConfig, {}, {"num_inference_steps": 10}, {"probe_depth": 2}),
        "fastercache": (
            fastercache.FasterCacheBenchConfig,
            {},
            {"spatial_attention_block_skip_range": 5},
            {"attention_weight": 0.3},
        ),
        "firstblockcache": (firstblockcache.FirstBlockCacheBenchConfig, {}, {"threshold": 0.3}, None),
        "fora": (fora.FORAConfig, {}, {"interval": 5, "num_inference_steps": 10}, {"first_enhance": 2}),
        "omnicache": (
            omnicache.OmniCacheConfig,
            {},
            {"num_inference_steps": 10, "compute_steps": 4},
            {"filter_weight": 0.5},
        ),
        "pab": (pab.PABBenchConfig, {}, {"block_skip_range": 5}, {"timestep_skip_range": (50, 900)}),
        "seacache": (seacache.SeaCacheBenchConfig, {}, {"threshold": 0.5}, {"max_consecutive_cached": 3}),
        "taylorseer": (
            taylorseer.TaylorSeerBenchConfig,
            {},
            {"cache_interval": 7},
            {"taylor_factors_dtype": torch.bfloat16},
        ),
        "toca": (toca.ToCaConfig, {}, {"interval": 7, "num_inference_steps": 10}, {"fresh_ratio": 0.2}),
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_id_is_derived_and_unchanged(name):
    cls, base, other, changed = _configs()[name]
    assert get_method(name).config_id == METHOD_IDS.get(name, EXPECTED[name])
    default = cls(**base)
    assert default.config_id == EXPECTED[name], "the derived id of the default config moved"
    assert cls(**{**base, **other}).config_id == EXPECTED[name], "the knob and T are not part of the id"
    if changed is not None:
        moved = dataclasses.replace(default, **changed)
        assert moved.config_id != EXPECTED[name], f"{changed} changes the compute but not the id"


def test_teacache_and_magcache_ids_come_from_their_family_tables():
    from baselines import magcache, teacache

    assert get_method("teacache").config_id == "wan-e0-ret5" == f"wan-e0-ret{teacache.WAN_RET_STEPS[0]}"
    table = ",".join(f"{f}={k}/{r}" for f, (k, r) in sorted(magcache.FAMILY_DEFAULTS.items()))
    assert get_method("magcache").config_id == "family-KR:" + table
    assert table == "dit=5/0.1,flux=5/0.1,hunyuan-video=6/0.2,wan=4/0.2"
