"""The cost-tensor file: a float64 C[a, i, j] of shape (T, T+1, T+1) plus metadata, in .safetensors.

Building the tensor from features lives in ``dpcache.pact``; this module validates, saves (atomically)
and loads it, and checks that its metadata matches the configuration it is used with. It never
unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpcache import __version__
from dpcache.atomic_io import write_atomic
from dpcache.errors import (
    CostTensorError,
    CostTensorMismatchError,
    CostTensorNotFoundError,
    field_mismatches,
)

FORMAT_VERSION = 1
TENSOR_NAME = "cost"
_NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 100 * 1024 * 1024


@dataclass
class CostTensorMeta:
    """What a cost tensor was calibrated with; stored as safetensors string metadata."""

    num_steps: int
    format_version: int = FORMAT_VERSION
    model_id: str = ""
    predictor: str = "taylor"
    predictor_order: int = 2
    cost_metric: str = "l1"
    first_full_steps: int = 3
    last_full_steps: int = 0
    max_jump: int = 0
    sentinel_alpha: float = 0.8
    prompt_hashes: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    dtype: str = ""
    dpcache_version: str = __version__
    source: str = "calibrated"

    def __post_init__(self) -> None:
        if not self.max_jump:
            self.max_jump = max(int(self.num_steps * 0.3), 1)

    def to_strings(self) -> dict[str, str]:
        """Safetensors metadata (str → str); lists are JSON-encoded."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = json.dumps(value) if isinstance(value, list) else str(value)
        return out

    @classmethod
    def from_strings(cls, raw: dict[str, str]) -> CostTensorMeta:
        """Parse safetensors metadata written by :meth:`to_strings`; unknown keys are ignored."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw:
                continue
            text = raw[f.name]
            try:
                if f.name in ("prompt_hashes", "seeds"):
                    value = json.loads(text)
                    if not isinstance(value, list):
                        raise ValueError("not a list")
                elif f.name in (
                    "num_steps",
                    "format_version",
                    "predictor_order",
                    "first_full_steps",
                    "last_full_steps",
                    "max_jump",
                ):
                    value = int(text)
                elif f.name == "sentinel_alpha":
                    value = float(text)
                else:
                    value = text
            except ValueError as exc:
                raise CostTensorError(
                    f"cost tensor metadata field {f.name!r} is malformed: {text!r}"
                ) from exc
            kwargs[f.name] = value
        if "num_steps" not in kwargs:
            raise CostTensorError("cost tensor metadata lacks 'num_steps'; re-save it with `dpcache convert`")
        return cls(**kwargs)


def validate_cost_array(arr: Any) -> np.ndarray:
    """Return ``arr`` as a float64 (T, T+1, T+1) array, or raise CostTensorError saying what is wrong."""
    if not isinstance(arr, np.ndarray):
        raise CostTensorError(f"cost tensor must be a numpy array, got {type(arr).__name__}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CostTensorError(f"cost tensor must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1:] != (arr.shape[0] + 1, arr.shape[0] + 1):
        raise CostTensorError(f"cost tensor must have shape (T, T+1, T+1), got {arr.shape}")
    out = np.ascontiguousarray(arr, dtype=np.float64)
    if np.isnan(out).any():
        raise CostTensorError(
            f"cost tensor contains {int(np.isnan(out).sum())} NaN values; use inf for 'not allowed' or re-calibrate"
        )
    if np.isneginf(out).any():
        raise CostTensorError("cost tensor contains -inf; costs must be finite or +inf ('not allowed')")
    return out


def _sniff(path: Path) -> None:
    """Refuse files that are clearly not safetensors (pickle, .npy, garbage) before parsing them."""
    with open(path, "rb") as fh:
        head = fh.read(16)
        size = os.fstat(fh.fileno()).st_size
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len <= min(size - 8, _MAX_HEADER) and head[8:9] == b"{":
            return
    convert_hint = f"convert it with `dpcache convert {path} --out FILE.safetensors`"
    if (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or path.suffix.lower() in (
        ".pkl",
        ".pickle",
    ):
        raise CostTensorError(f"{path} is a pickle; {convert_hint}")
    if head.startswith(_NPY_MAGIC):
        raise CostTensorError(f"{path} is a .npy array; {convert_hint}")
    raise CostTensorError(f"{path} is not a safetensors cost tensor")


def bundled_tensors() -> dict[str, Path]:
    """The cost tensors shipped with dpcache (`dpcache/data/official/`), by file name."""
    from importlib import resources

    root = Path(str(resources.files("dpcache").joinpath("data", "official")))
    return {f.name: f for f in sorted(root.glob("*.safetensors"))} if root.is_dir() else {}


def resolve_cost_path(path: str | os.PathLike[str]) -> Path:
    """`path` when that file exists; otherwise a bundled tensor of that name (a bare file name such as
    ``"flux_dev_T50_cost.safetensors"``, as in the README); CostTensorError naming both otherwise."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        raise CostTensorError(f"{p} is a directory, not a cost tensor file")
    bundled = bundled_tensors()
    if p.parent == Path(".") and p.name in bundled:
        return bundled[p.name]
    raise CostTensorNotFoundError(
        f"{p}: no such cost tensor file (and no bundled tensor of that name; bundled: {', '.join(bundled) or 'none'})"
    )


