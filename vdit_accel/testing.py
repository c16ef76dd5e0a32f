"""Tiny, randomly initialised video pipelines of real diffusers classes, built fully offline.

Used by the tests, the benchmarks and the examples: no hub access, a few hundred KB of weights, seconds to run.
The tokenizer is a word-level T5-style tokenizer built in memory (``<pad>=0``, ``</s>=1``, ``<unk>=2``).
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLWan,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    WanPipeline,
    WanTransformer3DModel,
)

from .tiny_model.tokenizer import build_word_level_tokenizer

WORDS = (
    "a an the of and with in on at to is are dog cat monkey dance dancing run running fly flying red blue green "
    "small big car tree sky sea beach city night day robot astronaut horse riding mars video slow fast camera "
    "negative blurry low quality bad static"
).split()


# ----------------------------------------------------------------------------------------------------------------
# Offline tokenizer + text encoders
# ----------------------------------------------------------------------------------------------------------------
def build_offline_t5_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """T5-like tokenizer with <pad>=0, </s>=1, <unk>=2, appending </s> like T5 does. No files, no network."""
    return build_word_level_tokenizer(WORDS, model_max_length)


def build_tiny_umt5(vocab_size: int, d_model: int = 32) -> UMT5EncoderModel:
    cfg = UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    return UMT5EncoderModel(cfg).eval()


def build_tiny_t5(vocab_size: int, d_model: int = 32) -> T5EncoderModel:
    # Mirrors hf-internal-testing/tiny-random-t5 (d_model=32, d_kv=8, d_ff=37, 4 heads, 8 buckets), fewer layers.
    cfg = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="relu",
        dropout_rate=0.0,
    )
    return T5EncoderModel(cfg).eval()


# ----------------------------------------------------------------------------------------------------------------
# Tiny pipelines (configs follow diffusers' tests/pipelines/{wan/test_wan.py,cogvideo/test_cogvideox.py})
# ----------------------------------------------------------------------------------------------------------------
def build_tiny_wan_pipeline(num_layers: int = 2) -> WanPipeline:
    tokenizer = build_offline_t5_tokenizer()
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    torch.manual_seed(0)
    text_encoder = build_tiny_umt5(len(tokenizer), d_model=32)
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=transformer)


def build_tiny_cogvideox_pipeline(use_rope: bool = True, num_layers: int = 2) -> CogVideoXPipeline:
    tokenizer = build_offline_t5_tokenizer()
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        # attention_head_dim=16 so the 3D RoPE split (t=dim/4, h=w=3*dim/8) has even sizes; the diffusers test uses
        # head_dim 8 with sincos pos-embeds (use_rotary_positional_embeddings=False), which has no RoPE at all.
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=num_layers, sample_width=2, sample_height=2, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=16,
        use_rotary_positional_embeddings=use_rope,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    torch.manual_seed(0)
    text_encoder = build_tiny_t5(len(tokenizer), d_model=32)
    scheduler = DDIMScheduler()
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=scheduler)


# ----------------------------------------------------------------------------------------------------------------
# More families (configs follow diffusers' tests/pipelines/{hunyuan_video,ltx,mochi,wan}; tokenizers offline)
# ----------------------------------------------------------------------------------------------------------------
def build_tiny_hunyuan_video_pipeline(num_layers: int = 1, num_single_layers: int = 1):
    """Tiny ``HunyuanVideoPipeline``: Llama + CLIP text encoders from tiny configs, both with the offline word-level
    tokenizer. Call it with ``prompt_template={"template": "{}", "crop_start": 0}`` (the default Llama chat template
    assumes the real tokenizer) and ``max_sequence_length`` ≤ 64."""
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    tokenizer = build_offline_t5_tokenizer(model_max_length=64)
    tokenizer_2 = build_offline_t5_tokenizer(model_max_length=77)
    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=num_layers,
        num_single_layers=num_single_layers, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    )
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, act_fn="silu", norm_num_groups=4,
        scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    torch.manual_seed(0)
    text_encoder = LlamaModel(LlamaConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=0, hidden_size=16, intermediate_size=37, num_attention_heads=4,
        num_key_value_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer), hidden_act="gelu",
    )).eval()
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=0, hidden_size=8, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=len(tokenizer_2), hidden_act="gelu", projection_dim=32,
        max_position_embeddings=77,
    )).eval()
    return HunyuanVideoPipeline(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
                                scheduler=scheduler, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


def build_tiny_ltx_pipeline(num_layers: int = 2):
    """Tiny ``LTXPipeline`` (call with height/width multiples of 32 and ``num_frames = 8k + 1``)."""
    from diffusers import AutoencoderKLLTXVideo, LTXPipeline, LTXVideoTransformer3DModel

    tokenizer = build_offline_t5_tokenizer()
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=num_layers, caption_channels=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8, block_out_channels=(8, 8, 8, 8), spatio_temporal_scaling=(True, True, False, False),
        layers_per_block=(1, 1, 1, 1, 1), patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    torch.manual_seed(0)
    text_encoder = build_tiny_t5(len(tokenizer), d_model=32)
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                       tokenizer=tokenizer, transformer=transformer)


def build_tiny_ltx_condition_pipeline(num_layers: int = 2):
    """Tiny ``LTXConditionPipeline`` (LTX-Video 0.9.5+): the transformer gets ``video_coords`` instead of
    ``num_frames``/``height``/``width``; an ``image`` or ``video`` condition at ``frame_index > 0`` prepends its latent
    frames to the token sequence. Same components as :func:`build_tiny_ltx_pipeline`."""
    from diffusers import LTXConditionPipeline

    return LTXConditionPipeline(**build_tiny_ltx_pipeline(num_layers).components)


def build_tiny_mochi_pipeline(num_layers: int = 2):
    """Tiny ``MochiPipeline`` (call with height/width multiples of 16 and ``num_frames = 6k + 1``). RoPE frequencies
    stay random (diffusers' test zeroes them, which would make RoPE the identity)."""
    from diffusers import AutoencoderKLMochi, MochiPipeline, MochiTransformer3DModel

    tokenizer = build_offline_t5_tokenizer()
    torch.manual_seed(0)
    transformer = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=num_layers, pooled_projection_dim=16,
        in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4,
        activation_fn="swiglu", max_sequence_length=16,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLMochi(
        latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
    )
    torch.manual_seed(0)
    text_encoder = build_tiny_t5(len(tokenizer), d_model=32)
    return MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                         tokenizer=tokenizer, transformer=transformer)


