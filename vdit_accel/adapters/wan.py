"""Wan 2.1 text-to-video (``WanTransformer3DModel``).

Token layout: ``attn1`` is self-attention over video tokens only (RoPE inside the processor, interleaved pairs,
head channels split t/h/w = hd-4(hd//6) / 2(hd//6) / 2(hd//6)); ``attn2`` is cross-attention to text (per video
token); ``ffn`` is per token. CFG: separate ``cond``/``uncond`` calls with batch B.
"""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel

from .base import ModelAdapter, QuerySparseProcessorBase, gather_rope_rows


def _apply_wan_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved RoPE (same arithmetic as ``WanAttnProcessor``), for ``x`` ``[B, S, H, D]`` and ``cos``/``sin``
    ``[1 or B, S, 1, D]``."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = cos[..., 0::2]
    sin = sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanQuerySparseAttnProcessor(QuerySparseProcessorBase):
    """``attn1`` of ``WanTransformerBlock``: queries of the selected tokens only, keys/values of all tokens."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        sel = self.runtime.selection
        if sel is None or encoder_hidden_states is not None or attention_mask is not None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        batch, seq_len, _ = hidden_states.shape
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
            query = sel.gather(query)
        else:
            query = attn.to_q(sel.gather(hidden_states))
            key = attn.to_k(hidden_states)
            value = attn.to_v(hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            cos, sin = rotary_emb
            query = _apply_wan_rope(query, gather_rope_rows(cos, sel.index, batch),
                                    gather_rope_rows(sin, sel.index, batch))
            key = _apply_wan_rope(key, cos, sin)
        out = self.attend(sel, query, key, value).flatten(2, 3).type_as(query)
        out = attn.to_out[1](attn.to_out[0](out))
        return sel.scatter(out, seq_len)


def _wan_grid(transformer, args, kwargs):
    hs = kwargs.get("hidden_states", args[0] if args else None)
    _, _, f, h, w = hs.shape
    p_t, p_h, p_w = transformer.config.patch_size
    return f // p_t, h // p_h, w // p_w


def _wan_rope_groups(transformer):
    hd = transformer.config.attention_head_dim
    h = w = 2 * (hd // 6)
    return hd - h - w, h, w


ADAPTER = ModelAdapter(
    name="wan",
    transformer_cls=WanTransformer3DModel,
    block_lists=("blocks",),
    self_attention="attn1",
    token_wise={"attn2": "video", "ffn": "video"},
    make_processor=WanQuerySparseAttnProcessor,
    grid_fn=_wan_grid,
    rope_groups_fn=_wan_rope_groups,
    cfg_batched=False,
    notes="self-attention query-sparse; cross-attention and FFN on selected tokens; K/V projections dense",
)
