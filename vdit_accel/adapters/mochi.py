"""Mochi (``MochiTransformer3DModel``).

Token layout: joint attention over ``[video, valid text]`` per sample: ``MochiAttnProcessor2_0`` keeps, for each
sample, only the text tokens its ``encoder_attention_mask`` marks valid (any positions, not only a prefix) and pads
the text outputs back with zeros. RoPE is applied to the video queries/keys only, with learned per-head frequencies
(``(cos, sin)`` each ``[S, heads, head_dim/2]``, even/odd channel pairs): every channel mixes t, h and w, so there are
no t/h/w channel groups. ``MochiAttention`` is a plain module (no ``set_processor``): the processor is assigned to
``attn1.processor``. Patch 2, spatial only (F' = F). The last block is ``context_pre_only`` (no text output
projection). CFG: one batched call (2B, ``cond_uncond``); the transformer gets the scheduler's ``t`` (the pipeline's
``current_timestep`` is ``1000 - t``, which the step tracker does not use).
"""

from __future__ import annotations

import torch
from diffusers import MochiTransformer3DModel
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

from .base import ModelAdapter, QuerySparseAttnProcessor, project_heads, rope_selected
from .sizes import SizeRules, pipe_factor, video_size_rules


def _mochi_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Mochi's even/odd RoPE (same arithmetic as ``MochiAttnProcessor2_0``) for ``x`` ``[B, S, H, D]``."""
    x_even = x[..., 0::2].float()
    x_odd = x[..., 1::2].float()
    c = (x_even * cos - x_odd * sin).to(x.dtype)
    s = (x_even * sin + x_odd * cos).to(x.dtype)
    return torch.stack([c, s], dim=-1).flatten(-2)


class MochiQuerySparseAttnProcessor(QuerySparseAttnProcessor):
    """``attn1`` of ``MochiTransformerBlock``: queries of the selected video tokens and of the valid text tokens,
    keys/values of all video tokens and of the valid text tokens (per sample, as the original)."""

    joint = "text_last"
    zero_padded_text = True

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=None):
        return self.run(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    def applies(self, attn, encoder_hidden_states, attention_mask):
        return True

    def project(self, attn, sel, hidden_states, encoder_hidden_states):
        return (project_heads(attn, sel.gather(hidden_states), hidden_states),
                project_heads(attn, encoder_hidden_states, encoder_hidden_states,
                              (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
                              (attn.norm_added_q, attn.norm_added_k)))

    def rope(self, attn, sel, qkv, rotary_emb):
        return qkv if rotary_emb is None else rope_selected(qkv, sel, rotary_emb, _mochi_rope, add_batch_dim=True)


def _mochi_grid(transformer, args, kwargs):
    hs = kwargs.get("hidden_states", args[0] if args else None)
    _, _, f, h, w = hs.shape
    p = transformer.config.patch_size
    return f, h // p, w // p


# Context parallelism (none in diffusers 0.42.1): shard the video tokens at the first block and the RoPE rows
# (`rope` returns (cos, sin) [S, heads, head_dim/2]), gather at `proj_out`. The text and its mask stay whole on every
# rank (each sample keeps only its valid text, so text lengths differ per sample), so each rank's attention keys are
# `[video shard, valid text]`: `vdit_accel.parallel` sends the video keys through diffusers' context-parallel
# attention and attends the text keys locally once, merging by LSE. `MochiAttnProcessor2_0` calls F.sdpa directly,
# so only the query-sparse processor is context-parallel.
CP_PLAN = {
    "rope": {
        0: ContextParallelInput(split_dim=0, expected_dims=3, split_output=True),
        1: ContextParallelInput(split_dim=0, expected_dims=3, split_output=True),
    },
    "transformer_blocks.0": {
        "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
    },
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
}

def mochi_size_rules(pipe) -> SizeRules:
    """Multiples of lcm(VAE × patch, 8) and ``6k + 1`` frames; RoPE frequencies are computed for any grid."""
    return video_size_rules(pipe_factor(pipe, ("vae_spatial_scale_factor",), 8),
                            int(pipe.transformer.config.patch_size),
                            pipe_factor(pipe, ("vae_temporal_scale_factor",), 6), 1, 8, "MochiPipeline")


ADAPTER = ModelAdapter(
    name="mochi",
    transformer_cls=MochiTransformer3DModel,
    block_lists=("transformer_blocks",),
    self_attention="attn1",
    token_wise={"ff": "video"},
    make_processor=MochiQuerySparseAttnProcessor,
    grid_fn=_mochi_grid,
    rope_groups_fn=lambda transformer: None,  # learned per-head frequencies mix t, h and w in every channel
    cfg_batched=True,
    notes="joint [video, valid text] attention per sample: text always computed; video FFN on selected tokens",
    cp_plan=CP_PLAN,
    cp_text="whole",
    size_rules=mochi_size_rules,
)
