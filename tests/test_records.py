"""The typed result record: nested parts, schema version, JSON round trip, v1 migration, config tags with T
and prompt count, compute matched on the evaluation prompts, and a JSON-lines reader that names bad lines."""

from __future__ import annotations

import json
import typing
import warnings
from dataclasses import fields

import pytest

from harness.metrics import MetricResult, Unavailable
from harness.record_files import RecordFileWarning, read_jsonl
from harness.records import (
    RECORD_VERSION,
    Identity,
    RecordFormatError,
    References,
    ResultRecord,
    Speed,
    config_tag,
    parse_tag,
    variant_tag,
)


def _rec(**kw) -> ResultRecord:
    base = dict(suite="flux", model="flux-tiny", scale="tiny", method="dpcache", budget=13, num_steps=50)
    base |= dict(knobs={"M": 3, "O": 2}, prompts=["a 0", "a 1"], reference_keys=["k0", "k1"], device="cpu")
    base.update(kw)
    return ResultRecord.create(**base)


def test_record_is_nested_versioned_and_round_trips():
    r = _rec(
        psnr=MetricResult("psnr", 30.5, (30.0, 31.0)),
        lpips=Unavailable("AlexNet weights missing"),
        schedule=[0, 3, 49],
        cache_hits=[37, 37],
        measured_k=13.2,
        extra_metrics={"sfid": Unavailable("no stats")},
    )
    d = json.loads(r.to_json())
    assert d["record_version"] == RECORD_VERSION == 2
    assert set(d) == {
        "record_version",
        "identity",
        "speed",
        "timing",
        "quality",
        "schedule",
        "references",
    } | {
        "provenance",
        "outcome",
        "unavailable",
    }
    assert d["identity"]["config_tag"] == "dpcache-K13-M3-O2" and d["identity"]["num_prompts"] == 2
    assert (
        d["identity"]["device_class"] == "cpu" and d["speed"]["measured_k"] == 13.2 and d["speed"]["matched"]
    )
    assert d["quality"]["psnr"] == 30.5 and d["quality"]["per_prompt"] == {"psnr": [30.0, 31.0]}
    assert d["quality"]["lpips"] is None and d["schedule"] == {"key_steps": [0, 3, 49], "full_steps": 3}
    assert d["unavailable"] == {"lpips": "AlexNet weights missing", "sfid": "no stats"}
    back = ResultRecord.from_dict(d)
    assert (
        isinstance(back.quality.lpips, Unavailable) and back.quality.lpips.reason == "AlexNet weights missing"
    )
    assert back.to_dict() == r.to_dict()


def test_no_field_is_a_one_or_many_union():
    """v1 had `cache_hits: int | list[int]` and `reference_key: str | list[str]`: every reader reshaped them."""
    for part in (Identity, Speed, References):
        hints = typing.get_type_hints(part)
        for f in fields(part):
            args = typing.get_args(hints[f.name])
            scalars = {a for a in args if a in (int, str, float)}
            lists = {a for a in args if typing.get_origin(a) is list}
            assert not (scalars and lists), f"{part.__name__}.{f.name}: {hints[f.name]}"


def test_v1_records_are_migrated():
    v1 = {
        "suite": "dit", "model": "dit-tiny", "scale": "tiny", "method": "teacache", "budget": 13, "num_steps": 50,
        "config_tag": "teacache-K13", "psnr": 22.0, "flops_speedup": 3.21, "lpips": None, "cache_hits": 120,
        "reference_key": "abc", "prompts": ["0"] * 8, "knobs": {"rel_l1_thresh": 0.3, "measured_K": 13.1},
        "extra_metrics": {"measured_k": 15.6}, "unavailable": {"lpips": "no weights"},
        "timing": {"repeats": 5, "warmup": 1, "method": [1.0] * 5, "full": [3.0] * 5},
    }  # fmt: skip
    r = ResultRecord.from_dict(v1)
    assert r.speed.cache_hits == [120] and r.references.keys == ["abc"] and r.identity.num_prompts == 8
    assert r.speed.measured_k == 15.6 and r.unmatched  # 15.6 is 20 % off K = 13
    assert r.identity.knobs == {"rel_l1_thresh": 0.3, "calibration_measured_K": 13.1}
    assert r.timing.method_s == [1.0] * 5 and isinstance(r.quality.lpips, Unavailable)
    with pytest.raises(RecordFormatError, match="without 'model'"):
        ResultRecord.from_dict({"method": "x", "num_steps": 5})
    with pytest.raises(RecordFormatError, match="record_version 7"):
        ResultRecord.from_dict({"record_version": 7, "identity": {}})


