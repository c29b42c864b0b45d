"""Import the authors' released cost tensors (.pkl via a restricted unpickler, or .npy) into .safetensors.

The released calibration appends one pickled ndarray per prompt to the same file (``open(..., "ab")``);
like their ``merge_cost_matrix`` we load every one and average each cell over its finite values.
The unpickler only resolves the handful of numpy globals a bare ndarray needs, so a malicious
pickle fails before anything it names is imported or called.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from dpcache.cost_tensor import CostTensor, validate_cost_array
from dpcache.errors import CostTensorError

_NPY_MAGIC = b"\x93NUMPY"
_PICKLE_SUFFIXES = (".pkl", ".pickle")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # protocol 0-2 pickles spell raw bytes as _codecs.encode(str, "latin1"); allow only that use
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refused _codecs.encode with anything but (str, 'latin1')")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray, numeric

    # numpy 1.x pickles name numpy.core.*, numpy 2.x numpy._core.*; map both to the same objects
    # without importing the deprecated numpy.core shim. _frombuffer appears in protocol-5 pickles.
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild plain numpy arrays; every other global is refused."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: only a bare numpy ndarray may be unpickled"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id: only a bare numpy ndarray may be unpickled")


def _restricted_loads_all(data: bytes, source: str) -> list[np.ndarray]:
    stream = io.BytesIO(data)
    arrays: list[np.ndarray] = []
    while stream.tell() < len(data):
        try:
            obj = RestrictedUnpickler(stream).load()
        except pickle.UnpicklingError as exc:
            raise CostTensorError(f"{source}: {exc}") from None
        except Exception as exc:  # truncated or malformed pickle data
            raise CostTensorError(
                f"{source} is not a readable pickle ({type(exc).__name__}: {exc})"
            ) from None
        if not isinstance(obj, np.ndarray):
            raise CostTensorError(f"{source} holds a {type(obj).__name__}, not a numpy array")
        if obj.dtype.hasobject or not np.issubdtype(obj.dtype, np.number):
            raise CostTensorError(f"{source} holds an array of dtype {obj.dtype}, not numbers")
        arrays.append(obj)
    if not arrays:
        raise CostTensorError(f"{source} is empty")
    return arrays


def merge_finite_mean(arrays: list[np.ndarray]) -> np.ndarray:
    """Per-cell mean over the finite values of several same-shaped tensors; inf where none is finite."""
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise CostTensorError(f"cannot merge cost tensors of different shapes {sorted(shapes)}")
    stack = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])
    valid = np.isfinite(stack)
    counts = valid.sum(axis=0)
    sums = np.where(valid, stack, 0.0).sum(axis=0)
    out = np.full(stack.shape[1:], np.inf)
    np.divide(sums, counts, out=out, where=counts > 0)
    return out


def load_released_pickle(path: str | os.PathLike[str]) -> np.ndarray:
    """Load a released ``.pkl`` cost tensor (one or several concatenated pickled ndarrays) safely."""
    p = Path(path)
    arrays = _restricted_loads_all(p.read_bytes(), str(p))
    return validate_cost_array(arrays[0] if len(arrays) == 1 else merge_finite_mean(arrays))


def load_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """Load a bare ``.npy`` cost tensor without ever unpickling."""
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise CostTensorError(f"{path} is not a plain .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise CostTensorError(f"{path} is an .npz archive, not a single .npy array")
    return validate_cost_array(arr)


def load_raw(path: str | os.PathLike[str]) -> np.ndarray:
    """A raw cost array from ``.npy`` or ``.pkl``, chosen by content (then by suffix)."""
    p = Path(path)
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_NPY_MAGIC):
        return load_npy(p)
    if head[:1] == b"\x80" or p.suffix.lower() in _PICKLE_SUFFIXES:
        return load_released_pickle(p)
    raise CostTensorError(f"{p} is neither a .npy array nor a pickled ndarray; nothing to convert")


def convert(src: str | os.PathLike[str], out: str | os.PathLike[str], **meta: Any) -> CostTensor:
    """Convert a raw ``.npy``/``.pkl`` tensor to a ``.safetensors`` cost tensor with metadata."""
    arr = load_raw(src)
    meta.setdefault("source", f"converted:{Path(src).name}")
    if meta.get("num_steps") is not None and meta["num_steps"] != arr.shape[0]:
        raise CostTensorError(
            f"{src} has T={arr.shape[0]} (shape {arr.shape}) but --steps says {meta['num_steps']}"
        )
    meta = {k: v for k, v in meta.items() if v is not None}
    tensor = CostTensor.from_array(arr, **meta)
    tensor.save(out)
    return tensor
