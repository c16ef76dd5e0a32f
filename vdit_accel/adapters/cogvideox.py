"""CogVideoX 1.0/1.5 (``CogVideoXTransformer3DModel``), with and without 3-D RoPE.

Token layout: joint attention over ``[text, video]`` (text first); RoPE only on the video part, from
``image_rotary_emb`` (cos, sin) ``[S_video, D]`` computed by the pipeline; head channels split t/h/w = D/4, 3D/8,
3D/8. The FFN runs on the concatenation ``[text, video]``. CFG is one batched call (2B, uncond first). Text tokens
are always computed.
"""

from __future__ import annotations

import torch
from diffusers import CogVideoXTransformer3DModel

from .base import ModelAdapter, QuerySparseProcessorBase, gather_rope_rows


def _apply_real_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``diffusers.models.embeddings.apply_rotary_emb`` (use_real, unbind -1) with per-sample gathered frequencies:
    ``x`` ``[B, H, S, D]``, ``cos``/``sin`` ``[S, D]`` or ``[B, S, D]``."""
    cos = cos.unsqueeze(-3) if cos.dim() == 3 else cos[None, None]
    sin = sin.unsqueeze(-3) if sin.dim() == 3 else sin[None, None]
    cos, sin = cos.to(x.device), sin.to(x.device)
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


class CogVideoXQuerySparseAttnProcessor(QuerySparseProcessorBase):
    """``attn1`` of ``CogVideoXBlock``: queries of all text tokens and the selected video tokens against all keys."""

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        sel = self.runtime.selection
        if sel is None or attention_mask is not None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask=attention_mask,
                              image_rotary_emb=image_rotary_emb)
        text_len = encoder_hidden_states.shape[1]
        batch, n_video, _ = hidden_states.shape
        full = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        query = attn.to_q(sel.gather(full, "text_video"))
        key = attn.to_k(full)
        value = attn.to_v(full)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            cos, sin = image_rotary_emb
            q_cos = gather_rope_rows(cos.unsqueeze(0), sel.index, batch)
            q_sin = gather_rope_rows(sin.unsqueeze(0), sel.index, batch)
            query[:, :, text_len:] = _apply_real_rope(query[:, :, text_len:], q_cos, q_sin)
            if not attn.is_cross_attention:
                key[:, :, text_len:] = _apply_real_rope(key[:, :, text_len:], cos, sin)
        out = self.attend(sel, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                          video_offset=text_len)
        out = out.reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        text_out, video_out = out[:, :text_len], out[:, text_len:]
        return sel.scatter(video_out, n_video), text_out


def _cog_grid(transformer, args, kwargs):
    hs = kwargs.get("hidden_states", args[0] if args else None)
    _, f, _, h, w = hs.shape
    p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
    return (f if p_t is None else (f + p_t - 1) // p_t), h // p, w // p


def _cog_rope_groups(transformer):
    if not transformer.config.use_rotary_positional_embeddings:
        return None
    d = transformer.config.attention_head_dim
    return d // 4, d // 8 * 3, d // 8 * 3


ADAPTER = ModelAdapter(
    name="cogvideox",
    transformer_cls=CogVideoXTransformer3DModel,
    block_lists=("transformer_blocks",),
    self_attention="attn1",
    token_wise={"ff": "text_video"},
    make_processor=CogVideoXQuerySparseAttnProcessor,
    grid_fn=_cog_grid,
    rope_groups_fn=_cog_rope_groups,
    cfg_batched=True,
    notes="joint [text, video] attention: text queries always computed; FFN on text + selected video tokens",
)
