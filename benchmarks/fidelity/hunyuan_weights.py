"""hunyuan-video-tiny's diffusers weights under the official HunyuanVideo parameter names: the inverse of diffusers' `scripts/convert_hunyuan_video_to_diffusers.py`."""

from __future__ import annotations

import torch

# official name fragment -> diffusers name fragment, applied in order (diffusers' TRANSFORMER_KEYS_RENAME_DICT)
_RENAME = (
    ("img_in", "x_embedder"),
    ("time_in.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
    ("guidance_in.mlp.0", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.mlp.2", "time_text_embed.guidance_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("double_blocks", "transformer_blocks"),
    ("img_attn_q_norm", "attn.norm_q"),
    ("img_attn_k_norm", "attn.norm_k"),
    ("img_attn_proj", "attn.to_out.0"),
    ("txt_attn_q_norm", "attn.norm_added_q"),
    ("txt_attn_k_norm", "attn.norm_added_k"),
    ("txt_attn_proj", "attn.to_add_out"),
    ("img_mod.linear", "norm1.linear"),
    ("img_norm1", "norm1.norm"),
    ("img_norm2", "norm2"),
    ("img_mlp", "ff"),
    ("txt_mod.linear", "norm1_context.linear"),
    ("txt_norm1", "norm1.norm"),
    ("txt_norm2", "norm2_context"),
    ("txt_mlp", "ff_context"),
    ("self_attn_proj", "attn.to_out.0"),
    ("modulation.linear", "norm.linear"),
    ("pre_norm", "norm.norm"),
    ("final_layer.norm_final", "norm_out.norm"),
    ("final_layer.linear", "proj_out"),
    ("fc1", "net.0.proj"),
    ("fc2", "net.2"),
    ("input_embedder", "proj_in"),
)
# the token refiner's extra renames (diffusers' remap_txt_in_)
_RENAME_TXT_IN = (
    ("individual_token_refiner.blocks", "token_refiner.refiner_blocks"),
    ("adaLN_modulation.1", "norm_out.linear"),
    ("txt_in", "context_embedder"),
    ("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
    ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
    ("c_embedder", "time_text_embed.text_embedder"),
    ("mlp", "ff"),
)


def diffusers_names(official_key: str) -> list[str]:
    """The diffusers parameter(s) an official parameter is made of (several: concatenated along dim 0)."""
    key = official_key
    for a, b in _RENAME:
        key = key.replace(a, b)
    suffix = key.rsplit(".", 1)[1]
    if "txt_in" in key:

        def rename(k: str) -> str:
            for a, b in _RENAME_TXT_IN:
                k = k.replace(a, b)
            return k

        if "self_attn_qkv" in key:
            return [rename(key.replace("self_attn_qkv", f"attn.to_{p}")) for p in "qkv"]
        return [rename(key)]
    if "img_attn_qkv" in key:
        return [key.replace("img_attn_qkv", f"attn.to_{p}") for p in "qkv"]
    if "txt_attn_qkv" in key:
        return [key.replace("txt_attn_qkv", f"attn.add_{p}_proj") for p in "qkv"]
    if "single_blocks" in key:
        key = key.replace("single_blocks", "single_transformer_blocks")
        if ".linear1." in key:
            stem = key.split(".linear1.")[0]
            return [f"{stem}.attn.to_{p}.{suffix}" for p in "qkv"] + [f"{stem}.proj_mlp.{suffix}"]
        for a, b in (("linear2", "proj_out"), ("q_norm", "attn.norm_q"), ("k_norm", "attn.norm_k")):
            key = key.replace(a, b)
        return [key]
    if "final_layer.adaLN_modulation.1" in key:
        return [key.replace("final_layer.adaLN_modulation.1", "norm_out.linear")]
    return [key]


def official_state_dict(names: list[str], diffusers_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official parameters `names` from a diffusers state dict (qkv / linear1 concatenated; the final
    modulation's halves swapped back: diffusers stores [scale, shift], the official layer [shift, scale])."""
    out = {}
    for name in names:
        parts = [diffusers_sd[k] for k in diffusers_names(name)]
        value = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
        if name.startswith("final_layer.adaLN_modulation.1"):
            scale, shift = value.chunk(2, dim=0)
            value = torch.cat([shift, scale], 0)
        out[name] = value
    return out
