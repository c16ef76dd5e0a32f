"""CogVideoX 1.0/1.5 (``CogVideoXTransformer3DModel``), with and without 3-D RoPE.

Token layout: joint attention over ``[text, video]`` (text first); RoPE only on the video part, from
``image_rotary_emb`` (cos, sin) ``[S_video, D]`` computed by the pipeline; head channels split t/h/w = D/4, 3D/8,
3D/8. The FFN runs on the concatenation ``[text, video]``. CFG is one batched call (2B, uncond first). Text tokens
are always computed. Context parallelism: diffusers ships no plan; :data:`CP_PLAN` splits video and text, and
:class:`CogVideoXContextParallelAttnProcessor` replaces the family's processor (which calls ``F.sdpa`` directly).
"""

from __future__ import annotations

import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models import attention_dispatch
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.embeddings import apply_rotary_emb

from .base import BlockFlops, ModelAdapter, QuerySparseAttnProcessor, project_heads, rope_selected
from .sizes import SizeRules, pipe_factor, video_size_rules


def _apply_real_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``diffusers.models.embeddings.apply_rotary_emb`` (use_real, unbind -1) with per-sample gathered frequencies:
    ``x`` ``[B, S, H, D]``, ``cos``/``sin`` ``[1 or B, S, D]``."""
    cos, sin = cos.unsqueeze(-2).to(x.device), sin.unsqueeze(-2).to(x.device)
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


class CogVideoXQuerySparseAttnProcessor(QuerySparseAttnProcessor):
    """``attn1`` of ``CogVideoXBlock``: queries of all text tokens and the selected video tokens against all keys."""

    joint = "text_first"

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        return self.run(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    def applies(self, attn, encoder_hidden_states, attention_mask):
        return attention_mask is None

    def project(self, attn, sel, hidden_states, encoder_hidden_states):
        # one projection of [text, video] as the family's processor does; the rows are split afterwards
        text_len = encoder_hidden_states.shape[1]
        full = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        qkv = project_heads(attn, sel.gather(full, "text_video"), full)
        return tuple(t[:, text_len:] for t in qkv), tuple(t[:, :text_len] for t in qkv)

    def rope(self, attn, sel, qkv, rotary_emb):
        if rotary_emb is None:
            return qkv
        q, k, v = rope_selected(qkv, sel, rotary_emb, _apply_real_rope, add_batch_dim=True)
        return q, (qkv[1] if attn.is_cross_attention else k), v

    def output(self, attn, video_out, text_out, dtype):
        # to_out on [text, video] at once, as the family's processor does
        text_len = text_out.shape[1]
        out = attn.to_out[1](attn.to_out[0](torch.cat([text_out, video_out], 1).flatten(2, 3)))
        return out[:, text_len:], out[:, :text_len]


class CogVideoXContextParallelAttnProcessor:
    """``CogVideoXAttnProcessor2_0`` with its attention through ``dispatch_attention_fn`` (the original calls
    ``F.scaled_dot_product_attention`` directly, which under context parallelism would see the local shard only).
    Same arithmetic; exposes ``_attention_backend`` / ``_parallel_config`` for diffusers."""

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:
            raise NotImplementedError("CogVideoX attention masks are not supported under context parallelism.")
        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
                             for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)
        hidden_states = attention_dispatch.dispatch_attention_fn(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
            backend=self._attention_backend, parallel_config=self._parallel_config)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1)
        return hidden_states, encoder_hidden_states


#: The patch embedding concatenates [text, video] and the transformer slices them apart before the blocks, so the
#: split happens at the first block's inputs. ``image_rotary_emb`` ((cos, sin) ``[S_video, D]``, computed by the
#: pipeline) is passed unchanged to every block, so every block splits it (``transformer_blocks.*``). Text is split
#: too (joint attention: text whole on every rank would count each text key once per rank in the templated
#: attention). The video output is gathered at ``norm_final``; the text stream after the last block is discarded.
CP_PLAN = {
    "transformer_blocks.0": {
        "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
    },
    "transformer_blocks.*": {
        "image_rotary_emb": [ContextParallelInput(split_dim=0, expected_dims=2, split_output=False),
                             ContextParallelInput(split_dim=0, expected_dims=2, split_output=False)],
    },
    "norm_final": ContextParallelOutput(gather_dim=1, expected_dims=3),
}


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


def cogvideox_flops(config, num_video: int, num_text: int = 0) -> BlockFlops:
    """Joint ``[text, video]`` attention and an FFN over both: the text rows and the video K/V stay dense."""
    c = config.num_attention_heads * config.attention_head_dim
    ffn = getattr(config, "ff_inner_dim", None) or 4 * c
    n, t = num_video, num_text
    s = n + t
    dense = 2 * (2 * c * c * s) + t * 2 * (2 * c * c + 2 * s * c + 2 * c * ffn)
    scalable = n * 2 * (2 * c * c + 2 * s * c + 2 * c * ffn)
    return BlockFlops(dense, scalable)


def cogvideox_size_rules(pipe) -> SizeRules:
    """Multiples of lcm(VAE × patch, 8) and ``4k + 1`` frames; a model with learned positional embeddings
    (CogVideoX-5B I2V) runs only at its sample size (the patch embedding raises otherwise)."""
    cfg = pipe.transformer.config
    vae = pipe_factor(pipe, ("vae_scale_factor_spatial",), 8)
    limits = {}
    if cfg.use_learned_positional_embeddings:
        height, width = cfg.sample_height * vae, cfg.sample_width * vae
        limits = dict(min_height=height, max_height=height, min_width=width, max_width=width,
                      limit=f"learned positional embeddings for its sample size {height}×{width} only")
    return video_size_rules(vae, int(cfg.patch_size), pipe_factor(pipe, ("vae_scale_factor_temporal",), 4),
                            int(cfg.patch_size_t or 1), 8, "CogVideoXPipeline", **limits)


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
    cp_plan=CP_PLAN,
    cp_text="split",
    cp_processor=CogVideoXContextParallelAttnProcessor,
    flops=cogvideox_flops,
    size_rules=cogvideox_size_rules,
)
