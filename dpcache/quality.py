"""The one PSNR of the project (the runtime's `dpcache tune`, the harness, the zoo and the benchmarks)."""

from __future__ import annotations

import math
from typing import Any

PSNR_CAP_DB = 100.0


def psnr_db(a: Any, b: Any, *, data_range: float = 1.0, cap_db: float | None = PSNR_CAP_DB) -> float:
    """The one PSNR of the runtime, the harness, the zoo and the benchmarks: 10·log10(data_range² / MSE) in dB over all
    elements of two same-shaped torch tensors or numpy arrays, the MSE taken in float64. Capped at `cap_db`
    (default `PSNR_CAP_DB`, 100 dB; identical inputs give the cap); `cap_db=None`: uncapped, inf if identical."""
    if hasattr(a, "detach"):  # torch tensors
        mse = float(((a.detach().double() - b.detach().double()) ** 2).mean())
    else:
        import numpy as np

        mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    db = math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)
    return db if cap_db is None else min(cap_db, db)
