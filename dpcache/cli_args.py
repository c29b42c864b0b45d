"""One argument-validation layer for `dpcache` and `dpcache-bench`: bounds checked before any model loads,
output paths checked before work starts, every refusal one line (`prog: error: ...`), SIGINT exit 130."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpcache.errors import DPCacheError, OutputPathError, UsageError

MAX_STEPS = 1000  # a diffusion scheduler's training timesteps: more steps than that re-use timesteps
MAX_SIDE = 8192  # pixels per side
MAX_FRAMES = 1025
MAX_SEED = 2**63 - 1
MAX_ORDER = 8
MAX_REPEATS = 1000
MAX_THREADS = 1024
MAX_BATCH = 64
DEVICES = ("cpu", "cuda", "mps", "auto")
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
_BYTES_PER_PIXEL = 2048  # a generous bound on activations per output pixel (VAE decode, attention)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`prog: error: ...`, exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_in(flag: str, value: int | None, lo: int, hi: int | None = None, why: str = "") -> int | None:
    """`value` when lo <= value <= hi (None passes); UsageError saying the range otherwise."""
    if value is None:
        return None
    if value < lo or (hi is not None and value > hi):
        span = f">= {lo}" if hi is None else f">= {lo} and <= {hi}"
        raise UsageError(f"{flag} must be {span}, got {value}" + (f" ({why})" if why else ""))
    return value


def finite(flag: str, value: float | None, lo: float | None = None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or (lo is not None and value < lo):
        raise UsageError(
            f"{flag} must be a finite number" + (f" >= {lo}" if lo is not None else "") + f", got {value}"
        )
    return value


def check_threads(threads: int | None) -> int | None:
    """`--threads`: None (the default) or 1..MAX_THREADS; 0 and negatives are refused, never changed."""
    return int_in("--threads", threads, 1, MAX_THREADS, "omit it for the default: 1 torch thread per process")


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux MemAvailable; physical memory elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def check_memory(what: str, needed: float, flag: str = "") -> None:
    """UsageError when the estimate `needed` (bytes) exceeds the memory available now."""
    have = available_memory()
    if needed > have:
        hint = f"; lower {flag}" if flag else ""
        raise UsageError(
            f"{what} needs about {needed / 1e9:.3g} GB, more than the {have / 1e9:.3g} GB available{hint}"
        )


def cost_tensor_bytes(num_steps: int, prompts: int = 1) -> float:
    """Memory of calibration's float64 cost tensors: one (T, T+1, T+1) per prompt plus their mean."""
    return 8.0 * num_steps * (num_steps + 1) ** 2 * (prompts + 1)


def model_step_limit(path: str | os.PathLike[str] | None) -> int:
    """The most steps a model's scheduler can take: its `num_train_timesteps` (read from the pipeline folder
    without loading anything), capped by MAX_STEPS."""
    if path is not None:
        f = Path(path) / "scheduler" / "scheduler_config.json"
        try:
            n = int(json.loads(f.read_text()).get("num_train_timesteps", MAX_STEPS))
            return max(1, min(n, MAX_STEPS))
        except (OSError, ValueError, TypeError, AttributeError):
            pass
    return MAX_STEPS


def check_steps(steps: int | None, limit: int = MAX_STEPS, flag: str = "--steps") -> int | None:
    return int_in(
        flag, steps, 1, limit, f"the model's scheduler has {limit} timesteps" if limit < MAX_STEPS else ""
    )


def check_sample_size(height: Any, width: Any, frames: Any = None, batch: int = 1) -> None:
    """Height / width / frames of one pipeline call: integers in range, and an output that fits in memory."""
    for flag, v, hi in (
        ("height", height, MAX_SIDE),
        ("width", width, MAX_SIDE),
        ("num_frames", frames, MAX_FRAMES),
    ):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise UsageError(f"{flag} must be an integer, got {v!r}")
        int_in(flag, v, 1, hi)
    pixels = (height or 1) * (width or 1) * (frames or 1) * batch
    check_memory(
        f"a {height}x{width}" + (f"x{frames}" if frames else "") + " sample",
        pixels * _BYTES_PER_PIXEL,
        "the size",
    )


def check_call_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call settings a pipeline will get (flags merged with --set): sizes, guidance, batch checked."""
    check_sample_size(kwargs.get("height"), kwargs.get("width"), kwargs.get("num_frames"), _batch(kwargs))
    for key in ("guidance_scale", "true_cfg_scale"):
        v = kwargs.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise UsageError(f"{key} must be a number, got {v!r}")
        finite(key, v)
    return kwargs


def _batch(kwargs: dict[str, Any]) -> int:
    n = kwargs.get("num_images_per_prompt", kwargs.get("num_videos_per_prompt", 1))
    if isinstance(n, bool) or not isinstance(n, int):
        raise UsageError(f"num_images_per_prompt must be an integer, got {n!r}")
    return int_in("num_images_per_prompt", n, 1, MAX_BATCH)


def resolve_device(device: str) -> str:
    """`cpu`, `cuda`, `mps`, or `auto` (cuda, else mps, else cpu); UsageError for one this machine lacks."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise UsageError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")
    if device == "cpu":
        return device
    import torch

    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if device.startswith("cuda") and not cuda:
        raise UsageError(f"--device {device}: no CUDA device is available here (use cpu or auto)")
    if device == "mps" and not mps:
        raise UsageError("--device mps: the MPS backend is not available here (use cpu or auto)")
    return device


def _first_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_file(flag: str, path: str | os.PathLike[str] | None) -> Path | None:
    """An output file that can be written: not a directory, its folder creatable and writable."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(flag, p, "is a directory; give a file path")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise OutputPathError(flag, p, "is not writable")
        return p
    base = _first_existing(p.parent)
    if not base.is_dir():
        raise OutputPathError(flag, p, f"cannot be created: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputPathError(flag, p, f"cannot be created: {base} is not writable")
    return p


def check_output_dir(flag: str, path: str | os.PathLike[str] | None) -> Path | None:
    """An output folder that exists or can be created, and is writable (not an existing file)."""
    if path is None:
        return None
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(flag, p, "is an existing file; give a folder")
    base = _first_existing(p)
    if not base.is_dir():
        raise OutputPathError(flag, p, f"cannot be created: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputPathError(flag, p, f"{base} is not writable")
    return p


def check_input_file(flag: str, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag} {p}: " + ("is a directory, not a file" if p.is_dir() else "no such file"))
    return p


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (whitespace collapsed); its type when it has no message."""
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text or type(exc).__name__


def run_main(
    prog: str,
    func: Callable[[argparse.Namespace], int | None],
    args: argparse.Namespace,
    errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run a subcommand: its return code; one line on stderr and exit 2 for a refused request or a bad file
    (DPCacheError, OSError, `errors`); one line and exit 130 on SIGINT."""
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (DPCacheError, OSError, *errors) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
