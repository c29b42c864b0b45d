"""The model context the methods run on: a loaded pipeline with its T, prompt sets, weights hash and cache
directory, and transformer-FLOPs counting (probe work included)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CACHE_DIR = Path(".dpcache-cache")
CACHE_DIR_ENV = "DPCACHE_CACHE_DIR"


def resolve_cache_dir(
    option: str | os.PathLike[str] | None = None, root: str | os.PathLike[str] = "."
) -> Path:
    """The calibration / budget / reference cache: `option` (`--cache-dir`), else $DPCACHE_CACHE_DIR, else
    <root>/.dpcache-cache. Point it outside the checkout to keep calibrations across runs (the nightly does)."""
    chosen = option or os.environ.get(CACHE_DIR_ENV)
    return Path(chosen).expanduser() if chosen else Path(root) / DEFAULT_CACHE_DIR


class PromptOverlapError(ValueError):
    """Calibration and evaluation prompts share entries: results would be measured on training data."""


_CONDITIONING_KEYS = ("prompt", "prompt_2", "class_labels", "image")


def _fingerprint(value: Any) -> Any:
    """A hashable stand-in for a conditioning value (an image by its pixels)."""
    if hasattr(value, "tobytes"):
        return hashlib.sha256(value.tobytes()).hexdigest()[:16]
    if isinstance(value, (list, tuple)):
        return tuple(_fingerprint(v) for v in value)
    return value


def conditioning(spec: Any, prompt: Any) -> tuple:
    """What the model is actually conditioned on for `prompt`: the prompt-dependent pipeline inputs
    (text, class labels, conditioning image) from `spec.pipeline_kwargs` — for DiT the class label."""
    kw = spec.pipeline_kwargs(prompt)
    return tuple((k, _fingerprint(kw[k])) for k in _CONDITIONING_KEYS if k in kw)


def _spec_named(model: str) -> Any:
    try:
        from harness.zoo.registry import get_spec

        return get_spec(model)
    except (KeyError, ImportError):
        return None


def check_prompts_disjoint(
    calibration: Sequence[Any], evaluation: Sequence[Any], model: str = "", spec: Any = None
) -> None:
    """Raise `PromptOverlapError` naming the shared prompts when the two sets intersect — as strings, and as
    the conditioning the model actually receives (`conditioning`) when the model's spec is known (`spec`, or
    `model` naming a registry model): DiT's "a red 3 …" and "a blue 3 …" are both class label 3."""
    shared = sorted({str(p) for p in calibration} & {str(p) for p in evaluation})
    if shared:
        head = ", ".join(repr(s) for s in shared[:5]) + (" ..." if len(shared) > 5 else "")
        raise PromptOverlapError(
            f"{model or 'model'}: calibration and evaluation prompts must be disjoint, "
            f"{len(shared)} prompt(s) are in both: {head}"
        )
    spec = spec if spec is not None else (_spec_named(model) if model else None)
    if spec is None or not hasattr(spec, "pipeline_kwargs"):
        return
    cal = {conditioning(spec, p): p for p in calibration}
    both = [(cal[c], p) for p in evaluation if (c := conditioning(spec, p)) in cal]
    if both:
        head = ", ".join(f"{a!r} ~ {b!r}" for a, b in both[:3]) + (" ..." if len(both) > 3 else "")
        raise PromptOverlapError(
            f"{model or spec.name}: calibration and evaluation must condition the model differently, "
            f"{len(both)} evaluation prompt(s) give the model the same input as a calibration prompt "
            f"({', '.join(k for k, _ in conditioning(spec, both[0][1]))}): {head}"
        )


def contained_path(root: str | os.PathLike[str], *parts: str) -> Path | None:
    """`root/parts…` resolved (symlinks and `..` followed) when it stays inside `root`, else None: for paths
    built from untrusted text such as a record's `invocation` or model name."""
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    return target if target == base or base in target.parents else None


def pipeline_weights_hash(pipe: Any, path: str | os.PathLike[str] | None = None) -> str:
    """sha256 of what determines the outputs: the weights directory when given, else every module's state."""
    from harness.references import weights_hash

    if path is not None and Path(path).is_dir():
        root = Path(path)
        files = sorted(f for f in root.rglob("*") if f.is_file())
        if sum(f.stat().st_size for f in files) > (2 << 30):  # full-scale checkpoints: names + sizes
            h = hashlib.sha256(b"stat-fingerprint\0")
            for f in files:
                h.update(f"{f.relative_to(root).as_posix()}|{f.stat().st_size}\0".encode())
            return h.hexdigest()
        return weights_hash(root)
    h = hashlib.sha256()
    for name, comp in sorted(getattr(pipe, "components", {}).items()):
        if hasattr(comp, "state_dict"):
            h.update(name.encode() + b"\0" + weights_hash(comp).encode())
    return h.hexdigest()


class _CountingTransformer:
    """Stands in for `pipe.transformer` and counts the FLOPs of every call (probe work included)."""

    def __init__(self, real: Any) -> None:
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "flops", 0)
        object.__setattr__(self, "calls", 0)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from harness.flops import function_flop_counter  # FlopCounterMode's total (attention on CPU too)

        with function_flop_counter() as counter:
            out = self._real(*args, **kwargs)
        object.__setattr__(self, "flops", self.flops + int(counter.get_total_flops()))
        object.__setattr__(self, "calls", self.calls + 1)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._real, name, value)


@contextlib.contextmanager
def counting_transformer(pipe: Any) -> Iterator[_CountingTransformer]:
    """Count the transformer's FLOPs (`.flops`, `.calls`) while the block runs; restores `pipe.transformer`."""
    real = pipe.transformer
    proxy = _CountingTransformer(real)
    object.__setattr__(pipe, "transformer", proxy)
    try:
        yield proxy
    finally:
        object.__setattr__(pipe, "transformer", real)


