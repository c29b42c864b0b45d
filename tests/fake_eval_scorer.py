"""Stand-in scorer for the evaluation-environment protocol: a tiny fake model (per-channel weights
read from --weights/fake_model.npy) scoring images; run by tests/test_metrics.py in a subprocess."""

from __future__ import annotations

import os
import sys

from _protocol import serve


def _weights_file(args) -> str:
    return os.path.join(args.weights or "", "fake_model.npy")


def check(args):
    path = _weights_file(args)
    if not os.path.isfile(path):
        return False, f"fake model weights missing at {path}"
    return True, f"fake model from {path}"


def score(images, prompts, args):
    import numpy as np

    w = np.load(_weights_file(args), allow_pickle=False)
    scores = []
    for arr, prompt in zip(images, prompts):
        frames = arr if arr.ndim == 4 else arr[None]
        channel_means = frames.mean(axis=(0, 2, 3))
        scores.append(float(channel_means @ w) + 0.01 * len(prompt))
    if any(p == "crash" for p in prompts):
        raise RuntimeError("fake model exploded")
    return scores, {"model": "fake", "python": sys.executable}


if __name__ == "__main__":
    sys.exit(serve(check, score))
