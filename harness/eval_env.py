"""Scorers that run in a separate evaluation environment (ImageReward, VBench cannot import beside
diffusers 0.42 / transformers 5): images go over as .npy files, scores come back as JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SCRIPTS_DIR = Path(__file__).resolve().parent / "eval_scorers"
EVAL_PYTHON_ENV = "DPCACHE_EVAL_PYTHON"
DEFAULT_ENV_DIR = Path(".dpcache-cache") / "eval-env"
# The evaluation environment: the versions image-reward 1.5 and vbench import with (see field notes).
EVAL_ENV_REQUIREMENTS = (
    "setuptools<81",
    "numpy==1.26.4",
    "transformers==4.33.2",
    "torch",
    "torchvision",
    "openai-clip",
    "image-reward==1.5",
    "vbench",
    "imageio[ffmpeg]",
)


def _env_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def eval_python(explicit: str | None = None) -> str | None:
    """The evaluation environment's Python: explicit, else $DPCACHE_EVAL_PYTHON, else the default env dir."""
    if explicit:
        return explicit
    if os.environ.get(EVAL_PYTHON_ENV):
        return os.environ[EVAL_PYTHON_ENV]
    default = _env_python(DEFAULT_ENV_DIR)
    return str(default) if default.exists() else None


def create_eval_env(
    env_dir: str | os.PathLike[str] = DEFAULT_ENV_DIR, *, dry_run: bool = False
) -> list[list[str]]:
    """Create the evaluation venv and install `EVAL_ENV_REQUIREMENTS` into it (needs package-index
    access). Returns the commands; with `dry_run` only returns them."""
    env = Path(env_dir)
    py = str(_env_python(env))
    cmds = [[sys.executable, "-m", "venv", str(env)], [py, "-m", "pip", "install", *EVAL_ENV_REQUIREMENTS]]
    if not dry_run:
        for cmd in cmds:
            subprocess.run(cmd, check=True)
    return cmds


@dataclass
class SubprocessScorer:
    """A `harness.metrics.Scorer` whose model lives in another Python: `script check|score` (see
    `eval_scorers/_protocol.py`). Scripts find `_protocol` through PYTHONPATH."""

    name: str
    script: Path
    python: str | None
    weights: str | None = None
    device: str = "cpu"
    timeout: float = 3600.0
    missing_reason: str = "no evaluation environment"
    last_details: dict[str, Any] = field(default_factory=dict)
    _availability: tuple[bool, str] | None = None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS_DIR), *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("HF_HUB_OFFLINE", "1")
        return env

    def _run(self, args: list[str], workdir: Path) -> dict[str, Any]:
        out = workdir / "response.json"
        cmd = [str(self.python), str(self.script), *args, "--output", str(out), "--device", self.device]
        if self.weights:
            cmd += ["--weights", str(self.weights)]
        proc = subprocess.run(cmd, env=self._env(), capture_output=True, text=True, timeout=self.timeout)
        payload = json.loads(out.read_text()) if out.is_file() else {}
        if proc.returncode != 0 or "error" in payload:
            err = payload.get("error") or proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            raise RuntimeError(f"{self.name} evaluation process failed ({' '.join(cmd[:2])}): {err}")
        return payload

    def available(self) -> tuple[bool, str]:
        if self._availability is not None:
            return self._availability
        if not self.python:
            result = (False, self.missing_reason)
        elif not (Path(self.python).exists() or shutil.which(self.python)):
            result = (False, f"evaluation Python {self.python} not found")
        elif not self.script.is_file():
            result = (False, f"scorer script {self.script} not found")
        else:
            with tempfile.TemporaryDirectory(prefix=f"dpcache-{self.name}-") as tmp:
                try:
                    payload = self._run(["check"], Path(tmp))
                    result = (bool(payload.get("available")), str(payload.get("reason", "")))
                except (RuntimeError, OSError, subprocess.SubprocessError, json.JSONDecodeError) as e:
                    result = (False, f"{self.name} evaluation environment check failed: {e}")
        self._availability = result
        return result

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        import numpy as np

        with tempfile.TemporaryDirectory(prefix=f"dpcache-{self.name}-") as tmp:
            work = Path(tmp)
            paths = []
            for i in range(images.shape[0]):
                p = work / f"{i:04d}.npy"
                np.save(p, images[i].detach().float().cpu().numpy(), allow_pickle=False)
                paths.append(str(p))
            layout = "CHW" if images.dim() == 4 else "FCHW"
            req = {"images": paths, "prompts": list(prompts), "layout": layout, "range": [0, 1]}
            (work / "request.json").write_text(json.dumps(req))
            payload = self._run(["score", "--request", str(work / "request.json")], work)
        self.last_details = dict(payload.get("details", {}))
        return [float(s) for s in payload["scores"]]

    def __repr__(self) -> str:
        return f"SubprocessScorer({self.name}, python={self.python}, script={self.script.name})"


def _no_env_reason(what: str) -> str:
    return (
        f"{what} needs the separate evaluation environment (it cannot import beside diffusers 0.42 / "
        f"transformers 5): set ${EVAL_PYTHON_ENV} or run `python -m harness.eval_env create`"
    )


def image_reward_scorer(python: str | None = None, *, weights: str | None = None) -> SubprocessScorer:
    """ImageReward-v1.0 through the evaluation environment."""
    return SubprocessScorer(
        "image_reward",
        SCRIPTS_DIR / "image_reward.py",
        eval_python(python),
        weights,
        missing_reason=_no_env_reason("ImageReward"),
    )


def vbench_scorer(python: str | None = None, *, weights: str | None = None) -> SubprocessScorer:
    """VBench (custom-input dimensions) through the evaluation environment."""
    return SubprocessScorer(
        "vbench",
        SCRIPTS_DIR / "vbench_scorer.py",
        eval_python(python),
        weights,
        missing_reason=_no_env_reason("VBench"),
    )


if __name__ == "__main__":  # python -m harness.eval_env create [DIR] [--dry-run]
    argv = sys.argv[1:]
    if not argv or argv[0] != "create":
        sys.exit("usage: python -m harness.eval_env create [DIR] [--dry-run]")
    target = next((a for a in argv[1:] if not a.startswith("--")), str(DEFAULT_ENV_DIR))
    for c in create_eval_env(target, dry_run="--dry-run" in argv):
        print(" ".join(c))
