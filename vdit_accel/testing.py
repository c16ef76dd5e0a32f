"""Tiny, randomly initialised video pipelines of real diffusers classes, built fully offline.

Used by the tests, the benchmarks and the examples: no hub access, a few hundred KB of weights, seconds to run.
The tokenizer is a word-level T5-style tokenizer built in memory (``<pad>=0``, ``</s>=1``, ``<unk>=2``).
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
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
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    tok.post_processor = TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        padding_side="right",
    )


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
