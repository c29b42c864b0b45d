"""`dpcache calibrate` and `dpcache generate` end to end on a saved tiny pipeline, and their errors."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from dpcache.cli import main

T = 8


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    from harness.zoo import flux_tiny

    path = tmp_path_factory.mktemp("flux-random")
    pipe = flux_tiny.build_pipeline(seed=0)
    pipe.save_pretrained(path)
    kwargs = flux_tiny.call_kwargs("x")
    kwargs.pop("prompt")
    (path / "dpcache_call.json").write_text(json.dumps(kwargs))
    return path


@pytest.fixture(scope="module")
def calibrated(pipeline_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "cost.safetensors"
    prompts = out.parent / "prompts.txt"
    prompts.write_text("a red 1 on a black background\na blue 7 on a white background\n")
    code = main(
        [
            "calibrate",
            "--pipeline",
            str(pipeline_dir),
            "--prompts",
            str(prompts),
            "--sample-size",
            "2",
            "--steps",
            str(T),
            "--out",
            str(out),
        ]
    )
    assert code == 0 and out.exists()
    return out


def _one_line_error(capsys, code: int, needle: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("dpcache: error:") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err and needle in err, err


def test_calibrate_then_plan_then_generate(pipeline_dir, calibrated, tmp_path, capsys):
    assert main(["plan", "--cost", str(calibrated), "--budget", "5", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["key_steps"][:3] == [0, 1, 2] and len(planned["key_steps"]) == 5
    out = tmp_path / "img.png"
    code = main(
        [
            "generate",
            "--pipeline",
            str(pipeline_dir),
            "--prompt",
            "a red 1 on a black background",
            "--steps",
            str(T),
            "--cost",
            str(calibrated),
            "--budget",
            "5",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert f"cond: 5 key steps {planned['key_steps']}, {T - 5} predicted" in text
    base = tmp_path / "full.png"
    assert (
        main(
            [
                "generate",
                "--pipeline",
                str(pipeline_dir),
                "--prompt",
                "a red 1",
                "--steps",
                str(T),
                "--no-cache",
                "--out",
                str(base),
            ]
        )
        == 0
    )
    assert base.exists()


def test_calibration_resumes_from_its_parts(pipeline_dir, calibrated, capsys):
    parts = calibrated.with_suffix(".parts")
    assert len(list(parts.glob("*.npz"))) == 2
    mtimes = {p: p.stat().st_mtime_ns for p in parts.glob("*.npz")}
    prompts = calibrated.parent / "prompts.txt"
    again = calibrated.parent / "again.safetensors"
    assert (
        main(
            [
                "calibrate",
                "--pipeline",
                str(pipeline_dir),
                "--prompts",
                str(prompts),
                "--sample-size",
                "2",
                "--steps",
                str(T),
                "--work-dir",
                str(parts),
                "--out",
                str(again),
            ]
        )
        == 0
    )
    assert {p: p.stat().st_mtime_ns for p in parts.glob("*.npz")} == mtimes


def test_generate_refuses_a_tensor_for_another_step_count(pipeline_dir, calibrated, capsys):
    code = main(
        [
            "generate",
            "--pipeline",
            str(pipeline_dir),
            "--prompt",
            "a",
            "--steps",
            "10",
            "--cost",
            str(calibrated),
            "--budget",
            "5",
        ]
    )
    _one_line_error(capsys, code, "num_steps: expected 10, found 8")


def test_generate_refuses_a_tensor_of_another_model(tmp_path, calibrated, pipeline_dir, capsys):
    import shutil

    other = tmp_path / "other-model"
    shutil.copytree(pipeline_dir, other)
    code = main(
        [
            "generate",
            "--pipeline",
            str(other),
            "--prompt",
            "a",
            "--steps",
            str(T),
            "--cost",
            str(calibrated),
            "--budget",
            "5",
        ]
    )
    _one_line_error(capsys, code, "calibrated for model")


def test_generate_refuses_a_pickle(tmp_path, pipeline_dir, capsys):
    bad = tmp_path / "cost.safetensors"
    bad.write_bytes(pickle.dumps(np.zeros((T, T + 1, T + 1))))
    code = main(
        [
            "generate",
            "--pipeline",
            str(pipeline_dir),
            "--prompt",
            "a",
            "--steps",
            str(T),
            "--cost",
            str(bad),
            "--budget",
            "5",
        ]
    )
    _one_line_error(capsys, code, "pickle")


def test_generate_needs_cost_or_no_cache(pipeline_dir, capsys):
    code = main(["generate", "--pipeline", str(pipeline_dir), "--prompt", "a"])
    _one_line_error(capsys, code, "--no-cache")


def test_generate_unreachable_budget(pipeline_dir, calibrated, capsys):
    code = main(
        [
            "generate",
            "--pipeline",
            str(pipeline_dir),
            "--prompt",
            "a",
            "--steps",
            str(T),
            "--cost",
            str(calibrated),
            "--budget",
            "2",
        ]
    )
    _one_line_error(capsys, code, "")


def test_missing_pipeline_is_one_line(tmp_path, capsys):
    code = main(["generate", "--pipeline", str(tmp_path / "nope"), "--prompt", "a", "--no-cache"])
    _one_line_error(capsys, code, "cannot load pipeline")
