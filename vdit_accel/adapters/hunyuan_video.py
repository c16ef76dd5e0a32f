"""HunyuanVideo (``HunyuanVideoTransformer3DModel``): dual-stream and single-stream blocks.

Token layout: joint attention over ``[video, text]`` (video first). Dual-stream blocks (``transformer_blocks``)
project video with ``to_q/k/v`` and text with ``add_q/k/v_proj``; single-stream blocks (``single_transformer_blocks``)
concatenate ``[video, text]`` inside the block and project both with ``to_q/k/v``. RoPE (``(cos, sin)``, each
``[F'·H'·W', head_dim]``, real pairs, axes ``rope_axes_dim``) is applied to the video rows only. Padded text is masked
with a bool ``[B, 1, 1, N_video + N_text]`` mask whose valid text is a prefix: padded keys are dropped (exact).

Per-token work on the selected rows only: the dual-stream video FFN ``ff`` (``ff_context`` is text: always
computed) and the single-stream ``proj_mlp`` / ``proj_out`` on ``[selected video, text]``. The text-only token
refiner (``context_embedder.token_refiner``) is untouched. CFG: ``true_cfg_scale > 1`` with a negative prompt runs
separate ``cond`` / ``uncond`` calls of batch B; the default is guidance-distilled (one call).
"""

from __future__ import annotations

import torch
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.embeddings import apply_rotary_emb

from .base import ModelAdapter, QuerySparseAttnProcessor, gather_rope_rows, project_heads
from .sizes import SizeRules, pipe_factor, video_size_rules


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``apply_rotary_emb(x, (cos, sin), sequence_dim=1)`` for ``x`` ``[B, S, H, D]``; with ``index`` the rows of
    ``x`` are the selected tokens and each sample gets its own rows of ``cos``/``sin`` (same arithmetic)."""
    if index is None:
        return apply_rotary_emb(x, (cos, sin), sequence_dim=1)
    cos = gather_rope_rows(cos.unsqueeze(0), index, x.shape[0]).unsqueeze(2).to(x.device)
    sin = gather_rope_rows(sin.unsqueeze(0), index, x.shape[0]).unsqueeze(2).to(x.device)
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


class HunyuanVideoQuerySparseAttnProcessor(QuerySparseAttnProcessor):
    """``attn`` of both block kinds: queries of the selected video tokens and of all text tokens, keys/values of all
    tokens (padded text keys dropped)."""

    joint = "text_last"

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        return self.run(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    def applies(self, attn, encoder_hidden_states, attention_mask):
        return encoder_hidden_states is not None

    def project(self, attn, sel, hidden_states, encoder_hidden_states):
        video = project_heads(attn, sel.gather(hidden_states), hidden_states)
        if attn.add_q_proj is None:  # single-stream block: text through the same projections
            return video, project_heads(attn, encoder_hidden_states, encoder_hidden_states)
        return video, project_heads(attn, encoder_hidden_states, encoder_hidden_states,
                                    (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
                                    (attn.norm_added_q, attn.norm_added_k))

    def rope(self, attn, sel, qkv, rotary_emb):
        if rotary_emb is None:
            return qkv
        q, k, v = qkv
        cos, sin = rotary_emb
        return _rope(q, cos, sin, sel.index), _rope(k, cos, sin, None), v

    def text_mask(self, attention_mask, text_qkv):
        if attention_mask is None:
            return None
        # The mask covers [video, text]; only its text part (the last N_text entries) is read.
        batch, n_text = text_qkv[0].shape[:2]
        mask = attention_mask.reshape(batch, -1)
        if mask.dtype != torch.bool or mask.shape[1] <= n_text or not bool(mask[:, :-n_text].all()):
            raise ValueError(
                "vdit-accel's HunyuanVideo processor expects the transformer's bool padding mask [B, 1, 1, "
                f"N_video + N_text] with every video token valid; got {tuple(attention_mask.shape)} "
                f"{attention_mask.dtype}. Call `pipe.disable_acceleration()` for custom masks."
            )
        return mask[:, -n_text:]


def _hunyuan_grid(transformer, args, kwargs):
    hs = kwargs.get("hidden_states", args[0] if args else None)
    _, _, f, h, w = hs.shape
    p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
    return f // p_t, h // p, w // p


def _hunyuan_rope_groups(transformer):
    t, h, w = transformer.config.rope_axes_dim
    return t, h, w


# Context parallelism (diffusers 0.42.1 has no `_cp_plan` for HunyuanVideo): shard the video tokens at the first
# dual-stream block and the RoPE rows, gather at `proj_out`. The text stays whole on every rank (its length need not
# divide the degree, and its padding stays a per-sample suffix), so each rank's attention keys are
# `[video shard, text]`: `vdit_accel.parallel` sends the video keys through diffusers' context-parallel attention and
# attends the text keys locally once, merging by LSE. The padding mask is built in `forward` for the unsharded
# sequence and is not split: the query-sparse processor reads only its text part (the last N_text entries).
CP_PLAN = {
    "rope": {
        0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
        1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
    },
    "transformer_blocks.0": {
        "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
    },
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
}

def hunyuan_video_size_rules(pipe) -> SizeRules:
    """Multiples of lcm(VAE × patch, 16) and ``4k + 1`` frames; RoPE is computed for any grid (no model limit)."""
    cfg = pipe.transformer.config
    return video_size_rules(pipe_factor(pipe, ("vae_scale_factor_spatial",), 8), int(cfg.patch_size),
                            pipe_factor(pipe, ("vae_scale_factor_temporal",), 4), int(cfg.patch_size_t), 16,
                            "HunyuanVideoPipeline")


ADAPTER = ModelAdapter(
    name="hunyuan_video",
    transformer_cls=HunyuanVideoTransformer3DModel,
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    self_attention="attn",
    token_wise={"ff": "video"},
    token_wise_by_list={"single_transformer_blocks": {"proj_mlp": "video_text", "proj_out": "video_text"}},
    token_counters={"proj_out": None},  # proj_mlp already counted the single-stream MLP's tokens
    make_processor=HunyuanVideoQuerySparseAttnProcessor,
    grid_fn=_hunyuan_grid,
    rope_groups_fn=_hunyuan_rope_groups,
    cfg_batched=False,
    notes="joint [video, text] attention in dual- and single-stream blocks: text always computed, padded text keys "
          "dropped; video FFN / single-stream MLP on selected tokens; token refiner untouched",
    cp_plan=CP_PLAN,
    cp_text="whole",
    size_rules=hunyuan_video_size_rules,
)
