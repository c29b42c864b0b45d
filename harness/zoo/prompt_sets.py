"""The tiny models' calibration / evaluation prompt splits, named by the registry's specs (``prompt_sets``)."""

from __future__ import annotations


def digit_prompts() -> tuple[list[str], list[str]]:
    from harness.zoo.digits_data import prompt_split

    return prompt_split()


def digit_label_prompts() -> tuple[list[str], list[str]]:
    """DiT conditions on the class label only: evaluate on digits 0-7 (the first 8 evaluation prompts are
    0, 1, …, 7) and calibrate on 8 and 9, so the split is disjoint in what the model actually sees."""
    from harness.zoo.digits_data import label_prompt_split

    return label_prompt_split(8)


def video_prompts() -> tuple[list[str], list[str]]:
    from harness.zoo import video_data

    evals = list(video_data.eval_prompts(20))
    rest = [p for p in video_data.all_prompts() if p not in set(evals)]
    return rest[::12][:16], evals
