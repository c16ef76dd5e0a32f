"""Families tested at the transformer level, with the step set by hand (their pipelines need encoders, guardrails
or optional packages that a tiny offline pipeline cannot provide): HunyuanVideo I2V's ``token_replace`` blocks,
SkyReels-V2 diffusion forcing's causal mask, HunyuanVideo 1.5 and Cosmos. Each: budget 1.0 equals dense, budget 0.5
halves the queries, and the selected rows (and the text stream) equal the dense blocks.

Run: OMP_NUM_THREADS=1 python -m pytest tests/test_family_transformers.py -q
"""

from __future__ import annotations

import pytest
import torch

import vdit_accel
from vdit_accel.api import accelerate_transformer
from vdit_accel.config import AccelerationConfig

from .family_checks import assert_template_processor, capture_blocks, check_selected_rows_against_dense_blocks


def test_hunyuan_video_token_replace_blocks():
    """HunyuanVideo I2V's ``token_replace`` variant (other block classes, same submodules), at transformer level
    with a manual step: budget 1.0 equals dense and the selected rows equal the dense blocks."""
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=False,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type="token_replace",
    ).eval()
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, 4:] = 0
    kwargs = dict(timestep=torch.tensor([500.0, 500.0]), encoder_hidden_states=torch.randn(2, 6, 16),
                  encoder_attention_mask=mask, pooled_projections=torch.randn(2, 8), return_dict=False)
    latents = [torch.randn(2, 4, 3, 4, 4) for _ in range(3)]
    with torch.no_grad():
        dense = [transformer(hidden_states=x, **kwargs)[0] for x in latents]
        config = AccelerationConfig(schedule=[1.0, 0.5, 0.5])
        handle = accelerate_transformer(transformer, config, config.schedule)
        rt = handle.runtime
        captured, handles = capture_blocks([(transformer, rt)])
        outs = []
        for i, x in enumerate(latents):
            vdit_accel.set_step(transformer, i, 3)
            with transformer.cache_context("cond"):
                outs.append(transformer(hidden_states=x, **kwargs)[0])
        for h in handles:
            h.remove()
    masks = {id(rt): dict(rt.masks)}
    steps = vdit_accel.summary(transformer)["steps"]
    assert [s["attention_queries"] * 2 for s in steps[1:]] == [s["dense_tokens"] for s in steps[1:]]
    handle.remove()
    torch.testing.assert_close(outs[0], dense[0], rtol=1e-4, atol=1e-5)
    assert check_selected_rows_against_dense_blocks(captured, masks) == 4


def test_skyreels_v2_diffusion_forcing_causal_mask():
    """SkyReels-V2 diffusion forcing at transformer level: per-frame timesteps ``[B, F']`` and a block-causal mask
    (``num_frame_per_block=2``) take the exact masked path; budget 1.0 equals dense and the selected rows equal the
    dense blocks."""
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(0)
    transformer = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=8, freq_dim=16, ffn_dim=16, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32, num_frame_per_block=2,
    ).eval()
    assert_template_processor(transformer)
    kwargs = dict(timestep=torch.tensor([[900, 900, 500, 500]] * 2), encoder_hidden_states=torch.randn(2, 5, 8),
                  enable_diffusion_forcing=True, return_dict=False)
    latents = [torch.randn(2, 4, 4, 4, 4) for _ in range(3)]
    with torch.no_grad():
        dense = [transformer(hidden_states=x, **kwargs)[0] for x in latents]
        config = AccelerationConfig(schedule=[1.0, 0.5, 0.5])
        handle = accelerate_transformer(transformer, config, config.schedule)
        rt = handle.runtime
        captured, handles = capture_blocks([(transformer, rt)])
        outs = []
        for i, x in enumerate(latents):
            vdit_accel.set_step(transformer, i, 3)
            with transformer.cache_context("cond"):
                outs.append(transformer(hidden_states=x, **kwargs)[0])
        for h in handles:
            h.remove()
    masks = {id(rt): dict(rt.masks)}
    steps = vdit_accel.summary(transformer)["steps"]
    assert [s["attention_queries"] * 2 for s in steps[1:]] == [s["dense_tokens"] for s in steps[1:]]
    handle.remove()
    torch.testing.assert_close(outs[0], dense[0], rtol=1e-4, atol=1e-5)
    assert check_selected_rows_against_dense_blocks(captured, masks) == 4


