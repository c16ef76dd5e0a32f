"""Wan 2.1 text-to-video (``WanTransformer3DModel``).

Token layout: ``attn1`` is self-attention over video tokens only (RoPE inside the processor, interleaved pairs,
head channels split t/h/w = hd-4(hd//6) / 2(hd//6) / 2(hd//6)); ``attn2`` is cross-attention to text (per video
token); ``ffn`` is per token. CFG: separate ``cond``/``uncond`` calls with batch B. diffusers ships a ``_cp_plan``.
Sizes: the RoPE table has ``rope_max_seq_len`` positions per axis, so each of F', H', W' is at most that.
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers import WanTransformer3DModel

from .base import ModelAdapter, QuerySparseAttnProcessor, rope_selected
from .sizes import SizeRules, pipe_factor, video_size_rules


def apply_wan_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved RoPE (same arithmetic as ``WanAttnProcessor``), for ``x`` ``[B, S, H, D]`` and ``cos``/``sin``
    ``[1 or B, S, 1, D]``."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = cos[..., 0::2]
    sin = sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanQuerySparseAttnProcessor(QuerySparseAttnProcessor):
    """``attn1`` of ``WanTransformerBlock``: queries of the selected tokens only, keys/values of all tokens."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        return self.run(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)

    def project(self, attn, sel, hidden_states, encoder_hidden_states):
        # Wan's RMSNorm spans all heads (norm before the head split); fused QKV projects every row at once
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
            query = sel.gather(query)
        else:
            query = attn.to_q(sel.gather(hidden_states))
            key, value = attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = (attn.heads, -1)
        return (attn.norm_q(query).unflatten(2, heads), attn.norm_k(key).unflatten(2, heads),
                value.unflatten(2, heads)), None

    def rope(self, attn, sel, qkv, rotary_emb):
        return qkv if rotary_emb is None else rope_selected(qkv, sel, rotary_emb, apply_wan_rope)


def wan_grid(transformer, args, kwargs):
    hs = kwargs.get("hidden_states", args[0] if args else None)
    _, _, f, h, w = hs.shape
    p_t, p_h, p_w = transformer.config.patch_size
    return f // p_t, h // p_h, w // p_w


def wan_rope_groups(transformer):
    hd = transformer.config.attention_head_dim
    h = w = 2 * (hd // 6)
    return hd - h - w, h, w


def wan_size_rules(pipe) -> SizeRules:
    """Multiples of lcm(VAE × patch, 16) (Wan pipelines demand multiples of 16), ``4k + 1`` frames (the VAE's temporal
    factor), and at most ``rope_max_seq_len`` latent positions per axis (the RoPE table's length)."""
    cfg = pipe.transformer.config
    p_t, p_h, p_w = (int(p) for p in cfg.patch_size)
    vae, patch = pipe_factor(pipe, ("vae_scale_factor_spatial",), 8), max(p_h, p_w)
    rules = video_size_rules(vae, patch, pipe_factor(pipe, ("vae_scale_factor_temporal",), 4), p_t, 16, "WanPipeline")
    positions = int(cfg.rope_max_seq_len)
    max_side = positions * vae * patch // rules.spatial * rules.spatial
    return dataclasses.replace(
        rules, max_height=max_side, max_width=max_side, max_frames=(positions * p_t - 1) * rules.temporal + 1,
        limit=f"the transformer's RoPE table has rope_max_seq_len={positions} positions per axis: at most "
              f"{positions} latent positions of {vae * patch} px, or {positions * p_t} latent frames")


ADAPTER = ModelAdapter(
    name="wan",
    transformer_cls=WanTransformer3DModel,
    block_lists=("blocks",),
    self_attention="attn1",
    token_wise={"attn2": "video", "ffn": "video"},
    make_processor=WanQuerySparseAttnProcessor,
    grid_fn=wan_grid,
    rope_groups_fn=wan_rope_groups,
    cfg_batched=False,
    notes="self-attention query-sparse; cross-attention and FFN on selected tokens; K/V projections dense",
    size_rules=wan_size_rules,
)
