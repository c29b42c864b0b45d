"""VBench scorer script, run by the evaluation environment's Python (vbench, transformers 4.33, numpy 1.26):
writes each video as mp4 and evaluates the custom-input dimensions; weights from --weights
(VBench's cache dir, default ~/.cache/vbench), never downloaded."""

from __future__ import annotations

import json
import os
import sys
import tempfile

from _protocol import serve

DIMENSIONS = ["subject_consistency", "background_consistency", "motion_smoothness", "imaging_quality"]


def _root(args) -> str:
    return args.weights or os.path.expanduser("~/.cache/vbench")


def check(args) -> tuple[bool, str]:
    try:
        import vbench  # noqa: F401
    except Exception as e:
        return False, f"vbench does not import under {sys.executable}: {type(e).__name__}: {e}"
    root = _root(args)
    if not os.path.isdir(root) or not os.listdir(root):
        return False, f"VBench model weights missing in {root}"
    return True, f"VBench dimensions {DIMENSIONS} from {root}"


def score(videos, prompts, args):
    import imageio
    import numpy as np
    from vbench import VBench

    os.environ.setdefault("VBENCH_CACHE_DIR", _root(args))
    work = tempfile.mkdtemp(prefix="vbench-")
    paths = {}
    for i, (arr, prompt) in enumerate(zip(videos, prompts)):
        frames = (np.clip(arr, 0, 1).transpose(0, 2, 3, 1) * 255).round().astype("uint8")
        path = os.path.join(work, f"{i:04d}.mp4")
        imageio.mimwrite(path, list(frames), fps=8)
        paths[path] = prompt
    info = os.path.join(os.path.dirname(__import__("vbench").__file__), "VBench_full_info.json")
    bench = VBench(args.device, info, work)
    bench.evaluate(
        videos_path=work, name="dpcache", dimension_list=DIMENSIONS, mode="custom_input", prompt_list=paths
    )
    with open(os.path.join(work, "dpcache_eval_results.json")) as f:
        results = json.load(f)
    per_video = {p: [] for p in paths}
    for dim in DIMENSIONS:
        for entry in results[dim][1]:
            per_video[entry["video_path"]].append(float(entry["video_results"]))
    return [sum(v) / len(v) for v in per_video.values()], {"dimensions": DIMENSIONS}


if __name__ == "__main__":
    sys.exit(serve(check, score))