def _tiny_wan_transformer(seed: int, num_layers: int = 2, in_channels: int = 16, image_dim: int | None = None):
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=image_dim,
    )


def build_tiny_wan22_pipeline(num_layers: int = 2, boundary_ratio: float = 0.875) -> WanPipeline:
    """Tiny Wan 2.2 A14B-style ``WanPipeline``: a high-noise ``transformer`` and a low-noise ``transformer_2``
    (different weights), switched at ``boundary_ratio * num_train_timesteps``."""
    pipe = build_tiny_wan_pipeline(num_layers)
    return WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                       scheduler=pipe.scheduler, transformer=pipe.transformer,
                       transformer_2=_tiny_wan_transformer(1, num_layers), boundary_ratio=boundary_ratio)


def build_tiny_wan_i2v_pipeline(num_layers: int = 2):
    """Tiny Wan 2.1-style ``WanImageToVideoPipeline``: a CLIP vision encoder (17 image tokens for a 16×16 image) whose
    tokens enter every block's cross-attention through ``attn2.add_k_proj``/``add_v_proj``. The text is padded to
    512 tokens (``WanAttnProcessor`` splits image and text at 512)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    try:  # transformers >= 5 without torchvision: the PIL backend (CLIPImageProcessor would warn and fall back)
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor

    from diffusers import WanImageToVideoPipeline

    pipe = build_tiny_wan_pipeline(num_layers)
    torch.manual_seed(0)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=16,
        intermediate_size=16, patch_size=4,
    )).eval()
    image_processor = CLIPImageProcessor(crop_size=16, size=16)
    return WanImageToVideoPipeline(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, scheduler=pipe.scheduler,
        image_processor=image_processor, image_encoder=image_encoder,
        transformer=_tiny_wan_transformer(0, num_layers, in_channels=36, image_dim=4),
    )


def wan_prompt_embeds(pipe, prompt: str | list[str], max_sequence_length: int = 512) -> torch.Tensor:
    """The UMT5 prompt embeddings Wan pipelines compute (valid tokens, then zeros), without ``ftfy``.

    ``WanImageToVideoPipeline`` cleans prompts with ``ftfy`` unconditionally; pass these as ``prompt_embeds`` /
    ``negative_prompt_embeds`` when ``ftfy`` is not installed."""
    prompt = [prompt] if isinstance(prompt, str) else list(prompt)
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=max_sequence_length, truncation=True,
                         add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        embeds = pipe.text_encoder(ids.input_ids, ids.attention_mask).last_hidden_state
    return embeds * ids.attention_mask.unsqueeze(-1).to(embeds.dtype)


def build_tiny_wan22_i2v_pipeline(num_layers: int = 2, boundary_ratio: float = 0.9):
    """Tiny Wan 2.2 A14B-style ``WanImageToVideoPipeline``: two experts without an image encoder (``image_dim=None``;
    the image enters only as the conditioning latents concatenated to the input channels)."""
    from diffusers import WanImageToVideoPipeline

    pipe = build_tiny_wan_pipeline(num_layers)
    return WanImageToVideoPipeline(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, scheduler=pipe.scheduler,
        transformer=_tiny_wan_transformer(0, num_layers, in_channels=36),
        transformer_2=_tiny_wan_transformer(1, num_layers, in_channels=36), boundary_ratio=boundary_ratio,
    )


def build_tiny_wan22_ti2v_pipeline(num_layers: int = 2) -> WanPipeline:
    """Tiny Wan 2.2 TI2V-style ``WanPipeline`` (``expand_timesteps=True``): the transformer gets a per-token timestep
    ``[B, F'·H'·W']`` and per-token modulation. (The real TI2V-5B also has a 48-channel VAE; irrelevant here.)"""
    pipe = build_tiny_wan_pipeline(num_layers)
    return WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                       scheduler=pipe.scheduler, transformer=pipe.transformer, expand_timesteps=True)


