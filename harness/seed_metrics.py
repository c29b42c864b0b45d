"""Pre-seed every quality metric's weights into the runner's persistent caches, once, with network access:
`dpcache-bench seed-metrics [--dry-run]`. Afterwards every metric runs offline and the nightly's
`--require-metrics` finds them; at test time nothing is ever downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CLIP_MODEL = "openai/clip-vit-base-patch16"  # harness.metrics.ClipScorer.model
ALEXNET_HASH_PREFIX = "7be5be79"  # the sha256 prefix in torchvision's file name, checked on download


@dataclass(frozen=True)
class Seed:
    """One metric's weights: where they live, whether they are there, and how to fetch them."""

    metric: str
    where: str
    present: Callable[[], bool]
    fetch: Callable[[], None]


def _online_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(k, None)
    return env


def _alexnet() -> Seed:
    from harness.lpips_alex import ALEXNET_URL, alexnet_weights_path

    path = alexnet_weights_path()

    def fetch() -> None:
        import torch.hub

        path.parent.mkdir(parents=True, exist_ok=True)
        # downloads to a temp file beside `path`, checks the hash prefix, then renames: never a partial file
        torch.hub.download_url_to_file(ALEXNET_URL, str(path), hash_prefix=ALEXNET_HASH_PREFIX)

    return Seed("lpips", str(path), path.is_file, fetch)


def _clip() -> Seed:
    from harness.metrics import ClipScorer

    def present() -> bool:
        return ClipScorer().available()[0]

    def fetch() -> None:
        code = f"from huggingface_hub import snapshot_download; snapshot_download({CLIP_MODEL!r})"
        subprocess.run([sys.executable, "-c", code], check=True, env=_online_env())

    hf = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return Seed("clip_score", f"{CLIP_MODEL} in the Hugging Face cache ({hf})", present, fetch)


def _eval_env_seed(metric: str, root: str, code: str) -> Seed:
    """ImageReward / VBench: fetched by the evaluation environment's own packages into `root`."""
    from harness.eval_env import eval_python, image_reward_scorer, vbench_scorer

    scorer = {"image_reward": image_reward_scorer, "vbench": vbench_scorer}[metric](weights=root)

    def fetch() -> None:
        python = eval_python()
        if python is None:
            raise RuntimeError(
                f"{metric} needs the evaluation environment: run `python -m harness.eval_env create` first"
            )
        subprocess.run([python, "-c", code], check=True, env={**_online_env(), "VBENCH_CACHE_DIR": root})

    return Seed(metric, root, lambda: scorer.available()[0], fetch)


def seeds() -> list[Seed]:
    """Every metric with downloadable weights, in the order they are fetched."""
    ir_root = os.path.expanduser(os.environ.get("DPCACHE_IMAGE_REWARD_DIR", "~/.cache/ImageReward"))
    vb_root = os.path.expanduser(os.environ.get("VBENCH_CACHE_DIR", "~/.cache/vbench"))
    ir_code = (
        f"import ImageReward as RM; RM.load('ImageReward-v1.0', device='cpu', download_root={ir_root!r})"
    )
    from_scorer = "import sys; sys.path.insert(0, {d!r}); from vbench_scorer import DIMENSIONS; "
    vb_code = from_scorer.format(d=str(Path(__file__).parent / "eval_scorers")) + (
        "from vbench.utils import init_submodules; init_submodules(DIMENSIONS)"
    )
    return [
        _alexnet(),
        _clip(),
        _eval_env_seed("image_reward", ir_root, ir_code),
        _eval_env_seed("vbench", vb_root, vb_code),
    ]


def main(dry_run: bool = False, only: list[str] | None = None) -> int:
    """Fetch what is missing (or, with `dry_run`, only list it); 1 if any metric is still missing."""
    missing = 0
    for seed in seeds():
        if only and seed.metric not in only:
            continue
        if seed.present():
            print(f"{seed.metric:<13} present   {seed.where}")
            continue
        if dry_run:
            print(f"{seed.metric:<13} MISSING   {seed.where}")
            missing += 1
            continue
        print(f"{seed.metric:<13} fetching  {seed.where}", flush=True)
        try:
            seed.fetch()
        except Exception as e:  # one line per metric; the others are still tried
            print(f"{seed.metric:<13} FAILED    {type(e).__name__}: {e}")
        ok = seed.present()
        missing += not ok
        print(f"{seed.metric:<13} {'present' if ok else 'MISSING':<9} {seed.where}")
    return 1 if missing else 0


def add_parser(sub, fmt) -> None:
    """`dpcache-bench seed-metrics`."""
    s = sub.add_parser(
        "seed-metrics",
        help="Download every quality metric's weights (LPIPS' AlexNet, CLIP, ImageReward, VBench) into the "
        "local caches once, so runs score them offline (needs network; the evaluation environment for "
        "ImageReward and VBench).",
        formatter_class=fmt,
    )
    s.add_argument("--dry-run", action="store_true", help="only list what is present and what is missing")
    s.add_argument("--only", default=None, metavar="M,M", help="only these metrics (lpips, clip_score, ...)")
    s.set_defaults(func=lambda a: main(a.dry_run, [m.strip() for m in a.only.split(",")] if a.only else None))
