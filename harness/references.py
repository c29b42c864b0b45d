"""Reference store: full-step outputs keyed by what determines them, written atomically, reused, drift-checked."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from dpcache.atomic_io import write_atomic, write_text_atomic
from dpcache.errors import InputFileError
from harness.metrics import psnr_db

if TYPE_CHECKING:
    import torch

# 2: the device class and every pipeline call argument joined the key (a GPU output, or one made with
# another max_sequence_length or negative prompt, is another reference).
KEY_FORMAT_VERSION = 2
TENSOR_NAME = "reference"
# Fields every reference key must name (frames is optional: None for images). `call_kwargs` is everything
# passed to the pipeline call apart from the generator (images and tensors by content hash); `device` is
# the device class ("cpu", "cuda", "mps"): kernels differ between them, so outputs do.
REQUIRED_KEY_FIELDS = (
    "model_id",
    "weights_hash",
    "pipeline_class",
    "scheduler_config",
    "num_steps",
    "height",
    "width",
    "guidance",
    "dtype",
    "prompt",
    "seed",
    "device",
    "call_kwargs",
)
# Scheduler-config entries that do not change the trajectory (bookkeeping written by diffusers).
_IGNORED_SCHEDULER_KEYS = {"_diffusers_version", "_use_default_values"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".json", ".model", ".txt")


class ReferenceDriftError(AssertionError):
    """A freshly computed full-step output no longer matches its stored reference."""


class ReferenceFileError(InputFileError):
    """A stored reference file that cannot be read (truncated, corrupt, no tensor); names the file. It is
    never replaced silently: delete it, or recompute it with --update-references."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            path, f"unreadable reference ({problem}); delete it or re-run with --update-references"
        )


def _canonical(value: Any) -> Any:
    """Turn a key field into plain JSON data with one spelling per meaning."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return repr(value)
        return float(repr(value)) if value != int(value) else int(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if hasattr(value, "to_dict") and callable(value.to_dict):  # e.g. a FrozenDict-like config
        return _canonical(dict(value.to_dict()))
    if hasattr(value, "config") and isinstance(getattr(value, "config", None), Mapping):  # a scheduler
        return _canonical({"_class_name": type(value).__name__, **dict(value.config)})
    if isinstance(value, type):
        return value.__name__
    if hasattr(value, "tobytes") or hasattr(value, "detach"):  # arrays, images, tensors: by content
        from dpcache.calibration import call_fingerprint  # `str()` names an address or elides the values

        return call_fingerprint(value)
    return str(value)  # torch.dtype, torch.device, Path ...


def scheduler_identity(sched: Any) -> Any:
    """A scheduler (or its config mapping) as the mapping that determines the trajectory: class name and
    config, without diffusers' bookkeeping entries."""
    if not isinstance(sched, Mapping) and isinstance(getattr(sched, "config", None), Mapping):
        sched = {"_class_name": type(sched).__name__, **dict(sched.config)}
    if isinstance(sched, Mapping):
        return {k: v for k, v in sched.items() if k not in _IGNORED_SCHEDULER_KEYS}
    return sched


def canonical_json(value: Any) -> str:
    """`value` as canonical JSON (one spelling per meaning, sorted keys, arrays and images by content hash)."""
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_key_json(**fields: Any) -> str:
    """The canonical JSON that `reference_key` hashes (sorted keys, no whitespace)."""
    fields.setdefault("frames", None)
    missing = [f for f in REQUIRED_KEY_FIELDS if f not in fields]
    if missing:
        raise TypeError(f"reference_key is missing fields {missing}; it needs {list(REQUIRED_KEY_FIELDS)}")
    fields["scheduler_config"] = scheduler_identity(fields["scheduler_config"])
    payload = {"key_format": KEY_FORMAT_VERSION, **_canonical(fields)}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def reference_key(**fields: Any) -> str:
    """sha256 hex digest over the canonical JSON of model id + weights hash, pipeline class, scheduler
    config, T (`num_steps`), height/width/frames, guidance, dtype, prompt, seed, device class and every
    other pipeline call argument (`call_kwargs`)."""
    return hashlib.sha256(canonical_key_json(**fields).encode("utf-8")).hexdigest()


def _hash_file(path: Path, h: Any) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def weights_hash(module_or_dir: Any) -> str:
    """sha256 of a model's weights: an `nn.Module` (names, dtypes, shapes and bytes of its state dict),
    a weights file, or a directory (every weight/config file, by relative path and content)."""
    h = hashlib.sha256()
    if isinstance(module_or_dir, (str, os.PathLike)):
        root = Path(module_or_dir)
        if root.is_file():
            _hash_file(root, h)
            return h.hexdigest()
        if not root.is_dir():
            raise FileNotFoundError(f"no weights at {root}")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
        if not files:
            raise FileNotFoundError(f"no weight files under {root}")
        for p in files:
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            _hash_file(p, h)
        return h.hexdigest()
    state = module_or_dir.state_dict() if hasattr(module_or_dir, "state_dict") else module_or_dir
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(dtype=_uint8()).numpy().tobytes())
    return h.hexdigest()


