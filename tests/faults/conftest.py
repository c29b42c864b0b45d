"""Shared helpers of the fault-injection suite: run a CLI in-process or as a process, and the one-line check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLUX_TINY = ROOT / "harness" / "zoo" / "tiny" / "flux-tiny"


@dataclass
class Result:
    rc: int
    out: str
    err: str


def error_lines(err: str, prog: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith(f"{prog}: ") or ln.startswith(f"{prog} ")]


def assert_one_line_error(res: Result, prog: str, *names: str, rc: int | None = 2) -> str:
    """Non-zero exit (`rc` when given), no traceback, exactly one `prog: error/interrupted` line that names
    every string of `names` (the file involved). Returns that line."""
    assert res.rc != 0 and (rc is None or res.rc == rc), (res.rc, res.err[-2000:])
    assert "Traceback" not in res.err, res.err[-3000:]
    lines = error_lines(res.err, prog)
    assert len(lines) == 1, res.err[-2000:]
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def dpcache_cli(capsys):
    """`dpcache` in-process: argv → Result."""
    from dpcache.cli import main

    def run(*argv: str) -> Result:
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        cap = capsys.readouterr()
        return Result(rc, cap.out, cap.err)

    return run


@pytest.fixture
def bench_cli(capsys):
    """`dpcache-bench` in-process: argv → Result (torch's thread count restored afterwards)."""
    import torch

    from harness.cli import main

    threads = torch.get_num_threads()

    def run(*argv: str) -> Result:
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        cap = capsys.readouterr()
        return Result(rc, cap.out, cap.err)

    yield run
    torch.set_num_threads(threads)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading any model raises: a refused request must never get that far."""
    import dpcache.cli_pipeline as cp
    import harness.runner
    import harness.zoo.registry as reg

    def boom(*a, **k):
        raise AssertionError("the model loader was reached for a request that must be refused")

    monkeypatch.setattr(cp, "load_pipeline", boom)
    monkeypatch.setattr(reg, "load_pipeline", boom)
    monkeypatch.setattr(harness.runner, "run_benchmark", boom)


def process_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def dpcache_process(*argv: str, cwd: Path) -> subprocess.Popen:
    """`python -m dpcache.cli ARGV` as a child process (stderr piped)."""
    cmd = [sys.executable, "-m", "dpcache.cli", *map(str, argv)]
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a runner started in the background (`cmd &`) ignores SIGINT, and a child inherits
        # that, so Python would install no KeyboardInterrupt handler and the interrupt tests could not interrupt
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(proc: subprocess.Popen, timeout: float = 300) -> Result:
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, out, err)
