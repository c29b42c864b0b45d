"""Tiny random-weight pipelines of the four families, with one uniform call, for tests of cache hooks."""

from __future__ import annotations

import torch

FAMILIES = ["flux", "wan", "hunyuan-video", "dit"]
PROMPT_PAIRS = {
    "flux": ("a red 7 on a black background", "a blue 3 on a white background"),
    "dit": (3, 8),
    "wan": ("a green 4 moving left", "a red 1 moving up"),
    "hunyuan-video": ("a red 2 moving right", "a blue 5 moving down"),
}


def generators(*seeds: int) -> list[torch.Generator]:
    """One CPU generator per sample, so a batch draws the same noise as its samples run alone."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def build_family(name: str):
    """(pipeline, call(generators, num_steps, prompts=(one default,)) -> output tensor), random weights.

    The output is images (N, C, H, W) or video frames (N, F, C, H, W) as a float tensor.
    """
    if name == "flux":
        from harness.zoo import flux_tiny as m

        pipe = m.build_pipeline(seed=0)

        def call(gens, steps, prompts=("a red 7 on a black background",)):
            kw = m.call_kwargs(prompts[0])
            kw["prompt"], kw["negative_prompt"] = list(prompts), [""] * len(prompts)
            return pipe(**kw, num_inference_steps=steps, generator=gens, output_type="pt").images

    elif name == "dit":
        from harness.zoo import dit_tiny as m

        pipe = m.build_pipeline(seed=0)

        def call(gens, steps, prompts=(3,)):
            kw = m.call_kwargs(prompts[0])
            kw["class_labels"] = list(prompts)
            return torch.from_numpy(
                pipe(**kw, num_inference_steps=steps, generator=gens, output_type="np").images
            )

    else:
        from harness.zoo import hunyuan_tiny, wan_tiny

        m = wan_tiny if name == "wan" else hunyuan_tiny
        pipe = m.build_pipeline(seed=0)
        base = m.default_call_kwargs()
        prompt = "a green 4 moving left" if name == "wan" else "a red 2 moving right"

        def call(gens, steps, prompts=(prompt,)):
            kw = {**base, "num_inference_steps": steps}
            kw["prompt"], kw["negative_prompt"] = list(prompts), [""] * len(prompts)
            return pipe(**kw, generator=gens).frames

    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # DiT's label embedding drops labels at random in training mode
    return pipe, call
