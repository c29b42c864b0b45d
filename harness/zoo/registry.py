"""The model registry: every model the harness knows, at three scales, and how to load and call it.

``tiny`` models are diffusers pipelines committed under ``harness/zoo/tiny/<name>`` (trained here),
``medium`` models are the same architectures built from configs with random weights, ``full`` models
are the paper's checkpoints loaded with ``from_pretrained`` from a local directory
(``$DPCACHE_MODEL_DIR/<dir name>`` or an explicit path) or the Hugging Face cache with
``local_files_only=True`` — this module never downloads anything. This module imports neither torch
nor diffusers at import time. Where a model's weights are and how it is loaded: ``harness.zoo.loading``
(re-exported here).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.zoo.loading import (  # noqa: F401  (re-exported: the registry's public surface)
    MODEL_DIR_ENV,
    availability,
    load_pipeline,
    models_json,
    resolve_full_path,
)

ZOO_DIR = Path(__file__).resolve().parent
TINY_ROOT = ZOO_DIR / "tiny"

FLUX_CALIBRATION = (
    "a photo of a red fox sitting in fresh snow",
    "a bowl of ramen on a wooden table, studio light",
    "an old lighthouse on a cliff at sunset",
    "a watercolor painting of a sailboat on a calm lake",
    "a robot reading a newspaper in a cafe",
    "a close-up of a dew drop on a green leaf",
    "a city street at night in the rain, neon signs",
    "a cat wearing a tiny knitted hat",
)
FLUX_EVALUATION = (
    "a blue bird perched on a cherry blossom branch",
    "a cup of coffee with latte art, top view",
    "a mountain village covered in morning fog",
    "an astronaut riding a horse on the moon",
    "a vintage red car parked in front of a bakery",
    "a stack of books next to a candle",
    "a golden retriever running on the beach",
    "a futuristic train crossing a desert bridge",
)
VIDEO_CALIBRATION = (
    "a dog running through a field of tall grass",
    "waves crashing on rocks at sunset",
    "a person walking down a busy city street",
    "clouds moving over snowy mountains",
)
VIDEO_EVALUATION = (
    "a cat playing with a ball of yarn",
    "a car driving along a coastal road",
    "leaves falling from a tree in autumn",
    "a hot air balloon rising over a valley",
)
DIT_XL_CALIBRATION = (1, 33, 130, 250, 388, 417, 812, 980)
DIT_XL_EVALUATION = (88, 207, 279, 360, 387, 974, 979, 972)


@dataclass(frozen=True)
class ModelSpec:
    """One model: identity, loading, sampling defaults, prompt sets and how a prompt becomes kwargs.

    ``input_kind`` says how a prompt becomes pipeline inputs: ``"text"`` (``prompt=``),
    ``"class_label"`` (``class_labels=[int]``; a digit prompt maps to its digit) or ``"text+image"``
    (I2V: ``prompt=`` plus a conditioning ``image=``). ``builder`` is the module that builds the tiny /
    medium pipeline; ``hub_id`` is the full model's repository; ``dir_name`` its folder under
    ``$DPCACHE_MODEL_DIR``.
    """

    name: str
    family: str
    scale: str
    pipeline_class: str
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    num_frames: int | None = None
    input_kind: str = "text"
    builder: str | None = None
    hub_id: str | None = None
    dir_name: str | None = None
    dtype: str = "float32"
    prompt_sets: str | None = None  # "module:function" returning (calibration, evaluation)
    static_prompts: tuple[tuple, tuple] | None = None
    scheduler_class: str | None = None  # swap the stored scheduler for this class (same config)
    extra_kwargs: dict[str, Any] = field(default_factory=dict)
    dpcache: dict[str, Any] = field(default_factory=dict)  # released DPCache settings (first/last full steps)

    @property
    def path(self) -> str | None:
        """Local directory of the weights: the committed tiny pipeline, or the resolved full model."""
        if self.scale == "tiny":
            return str(TINY_ROOT / self.name)
        if self.scale == "full":
            found = resolve_full_path(self)
            return str(found) if found else None
        return None

    def _prompts(self) -> tuple[tuple, tuple]:
        if self.static_prompts is not None:
            return self.static_prompts
        mod, fn = self.prompt_sets.split(":")
        calib, evals = getattr(importlib.import_module(mod), fn)()
        return tuple(calib), tuple(evals)

    @property
    def calibration_prompts(self) -> tuple:
        """Prompts used to calibrate caches (disjoint from the evaluation prompts)."""
        return self._prompts()[0]

    @property
    def evaluation_prompts(self) -> tuple:
        """Prompts used to evaluate caches against the full-step references."""
        return self._prompts()[1]

    def pipeline_kwargs(
        self, prompt: str | int, num_inference_steps: int | None = None, *, image: bool = True
    ) -> dict[str, Any]:
        """Keyword arguments for ``pipe(**kwargs)`` for one prompt (add ``generator`` yourself); ``image=False``
        describes an I2V conditioning image instead of loading it."""
        steps = num_inference_steps or self.num_inference_steps
        if self.input_kind == "class_label":
            if isinstance(prompt, str):
                label = next(int(w) for w in prompt.replace(",", " ").split() if w.isdigit())
            else:
                label = int(prompt)
            return {
                "class_labels": [label],
                "guidance_scale": self.guidance_scale,
                "num_inference_steps": steps,
            }
        if self.family in ("wan", "hunyuan-video") and self.scale != "full":
            builder = importlib.import_module(self.builder)
            kw = dict(builder.default_call_kwargs(size=self.scale))
            kw.pop("output_type", None)
            kw.update(prompt=prompt, num_inference_steps=steps)
            if self.input_kind == "text+image":  # the prompt's own first frame (wan_i2v_tiny.first_frame)
                kw["image"] = builder.first_frame(prompt, self.height) if image else FIRST_FRAME_DESCRIPTION
            return kw
        kw: dict[str, Any] = {
            "prompt": prompt,
            "num_inference_steps": steps,
            "height": self.height,
            "width": self.width,
            **self.extra_kwargs,
        }
        if "true_cfg_scale" not in self.extra_kwargs:
            kw["guidance_scale"] = self.guidance_scale
        if self.num_frames is not None:
            kw["num_frames"] = self.num_frames
        if self.input_kind == "text+image":
            kw["image"] = conditioning_image(self.height, self.width) if image else IMAGE_DESCRIPTION
        return kw


IMAGE_DESCRIPTION = "the conditioning image (registry.conditioning_image)"
FIRST_FRAME_DESCRIPTION = (
    "the prompt's first frame: harness.zoo.wan_i2v_tiny.first_frame(prompt, height) (PIL; the clip renderer "
    "seeded by the prompt's text)"
)


def conditioning_image(height: int, width: int):
    """The I2V conditioning image: skimage's bundled astronaut photo, resized (PIL)."""
    import skimage.data
    from PIL import Image

    return Image.fromarray(skimage.data.astronaut()).resize((width, height))


