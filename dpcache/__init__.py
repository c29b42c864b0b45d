"""dpcache: training-free DPCache acceleration for diffusion transformers.

Calibrate a Path-Aware Cost Tensor once per model, plan the key steps for a compute budget by dynamic
programming, and sample with only those steps running the transformer blocks::

    from dpcache import DPCacheConfig, apply_dpcache
    apply_dpcache(pipe, DPCacheConfig(cost="flux_dev_T50.safetensors", budget=13))
"""

__version__ = "0.1.0"

from .errors import (
    CostTensorError,
    CostTensorMismatchError,
    DPCacheError,
    ScheduleMismatchError,
    UnreachablePlanError,
)

_LAZY = {
    "cost_tensor": ("CostTensor",),
    "planner": ("Schedule", "plan", "plan_all_budgets"),
    "hooks": ("DPCacheConfig", "apply_dpcache", "remove_dpcache", "dpcache_stats", "RunStats"),
    "calibration": ("calibrate", "calibrate_predictors", "record_features"),
    "pact": ("build_cost_tensor",),
    "predictors": ("Predictor", "TaylorPredictor"),
    "prompts": ("load_prompts",),
    "tune": ("TuneSpace", "TuneResult"),
}


def __getattr__(name: str):
    # numpy/torch/diffusers parts load on first use, so `import dpcache` (its errors, the CLI argument layer)
    # stays light.
    import importlib

    for module, names in _LAZY.items():
        if name in names:
            return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module 'dpcache' has no attribute {name!r}")


__all__ = [
    "CostTensor",
    "CostTensorError",
    "CostTensorMismatchError",
    "DPCacheConfig",
    "DPCacheError",
    "Predictor",
    "RunStats",
    "Schedule",
    "ScheduleMismatchError",
    "TaylorPredictor",
    "UnreachablePlanError",
    "apply_dpcache",
    "build_cost_tensor",
    "calibrate",
    "calibrate_predictors",
    "dpcache_stats",
    "load_prompts",
    "plan",
    "plan_all_budgets",
    "remove_dpcache",
]
