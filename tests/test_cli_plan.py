"""CLI tests: `dpcache plan / convert / inspect`, JSON output, one-line errors with exit code 2."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpcache.cli import main, parse_budgets
from dpcache.errors import DPCacheError

ROOT = Path(__file__).parents[1]
FLUX_NPY = ROOT / "tests" / "data" / "official" / "flux_dev_T50_cost.npy"
FLUX = ROOT / "dpcache" / "data" / "official" / "flux_dev_T50_cost.safetensors"
WAN = ROOT / "dpcache" / "data" / "official" / "wan21_i2v_T50_cost.safetensors"
FLUX_K13 = [0, 1, 2, 4, 7, 10, 14, 19, 23, 28, 34, 40, 45]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dpcache: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in err


def test_plan_json_single_budget(capsys):
    code, out, err = run(capsys, "plan", "--cost", FLUX, "--budget", "13", "--solver", "official", "--json")
    assert code == 0 and err == ""
    record = json.loads(out)
    assert record["key_steps"] == FLUX_K13 and record["solver"] == "official"
    assert record["path_cost"] == pytest.approx(1031.8375)


def test_plan_json_several_budgets_and_all(capsys):
    code, out, _ = run(capsys, "plan", "--cost", FLUX, "--budget", "9,13", "--json")
    records = json.loads(out)
    assert code == 0 and [len(r["key_steps"]) for r in records] == [9, 13]
    code, out, _ = run(capsys, "plan", "--cost", FLUX, "--budget", "all", "--json")
    records = json.loads(out)
    assert code == 0 and [r["budget"] for r in records] == list(range(6, 51))


def test_plan_uses_metadata_defaults(capsys):
    code, out, _ = run(capsys, "plan", "--cost", WAN, "--budget", "12", "--solver", "official", "--json")
    steps = json.loads(out)["key_steps"]
    assert code == 0 and steps[:4] == [0, 1, 2, 3] and steps[-1] == 49


def test_plan_table_with_strip(capsys):
    code, out, _ = run(capsys, "plan", "--cost", FLUX, "--budget", "13", "--solver", "official")
    assert code == 0
    row = next(line for line in out.splitlines() if line.strip().startswith("13 "))
    strip = row.split()[2]
    assert len(strip) == 50 and strip.count("█") == 13 and strip.startswith("███·█··█")


def test_plan_bare_npy_takes_metadata_from_flags(capsys):
    code, out, _ = run(
        capsys,
        "plan",
        "--cost",
        FLUX_NPY,
        "--budget",
        "13",
        "--steps",
        "50",
        "--first-full",
        "3",
        "--json",
        "--solver",
        "official",
    )
    assert code == 0 and json.loads(out)["key_steps"] == FLUX_K13


def test_parse_budgets():
    assert parse_budgets("13") == [13]
    assert parse_budgets("13, 9,9") == [9, 13]
    assert parse_budgets("5-7") == [5, 6, 7]
    assert parse_budgets("all") is None
    with pytest.raises(DPCacheError):
        parse_budgets("thirteen")


@pytest.fixture
def nan_npy(tmp_path) -> Path:
    arr = np.load(FLUX_NPY)
    arr[3, 4, 5] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, arr)
    return path


@pytest.fixture
def pickle_as_safetensors(tmp_path) -> Path:
    path = tmp_path / "cost.safetensors"
    path.write_bytes(pickle.dumps(np.load(FLUX_NPY)))
    return path


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--cost", FLUX, "--budget", "51"], "exceeds the number of steps T=50"),
        (["--cost", FLUX, "--budget", "2"], "mandatory"),
        (["--cost", FLUX, "--budget", "0", "--first-full", "0"], ">= 1"),
        (["--cost", "{nan}", "--budget", "13"], "NaN"),
        (["--cost", ROOT / "pyproject.toml", "--budget", "13"], "not a safetensors cost tensor"),
        (["--cost", "{pickle}", "--budget", "13"], "is a pickle; convert it with `dpcache convert"),
        (["--cost", FLUX, "--budget", "13", "--max-jump", "3"], "no finite-cost schedule for K=13"),
        (["--cost", FLUX, "--budget", "4"], "finite-cost budgets are K=6..50"),
        (["--cost", FLUX, "--budget", "13", "--steps", "40"], "num_steps: expected 40, found 50"),
        (["--cost", FLUX, "--budget", "x"], "--budget must be"),
        (["--cost", "/nonexistent/cost.safetensors", "--budget", "13"], "no such cost tensor file"),
    ],
)
def test_plan_errors_are_one_line(capsys, nan_npy, pickle_as_safetensors, extra, fragment):
    subst = {"{nan}": str(nan_npy), "{pickle}": str(pickle_as_safetensors)}
    argv = ["plan", *(subst.get(str(a), str(a)) for a in extra)]
    code, out, err = run(capsys, *argv)
    assert out == ""
    assert_one_line_error(code, err, fragment)


def test_subprocess_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "dpcache.cli", "plan", "--cost", str(FLUX), "--budget", "51"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert_one_line_error(done.returncode, done.stderr, "exceeds the number of steps")


def test_convert_and_inspect(capsys, tmp_path):
    src = tmp_path / "released.pkl"
    with open(src, "ab") as fh:
        pickle.dump(np.load(FLUX_NPY), fh)
    out = tmp_path / "flux.safetensors"
    code, stdout, _ = run(
        capsys,
        "convert",
        src,
        "--out",
        out,
        "--model-id",
        "black-forest-labs/FLUX.1-dev",
        "--steps",
        "50",
        "--predictor",
        "taylor",
        "--order",
        "2",
        "--first-full",
        "3",
        "--last-full",
        "0",
    )
    assert code == 0 and out.exists() and "wrote" in stdout
    code, stdout, _ = run(capsys, "inspect", out)
    assert code == 0
    assert "black-forest-labs/FLUX.1-dev" in stdout and "converted:released.pkl" in stdout
    assert "finite fraction" in stdout and "K=6..50" in stdout
    code, _, err = run(capsys, "convert", src, "--out", tmp_path / "x.bin")
    assert_one_line_error(code, err, "--out must end in .safetensors")
    code, _, err = run(capsys, "convert", src, "--out", tmp_path / "y.safetensors", "--steps", "20")
    assert_one_line_error(code, err, "--steps says 20")


def test_inspect_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "flux.png"
    code, stdout, _ = run(capsys, "inspect", FLUX, "--plot", png)
    assert code == 0 and png.stat().st_size > 1000 and "wrote" in stdout