def test_hunyuan_video15_transformer():
    """HunyuanVideo 1.5 at transformer level (its pipelines need Qwen2.5-VL and ByT5 encoders), two samples with
    different valid text lengths: budget 1.0 equals dense and the selected video rows and the whole text stream
    (padded text queries included, which attend to nothing) equal the dense blocks."""
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(0)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=32,
        image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16, task_type="t2v",
    ).eval()
    assert_template_processor(transformer)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, 3:] = 0
    mask_2 = torch.ones(2, 4, dtype=torch.long)
    mask_2[1, 2:] = 0
    kwargs = dict(timestep=torch.tensor([500.0, 500.0]), encoder_hidden_states=torch.randn(2, 6, 16),
                  encoder_attention_mask=mask, encoder_hidden_states_2=torch.randn(2, 4, 32),
                  encoder_attention_mask_2=mask_2, image_embeds=torch.zeros(2, 3, 12), return_dict=False)
    latents = [torch.randn(2, 9, 3, 4, 4) for _ in range(3)]
    with torch.no_grad():
        dense = [transformer(hidden_states=x, **kwargs)[0] for x in latents]
        config = AccelerationConfig(schedule=[1.0, 0.5, 0.5])
        handle = accelerate_transformer(transformer, config, config.schedule)
        rt = handle.runtime
        captured, handles = capture_blocks([(transformer, rt)])
        outs = []
        for i, x in enumerate(latents):
            vdit_accel.set_step(transformer, i, 3)
            with transformer.cache_context("cond"):
                outs.append(transformer(hidden_states=x, **kwargs)[0])
        for h in handles:
            h.remove()
    masks = {id(rt): dict(rt.masks)}
    steps = vdit_accel.summary(transformer)["steps"]
    assert [s["attention_queries"] * 2 for s in steps[1:]] == [s["dense_tokens"] for s in steps[1:]]
    handle.remove()
    torch.testing.assert_close(outs[0], dense[0], rtol=1e-4, atol=1e-5)
    assert check_selected_rows_against_dense_blocks(captured, masks) == 4


@pytest.mark.parametrize("per_frame_timestep", [False, True], ids=["timestep", "per-frame-timestep"])
def test_cosmos_transformer(per_frame_timestep):
    """Cosmos at transformer level (its pipelines need the Cosmos guardrail and torchvision), two calls per step
    without ``cache_context`` as its pipelines make them (the step comes from the timestep, as in a pipeline, so the
    calls get the implicit contexts ``call0``/``call1``): budget 1.0 equals dense, budget 0.5 halves the queries of
    both calls, and the selected rows equal the dense blocks (heads-first RoPE, learnable positional embedding,
    per-frame timestep modulation of video-to-world)."""
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    transformer = CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2,
        text_embed_dim=8, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2), concat_padding_mask=False,
        extra_pos_embed_type="learnable",
    ).eval()
    assert_template_processor(transformer)
    schedule_t = [900.0, 500.0, 100.0]

    def timestep_of(step):
        t = torch.full((2,), schedule_t[step])
        if not per_frame_timestep:
            return t
        t = t.view(2, 1, 1, 1, 1).repeat(1, 1, 3, 1, 1)
        t[:, :, 0] = 0.0  # a conditioning frame
        return t

    text = [torch.randn(2, 5, 8), torch.randn(2, 5, 8)]  # conditional, unconditional
    latents = [torch.randn(2, 4, 3, 8, 8) for _ in range(3)]
    with torch.no_grad():
        dense = [[transformer(hidden_states=x, timestep=timestep_of(i), encoder_hidden_states=e, return_dict=False)[0]
                  for e in text] for i, x in enumerate(latents)]
        config = AccelerationConfig(schedule=[1.0, 0.5, 0.5])
        handle = accelerate_transformer(transformer, config, config.schedule)
        rt = handle.runtime
        rt.step_resolver = lambda t: (schedule_t.index(float(t.max())), 3)  # what a pipeline's scheduler gives
        captured, handles = capture_blocks([(transformer, rt)])
        outs = [[transformer(hidden_states=x, timestep=timestep_of(i), encoder_hidden_states=e, return_dict=False)[0]
                 for e in text] for i, x in enumerate(latents)]
        for h in handles:
            h.remove()
    masks = {id(rt): dict(rt.masks)}
    assert [(r.step, r.context) for r in rt.records] == [(s, c) for s in range(3) for c in ("call0", "call1")]
    assert all(r.attention_queries * 2 == r.video_tokens * r.blocks * r.batch for r in rt.records if r.step > 0)
    handle.remove()
    for a, d in zip(outs[0], dense[0]):
        torch.testing.assert_close(a, d, rtol=1e-4, atol=1e-5)
    assert check_selected_rows_against_dense_blocks(captured, masks) == 8
