"""Sample grids of the tiny image pipelines with prompts as captions: ``python -m zoo_training.grid NAME``.

Writes ``reports/zoo/NAME.png``: full-step samples of the first evaluation prompts, each captioned with
its prompt and, when the classifier is present, what the classifier reads in it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from harness.zoo import registry
from zoo_training.measure import run_batch

REPORTS = Path(__file__).resolve().parents[1] / "reports" / "zoo"


def make_grid(name: str, n: int = 24, cols: int = 6, out: str | Path | None = None, seed: int = 1) -> Path:
    """Sample ``n`` evaluation prompts at full steps and save a captioned grid PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = registry.get_spec(name)
    pipe = registry.load_pipeline(spec)
    prompts = list(spec.evaluation_prompts)[:n]
    images = run_batch(pipe, spec, prompts, spec.num_inference_steps, seed=seed)
    try:
        from harness.zoo.classifier import predict

        reads = [s.prompt for s in predict(images)]
    except FileNotFoundError:
        reads = [None] * len(prompts)
    rows = int(np.ceil(len(prompts) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.1, rows * 2.45))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, img, p, r in zip(np.ravel(axes), images, prompts, reads):
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
        label = (
            f"label {p}"
            if spec.input_kind == "class_label"
            else str(p).removeprefix("a ").replace(" background", "")
        )
        title = label if r is None else f"{label}\nread: {r.removeprefix('a ').replace(' background', '')}"
        ax.set_title(title, fontsize=7)
    fig.suptitle(
        f"{name}: {spec.num_inference_steps}-step samples (seed {seed}), prompt / classifier reading",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(out) if out else REPORTS / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("-n", type=int, default=24)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(make_grid(args.name, args.n))


if __name__ == "__main__":
    main()