def build_tiny_wan_vace_pipeline(num_layers: int = 3):
    """Tiny ``WanVACEPipeline`` (config of diffusers' ``test_wan_vace.py``: control hints after blocks 0 and 2).
    It cleans prompts with ``ftfy``: without it, pass :func:`wan_prompt_embeds`."""
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    pipe = build_tiny_wan_pipeline(1)
    torch.manual_seed(0)
    transformer = WanVACETransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, vace_layers=[0, num_layers - 1], vace_in_channels=96,
    )
    return WanVACEPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                           scheduler=pipe.scheduler, transformer=transformer)


def build_tiny_chronoedit_pipeline(num_layers: int = 2):
    """Tiny ``ChronoEditPipeline`` (config of diffusers' ``test_chronoedit.py``; CLIP vision encoder, image tokens in
    every ``attn2``). It cleans prompts with ``ftfy``: without it, pass :func:`wan_prompt_embeds`."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    try:  # transformers >= 5 without torchvision: the PIL backend
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor

    from diffusers import ChronoEditPipeline, ChronoEditTransformer3DModel

    pipe = build_tiny_wan_pipeline(1)
    torch.manual_seed(0)
    transformer = ChronoEditTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=4,
    )
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        intermediate_size=16, patch_size=1,
    )).eval()
    return ChronoEditPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                              scheduler=pipe.scheduler, transformer=transformer, image_encoder=image_encoder,
                              image_processor=CLIPImageProcessor(crop_size=32, size=32))


def build_tiny_skyreels_v2_pipeline(num_layers: int = 2, diffusion_forcing: bool = False):
    """Tiny ``SkyReelsV2Pipeline`` (config of diffusers' ``test_skyreels_v2.py``), or with ``diffusion_forcing`` the
    ``SkyReelsV2DiffusionForcingPipeline`` (per-frame timesteps; ``causal_block_size > 1`` adds a block-causal mask).
    Both clean prompts with ``ftfy``: without it, pass :func:`wan_prompt_embeds`. The scheduler is flow-matching
    Euler (diffusers' test uses UniPC, on which the random tiny model's latents grow to ~1e6 within 4 steps)."""
    from diffusers import (
        SkyReelsV2DiffusionForcingPipeline,
        SkyReelsV2Pipeline,
        SkyReelsV2Transformer3DModel,
    )

    pipe = build_tiny_wan_pipeline(1)
    torch.manual_seed(0)
    transformer = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    cls = SkyReelsV2DiffusionForcingPipeline if diffusion_forcing else SkyReelsV2Pipeline
    return cls(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, transformer=transformer,
               scheduler=FlowMatchEulerDiscreteScheduler(shift=8.0))


def build_tiny_wan_animate_pipeline(num_layers: int = 2):
    """Tiny ``WanAnimatePipeline`` (config of diffusers' ``test_wan_animate.py``: motion and face encoders, face
    adapter after every second block). Call it with ``image``, ``pose_video`` and ``face_video`` (PIL frames); it
    cleans prompts with ``ftfy``: without it, pass :func:`wan_prompt_embeds`."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    try:  # transformers >= 5 without torchvision: the PIL backend
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor

    from diffusers import WanAnimatePipeline, WanAnimateTransformer3DModel

    pipe = build_tiny_wan_pipeline(1)
    torch.manual_seed(0)
    transformer = WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, latent_channels=16,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", image_dim=4, rope_max_seq_len=32,
        motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16}, motion_encoder_size=16, motion_style_dim=8,
        motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16, face_encoder_num_heads=2,
        inject_face_latents_blocks=2,
    )
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=4,
        intermediate_size=16, patch_size=1,
    )).eval()
    return WanAnimatePipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                              scheduler=pipe.scheduler, transformer=transformer, image_encoder=image_encoder,
                              image_processor=CLIPImageProcessor(crop_size=4, size=4))