def test_matched_is_computed_on_the_evaluation_prompts():
    assert _rec(measured_k=13.6).speed.matched is True  # 4.6 % off
    assert _rec(measured_k=12.3).speed.matched is False and _rec(measured_k=12.3).unmatched
    assert _rec(method="full", budget=50, knobs={}, measured_k=50.0).speed.matched is None
    assert _rec(budget=50, measured_k=50.0).speed.matched is None  # K = T: nothing skipped


def test_config_tags_carry_t_and_prompt_count_off_the_defaults():
    """Old: `--steps 20 --num-prompts 1` shared `dpcache-K13-M3-O2` with the T=50, 8-prompt baseline."""
    base = config_tag("dpcache", 13, M=3, O=2)
    assert variant_tag(base, 50, 50, 8, 8) == "dpcache-K13-M3-O2"
    assert variant_tag(base, 20, 50, 1, 8) == "dpcache-K13-M3-O2-T20-N1"
    assert variant_tag("fewer-steps-K9", 50, 50, 2, 8) == "fewer-steps-K9-N2"
    assert parse_tag("dpcache-K13-M3-O2-T20-N1") == ("dpcache", 13, True)
    assert parse_tag("fewer-steps-K9") == ("fewer-steps", 9, False)
    assert parse_tag("dpcache-o1-K5-M3-O1") == ("dpcache-o1", 5, False)


def test_create_refuses_unknown_fields():
    with pytest.raises(TypeError, match="psnrr"):
        _rec(psnrr=1.0)


def test_jsonl_reader_names_a_torn_line_and_keeps_the_rest(tmp_path):
    """Old: a record after a torn line was read, but the torn line itself vanished without a word."""
    path = tmp_path / "results.jsonl"
    good = json.dumps({"invocation": "inv1", **_rec(psnr=30.0).to_dict()})
    later = json.dumps({"invocation": "inv2", **_rec(budget=9, psnr=25.0).to_dict()})
    path.write_text(good + "\n" + good[:57] + "\n" + later + "\n" + '{"record_version": 2, "identity": 3}\n')
    with pytest.warns(RecordFileWarning) as caught:
        got = read_jsonl(path)
    assert [(inv, r.config_tag) for inv, r in got] == [
        ("inv1", "dpcache-K13-M3-O2"),
        ("inv2", "dpcache-K9-M3-O2"),
    ]
    messages = [str(w.message) for w in caught]
    assert messages[0].startswith(f"{path}:2: skipped an invalid record line: not JSON")
    assert messages[1].startswith(f"{path}:4: skipped an invalid record line")
    clean = tmp_path / "clean.jsonl"
    clean.write_text(good + "\n\n" + later + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid file (blank lines allowed) reads without a warning
        assert len(read_jsonl(clean)) == 2


def test_report_reader_warns_on_torn_lines_too(tmp_path):
    from harness.report.data import load_records

    path = tmp_path / "r.jsonl"
    path.write_text(
        '{"invocation": "a", "model": "m", "meth\n' + json.dumps({"invocation": "b", **_rec().to_dict()})
    )
    with pytest.warns(RecordFileWarning, match=r"r\.jsonl:1: skipped"):
        runs = load_records(path)
    assert list(runs) == ["b"] and runs["b"][0]["config_tag"] == "dpcache-K13-M3-O2"
