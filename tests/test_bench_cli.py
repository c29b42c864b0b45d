"""`dpcache-bench`: models --json, methods, a tiny run with its table and report, bad input exits 2."""

from __future__ import annotations

import json

import pytest

from harness.cli import main


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in rows}
    assert {"flux-tiny", "flux-dev", "wan-tiny", "dit-tiny"} <= names
    for r in rows:
        assert {
            "name",
            "family",
            "scale",
            "pipeline_class",
            "num_inference_steps",
            "available",
            "reason",
        } <= set(r)
        assert r["available"] or r["reason"]


def test_methods_lists_families_and_knobs(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("full", "fewer-steps", "dpcache"):
        assert f"\n{name} " in out
    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["dpcache"]["families"] == ["flux", "wan", "hunyuan-video", "dit"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--model", "nope"], "unknown model 'nope'"),
        (["run", "--model", "flux-tiny", "--random-weights", "--budgets", "x"], "--budgets must be"),
        (["run", "--model", "flux-tiny", "--random-weights", "--methods", "full,bogus"], "unknown method"),
        (
            ["run", "--model", "flux-tiny", "--random-weights", "--steps", "10", "--budgets", "20"],
            "exceeds T=10",
        ),
        (["run", "--model", "flux-tiny", "--random-weights", "--repeats", "-1"], "--repeats must be >= 0"),
        (["report", "--json-in", "/nonexistent/results.jsonl"], "no result records"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_option_exits_2(capsys):
    assert main(["run", "--model", "flux-tiny", "--frobnicate"]) == 2


@pytest.mark.parametrize("repeats", ["1", "0"])
def test_run_prints_table_and_writes_report(repeats, tmp_path, monkeypatch, capsys):
    """End to end on random weights; with --repeats 0 the wall column reads n/a and the report still builds."""
    import torch

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        rc = main(
            [
                "run",
                "--model",
                "flux-tiny",
                "--random-weights",
                "--steps",
                "10",
                "--budgets",
                "5",
                "--methods",
                "full,dpcache",
                "--num-prompts",
                "1",
                "--calibration-prompts",
                "1",
                "--repeats",
                repeats,
                "--mlflow-uri",
                f"sqlite:///{tmp_path}/mlflow.db",
                "--report",
                "rep",
                "--no-progress",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert rc == 0, out
    header = next(line for line in out.splitlines() if line.startswith("model"))
    for col in ("method", "K", "flops x", "wall x", "PSNR", "SSIM", "adher.", "cache hits"):
        assert col in header
    rows = [line.split() for line in out.splitlines() if line.startswith("flux-tiny")]
    assert [(r[1], r[2]) for r in rows] == [("full", "10"), ("dpcache", "5")]
    assert rows[1][-1] == "10"  # cache hits: 5 predicted steps × 2 CFG branches
    assert all((r[4] == "n/a") == (repeats == "0") for r in rows)  # wall x
    assert "MLflow store sqlite:///" in out and "report" in out
    pages = list((tmp_path / "rep").glob("*/index.html"))  # rep/<invocation>/index.html + rep/index.html
    assert len(pages) == 1 and (tmp_path / "rep" / "index.html").is_file()
    run_page = pages[0].read_text()
    for needle in (
        "speedup_quality.png",
        "schedules.png",
        "cost_tensor.png",
        "img/full-K10-T10-N1/prompt0",  # T and the prompt count differ from the defaults
        "<table>",
    ):
        assert needle in run_page
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2
    # `report` rebuilds from the JSON lines alone
    assert main(["report", "--json-in", "results.jsonl", "--out", "rep2"]) == 0
    assert (tmp_path / "rep2" / "index.html").is_file()


def test_ui_dry_run(capsys, tmp_path):
    assert main(["ui", "--mlflow-uri", f"sqlite:///{tmp_path}/m.db", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "127.0.0.1" in out and "mlflow ui" in out


def test_models_table_imports_no_torch_or_diffusers():
    """`dpcache-bench models` answers from the registry alone (its start-up time: benchmarks/bench_startup.py)."""
    import subprocess
    import sys

    code = (
        "import sys; from harness.cli import main; assert main(['models']) == 0; "
        "heavy = sorted(m for m in ('torch', 'diffusers', 'scipy', 'transformers') if m in sys.modules); "
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out and "flux-tiny" in out


def test_methods_catalogue_is_the_registry_and_needs_no_torch():
    """`dpcache-bench methods` reads the committed catalogue; regenerate it with
    `python -m harness.method_catalogue` when a method changes."""
    import subprocess
    import sys

    from harness.method_catalogue import CATALOGUE, build

    assert json.loads(CATALOGUE.read_text()) == build(), "stale: python -m harness.method_catalogue"
    code = (
        "import sys; from harness.cli import main; assert main(['methods']) == 0; "
        "print('HEAVY', sorted(m for m in ('torch', 'diffusers', 'baselines.dicache') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out and "\ndpcache-tuned " in out
