"""Fault probes, damaged files (issue 15 #7, #8, #9): every kind of file the project reads, truncated or
corrupt, gives one error naming the file (or, for a cache, a warning naming it and a fresh computation); no
stale or damaged artefact is reused and no computed record is lost."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, assert_one_line_error


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])


@pytest.fixture
def cost_file(tmp_path) -> Path:
    from dpcache import CostTensor

    rng = np.random.default_rng(0)
    path = tmp_path / "cost.safetensors"
    CostTensor.from_array(rng.random((8, 9, 9)), model_id="m").save(path)
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickle", "empty"])
@pytest.mark.parametrize("command", ["plan", "inspect"])
def test_corrupt_cost_tensor_is_one_line_naming_the_file(dpcache_cli, cost_file, damage, command):
    if damage == "truncated":
        _truncate(cost_file)
    elif damage == "garbage":
        cost_file.write_bytes(b"\x00\x01garbage" * 50)
    elif damage == "pickle":
        cost_file.write_bytes(pickle.dumps({"cost": [1, 2, 3]}))
    else:
        cost_file.write_bytes(b"")
    argv = ["plan", "--cost", cost_file, "--budget", "4"] if command == "plan" else ["inspect", cost_file]
    assert_one_line_error(dpcache_cli(*argv), "dpcache", str(cost_file))


def test_truncated_reference_is_one_error_naming_the_file_and_never_replaced(tmp_path, capsys):
    import argparse

    import torch

    from dpcache.cli_args import run_main
    from harness.references import ReferenceStore

    store = ReferenceStore(tmp_path / "refs")
    path = store.put("k1", torch.rand(1, 3, 8, 8), {"prompt": "p"})
    _truncate(path)
    damaged = path.read_bytes()
    calls = []

    def fetch(args):
        store.get_or_compute("k1", lambda: calls.append(1) or torch.zeros(1), {"prompt": "p"})

    from conftest import Result

    rc = run_main("dpcache-bench", fetch, argparse.Namespace())
    res = Result(rc, "", capsys.readouterr().err)
    assert_one_line_error(res, "dpcache-bench", str(path), "--update-references")
    assert not calls and path.read_bytes() == damaged, (
        "a damaged reference is neither reused nor replaced silently"
    )


@pytest.mark.parametrize("damage", ["truncated", "abc"])
def test_damaged_budget_cache_is_named_kept_aside_and_searched_again(tmp_path, capsys, damage):
    from harness.budget import BudgetMatch, cached_search

    path = tmp_path / "budgets.json"
    entries = {f"key{i}": BudgetMatch("m", 13, "t", 0.1 * i, 13.0, True).to_dict() for i in range(32)}
    path.write_text(json.dumps(entries))
    if damage == "truncated":
        _truncate(path, 0.7)
    else:
        path.write_text('"abc"')
    damaged = path.read_bytes()
    searched = []
    result = cached_search(
        path, "key3", lambda: searched.append(1) or BudgetMatch("m", 13, "t", 9.0, 13.0, True)
    )
    err = capsys.readouterr().err
    assert searched and result.value == 9.0, "the damaged cache's entry must not be reused"
    (aside,) = tmp_path.glob("budgets.json.corrupt-*")
    assert aside.read_bytes() == damaged, "the damaged file's entries are kept, not dropped"
    assert len([ln for ln in err.splitlines() if str(path) in ln]) == 1 and str(aside) in err
    assert json.loads(path.read_text())["key3"]["value"] == 9.0


@pytest.mark.parametrize("damage", ["truncated", "nan", "not-an-object"])
def test_damaged_expected_json_is_one_error_naming_the_file(tmp_path, damage):
    from harness.gates import ExpectedFormatError, load_expected

    path = tmp_path / "expected.json"
    shutil.copy(ROOT / "suites" / "flux" / "expected.json", path)
    if damage == "truncated":
        _truncate(path)
    elif damage == "nan":
        text = path.read_text()
        data = json.loads(text)
        model = next(iter(data["models"].values()))
        _tag, specs = next(iter(model["configs"].items()))
        next(iter(specs.values()))["value"] = float("nan")
        path.write_text(json.dumps(data))
    else:
        path.write_text("[1, 2]")
    with pytest.raises(ExpectedFormatError) as exc:
        load_expected(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_damaged_schedules_json_is_one_error_naming_the_file(tmp_path):
    from suites.common import SchedulesFormatError, Suite, load_schedules

    suite = Suite("flux", tmp_path, {"tiny": "flux-tiny"})
    shutil.copy(ROOT / "suites" / "flux" / "schedules.json", suite.schedules_file)
    _truncate(suite.schedules_file)
    with pytest.raises(SchedulesFormatError, match=str(suite.schedules_file)):
        load_schedules(suite)


def test_torn_json_lines_name_the_line_and_lose_no_later_record(tmp_path):
    from harness.record_files import read_jsonl

    src = ROOT / "reports" / "results-tiny.jsonl"
    lines = src.read_text().splitlines()[:3]
    path = tmp_path / "results.jsonl"
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # a torn last line (killed writer)
    with path.open("a") as f:
        f.write("\n" + lines[2] + "\n")  # a later run appends
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = read_jsonl(path)
    assert len(got) == 2, "both complete records are read"
    (w,) = [w for w in caught if "skipped" in str(w.message)]
    assert f"{path}:2:" in str(w.message)


@pytest.mark.parametrize("damage", ["truncated", "not-json"])
def test_damaged_schedule_file_is_refused_naming_it(dpcache_cli, tmp_path, damage, no_model_loading):
    from dpcache.errors import DPCacheError
    from dpcache.hooks import DPCacheConfig

    path = tmp_path / "tuned.json"
    payload = {"format": "dpcache-schedule", "format_version": 1, "model_id": "m", "num_steps": 8}
    path.write_text(json.dumps(payload))
    if damage == "truncated":
        _truncate(path)
    else:
        path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DPCacheError, match=str(path)):
        DPCacheConfig(num_inference_steps=8, schedule_file=path)
    from conftest import FLUX_TINY

    res = dpcache_cli(
        "generate", "--pipeline", FLUX_TINY, "--prompt", "x", "--schedule-file", path, "--steps", "8"
    )
    assert_one_line_error(res, "dpcache", str(path))


def test_report_never_reads_outside_its_artifacts(bench_cli, tmp_path):
    """Issue 15 #8: a record with "invocation": "../secret" made `report` copy images from outside."""
    from report_synth import INVOCATION, make_run

    src, art = make_run(tmp_path)
    secret_png = next((art / INVOCATION).rglob("prompt00.png"))
    rel = secret_png.relative_to(art / INVOCATION)
    secret = art.parent / "secret" / rel  # art/../secret/<model>/<tag>/prompt00.png
    secret.parent.mkdir(parents=True)
    secret.write_bytes(secret_png.read_bytes()[:-4] + b"SECR")  # distinct bytes
    line = json.loads(src.read_text().splitlines()[0])
    line["invocation"] = "../secret"
    with src.open("a") as f:
        f.write(json.dumps(line) + "\n")
    res = bench_cli("report", "--json-in", src, "--out", tmp_path / "rep", "--artifacts", art)
    assert res.rc == 0, res.err
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    copied = [p for p in (tmp_path / "rep").rglob("*") if p.is_file()]
    assert copied and all(hashlib.sha256(p.read_bytes()).hexdigest() != digest for p in copied)
