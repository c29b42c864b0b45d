"""kill -9 while a reference, a knob search's cache or a report is being written, then rerun; two processes on
one cache and one reference store. Each asserts: nothing partial or stale is read, the rerun completes, every
computed record is in the JSON lines. flux-tiny, 4 steps, one prompt."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, finish, process_env

# A child `dpcache-bench` whose os.replace stalls (prints STALL, sleeps) when the destination's name contains
# $STALL_ON: the kill lands while that file's temp copy is written and not yet renamed into place.
CHILD = """
import os, sys, time
real, pattern = os.replace, os.environ.get("STALL_ON")
def stalled(src, dst, *a, **k):
    if pattern and pattern in os.path.basename(str(dst)):
        print("STALL", dst, flush=True)
        time.sleep(600)
    return real(src, dst, *a, **k)
os.replace = stalled
from harness.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _bench(*argv, stall_on: str | None = None) -> subprocess.Popen:
    env = process_env() | ({"STALL_ON": stall_on} if stall_on else {})
    cmd = [sys.executable, "-c", CHILD, *map(str, argv)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_at_stall(proc: subprocess.Popen, timeout: float = 300) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if line.startswith("STALL"):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return line.split(None, 1)[1].strip()
        if not line and proc.poll() is not None:
            raise AssertionError(f"ended before the stall: {proc.stderr.read()[-2000:]}")
    proc.kill()
    raise AssertionError("no stall")


def _run_args(tmp_path: Path, methods: str, budgets: str, name: str = "r") -> list:
    return [
        "run", "--model", "flux-tiny", "--methods", methods, "--budgets", budgets, "--steps", "4",
        "--num-prompts", "1", "--calibration-prompts", "1", "--repeats", "0", "--mlflow-uri", "off",
        "--json-out", tmp_path / f"{name}.jsonl", "--refs-dir", tmp_path / "refs", "--cache-dir",
        tmp_path / "cache", "--device", "cpu", "--no-progress",
    ]  # fmt: skip


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _no_partial(folder: Path) -> None:
    """Every JSON file in `folder` parses; temp files are never named like the files readers look for."""
    for p in folder.rglob("*.json"):
        json.loads(p.read_text())


def test_kill9_while_writing_a_reference_then_rerun(tmp_path):
    args = _run_args(tmp_path, "full", "4")
    dst = _kill_at_stall(_bench(*args, stall_on=".safetensors"))
    refs = tmp_path / "refs"
    assert Path(dst).parent == refs and not Path(dst).exists(), "the kill left no reference in place"
    assert _records(tmp_path / "r.jsonl") == []
    res = finish(_bench(*args))
    assert res.rc == 0, res.err[-2000:]
    (ref,) = refs.glob("*.safetensors")
    from safetensors.torch import load_file

    assert load_file(str(ref))  # a complete file
    assert [r["identity"]["method"] for r in _records(tmp_path / "r.jsonl")] == ["full"]


def test_kill9_during_a_knob_search_then_rerun(tmp_path):
    args = _run_args(tmp_path, "fora", "2")
    _kill_at_stall(_bench(*args, stall_on="budgets.json"))
    _no_partial(tmp_path / "cache")
    res = finish(_bench(*args))
    assert res.rc == 0, res.err[-2000:]
    _no_partial(tmp_path / "cache")
    (budgets,) = (tmp_path / "cache").rglob("budgets.json")
    assert json.loads(budgets.read_text()), "the rerun's search result is cached"
    recs = _records(tmp_path / "r.jsonl")
    assert [r["identity"]["method"] for r in recs] == ["fora"]


def test_kill9_while_building_a_report_then_rerun(tmp_path):
    args = _run_args(tmp_path, "full", "4")
    assert finish(_bench(*args)).rc == 0
    out = tmp_path / "rep"
    report = ["report", "--json-in", tmp_path / "r.jsonl", "--out", out]
    _kill_at_stall(_bench(*report, stall_on="index.html"))
    assert not any(p.name == "index.html" for p in out.rglob("*")), "no half-written page in place"
    res = finish(_bench(*report))
    assert res.rc == 0, res.err[-2000:]
    pages = list(out.rglob("index.html"))
    assert pages and all("</html>" in p.read_text() for p in pages)


def test_two_processes_share_one_cache_and_one_reference_store(tmp_path):
    """Both calibrate, search and write the same reference at once: both finish, both records are kept, and
    the shared files are whole and agree."""
    procs = [_bench(*_run_args(tmp_path, "full,dpcache", "2", name=n)) for n in ("a", "b")]
    results = [finish(p, timeout=600) for p in procs]
    assert all(r.rc == 0 for r in results), [r.err[-1500:] for r in results]
    a, b = (_records(tmp_path / f"{n}.jsonl") for n in ("a", "b"))
    assert [r["identity"]["method"] for r in a] == [r["identity"]["method"] for r in b] == ["full", "dpcache"]
    assert a[1]["quality"]["psnr"] == b[1]["quality"]["psnr"], "same reference, same cost tensor"
    assert len(list((tmp_path / "refs").glob("*.safetensors"))) == 1
    _no_partial(tmp_path / "cache")
    assert not list(tmp_path.rglob("*.tmp")), "no temp file left behind"
