"""The nightly's fan-out on CPU: the bench job's entry point (`pytest suites/<suite> --shard I/N --shard-by
budget`, here its quality tests only) for two shards at tiny scale against a local MLflow server, then the gather job's steps — records
from MLflow, one report, one comparison with earlier runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow_server import MlflowServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server(tmp_path):
    (tmp_path / "mlflow").mkdir()
    srv = MlflowServer(tmp_path / "mlflow").start()
    yield srv
    srv.kill()


def _shard(i: int, tmp_path: Path, uri: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "pytest", "suites/flux/test_flux.py::test_quality", "--shard", f"{i}/2", "--shard-by", "budget",
        "--scale", "tiny", "--methods", "full,dpcache", "--budgets", "4", "--steps", "8", "--num-prompts", "1",
        "--repeats", "0", "--mlflow-uri", uri, "--experiment", "dpcache-flux-tiny-nightly",
        "--json-out", str(tmp_path / f"results-flux-{i}.jsonl"), "--cache-dir", str(tmp_path / "cache"),
        "-p", "no:cacheprovider", "-q", "-n", "0",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_two_shards_then_gather_report_and_compare(server, tmp_path):
    from harness.cli import main as bench
    from harness.sharding import gather

    since = int(time.time() * 1000) - 1000
    shards = [_shard(i, tmp_path, server.uri) for i in (1, 2)]
    for res in shards:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    local = [
        json.loads(x) for i in (1, 2) for x in (tmp_path / f"results-flux-{i}.jsonl").read_text().splitlines()
    ]
    # the two shards split the work: full-K8 in one, dpcache-K4 in the other (T = 8, 1 prompt: in the tags), nothing twice
    assert sorted(r["identity"]["config_tag"] for r in local) == ["dpcache-K4-M3-O2-T8-N1", "full-K8-T8-N1"]
    # every shard of a night runs one commit (a tree changed between the two shards gives two: gather each)
    shas = sorted({r["provenance"]["git_sha"] or "unknown" for r in local})  # the run tag for None
    night = tmp_path / "results-nightly.jsonl"
    parts = [tmp_path / f"night-{k}.jsonl" for k in range(len(shas))]
    counts = [gather(server.uri, sha, since, part) for sha, part in zip(shas, parts)]
    assert sum(counts) == 2, "the gather reads every shard's records from MLflow"
    night.write_text("".join(part.read_text() for part in parts))
    gathered = [json.loads(x) for x in night.read_text().splitlines()]
    assert sorted(r["identity"]["config_tag"] for r in gathered) == [
        "dpcache-K4-M3-O2-T8-N1",
        "full-K8-T8-N1",
    ]
    assert bench(["report", "--json-in", str(night), "--out", str(tmp_path / "rep")]) == 0
    pages = list((tmp_path / "rep").rglob("index.html"))
    assert pages and any("dpcache" in p.read_text() for p in pages)
    hist = tmp_path / "rep" / "history"
    rc = bench(
        ["history", "--json-in", str(night), "--mlflow-uri", server.uri, "--out", str(hist), "--no-fail"]
    )
    assert rc == 0 and (hist / "index.html").is_file()