def build_tiny_hunyuan_video_framepack_pipeline(num_layers: int = 1, num_single_layers: int = 1):
    """Tiny ``HunyuanVideoFramepackPipeline`` (config of diffusers' ``test_hunyuan_video_framepack.py``; text encoders
    as :func:`build_tiny_hunyuan_video_pipeline`, a tiny SigLIP image encoder). Call it with an ``image``,
    ``prompt_template={"template": "{}", "crop_start": 0}`` and ``latent_window_size``."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    try:  # transformers >= 5 without torchvision: the PIL backend
        from transformers import SiglipImageProcessorPil as SiglipImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import SiglipImageProcessor

    from diffusers import HunyuanVideoFramepackPipeline, HunyuanVideoFramepackTransformer3DModel

    base = build_tiny_hunyuan_video_pipeline(1, 1)
    torch.manual_seed(0)
    transformer = HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=num_layers,
        num_single_layers=num_single_layers, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
        image_condition_type=None, has_image_proj=True, image_proj_dim=32, has_clean_x_embedder=True,
    )
    torch.manual_seed(0)
    image_encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=30, patch_size=2,
    )).eval()
    return HunyuanVideoFramepackPipeline(
        text_encoder=base.text_encoder, tokenizer=base.tokenizer, transformer=transformer, vae=base.vae,
        scheduler=base.scheduler, text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2,
        image_encoder=image_encoder, feature_extractor=SiglipImageProcessor(size={"height": 30, "width": 30}),
    )


# ------------------------------------------------------------------------------------------------------------
# Single-process emulation of per-rank token selection: the reference that context-parallel runs are compared with
# (each rank selects within its own contiguous shard of the video tokens, the same count on every rank).
# ------------------------------------------------------------------------------------------------------------
class _ShardState:
    """A view of a ``BlockCacheState`` restricted to one contiguous shard of the video tokens."""

    def __init__(self, state, sl: slice):
        self.last_input = state.last_input[:, sl]
        self.lse = state.lse[:, sl]
        self.n_skip = state.n_skip[:, sl]


def sharded_selector(shards: int) -> Callable:
    """A token selector that selects within each of ``shards`` contiguous shards of the video tokens with the same
    count ``ceil(θ·N/shards)``: what each rank of a ``shards``-way context-parallel run selects, in one process."""
    from .methods.token_selection import select_tokens

    def select(state, x, budget, cfg):
        n = x.shape[1]
        if n % shards:
            raise ValueError(f"{n} video tokens cannot be split into {shards} equal shards.")
        local = n // shards
        parts = []
        for s in range(shards):
            sl = slice(s * local, (s + 1) * local)
            idx = select_tokens(_ShardState(state, sl), x[:, sl], budget, cfg)
            if idx is None:
                idx = torch.arange(local, device=x.device).expand(x.shape[0], -1)
            parts.append(idx + s * local)
        index = torch.cat(parts, dim=1)
        return None if index.shape[1] == n else index

    select._vdit_accel_shards = shards
    return select


def emulate_rank_selection(pipe_or_transformer, shards: int) -> None:
    from .runtime.handle import get_handle, transformers_of

    """Make an accelerated single-process pipeline select tokens per shard as a ``shards``-rank context-parallel run
    does (the same per-rank budgets), so the two outputs can be compared. ``shards=1`` restores the global top-k."""
    modules = ([pipe_or_transformer] if isinstance(pipe_or_transformer, torch.nn.Module)
               else [m for _, m in transformers_of(pipe_or_transformer)])
    for m in modules:
        handle = get_handle(m)
        if handle is None:
            raise ValueError("Acceleration is not enabled; call `enable_acceleration` first.")
        if shards == 1:
            handle.runtime.extras.pop("select_tokens", None)
        else:
            handle.runtime.extras["select_tokens"] = sharded_selector(shards)
