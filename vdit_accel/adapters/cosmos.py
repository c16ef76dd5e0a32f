"""Cosmos (``CosmosTransformer3DModel``): Cosmos 1.0 text/video-to-world, Cosmos 2 and 2.5 predict/transfer.

Token layout: patches in raster order ``[B, F'·H'·W', C]``; ``attn1`` video self-attention (diffusers'
``CosmosAttnProcessor2_0``: heads-first layout, RMS q/k norm, RoPE with the t/h/w frequencies repeated in both halves
of each head (``rotate_half`` layout, so no contiguous per-head t/h/w groups), grouped-query keys); ``attn2``
cross-attention to the text (Cosmos 2.5: text and image context, ``CosmosAttnProcessor2_5``) with the text mask,
per token; ``ff`` per token. The learnable positional embedding, the per-token timestep modulation (video-to-world
conditioning frames) and controlnet residuals are added inside the block, element-wise on all rows.

The pipelines call the transformer twice per step (conditional, unconditional) without ``cache_context``: the step
tracker's implicit contexts keep one cache per call. CFG: 2 calls of batch B.
"""

from __future__ import annotations

import torch
from diffusers import CosmosTransformer3DModel
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.models.transformers.transformer_cosmos import CosmosTransformerBlock

from .base import ModelAdapter, QuerySparseAttnProcessor, rope_selected


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``apply_rotary_emb(x, (cos, sin), use_real=True, use_real_unbind_dim=-2)`` for ``x`` ``[B, S, H, D]`` and
    ``cos``/``sin`` ``[1 or B, S, D]`` (same arithmetic as diffusers, which runs it heads-first)."""
    cos, sin = cos.unsqueeze(2).to(x.device), sin.unsqueeze(2).to(x.device)
    x_real, x_imag = x.reshape(*x.shape[:-1], 2, -1).unbind(-2)
    x_rotated = torch.cat([-x_imag, x_real], dim=-1)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


class CosmosQuerySparseAttnProcessor(QuerySparseAttnProcessor):
    """``attn1`` of ``CosmosTransformerBlock``: queries of the selected tokens only, keys/values of all tokens."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        return self.run(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    def rope(self, attn, sel, qkv, rotary_emb):
        if rotary_emb is not None:  # (cos, sin), each [S, D]
            qkv = rope_selected(qkv, sel, rotary_emb, _rope, add_batch_dim=True)
        q, k, v = qkv
        # grouped-query keys, as diffusers' processor
        return q, k.repeat_interleave(q.shape[2] // k.shape[2], dim=2), v.repeat_interleave(q.shape[2] // v.shape[2], 2)


def _cosmos_grid(transformer, args, kwargs):
    hs = kwargs.get("hidden_states", args[0] if args else None)
    _, _, f, h, w = hs.shape
    p_t, p_h, p_w = transformer.config.patch_size
    return f // p_t, h // p_h, w // p_w


# diffusers does not register CosmosTransformerBlock; its text argument may be a (text, image) tuple, which the block
# hook need not read (every per-token submodule of this family is video-only).
try:
    TransformerBlockRegistry.get(CosmosTransformerBlock)
except ValueError:
    TransformerBlockRegistry.register(CosmosTransformerBlock, TransformerBlockMetadata(
        return_hidden_states_index=0, encoder_hidden_states_argument_name=None))

ADAPTER = ModelAdapter(
    name="cosmos",
    transformer_cls=CosmosTransformer3DModel,
    block_lists=("transformer_blocks",),
    self_attention="attn1",
    token_wise={"attn2": "video", "ff": "video"},
    make_processor=CosmosQuerySparseAttnProcessor,
    grid_fn=_cosmos_grid,
    rope_groups_fn=lambda transformer: None,  # t/h/w frequencies repeated in both halves of each head
    cfg_batched=False,
    notes="self-attention query-sparse; cross-attention (text, and image for 2.5) and FFN on selected tokens",
)
