"""The MLflow UI in headless Chromium over a store with one parent run: its summary artifact is shown (PNG
kept under reports/ci-artifacts/ for CI); the `computed` metric of two children charts two schedules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from mlflow_server import MlflowServer

from harness.records import ResultRecord
from harness.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
OUT = ROOT / "reports" / "ci-artifacts"
COMPARE_PNG = os.environ.get("DPCACHE_MLFLOW_COMPARE_PNG")  # also save the schedule comparison there


@pytest.fixture(scope="module")
def browser() -> str:
    exe = next((p for p in map(shutil.which, BROWSERS) if p), None)
    if exe is None:
        why = f"no headless Chromium ({', '.join(BROWSERS)}) on PATH; install Debian's `chromium`"
        if os.environ.get("DPCACHE_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return exe


def chromium(exe: str, url: str, profile: Path, *args: str, size: str = "1400,1000") -> str:
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={size}",
        "--virtual-time-budget=30000",
        *args,
        url,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def _record(method: str, budget: int, schedule: list[int], psnr: float) -> ResultRecord:
    return ResultRecord.create(
        suite="flux",
        model="flux-tiny",
        scale="tiny",
        method=method,
        budget=budget,
        num_steps=20,
        num_prompts=1,
        schedule=schedule,
        flops_speedup=20 / budget,
        psnr=psnr,
        prompts=["a zero"],
        reference_keys=["k0"],
        cache_hits=[20 - budget],
        device="cpu",
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-ui")
    tr = Tracker(
        root / "results.jsonl",
        mlflow_uri=f"sqlite:///{root / 'mlflow.db'}",
        invocation_id="20261130T000000-ui",
    )
    runs = [
        tr.log(_record("dpcache", 9, [0, 1, 2, 3, 5, 8, 11, 15, 19], 31.2)),
        tr.log(_record("fora", 9, [0, 2, 4, 6, 8, 10, 12, 14, 16], 27.5)),
    ]
    tr.close()
    assert all(runs) and tr.mlflow_error is None
    server = MlflowServer(root).start()
    yield server, tr, runs
    server.kill()


def test_mlflow_ui_shows_the_parent_summary(store, browser, tmp_path):
    from mlflow.tracking import MlflowClient

    server, _tr, runs = store
    client = MlflowClient(tracking_uri=server.uri)
    child = client.get_run(runs[0])
    exp, parent = child.info.experiment_id, child.data.tags["mlflow.parentRunId"]
    url = f"{server.uri}/#/experiments/{exp}/runs/{parent}/artifacts/summary.csv"
    dom = chromium(browser, url, tmp_path / "p1", "--dump-dom")
    assert "summary.csv" in dom and "flops_speedup" in dom and "fora" in dom, dom[-3000:]
    OUT.mkdir(parents=True, exist_ok=True)
    png = OUT / "mlflow-parent-summary.png"
    chromium(browser, url, tmp_path / "p2", f"--screenshot={png}")
    assert png.is_file() and png.stat().st_size > 10_000


def test_mlflow_charts_two_schedules(store, browser, tmp_path):
    server, _tr, runs = store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.uri)
    exp = client.get_run(runs[0]).info.experiment_id
    names = [client.get_run(r).info.run_name for r in runs]
    q = quote  # the query of MLflow's own getMetricPageRoute
    url = (
        f"{server.uri}/#/metric?runs={q(json.dumps(runs))}&metric={q(json.dumps('computed'))}"
        f"&experiments={q(json.dumps([exp]))}&plot_metric_keys={q(json.dumps(['computed']))}&plot_layout={{}}"
        "&x_axis=step&y_axis_scale=linear&line_smoothness=1&show_point=true&deselected_curves=[]"
        "&last_linear_y_axis_range=[]"
    )
    dom = chromium(browser, url, tmp_path / "p3", "--dump-dom")
    assert "invalid URL" not in dom and "Error while loading" not in dom, dom[-3000:]
    assert all(n in dom for n in names), (names, dom[-3000:])  # both schedules in the chart's legend
    png = OUT / "mlflow-compare-schedules.png"
    OUT.mkdir(parents=True, exist_ok=True)
    chromium(browser, url, tmp_path / "p4", f"--screenshot={png}")
    assert png.is_file() and png.stat().st_size > 10_000
    if COMPARE_PNG:
        shutil.copyfile(png, COMPARE_PNG)
