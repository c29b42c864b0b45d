"""Where a result came from: git commit, library versions, device and its class (the timing-gate key)."""

from __future__ import annotations

import contextlib
import platform
import re
import subprocess
from pathlib import Path
from typing import Any


def git_sha(cwd: str | Path | None = None) -> str | None:
    """HEAD's commit, with `-dirty` when the tree has changes; None outside git or before the first commit."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "-uno"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions(
    packages: tuple[str, ...] = (
        "dpcache",
        "torch",
        "diffusers",
        "transformers",
        "torchmetrics",
        "mlflow",
        "numpy",
    ),
) -> dict[str, str]:
    """Installed versions of the libraries that change the numbers (absent ones are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in packages:
        with contextlib.suppress(PackageNotFoundError):
            out[p] = version(p)
    return out


def device_class(device: str | None) -> str:
    """The key timing expectations are stored under: `cpu`, or `cuda-<gpu name>` (e.g. `cuda-nvidia-a100`).
    Wall-clock from one class of device is never compared with another's."""
    dev = (device or "cpu").lower()
    if not dev.startswith("cuda"):
        return dev.split(":")[0]
    try:
        import torch

        index = int(dev.split(":")[1]) if ":" in dev else 0
        name = torch.cuda.get_device_name(index) if torch.cuda.is_available() else "unknown"
    except Exception:  # no driver, bad index: still a cuda class, just unnamed
        name = "unknown"
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def provenance(device: str | None = None, cwd: str | Path | None = None) -> dict[str, Any]:
    """`git_sha`, `versions`, `device` for a record (`ResultRecord.create(..., **provenance(device))`)."""
    return {"git_sha": git_sha(cwd), "versions": library_versions(), "device": device or "cpu"}