def probe_prompts(spec: ModelSpec | str, n: int) -> list[str]:
    """Held-out prompts for the zoo's adherence probes while training: disjoint from the model's calibration
    and evaluation prompts (as strings; a class-label model's 10 labels cannot all be held out, so its probe
    is held out in the noise: the probes sample with their own seed)."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    if spec.family in ("wan", "hunyuan-video"):
        from harness.zoo import video_data

        used = set(spec.calibration_prompts) | set(spec.evaluation_prompts)
        probes = [p for p in video_data.all_prompts()[5::7] if p not in used][:n]
    else:
        from harness.zoo.digits_data import probe_prompts as digit_probes

        probes = digit_probes(n)
    if len(probes) < n or set(probes) & (
        set(map(str, spec.calibration_prompts)) | set(map(str, spec.evaluation_prompts))
    ):
        raise ValueError(f"{spec.name}: no {n} held-out probe prompts")
    return probes


def _specs() -> list[ModelSpec]:
    flux_cfg = {"negative_prompt": "", "true_cfg_scale": 4.0, "max_sequence_length": 16}
    dig, vid = "harness.zoo.prompt_sets:digit_prompts", "harness.zoo.prompt_sets:video_prompts"
    s: list[ModelSpec] = []
    for scale, hw in (("tiny", 32), ("medium", 64)):
        s.append(
            ModelSpec(
                f"flux-{scale}",
                "flux",
                scale,
                "FluxPipeline",
                50,
                4.0,
                hw,
                hw,
                builder="harness.zoo.flux_tiny",
                prompt_sets=dig,
                extra_kwargs=dict(flux_cfg),
            )
        )
        s.append(
            ModelSpec(
                f"wan-{scale}",
                "wan",
                scale,
                "WanPipeline",
                50,
                5.0,
                hw,
                hw,
                num_frames=9 if scale == "tiny" else 17,
                builder="harness.zoo.wan_tiny",
                prompt_sets=vid,
            )
        )
        s.append(
            ModelSpec(
                f"wan-i2v-{scale}",
                "wan",
                scale,
                "WanImageToVideoPipeline",
                50,
                3.0,  # wan_i2v_tiny.GUIDANCE_SCALE: the released DPCache Wan run
                hw,
                hw,
                num_frames=9 if scale == "tiny" else 17,
                input_kind="text+image",
                builder="harness.zoo.wan_i2v_tiny",
                prompt_sets=vid,
                dpcache={"first_full_steps": 4, "last_full_steps": 1},  # the released Wan settings
            )
        )
        s.append(
            ModelSpec(
                f"hunyuan-video-{scale}",
                "hunyuan-video",
                scale,
                "HunyuanVideoPipeline",
                50,
                4.0,
                hw,
                hw,
                num_frames=9 if scale == "tiny" else 17,
                builder="harness.zoo.hunyuan_tiny",
                prompt_sets=vid,
            )
        )
        s.append(
            ModelSpec(
                f"dit-{scale}",
                "dit",
                scale,
                "DiTPipeline",
                50,
                8.0 if scale == "tiny" else 4.0,  # dit_tiny.GUIDANCE_SCALE: chosen on calibration prompts
                hw,
                hw,
                input_kind="class_label",
                builder="harness.zoo.dit_tiny",
                prompt_sets="harness.zoo.prompt_sets:digit_label_prompts",
            )
        )
    s += [
        ModelSpec(
            "flux-dev",
            "flux",
            "full",
            "FluxPipeline",
            50,
            3.5,
            1024,
            1024,
            hub_id="black-forest-labs/FLUX.1-dev",
            dir_name="FLUX.1-dev",
            dtype="bfloat16",
            static_prompts=(FLUX_CALIBRATION, FLUX_EVALUATION),
        ),
        ModelSpec(
            "wan2.1-i2v-14b-720p",
            "wan",
            "full",
            "WanImageToVideoPipeline",
            50,
            3.0,
            832,
            832,
            num_frames=81,
            input_kind="text+image",
            hub_id="Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
            dir_name="Wan2.1-I2V-14B-720P-Diffusers",
            dtype="bfloat16",
            static_prompts=(VIDEO_CALIBRATION, VIDEO_EVALUATION),
            dpcache={"first_full_steps": 4, "last_full_steps": 1},
        ),
        ModelSpec(
            "hunyuan-video",
            "hunyuan-video",
            "full",
            "HunyuanVideoPipeline",
            50,
            6.0,
            720,
            1280,
            num_frames=129,
            hub_id="hunyuanvideo-community/HunyuanVideo",
            dir_name="HunyuanVideo",
            dtype="bfloat16",
            static_prompts=(VIDEO_CALIBRATION, VIDEO_EVALUATION),
        ),
        ModelSpec(
            "dit-xl-2-256",
            "dit",
            "full",
            "DiTPipeline",
            50,
            1.5,
            256,
            256,
            input_kind="class_label",
            hub_id="facebook/DiT-XL-2-256",
            dir_name="DiT-XL-2-256",
            dtype="float16",
            static_prompts=(DIT_XL_CALIBRATION, DIT_XL_EVALUATION),
            scheduler_class="DDIMScheduler",
        ),
    ]
    return s


_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in _specs()}


def list_specs(scale: str | None = None) -> list[ModelSpec]:
    """All model specs (optionally one scale), in a fixed order."""
    return [s for s in _SPECS.values() if scale is None or s.scale == scale]


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; KeyError listing the known names otherwise."""
    try:
        return _SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(_SPECS)}") from None


def call_kwargs(
    spec: ModelSpec | str, prompt: str | int, num_inference_steps: int | None = None
) -> dict[str, Any]:
    """Shortcut for ``get_spec(name).pipeline_kwargs(prompt, steps)``."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    return spec.pipeline_kwargs(prompt, num_inference_steps)


def json_call_kwargs(spec: ModelSpec | str) -> dict[str, Any]:
    """The complete ``pipe(...)`` arguments of ``spec`` but the prompt / class label and the generator, as
    JSON: what a diffusers user passes to reproduce the harness's samples. A conditioning image (I2V) is
    described by a string, since it is not JSON."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    prompt = 0 if spec.input_kind == "class_label" else "a white 3 on a black background"
    kw = spec.pipeline_kwargs(prompt, image=False)
    kw.pop("prompt", None)
    kw.pop("class_labels", None)
    if kw.get("image") == IMAGE_DESCRIPTION:
        kw["image"] = f"skimage.data.astronaut() resized to {spec.width}x{spec.height} (PIL)"
    return kw