class CostTensor:
    """A validated cost tensor and its metadata."""

    def __init__(self, cost: np.ndarray, meta: CostTensorMeta) -> None:
        self.cost = validate_cost_array(cost)
        if meta.num_steps != self.cost.shape[0]:
            raise CostTensorError(
                f"metadata says T={meta.num_steps} but the tensor has shape {self.cost.shape} (T={self.cost.shape[0]})"
            )
        self.meta = meta

    @property
    def num_steps(self) -> int:
        return self.cost.shape[0]

    def __repr__(self) -> str:
        return f"CostTensor(T={self.num_steps}, model_id={self.meta.model_id!r}, source={self.meta.source!r})"

    @classmethod
    def from_array(cls, arr: np.ndarray, **meta_fields: Any) -> CostTensor:
        """Validate ``arr`` and attach metadata (``num_steps`` is taken from the shape when omitted)."""
        arr = validate_cost_array(arr)
        meta_fields.setdefault("num_steps", arr.shape[0])
        names = {f.name for f in dataclasses.fields(CostTensorMeta)}
        unknown = sorted(set(meta_fields) - names)
        if unknown:
            raise CostTensorError(f"unknown cost tensor metadata field(s): {', '.join(unknown)}")
        return cls(arr, CostTensorMeta(**meta_fields))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` as .safetensors atomically (temp file in the same directory, then os.replace)."""
        from safetensors.numpy import save_file

        metadata = self.meta.to_strings()
        return write_atomic(path, lambda tmp: save_file({TENSOR_NAME: self.cost}, tmp, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CostTensor:
        """Load a .safetensors cost tensor (a path, or the name of a bundled one); anything else (pickle, .npy,
        other tensors) is refused."""
        from safetensors import SafetensorError, safe_open

        p = resolve_cost_path(path)
        _sniff(p)
        try:
            with safe_open(str(p), framework="numpy") as fh:
                raw_meta = fh.metadata() or {}
                if TENSOR_NAME not in fh.keys():  # noqa: SIM118  (safe_open has keys(), no __contains__)
                    raise CostTensorError(
                        f"{p} holds no tensor named {TENSOR_NAME!r} (found {sorted(fh.keys())}); it is not a cost tensor"
                    )
                arr = fh.get_tensor(TENSOR_NAME)
        except SafetensorError as exc:
            raise CostTensorError(f"{p} is not a readable safetensors file: {exc}") from exc
        version = raw_meta.get("format_version")
        if version is not None and version.isdigit() and int(version) > FORMAT_VERSION:
            raise CostTensorError(
                f"{p} uses cost tensor format {version}, newer than this dpcache ({FORMAT_VERSION}); upgrade dpcache"
            )
        if "num_steps" not in raw_meta:
            raise CostTensorError(
                f"{p} has no cost tensor metadata; convert the raw array with `dpcache convert`"
            )
        return cls(arr, CostTensorMeta.from_strings(raw_meta))

    def check_compatible(
        self,
        *,
        num_steps: int | None = None,
        predictor: str | None = None,
        predictor_order: int | None = None,
        model_id: str | None = None,
        first_full_steps: int | None = None,
    ) -> None:
        """Raise CostTensorMismatchError listing every given field that differs from the metadata."""
        expected = {
            "num_steps": num_steps,
            "predictor": predictor,
            "predictor_order": predictor_order,
            "model_id": model_id,
            "first_full_steps": first_full_steps,
        }
        diffs = field_mismatches(self.meta, expected)
        if diffs:
            raise CostTensorMismatchError(
                "cost tensor does not match this configuration (" + "; ".join(diffs) + "); "
                "re-calibrate or pass a matching tensor"
            )
