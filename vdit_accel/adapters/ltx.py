"""LTX-Video (``LTXVideoTransformer3DModel``).

Token layout: the pipeline packs the latents to ``[B, F'·H'·W', C]`` before the transformer (patch 1), so the grid
comes from the ``num_frames`` / ``height`` / ``width`` forward arguments (``LTXPipeline``) or from the per-token
``video_coords`` (``LTXConditionPipeline``, LTX-Video 0.9.5+, which may prepend conditioning frames, and passes a
per-token timestep). ``attn1`` is self-attention over video only; RoPE is applied *before* the head split on the
whole ``inner_dim`` (``(cos, sin)`` each ``[B, S, inner_dim]``, the t/h/w frequencies interleaved channel by
channel, so there is no contiguous per-head t/h/w channel split). ``attn2`` is cross-attention to text with an
additive padding bias (untouched: it runs on the selected rows and sees every text key with its mask).
CFG: one batched call (2B, ``cond_uncond``). diffusers ships a ``_cp_plan``.
"""

from __future__ import annotations

import torch
from diffusers import LTXVideoTransformer3DModel
from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

from .base import ModelAdapter, QuerySparseAttnProcessor, bound_arg, rope_selected
from .sizes import SizeRules, pipe_factor, video_size_rules


class LTXQuerySparseAttnProcessor(QuerySparseAttnProcessor):
    """``attn1`` of ``LTXVideoTransformerBlock``: queries of the selected tokens only, keys/values of all tokens."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        return self.run(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    def project(self, attn, sel, hidden_states, encoder_hidden_states):
        # RMSNorm and RoPE span all heads: the head split waits until after RoPE
        return (attn.norm_q(attn.to_q(sel.gather(hidden_states))), attn.norm_k(attn.to_k(hidden_states)),
                attn.to_v(hidden_states)), None

    def rope(self, attn, sel, qkv, rotary_emb):
        if rotary_emb is not None:
            qkv = rope_selected(qkv, sel, rotary_emb, lambda x, cos, sin: apply_rotary_emb(x, (cos, sin)))
        return tuple(t.unflatten(2, (attn.heads, -1)) for t in qkv)


def _grid_from_coords(video_coords: torch.Tensor) -> tuple[int, int, int]:
    """``(F', H', W')`` of the packed tokens from ``video_coords`` ``[B, 3, N]`` (t/y/x coordinates per token).

    ``LTXConditionPipeline`` packs ``[extra conditioning frames, video frames]`` in raster order, each frame ``H'·W'``
    tokens at the same spatial coordinates; the rows and columns are the distinct y and x coordinates of sample 0."""
    if video_coords.dim() != 3 or video_coords.shape[1] != 3:
        raise ValueError(f"LTXVideoTransformer3DModel: `video_coords` must be [batch, 3, tokens]; got "
                         f"{tuple(video_coords.shape)}.")
    n = video_coords.shape[-1]
    h = int(torch.unique(video_coords[0, 1]).numel())
    w = int(torch.unique(video_coords[0, 2]).numel())
    if n % (h * w):
        raise ValueError(f"LTXVideoTransformer3DModel: `video_coords` holds {n} tokens over {h} distinct rows and {w} "
                         f"columns, which is not whole frames; vdit-accel needs whole {h}x{w} latent frames.")
    return n // (h * w), h, w


def _ltx_grid(transformer, args, kwargs):
    # forward(hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, num_frames, height, width,
    #         rope_interpolation_scale, video_coords, ...)
    video_coords = bound_arg("video_coords", 8, args, kwargs)
    if video_coords is not None:  # LTXConditionPipeline (LTX-Video 0.9.5+)
        return _grid_from_coords(video_coords)
    f, h, w = (bound_arg(name, pos, args, kwargs) for name, pos in (("num_frames", 4), ("height", 5), ("width", 6)))
    if f is None or h is None or w is None:
        n = bound_arg("hidden_states", 0, args, kwargs).shape[1]
        raise ValueError(
            "LTXVideoTransformer3DModel was called without `num_frames`/`height`/`width` or `video_coords` (the "
            f"latent grid of the {n} packed tokens); vdit-accel needs one of them. LTXPipeline passes "
            "`num_frames`/`height`/`width`, LTXConditionPipeline passes `video_coords`; pass one of them when calling "
            "the transformer directly."
        )
    p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
    return int(f) // p_t, int(h) // p, int(w) // p


def ltx_size_rules(pipe) -> SizeRules:
    """Multiples of lcm(VAE × patch, 32) and ``8k + 1`` frames; RoPE is computed for any grid (no model limit)."""
    cfg = pipe.transformer.config
    return video_size_rules(pipe_factor(pipe, ("vae_spatial_compression_ratio",), 32),
                            pipe_factor(pipe, ("transformer_spatial_patch_size",), int(cfg.patch_size)),
                            pipe_factor(pipe, ("vae_temporal_compression_ratio",), 8),
                            pipe_factor(pipe, ("transformer_temporal_patch_size",), int(cfg.patch_size_t)),
                            32, "LTXPipeline")


ADAPTER = ModelAdapter(
    name="ltx",
    transformer_cls=LTXVideoTransformer3DModel,
    block_lists=("transformer_blocks",),
    self_attention="attn1",
    token_wise={"attn2": "video", "ff": "video"},
    make_processor=LTXQuerySparseAttnProcessor,
    grid_fn=_ltx_grid,
    rope_groups_fn=lambda transformer: None,  # t/h/w frequencies interleaved over inner_dim, not per-head groups
    cfg_batched=True,
    notes="self-attention query-sparse; cross-attention (with its text mask) and FFN on selected tokens",
    size_rules=ltx_size_rules,  # cp_plan: diffusers' LTXVideoTransformer3DModel._cp_plan applies
)
