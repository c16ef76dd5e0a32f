"""Size rules: every family's adapter says which height / width / frame counts its pipelines can run, and the
bundled pipeline defaults to the size it was trained for.

Checks: the rules agree with the grid the transformer really sees (each family's tiny pipeline, one step), a bad
size is a ``ValueError`` naming the field and the nearest valid values, the bundled model's RoPE limit is exactly
where the model fails, and ``load_default_pipeline()("a red circle")`` runs at 64×64×17 (issue 16, item 7).
"""

from __future__ import annotations

import pytest
import torch

from vdit_accel.adapters import SizeRules, get_adapter
from vdit_accel.commands.loading import bundled_model_available

from .test_families import FAMILIES, _pipe

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")
needs_bundled = pytest.mark.skipif(not bundled_model_available(), reason="bundled model weights not present")

# (spatial multiple, VAE temporal factor) of each family's tiny pipeline, from its VAE and patch size
EXPECTED = {"wan": (16, 4), "cogvideox": (16, 4), "hunyuan_video": (16, 4), "ltx": (32, 4), "mochi": (16, 6),
            "wan22": (16, 4), "wan_i2v": (16, 4), "wan22_ti2v": (16, 4), "wan22_i2v": (16, 4), "ltx_condition": (32, 4),
            "wan_vace": (16, 4), "chronoedit": (16, 4), "skyreels_v2": (16, 4)}
# Not here: Wan Animate (its frame count is `segment_frame_length`, and its tokens add a reference frame) and
# Framepack (its tokens add the packed history): their grid is not the latent grid of (height, width, num_frames).
SIZED = [f for f in FAMILIES if f in EXPECTED]


@pytest.fixture(scope="module")
def default_pipe():
    from vdit_accel import load_default_pipeline

    pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@needs_bundled
def test_default_pipeline_runs_at_its_trained_size_without_sizes(default_pipe):
    """WanPipeline's own defaults (480×832×81) failed with "shape '[1, 1, 104, -1]' is invalid"."""
    with torch.no_grad():
        frames = default_pipe("a red circle", num_inference_steps=2, output_type="pt").frames
    assert frames.shape == (1, 17, 3, 64, 64)


@needs_bundled
@pytest.mark.parametrize("size, message", [
    (dict(height=480, width=832), "width=832 is above this model's limit 512"),
    (dict(num_frames=81 * 4), "num_frames=324 is above this model's limit 253"),
    (dict(height=72), "height=72 is not a multiple of 16"),
    (dict(num_frames=18), "num_frames=18: num_frames - 1 must be a multiple of 4"),
])
def test_default_pipeline_rejects_sizes_it_cannot_run_before_any_work(default_pipe, size, message):
    calls = []
    hook = default_pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="nearest valid") as err:
            default_pipe("a red circle", num_inference_steps=1, **size)
    finally:
        hook.remove()
    assert message in str(err.value)
    if "limit" in message:
        assert "rope_max_seq_len=64" in str(err.value)
    assert calls == [], "the size must be rejected before the transformer runs"


@needs_bundled
def test_bundled_rope_limit_is_where_the_model_fails(default_pipe):
    """At most 64 latent positions per axis: 64 run, 65 fail inside diffusers (the rule is the model's, not ours)."""
    rules = get_adapter(default_pipe.transformer).size_rules(default_pipe)
    assert (rules.max_height, rules.max_width, rules.max_frames) == (512, 512, 253)
    transformer = default_pipe.transformer
    text = torch.zeros(1, 4, transformer.config.text_dim)
    ok = torch.zeros(1, 16, 1, 2 * 64, 8)  # F'=1, H'=64, W'=4 post-patch
    with torch.no_grad():
        transformer(ok, torch.tensor([500.0]), text)
        with pytest.raises(RuntimeError):
            transformer(torch.zeros(1, 16, 1, 2 * 65, 8), torch.tensor([500.0]), text)
    assert rules.latent_grid(512, 32, 1) == (1, 64, 4)


@pytest.mark.parametrize("family", SIZED)
def test_each_family_rules_match_the_grid_the_transformer_sees(family):
    pipe = _pipe(family)
    adapter = get_adapter(pipe.transformer)
    rules = adapter.size_rules(pipe)
    assert isinstance(rules, SizeRules)
    assert (rules.spatial, rules.temporal) == EXPECTED[family]
    assert rules.spatial % (rules.vae_spatial * rules.patch_hw) == 0
    kwargs = FAMILIES[family].kwargs(False)
    kwargs["num_inference_steps"] = 2  # Mochi's sigma schedule needs two
    size = {k: kwargs[k] for k in ("height", "width", "num_frames")}
    rules.check(**size)
    grids = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: grids.append(tuple(adapter.grid(m, a, kw))), with_kwargs=True)
    try:
        with torch.no_grad():
            pipe(**kwargs, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert grids and set(grids) == {rules.latent_grid(**size)}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_bad_size_names_the_field_and_valid_neighbours(family):
    pipe = _pipe(family)
    rules = get_adapter(pipe.transformer).size_rules(pipe)
    h, t = rules.spatial, rules.temporal
    for name, size in [("height", dict(height=3 * h + 1, width=h, num_frames=1)),
                       ("width", dict(height=h, width=3 * h - 1, num_frames=1)),
                       ("num_frames", dict(height=h, width=h, num_frames=2 * t + 2 if t > 1 else 0))]:
        with pytest.raises(ValueError, match=f"^{name}=") as err:
            rules.check(**size)
        nearest = rules.nearest(name, size[name])
        assert f"nearest valid: {' or '.join(map(str, nearest))}." in str(err.value)
        assert nearest and all(rules.valid(name, v) for v in nearest)
        if name != "num_frames" or t > 1:
            assert len(nearest) == 2 and nearest[0] < size[name] < nearest[1]
    with pytest.raises(ValueError, match="height must be a whole number"):
        rules.check(height=float(h), width=h, num_frames=1)


def test_learned_positional_embeddings_fix_the_size():
    """CogVideoX with learned positional embeddings (5B I2V) runs only at its sample size: the rules say so, and the
    model indeed refuses another size."""
    from types import SimpleNamespace

    from diffusers import CogVideoXTransformer3DModel

    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=1, sample_width=4, sample_height=2, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=16, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=True)
    pipe = SimpleNamespace(transformer=transformer, vae_scale_factor_spatial=8, vae_scale_factor_temporal=4)
    rules = get_adapter(transformer).size_rules(pipe)
    rules.check(height=16, width=32, num_frames=9)
    with pytest.raises(ValueError, match="height=32 is above this model's limit 16 \\(learned positional"):
        rules.check(height=32, width=32, num_frames=9)
    with torch.no_grad():
        with pytest.raises(ValueError, match="different resolution"):
            transformer(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 16, 32), torch.tensor([10]))


def test_nearest_respects_limits():
    rules = SizeRules(spatial=16, temporal=4, vae_spatial=8, patch_hw=2, max_height=512, max_frames=253,
                      limit="a test limit")
    assert rules.nearest("height", 70) == [64, 80]
    assert rules.nearest("height", 2048) == [512]
    assert rules.nearest("height", 5) == [16]
    assert rules.nearest("num_frames", 18) == [17, 21]
    assert rules.nearest("num_frames", 300) == [253]
    assert rules.nearest("num_frames", 0) == [1]
    assert rules.latent_grid(64, 32, 17) == (5, 4, 2)
