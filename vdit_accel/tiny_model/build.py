"""Configs of the bundled tiny text-to-video model, built from real diffusers / transformers classes.

Sizes (default 64×64 px, 17 frames):

* ``AutoencoderKLWan``: base_dim 16, dim_mult (1, 2, 2) → 2 spatial downsamples (4×), ``temperal_downsample``
  (True, True) → 4× in time; z_dim 16. 17×64×64 px → latent 5×16×16.
* ``WanTransformer3DModel``: patch (1, 2, 2) → token grid 5×8×8 = 320 video tokens; 4 heads × head_dim 32
  (dim 128; RoPE split t/h/w = 12/10/10), ``NUM_LAYERS`` blocks, text_dim 64.
* ``UMT5EncoderModel``: d_model 64, 2 layers, 4 heads, word-level offline tokenizer (:mod:`.tokenizer`).
* ``FlowMatchEulerDiscreteScheduler(shift=SHIFT)``, the scheduler WanPipeline uses.

WanPipeline reads ``vae.config.scale_factor_spatial`` / ``scale_factor_temporal`` (not ``temperal_downsample``),
so both are set here to match the architecture.
"""

from __future__ import annotations

import torch

__all__ = [
    "HEIGHT",
    "MAX_SEQUENCE_LENGTH",
    "NUM_FRAMES",
    "SHIFT",
    "TRANSFORMER_KWARGS",
    "VAE_KWARGS",
    "WIDTH",
    "build_pipeline",
    "build_scheduler",
    "build_text_encoder",
    "build_transformer",
    "build_vae",
]

HEIGHT, WIDTH, NUM_FRAMES = 64, 64, 17
MAX_SEQUENCE_LENGTH = 16  # captions are ≤ 11 words + </s>; WanPipeline zero-pads the embeddings to this length
SHIFT = 3.0  # flow-matching timestep shift; training samples sigmas with the same shift

VAE_KWARGS = dict(
    base_dim=16,
    z_dim=16,
    dim_mult=[1, 2, 2],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[True, True],
    dropout=0.0,
    scale_factor_temporal=4,
    scale_factor_spatial=4,
)
TEXT_DIM = 64
TEXT_ENCODER_KWARGS = dict(
    d_model=TEXT_DIM,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=32,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
)
TRANSFORMER_KWARGS = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=16,
    out_channels=16,
    text_dim=TEXT_DIM,
    freq_dim=128,
    ffn_dim=384,
    num_layers=4,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=64,
)


def build_vae(**overrides):
    from diffusers import AutoencoderKLWan

    kw = {**VAE_KWARGS, **overrides}
    if len(kw["temperal_downsample"]) != len(kw["dim_mult"]) - 1:
        raise ValueError("`temperal_downsample` needs one entry per spatial downsample (len(dim_mult) - 1).")
    kw.setdefault("latents_mean", [0.0] * kw["z_dim"])
    kw.setdefault("latents_std", [1.0] * kw["z_dim"])
    return AutoencoderKLWan(**kw)


def build_text_encoder(vocab_size: int, **overrides):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **{**TEXT_ENCODER_KWARGS, **overrides}))


def build_transformer(**overrides):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**{**TRANSFORMER_KWARGS, **overrides})


def build_scheduler(shift: float = SHIFT):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def build_pipeline(seed: int = 0, vae=None, text_encoder=None, transformer=None, tokenizer=None):
    """A WanPipeline with the tiny configs (random weights unless components are given)."""
    from diffusers import WanPipeline

    from .tokenizer import build_tokenizer

    tokenizer = tokenizer or build_tokenizer()
    torch.manual_seed(seed)
    vae = vae or build_vae()
    text_encoder = text_encoder or build_text_encoder(len(tokenizer))
    transformer = transformer or build_transformer()
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(), scheduler=build_scheduler(),
        transformer=transformer.eval(),
    )
