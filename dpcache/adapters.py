"""Model adapters: where each diffusion transformer keeps its block stack and how its blocks return outputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Block lists in execution order, per transformer class. The last block of the last list is the one whose
# output DPCache caches (for FLUX: the single-stream output; the output head then runs with the current temb).
_BLOCK_LISTS: dict[str, tuple[str, ...]] = {
    "FluxTransformer2DModel": ("transformer_blocks", "single_transformer_blocks"),
    "WanTransformer3DModel": ("blocks",),
    "HunyuanVideoTransformer3DModel": ("transformer_blocks", "single_transformer_blocks"),
    "DiTTransformer2DModel": ("transformer_blocks",),
}
_FALLBACK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks", "layers")


@dataclass(frozen=True)
class BlockLayout:
    """The transformer's blocks in execution order, with names for error messages."""

    model_class: str
    names: tuple[str, ...]
    blocks: tuple[torch.nn.Module, ...]

    @property
    def last(self) -> torch.nn.Module:
        return self.blocks[-1]


def supported_models() -> list[str]:
    """Transformer classes with a dedicated adapter (others work if their blocks live in standard lists)."""
    return sorted(_BLOCK_LISTS)


def block_layout(transformer: torch.nn.Module) -> BlockLayout:
    """Find the block stack of a diffusers transformer.

    Raises:
        TypeError: the module has no recognisable block list (not a diffusion transformer).
    """
    cls = type(transformer).__name__
    list_names = _BLOCK_LISTS.get(cls, _FALLBACK_LISTS)
    names: list[str] = []
    blocks: list[torch.nn.Module] = []
    for list_name in list_names:
        sub = getattr(transformer, list_name, None)
        if isinstance(sub, torch.nn.ModuleList):
            for idx, block in enumerate(sub):
                names.append(f"{list_name}.{idx}")
                blocks.append(block)
    if not blocks:
        raise TypeError(
            f"{cls} has no transformer block list ({', '.join(list_names)}); DPCache supports "
            f"{', '.join(supported_models())} and models with blocks in one of those lists"
        )
    return BlockLayout(cls, tuple(names), tuple(blocks))


def timestep_value(args: tuple, kwargs: dict) -> float | None:
    """The scalar timestep of a transformer call (first element of a batched timestep), if it has one."""
    t = kwargs.get("timestep")
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return float(t.reshape(-1)[0]) if t.numel() else None
    return float(t)
