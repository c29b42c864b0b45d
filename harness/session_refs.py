"""The benchmark session's full-step references: their keys (DESIGN §2 reference key), lookup in the
committed store, computation and storage, and the fresh recomputation for the drift check."""

from __future__ import annotations

from typing import Any

from harness.provenance import device_class


class ReferencesMixin:
    """Needs `spec`, `pipe`, `ctx`, `prompts`, `seeds`, `store`, `committed`, `_refs` and `_bar`."""

    spec: Any
    pipe: Any
    ctx: Any
    prompts: list[Any]
    seeds: list[int]
    store: Any
    committed: Any
    _refs: Any

    def key_fields(self, prompt: Any, seed: int) -> dict[str, Any]:
        spec, pipe = self.spec, self.pipe
        kw = self.ctx.kwargs(prompt)
        return {
            "model_id": spec.name,
            "weights_hash": self.ctx.weights_id,
            "pipeline_class": type(pipe).__name__,
            "scheduler_config": pipe.scheduler,
            "num_steps": self.ctx.num_steps,
            "height": kw.get("height", spec.height),
            "width": kw.get("width", spec.width),
            "frames": kw.get("num_frames"),
            "guidance": kw.get("true_cfg_scale", kw.get("guidance_scale")),
            "dtype": str(next(pipe.transformer.parameters()).dtype),
            "prompt": prompt,
            "seed": seed,
            "device": device_class(self.ctx.device),
            "call_kwargs": kw,
        }

    def reference_keys(self) -> list[str]:
        from harness.references import reference_key

        return [reference_key(**self.key_fields(p, s)) for p, s in zip(self.prompts, self.seeds)]

    def references(self) -> Any:
        """Full-step outputs of the evaluation prompts (N, ...), from the store or computed and stored."""
        if self._refs is None:
            import torch

            outs = []
            for key, p, s in self._bar(
                list(zip(self.reference_keys(), self.prompts, self.seeds)), "references"
            ):
                meta = {**self.key_fields(p, s), "scheduler_config": dict(self.pipe.scheduler.config)}
                found = self.committed.get(key) if self.committed is not None else None
                if found is None:
                    found = self.store.get_or_compute(key, lambda p=p, s=s: self.ctx.call(p, s), meta)
                outs.append(found)
            self._refs = torch.cat(outs)
        return self._refs

    def fresh_full(self, index: int) -> Any:
        """Recompute the full-step output of evaluation prompt `index` (for the drift check)."""
        return self.ctx.call(self.prompts[index], self.seeds[index])
