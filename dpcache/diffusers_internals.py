"""The one place dpcache and the baselines use diffusers internals that have no public equivalent (see below)."""

# Why these are private, and why they are here (diffusers 0.42): diffusers exports `HookRegistry`, `ModelHook`,
# the cache configs and `unwrap_module` publicly, but not
# - `TransformerBlockRegistry` (`diffusers.hooks._helpers`): which element of a block's output is the image / text
#   stream, and where its `hidden_states` argument is — its own caches (first_block_cache.py, mag_cache.py) read
#   it the same way, after `unwrap_module`, so a block wrapped by `torch.compile` is looked up by its own class;
# - `_set_cache_context`: set a cache context on a model without `CacheMixin.cache_context` (DiT's transformer);
# - the hook names its own caches register (the wrapped baselines remove them from a model without
#   `CacheMixin.disable_cache`, DiT's, and find the modules they hook), and SeaCache's raw-vision metadata helper.
# A diffusers upgrade that renames them breaks this module only.

from __future__ import annotations

import torch
from diffusers.hooks import (
    faster_cache,
    first_block_cache,
    mag_cache,
    pyramid_attention_broadcast,
    sea_cache,
    taylorseer_cache,
)
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import CacheContext, _set_cache_context
from diffusers.utils.torch_utils import unwrap_module

__all__ = ["BlockIO", "set_cache_context", "unwrap_module"]

# the hook names of diffusers' own caches (leader / block order as registered)
FBC_HOOKS = (first_block_cache._FBC_LEADER_BLOCK_HOOK, first_block_cache._FBC_BLOCK_HOOK)
MAG_CACHE_BLOCK_HOOK = mag_cache._MAG_CACHE_BLOCK_HOOK
MAG_CACHE_HOOKS = (mag_cache._MAG_CACHE_LEADER_BLOCK_HOOK, MAG_CACHE_BLOCK_HOOK)
FASTER_CACHE_BLOCK_HOOK = faster_cache._FASTER_CACHE_BLOCK_HOOK
FASTER_CACHE_DENOISER_HOOK = faster_cache._FASTER_CACHE_DENOISER_HOOK
PAB_HOOK = pyramid_attention_broadcast._PYRAMID_ATTENTION_BROADCAST_HOOK
TAYLORSEER_HOOK = taylorseer_cache._TAYLORSEER_CACHE_HOOK
SEA_CACHE_HOOKS = (
    sea_cache._SEA_CACHE_POST_NORM_HOOK,
    sea_cache._SEA_CACHE_BLOCK_HOOK,
    sea_cache._SEA_CACHE_LEADER_BLOCK_HOOK,
    sea_cache._SEA_CACHE_ROOT_HOOK,
)
prepare_wan_t2v_raw_vision_metadata = sea_cache._prepare_wan_t2v_raw_vision_metadata


class BlockIO:
    """Reads a block's hidden / encoder inputs and builds outputs shaped like the block's own (via diffusers'
    TransformerBlockRegistry: a tensor, or a 2-tuple with the image and text streams at registered indices)."""

    def __init__(self, block: torch.nn.Module) -> None:
        self.meta = TransformerBlockRegistry.get(type(unwrap_module(block)))
        self.hidden_index: int = self.meta.return_hidden_states_index
        self.encoder_index: int | None = self.meta.return_encoder_hidden_states_index

    def hidden(self, args: tuple, kwargs: dict) -> torch.Tensor:
        return self.meta._get_parameter_from_args_kwargs("hidden_states", args, kwargs)

    def encoder(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        if self.encoder_index is None:
            return None
        return self.meta._get_parameter_from_args_kwargs("encoder_hidden_states", args, kwargs)

    def split(self, output) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(output, tuple):
            return output[self.hidden_index], output[self.encoder_index]
        return output, None

    def build(self, hidden: torch.Tensor, encoder: torch.Tensor | None):
        if self.encoder_index is None:
            return hidden
        out = [None, None]
        out[self.hidden_index] = hidden
        out[self.encoder_index] = encoder
        return tuple(out)


def set_cache_context(module: torch.nn.Module, name: str | None) -> None:
    """Set (a name) or clear (None) the cache context of every stateful hook under `module`."""
    _set_cache_context(module, CacheContext(name) if name is not None else None)
