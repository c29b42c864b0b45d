"""Fault probes on real (tiny) runs: kill -9 and SIGINT during calibration, then rerun (resumes, nothing stale
reused); a report that fails after sampling loses no record; a damaged reference or cached cost tensor met
by a later run is one line naming the file. flux-tiny at 2-4 steps, one prompt: seconds each."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np

from conftest import FLUX_TINY, assert_one_line_error, dpcache_process, finish

CALIBRATE = [
    "calibrate",
    "--pipeline",
    FLUX_TINY,
    "--sample-size",
    "0",
    "--steps",
    "2",
    "--first-full",
    "1",
    "--order",
    "0",
]


def _wait_for(pattern: str, where: Path, proc, timeout: float = 240) -> list[Path]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = sorted(where.glob(pattern)) if where.is_dir() else []
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no {pattern} in {where} after {timeout} s")


def _prompts(tmp_path: Path, n: int) -> Path:
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(["a red 1 on a black background", "a blue 2 on a white background"][:n]) + "\n")
    return f


def test_kill9_during_calibration_then_rerun_resumes_and_reuses_nothing_stale(tmp_path):
    from dpcache import CostTensor

    out, parts = tmp_path / "c.safetensors", tmp_path / "c.parts"
    prompts = tmp_path / "six.txt"
    prompts.write_text("".join(f"a red {d} on a black background\n" for d in range(1, 7)))
    args = [*CALIBRATE, "--prompts", prompts, "--out", out]
    small = ["--set", "height=16", "--set", "width=16"]
    proc = dpcache_process(*args, *small, cwd=tmp_path)
    _wait_for("*.npz", parts, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    # however many prompts finished before the kill (one or more), each is reused untouched
    stamps = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in parts.glob("*.npz")}
    assert stamps
    if len(stamps) < 6:
        assert not out.exists()
    res = finish(dpcache_process(*args, *small, cwd=tmp_path))
    assert res.rc == 0, res.err[-2000:]
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in stamps} == stamps, (
        "finished prompts are reused"
    )
    assert len(list(parts.glob("*.npz"))) == 6
    t16 = CostTensor.load(out).cost
    # the same --out at 32x32 (issue 15 #1: it reused the 16x16 parts and wrote a bit-identical tensor)
    one = tmp_path / "one.txt"
    one.write_text("a red 1 on a black background\n")  # the first prompt again, at another size
    at32 = [
        *CALIBRATE,
        "--prompts",
        one,
        "--out",
        out,
        "--work-dir",
        parts,
        "--set",
        "height=32",
        "--set",
        "width=32",
    ]
    res = finish(dpcache_process(*at32, cwd=tmp_path))
    assert res.rc == 0, res.err[-2000:]
    assert len(list(parts.glob("*.npz"))) == 7, "the part made at 16x16 is not reused at 32x32"
    assert not np.array_equal(CostTensor.load(out).cost, t16)


def test_sigint_during_calibration_is_one_line_and_exit_130(tmp_path):
    out, parts = tmp_path / "c.safetensors", tmp_path / "c.parts"
    prompts = (
        tmp_path / "six.txt"
    )  # six prompts: the interrupt lands mid-calibration even on a loaded machine
    prompts.write_text("".join(f"a red {d} on a black background\n" for d in range(1, 7)))
    proc = dpcache_process(*CALIBRATE, "--prompts", prompts, "--out", out, cwd=tmp_path)
    end = time.monotonic() + 240
    while not parts.is_dir() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.1)  # the parts folder appears once the pipeline has loaded and calibration starts
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    res = finish(proc)
    assert_one_line_error(res, "dpcache", "interrupted", rc=130)
    assert not out.exists()


def _methods(path: Path) -> list[str]:
    return [json.loads(ln)["identity"]["method"] for ln in path.read_text().splitlines() if ln.strip()]


def test_records_survive_a_failing_report_and_damaged_files_are_named(bench_cli, tmp_path, monkeypatch):
    import harness.report

    json_out, refs, cache = tmp_path / "r.jsonl", tmp_path / "refs", tmp_path / "cache"
    run = [
        "run", "--model", "flux-tiny", "--methods", "full,dpcache", "--budgets", "4", "--steps", "4",
        "--num-prompts", "1", "--calibration-prompts", "1", "--repeats", "0", "--mlflow-uri", "off",
        "--json-out", json_out, "--refs-dir", refs, "--cache-dir", cache, "--device", "cpu", "--no-progress",
    ]  # fmt: skip

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "rep" / "index.html"))

    monkeypatch.setattr(harness.report, "build_report", disk_full)
    res = bench_cli(*run, "--report", tmp_path / "rep")
    line = assert_one_line_error(res, "dpcache-bench", "--report", str(json_out))
    assert "2 records" in line
    assert _methods(json_out) == ["full", "dpcache"], "no computed record is lost"

    (ref,) = refs.glob("*.safetensors")
    ref.write_bytes(ref.read_bytes()[:64])  # a truncated reference
    assert_one_line_error(bench_cli(*run), "dpcache-bench", str(ref))
    assert len(_methods(json_out)) == 2

    ref.unlink()
    (cost,) = (cache / "dpcache").glob("*-taylor-o2-*.safetensors")  # dpcache's (orders 0, 1 built beside it)
    cost.write_bytes(cost.read_bytes()[:100])  # a truncated cached cost tensor: named, not a skip
    res = bench_cli(*run)
    assert_one_line_error(res, "dpcache-bench", str(cost))
    assert _methods(json_out)[:2] == ["full", "dpcache"]
