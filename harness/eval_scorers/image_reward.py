"""ImageReward-v1.0 scorer script, run by the evaluation environment's Python (image-reward 1.5,
transformers < 5); weights are read from --weights (default ~/.cache/ImageReward), never downloaded."""

from __future__ import annotations

import os
import sys

from _protocol import serve


def _root(args) -> str:
    return args.weights or os.path.expanduser("~/.cache/ImageReward")


def check(args) -> tuple[bool, str]:
    try:
        import ImageReward  # noqa: F401
    except Exception as e:
        return False, f"ImageReward does not import under {sys.executable}: {type(e).__name__}: {e}"
    root = _root(args)
    missing = [f for f in ("ImageReward.pt", "med_config.json") if not os.path.isfile(os.path.join(root, f))]
    if missing:
        return False, f"ImageReward-v1.0 weights missing in {root}: {missing}"
    return True, f"ImageReward-v1.0 from {root}"


def score(images, prompts, args):
    import ImageReward as RM
    import numpy as np
    from PIL import Image

    root = _root(args)
    model = RM.load(
        os.path.join(root, "ImageReward.pt"),
        device=args.device,
        download_root=root,
        med_config=os.path.join(root, "med_config.json"),
    )
    scores = []
    for arr, prompt in zip(images, prompts):
        if arr.ndim == 4:  # video: middle frame
            arr = arr[arr.shape[0] // 2]
        img = Image.fromarray((np.clip(arr, 0, 1).transpose(1, 2, 0) * 255).round().astype("uint8"))
        scores.append(float(model.score(prompt, img)))
    return scores, {"model": "ImageReward-v1.0", "weights": root}


if __name__ == "__main__":
    sys.exit(serve(check, score))