def _uint8() -> Any:
    import torch

    return torch.uint8


class ReferenceStore:
    """`<root>/<key>.safetensors` (tensor + metadata) with a `<key>.json` sidecar.

    Writes go to a temporary file in the same directory and are renamed into place (`os.replace`), so a
    reader sees either the old file or the complete new one. The `.safetensors` file is the commit point:
    it is renamed last, and `get` reads nothing else. Parallel writers serialise on a per-key file lock.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, lock_timeout: float = 3600.0, refresh: bool = False
    ) -> None:
        self.root = Path(root)
        self.lock_timeout = lock_timeout
        self.refresh = refresh  # --update-references: recompute each key once through this store
        self._refreshed: set[str] = set()

    def tensor_path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def meta_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def lock(self, key: str) -> FileLock:
        """Per-key lock in the temp dir (keyed by the store's resolved path), so committed reference
        folders stay clean; it serialises the processes of one machine (e.g. pytest-xdist workers)."""
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        lock_dir = Path(tempfile.gettempdir()) / "dpcache-reference-locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(lock_dir / f"{digest}-{key}.lock"), timeout=self.lock_timeout)

    def __contains__(self, key: str) -> bool:
        return self.tensor_path(key).is_file()

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.safetensors")) if self.root.is_dir() else []

    def get(self, key: str) -> torch.Tensor | None:
        """The stored tensor, or None when there is none."""
        path = self.tensor_path(key)
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as exc:  # SafetensorError, OSError, ...: one error naming the file
            raise ReferenceFileError(path, " ".join(str(exc).split()) or type(exc).__name__) from None
        if TENSOR_NAME not in tensors:
            raise ReferenceFileError(path, f"no tensor named {TENSOR_NAME!r}")
        return tensors[TENSOR_NAME]

    def meta(self, key: str) -> dict[str, Any] | None:
        """The metadata stored with the tensor (read from the `.safetensors` header, not the sidecar)."""
        path = self.tensor_path(key)
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
            return json.loads(header.get("meta", "{}"))
        except Exception as exc:
            raise ReferenceFileError(path, " ".join(str(exc).split()) or type(exc).__name__) from None

    def put(self, key: str, tensor: torch.Tensor, meta: Mapping[str, Any]) -> Path:
        """Store `tensor` under `key` atomically (overwrites). Returns the tensor path."""
        with self.lock(key):
            return self._put_locked(key, tensor, meta)

    def _put_locked(self, key: str, tensor: torch.Tensor, meta: Mapping[str, Any]) -> Path:
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        t = tensor.detach().cpu().contiguous()
        full_meta = {"key": key, "shape": list(t.shape), "dtype": str(t.dtype), **_canonical(dict(meta))}
        meta_json = json.dumps(full_meta, sort_keys=True, indent=2)
        write_text_atomic(self.meta_path(key), meta_json + "\n", fsync=True)
        target = self.tensor_path(key)
        write_atomic(
            target, lambda p: save_file({TENSOR_NAME: t}, p, metadata={"meta": meta_json}), fsync=True
        )
        return target

    def get_or_compute(
        self,
        key: str,
        compute_fn: Callable[[], torch.Tensor],
        meta: Mapping[str, Any],
        *,
        refresh: bool | None = None,
    ) -> torch.Tensor:
        """The stored tensor, or compute, store and return it. Of several processes asking for the same
        missing key one computes; the others wait on the lock and then read its result.
        `refresh=True` recomputes and overwrites (the explicit `--update-references` path); by default
        a store made with `refresh=True` recomputes each key once, then reuses it."""
        if refresh is None:
            refresh = self.refresh and key not in self._refreshed
        if not refresh:
            found = self.get(key)  # a corrupt file raises ReferenceFileError: never silently replaced
            if found is not None:
                return found
        with self.lock(key):
            if not refresh:
                found = self.get(key)
                if found is not None:
                    return found
            tensor = compute_fn()
            self._put_locked(key, tensor, meta)
            self._refreshed.add(key)
            return tensor.detach().cpu()

    def check_drift(
        self, key: str, fresh: torch.Tensor, *, min_psnr: float = 40.0, data_range: float = 1.0
    ) -> float:
        """PSNR (dB, capped at 100) of `fresh` to the stored reference; raises `ReferenceDriftError`
        when it is below `min_psnr`, the shapes differ, or no reference is stored."""
        stored = self.get(key)
        if stored is None:
            raise ReferenceDriftError(f"reference drift: no stored reference for key {key} in {self.root}")
        fresh = fresh.detach().cpu()
        if tuple(stored.shape) != tuple(fresh.shape):
            raise ReferenceDriftError(
                f"reference drift for key {key}: shape {tuple(fresh.shape)} != stored {tuple(stored.shape)}"
            )
        value = psnr_db(fresh, stored, data_range=data_range)
        if value < min_psnr:
            raise ReferenceDriftError(
                f"reference drift for key {key}: PSNR to the stored reference is {value:.2f} dB "
                f"(minimum {min_psnr:.2f} dB); re-run with --update-references if the change is intended"
            )
        return value
