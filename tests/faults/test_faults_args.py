"""Fault probes, bad input (issue 15 #4, #5, #7): absurd or contradictory requests and unusable output paths
are refused on one line, exit 2, before any model loads; nothing is silently changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FLUX_TINY, assert_one_line_error

pytestmark = pytest.mark.usefixtures("no_model_loading")
A_FILE = Path(__file__)


def _bench(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run", "--model", "flux-tiny", "--json-out", str(tmp_path / "r.jsonl"), "--mlflow-uri", "off",
        "--cache-dir", str(tmp_path / "cache"), *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        (["--threads", "-2"], ["--threads"]),
        (["--threads", "0"], ["--threads", "got 0"]),  # was silently 1
        (["--calibration-prompts", "0"], ["--calibration-prompts"]),
        (["--calibration-prompts", "1000"], ["--calibration-prompts", "32"]),  # was silently capped
        (["--num-prompts", "1000000"], ["--num-prompts", "64"]),  # was a traceback after loading
        (["--steps", "100000000"], ["--steps"]),  # was 22 GB and an OOM kill after 178 s
        (["--steps", "0"], ["--steps"]),
        (["--json-out", str(A_FILE / "r.jsonl")], ["--json-out", str(A_FILE)]),  # unwritable: under a file
        (["--json-out", "."], ["--json-out", "is a directory"]),
        (["--report", str(A_FILE)], ["--report", str(A_FILE)]),  # was a traceback after sampling, no record
        (["--cache-dir", str(A_FILE)], ["--cache-dir", str(A_FILE)]),
        (["--device", "tpu"], ["--device"]),
    ],
)
def test_bench_run_refuses_before_loading(bench_cli, tmp_path, extra, names):
    assert_one_line_error(bench_cli(*_bench(tmp_path, *extra)), "dpcache-bench", *names)
    assert not (tmp_path / "r.jsonl").exists()


def test_bench_report_out_an_existing_file(bench_cli, tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_text("")
    res = bench_cli("report", "--json-in", src, "--out", A_FILE)
    assert_one_line_error(res, "dpcache-bench", "--out", str(A_FILE))
    res = bench_cli("report", "--json-in", src, "--out", tmp_path / "rep", "--benchmarks-md", tmp_path)
    assert_one_line_error(res, "dpcache-bench", "--benchmarks-md")


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["generate", "--prompt", "x", "--no-cache", "--steps", "0"], ["--steps"]),  # was ZeroDivisionError
        (["calibrate", "--steps", "0", "--out", "c.safetensors"], ["--steps"]),
        (["generate", "--prompt", "x", "--no-cache", "--steps", "100000000"], ["--steps"]),
        (["generate", "--prompt", "x", "--no-cache", "--height", "65536", "--width", "65536"], ["height"]),
        (["generate", "--prompt", "x", "--no-cache", "--set", "height=65536"], ["height"]),
        (["calibrate", "--steps", "900", "--out", "c.safetensors"], ["needs about", "GB"]),
        (["calibrate", "--sample-size", "-1", "--out", "c.safetensors"], ["--sample-size"]),
        (
            ["calibrate", "--steps", "2", "--first-full", "1", "--out", "c.safetensors"],
            ["--steps", "order-2"],
        ),
        (["calibrate", "--prompts", "no-such-file.txt", "--out", "c.safetensors"], ["no-such-file.txt"]),
        (
            ["generate", "--prompt", "x", "--no-cache", "--out", str(A_FILE.parent)],
            ["--out", "is a directory"],
        ),
        (["generate", "--prompt", "x", "--no-cache", "--out", str(A_FILE / "o.png")], ["--out", str(A_FILE)]),
        (["generate", "--prompt", "x", "--no-cache", "--guidance", "nan"], ["guidance_scale"]),
        (
            ["generate", "--prompt", "x", "--cost", "missing.safetensors", "--budget", "3"],
            ["missing.safetensors"],
        ),
    ],
)
def test_dpcache_pipeline_commands_refuse_before_loading(dpcache_cli, tmp_path, monkeypatch, argv, names):
    monkeypatch.chdir(tmp_path)
    res = dpcache_cli(argv[0], "--pipeline", FLUX_TINY, *argv[1:])
    assert_one_line_error(res, "dpcache", *names)
    assert not list(tmp_path.iterdir()), "nothing is written for a refused request"