def output_tensor(out: Any) -> Any:
    """A pipeline output (`output_type="pt"`) as a float CPU tensor: images (N,C,H,W) or video (N,F,C,H,W)."""
    import torch

    x = out.images if hasattr(out, "images") else out.frames
    return torch.as_tensor(x).detach().float().cpu()


def to_uint8_images(images: Any) -> list[Any]:
    """(N,C,H,W) or (N,F,C,H,W) in [0,1] → one HWC uint8 array per prompt (video: middle frame)."""
    x = images.detach().float().cpu().clamp(0, 1)
    if x.dim() == 5:
        x = x[:, x.shape[1] // 2]
    arr = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    return [a[..., 0] if a.shape[-1] == 1 else a for a in arr]


@dataclass
class ModelContext:
    """One loaded model as the methods see it: its spec, pipeline, T, prompts, seeds and cache directory."""

    spec: Any
    pipe: Any
    num_steps: int
    calibration_prompts: tuple[Any, ...]
    evaluation_prompts: tuple[Any, ...]
    weights_id: str
    cache_dir: Path = DEFAULT_CACHE_DIR
    device: str = "cpu"
    progress: bool = True
    search_prompts: int = 2  # calibration prompts used to measure compute during a knob search
    _full_flops: int | None = field(default=None, repr=False)
    _probes: int = field(default=0, repr=False)  # budget-search probes so far (the progress lines' count)

    def __post_init__(self) -> None:
        check_prompts_disjoint(
            self.calibration_prompts, self.evaluation_prompts, self.spec.name, spec=self.spec
        )
        self.cache_dir = Path(self.cache_dir)

    @property
    def family(self) -> str:
        return self.spec.family

    def kwargs(self, prompt: Any, steps: int | None = None) -> dict[str, Any]:
        kw = self.spec.pipeline_kwargs(prompt, steps or self.num_steps)
        kw.pop("num_inference_steps", None)
        return kw

    def call(self, prompt: Any, seed: int, steps: int | None = None) -> Any:
        """One sample (images (1,C,H,W) or video (1,F,C,H,W), float in [0, 1], on CPU)."""
        import torch

        out = self.pipe(
            num_inference_steps=steps or self.num_steps,
            generator=torch.Generator(self.device).manual_seed(int(seed)),  # on the pipeline's device
            output_type="pt",
            **self.kwargs(prompt, steps),
        )
        return output_tensor(out)

    def transformer_flops(self, prompt: Any, seed: int, steps: int | None = None) -> tuple[int, Any]:
        """(transformer FLOPs, output) of one sample."""
        with counting_transformer(self.pipe) as proxy:
            out = self.call(prompt, seed, steps)
        return proxy.flops, out

    def full_flops(self) -> int:
        """Transformer FLOPs of one uncached T-step sample (computed once)."""
        if self._full_flops is None:
            self._full_flops, _ = self.transformer_flops(self.calibration_prompts[0], 42)
        return self._full_flops

    def search_compute(self, apply: Callable[[], Any], remove: Callable[[], Any], label: str = "") -> float:
        """Measured compute (in K) of a method as `apply` installs it, averaged over the first `search_prompts`
        calibration prompts: what every budget search (knob or schedule size) measures. `label` (method and
        knob value) names the probe in the progress line."""
        import time

        prompts = self.calibration_prompts[: max(1, self.search_prompts)]
        t0 = time.perf_counter()
        apply()
        try:
            flops = [self.transformer_flops(p, 42 + i)[0] for i, p in enumerate(prompts)]
        finally:
            remove()
        k = self.measured_compute(sum(flops) / len(flops))
        self.report_probe(label, k, time.perf_counter() - t0)
        return k

    def report_probe(self, label: str, k: float, seconds: float) -> None:
        """One line per budget-search probe, so a long search is never silent: on stderr with progress on
        (`dpcache-bench run`), else on the terminal's own stderr when it is one (pytest captures the rest;
        xdist workers share the terminal's stderr); nothing in CI logs."""
        import sys

        if not label:
            return
        self._probes += 1
        stream = sys.stderr if self.progress else sys.__stderr__
        if stream is not None and (self.progress or stream.isatty()):
            line = f"[{self.spec.name}] budget search {label}: K = {k:.2f} ({seconds:.1f} s, probe {self._probes})"
            print(line, file=stream, flush=True)

    def measured_compute(self, flops: float) -> float:
        """Transformer FLOPs of a sample in units of full computations (K): T × flops / full-sample flops."""
        return self.num_steps * float(flops) / self.full_flops()

    def key(self, *parts: Any) -> str:
        """The name of a cached artefact of this model (cost tensor, budget search, tuned settings): model,
        weights, T and a digest of everything else that changes its content (`settings_digest`)."""
        return "-".join(
            [
                self.spec.name,
                self.weights_id[:12],
                f"T{self.num_steps}",
                self.settings_digest(),
                *map(str, parts),
            ]
        )

    def settings_digest(self) -> str:
        """12 hex digits over the device class, scheduler, dtype, the calibration prompts and their call arguments
        (resolution, frames, guidance, max_sequence_length, negative prompt ...): a change of any of them in
        the registry or on the command line names a new artefact instead of reusing a stale one."""
        from harness.provenance import device_class
        from harness.references import canonical_json, scheduler_identity

        payload = canonical_json(
            {
                "device": device_class(self.device),
                "scheduler": scheduler_identity(self.pipe.scheduler),
                "dtype": str(next(self.pipe.transformer.parameters()).dtype),
                "calls": [self.kwargs(p) for p in self.calibration_prompts],
            }
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]
