"""Where a zoo model's weights are on this machine, whether it can load, and loading it (never downloads):
the committed tiny pipelines, medium builds from configs, full checkpoints under ``$DPCACHE_MODEL_DIR`` or in
the Hugging Face cache. ``harness.zoo.registry`` re-exports these; this module imports neither torch nor
diffusers at import time."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.zoo.registry import ModelSpec

MODEL_DIR_ENV = "DPCACHE_MODEL_DIR"


def _is_pipeline_dir(p: Path) -> bool:
    return (p / "model_index.json").is_file()


def resolve_full_path(spec: ModelSpec, path: str | os.PathLike | None = None) -> Path | None:
    """Where a full model's weights are on this machine: explicit path, $DPCACHE_MODEL_DIR, HF cache."""
    if path is not None:
        return Path(path) if _is_pipeline_dir(Path(path)) else None
    root = os.environ.get(MODEL_DIR_ENV)
    if root:
        for cand in (Path(root) / (spec.dir_name or spec.name), Path(root) / spec.name, Path(root)):
            if _is_pipeline_dir(cand) and (
                cand != Path(root) or Path(root).name in (spec.dir_name, spec.name)
            ):
                return cand
    if spec.hub_id:
        try:
            from huggingface_hub import snapshot_download

            cache = os.environ.get("HF_HUB_CACHE") or None
            found = Path(snapshot_download(spec.hub_id, local_files_only=True, cache_dir=cache))
            return found if _is_pipeline_dir(found) else None
        except Exception:  # LocalEntryNotFoundError, offline errors, missing package
            return None
    return None


def _module_available(module: str) -> tuple[bool, str]:
    """Whether the builder module exists, found without importing it (importing a builder imports torch and
    diffusers: `dpcache-bench models` would take seconds); loading it imports it and names any error."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError) as exc:
        return False, f"{module} is not available ({exc})"
    return (True, "") if found else (False, f"{module} is not available (no such module)")


def availability(spec: ModelSpec, path: str | os.PathLike | None = None) -> tuple[bool, str]:
    """Whether ``spec`` can be loaded on this machine, and why not (never downloads)."""
    if spec.scale == "full":
        if resolve_full_path(spec, path) is not None:
            return True, ""
        hint = f"set {MODEL_DIR_ENV}=/models (with /models/{spec.dir_name}/model_index.json)"
        return False, (
            f"{spec.hub_id} weights not found: {hint} or run `huggingface-cli download {spec.hub_id}` "
            f"on a machine with hub access"
        )
    ok, reason = _module_available(spec.builder)
    if not ok:
        return ok, reason
    if spec.scale == "tiny":
        target = Path(path) if path else Path(spec.path)
        if not _is_pipeline_dir(target):
            return (
                False,
                f"{target} has no trained pipeline (model_index.json): run `python -m zoo_training.train {spec.name}`",
            )
    return True, ""


def load_pipeline(
    spec: ModelSpec | str, device: str = "cpu", dtype: Any = None, path: str | os.PathLike | None = None
):
    """Load (tiny, full) or build (medium) the pipeline of ``spec``; raises RuntimeError when unavailable."""
    import torch

    from harness.zoo.registry import get_spec

    spec = get_spec(spec) if isinstance(spec, str) else spec
    ok, reason = availability(spec, path)
    if not ok:
        raise RuntimeError(f"{spec.name} unavailable: {reason}")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if spec.scale == "medium":
        pipe = importlib.import_module(spec.builder).build_pipeline(seed=0, trained=False, size="medium")
    else:
        import diffusers

        where = resolve_full_path(spec, path) if spec.scale == "full" else Path(path or spec.path)
        if spec.scale == "full" and dtype is None:
            dtype = getattr(torch, spec.dtype)
        kw = {"local_files_only": True} | ({"torch_dtype": dtype} if dtype is not None else {})
        pipe = getattr(diffusers, spec.pipeline_class).from_pretrained(str(where), **kw)
        if getattr(pipe, "labels", None) and "id2label" not in pipe.config:
            # DiTPipeline takes id2label in __init__ but does not register it: re-register so that a
            # later save_pretrained keeps the labels (diffusers 0.42 drops them otherwise)
            pipe.register_to_config(id2label={int(i): lab for lab, i in pipe.labels.items()})
        if spec.scheduler_class:
            sched_cls = getattr(diffusers, spec.scheduler_class)
            pipe.scheduler = sched_cls.from_config(pipe.scheduler.config)
    if dtype is not None and spec.scale == "medium":
        pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def models_json(call_kwargs: bool = True) -> list[dict[str, Any]]:
    """One dict per model for ``dpcache-bench models --json`` (``call_kwargs=False`` leaves out the call
    arguments, which import the video builders, for the quick table)."""
    from harness.zoo.registry import json_call_kwargs, list_specs

    rows = []
    for spec in list_specs():
        ok, reason = availability(spec)
        rows.append(
            {
                "name": spec.name,
                "family": spec.family,
                "scale": spec.scale,
                "pipeline_class": spec.pipeline_class,
                "path": spec.path,
                "num_inference_steps": spec.num_inference_steps,
                "height": spec.height,
                "width": spec.width,
                "num_frames": spec.num_frames,
                "guidance_scale": spec.guidance_scale,
                "input": {"text": "prompt", "class_label": "class_labels", "text+image": "prompt + image"}[
                    spec.input_kind
                ],
                **({"call_kwargs": json_call_kwargs(spec)} if call_kwargs else {}),
                "available": ok,
                "reason": reason,
            }
        )
    return rows
